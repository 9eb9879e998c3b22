"""dkl_train.training / results: lr schedule, state, evaluation, checkpoint folders, NaN stop, results.json."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator

from dkl_train.config import BaseConfig, load_config
from dkl_train.results import git_revision, write_json_atomic
from dkl_train.training import NonFiniteLossError, Run, TrainingState, evaluate, learning_rate


def config(**overrides) -> BaseConfig:
    return load_config(BaseConfig, None, [f"{k}={v}" for k, v in overrides.items()])


def test_multistep_matches_mdistiller_epoch_convention():
    c = config(lr=0.05)
    assert learning_rate(c, 149) == 0.05
    assert learning_rate(c, 150) == pytest.approx(0.005) and learning_rate(c, 239) == pytest.approx(0.05e-3)


def test_cosine_and_warmup():
    c = config(lr=1.0, lr_schedule="cosine", epochs=10, lr_warmup_epochs=2)
    assert [learning_rate(c, e) for e in (0, 1)] == [0.5, 1.0]
    assert learning_rate(c, 5) == pytest.approx(0.5) and learning_rate(config(lr_schedule="constant"), 99) == 0.05


def test_training_state_round_trip():
    state = TrainingState(epoch=3, global_step=30, best={"top1": 50.0}, history=[{"epoch": 1}])
    copy = TrainingState()
    copy.load_state_dict(state.state_dict())
    assert copy == state


def test_results_json_is_atomic_and_valid(tmp_path):
    path = write_json_atomic({"a": float("nan"), "b": torch.tensor(2.5), "c": (1, 2)}, tmp_path / "results.json")
    assert json.loads(path.read_text()) == {"a": "nan", "b": 2.5, "c": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert isinstance(git_revision(), str)


class FixedLogits(torch.nn.Module):
    """Predicts class (label + shift) % C with a clear margin, so top-1/top-5 are known."""

    def __init__(self, shift: int) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = x[:, 0].long()
        logits = torch.zeros(len(x), 10)
        logits[torch.arange(len(x)), (labels + self.shift) % 10] = 10.0
        logits[torch.arange(len(x)), labels] += 5.0  # the true class is second best unless shift == 0
        return logits


def test_evaluate_top1_top5_over_an_uneven_last_batch():
    accelerator = Accelerator(cpu=True)
    labels = torch.arange(23) % 10
    loader = accelerator.prepare(
        torch.utils.data.DataLoader([{"image": y.float()[None], "label": y} for y in labels], batch_size=8)
    )
    exact = evaluate(FixedLogits(0), loader, accelerator)
    assert (exact["top1"], exact["top5"], exact["samples"]) == (100.0, 100.0, 23)
    second = evaluate(FixedLogits(1), loader, accelerator)
    assert second["top1"] == 0.0 and second["top5"] == 100.0


@pytest.fixture
def run(tmp_path):
    r = Run(config(output_dir=tmp_path / "run", log_every=1))
    yield r
    r.accelerator.end_training()


def test_run_folder_checkpoints_and_refusal(run, tmp_path):
    assert (tmp_path / "run" / "config.yaml").is_file()
    run.state.epoch = 1
    first = run.save_checkpoint()
    (run.checkpoint_dir / ".tmp_epoch_0002").mkdir()  # an interrupted save
    assert run.latest_checkpoint() == first and (first / "custom_checkpoint_0.pkl").is_file()
    for epoch in (2, 3):
        run.state.epoch = epoch
        run.save_checkpoint()
    assert sorted(p.name for p in run.checkpoint_dir.iterdir()) == ["epoch_0002", "epoch_0003"]  # keep 2
    with pytest.raises(FileExistsError, match="resume=true"):
        Run(config(output_dir=tmp_path / "run"))


def test_non_finite_loss_names_step_and_terms(run):
    with pytest.raises(NonFiniteLossError, match=r"epoch 3, optimiser step 1 \(terms: ce=1.5, kd=nan\)"):
        run.check_finite(torch.tensor(float("nan")), {"ce": torch.tensor(1.5), "kd": torch.tensor(float("nan"))}, 2)


def test_batch_size_must_split_over_accumulation(tmp_path):
    with pytest.raises(ValueError, match="divisible"):
        Run(config(output_dir=tmp_path / "x", batch_size=10, gradient_accumulation_steps=4))
