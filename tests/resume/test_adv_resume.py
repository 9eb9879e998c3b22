"""An adversarial-training run stopped after epoch 1 and resumed equals the uninterrupted run.

Every piece of state is on: AWP (from epoch 1), the class prior, the running checkpoint average, the
EMA, the eps ramp, the random attack start (global RNG, restored from the checkpoint) and the
held-out PGD validation.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.recipes.conftest import digits_dir, launch  # noqa: F401  (shared fixtures)

ARGS = ["--config", "recipes/adv/configs/digits_ikl.yaml", "epochs=2", "max_steps_per_epoch=2", "batch_size=16",
        "eval_subset=32", "eval_batch_size=32", "robust_val_size=24", "robust_val_steps=2", "awp_warmup_epochs=1",
        "ema_decay=0.5", "log_step_losses=true", "deterministic=true"]  # fmt: skip
# Objects registered for checkpointing, in order: 0 TrainingState, 1 ClassPrior, 2 EMA, 3 CheckpointAverage.
PRIOR, AVERAGE = 1, 3


def registered(run_dir, index):
    return torch.load(run_dir / "checkpoints" / "epoch_0002" / f"custom_checkpoint_{index}.pkl", weights_only=False)


@pytest.mark.recipe
def test_resumed_run_equals_uninterrupted(digits_dir, launch, tmp_path):  # noqa: F811
    common = [*ARGS, f"data_dir={digits_dir}"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    launch("recipes/adv/train.py", *common, f"output_dir={straight}")
    launch("recipes/adv/train.py", *common, f"output_dir={resumed}", "stop_after_epochs=1")
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["epoch_0001"]
    out = launch("recipes/adv/train.py", *common, f"output_dir={resumed}", "resume=true").stdout
    assert "resumed from" in out and "epoch 1, step 2" in out

    a, b = (json.loads((d / "results.json").read_text()) for d in (straight, resumed))
    keys = [
        "step_losses",
        "train_loss",
        "ce",
        "ikl",
        "attack_eps",
        "val_clean_top1",
        "val_pgd2_top1",
        "test_top1",
        "test_loss",
    ]
    assert [[h[k] for k in keys] for h in a["history"]] == [[h[k] for k in keys] for h in b["history"]]
    assert a["history"][0]["attack_eps"] == pytest.approx(0.05) and a["history"][1]["attack_eps"] == pytest.approx(0.1)
    assert a["final"] == b["final"] and a["averaged"] == b["averaged"] and a["global_steps"] == b["global_steps"] == 4
    prior_a, prior_b = registered(straight, PRIOR), registered(resumed, PRIOR)
    assert torch.equal(prior_a["prior"], prior_b["prior"])
    assert not torch.allclose(prior_a["prior"], torch.full_like(prior_a["prior"], 0.1))
    assert registered(straight, AVERAGE)["epochs"] == registered(resumed, AVERAGE)["epochs"] == 2
    for name in ("model.pth", "model_avg.pth", "model_ema.pth"):
        wa, wb = (torch.load(d / name)["model"] for d in (straight, resumed))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
