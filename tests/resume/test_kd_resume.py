"""A KD run stopped after epoch 1 and resumed equals an uninterrupted run: metrics, class prior and weights."""

from __future__ import annotations

import json

import pytest
import torch

from tests.recipes.conftest import digits_dir, digits_teacher, launch  # noqa: F401  (shared fixtures)

# IKL with the class prior, augmentation and a cosine schedule: every piece of state a resume must restore.
ARGS = ["--config", "recipes/kd/configs/digits_resnet14_resnet8_ikl.yaml", "student=resnet8", "teacher=resnet8",
        "epochs=2", "max_steps_per_epoch=3", "batch_size=16", "eval_subset=48", "eval_batch_size=48",
        "num_workers=0", "warmup_epochs=2", "log_step_losses=true", "deterministic=true"]  # fmt: skip


def prior_of(run_dir):
    # Registered objects: 0 = TrainingState, 1 = ClassPrior.
    return torch.load(run_dir / "checkpoints" / "epoch_0002" / "custom_checkpoint_1.pkl", weights_only=False)


def straight_and_resumed(launch, args, tmp_path, keys):  # noqa: F811  (the fixture, passed on)
    """One run straight through, one stopped after epoch 1 and resumed; checks their histories agree on ``keys``."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    launch("recipes/kd/train.py", *args, f"output_dir={straight}")
    launch("recipes/kd/train.py", *args, f"output_dir={resumed}", "stop_after_epochs=1")
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["epoch_0001"]
    out = launch("recipes/kd/train.py", *args, f"output_dir={resumed}", "resume=true").stdout
    assert "resumed from" in out and "epoch 1, step 3" in out

    a, b = (json.loads((d / "results.json").read_text()) for d in (straight, resumed))
    assert [[h[k] for k in keys] for h in a["history"]] == [[h[k] for k in keys] for h in b["history"]]
    assert a["final"] == b["final"] and a["global_steps"] == b["global_steps"] == 6
    return straight, resumed


@pytest.mark.recipe
def test_resumed_run_equals_uninterrupted(digits_dir, digits_teacher, launch, tmp_path):  # noqa: F811
    common = [*ARGS, f"data_dir={digits_dir}", f"teacher_checkpoint={digits_teacher}"]
    keys = ["train_loss", "ikl", "ce", "step_losses", "test_top1", "test_top5", "test_loss", "lr"]
    straight, resumed = straight_and_resumed(launch, common, tmp_path, keys)
    prior_a, prior_b = prior_of(straight), prior_of(resumed)
    assert torch.equal(prior_a["prior"], prior_b["prior"]) and not torch.allclose(
        prior_a["prior"], torch.full_like(prior_a["prior"], 0.1)
    )
    weights_a, weights_b = (torch.load(d / "model.pth")["model"] for d in (straight, resumed))
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


REVIEWKD_ARGS = ["--config", "recipes/kd/configs/digits_resnet14_resnet8_reviewkd.yaml", "teacher=resnet8",
                 "epochs=2", "max_steps_per_epoch=3", "batch_size=16", "eval_subset=48", "eval_batch_size=48",
                 "num_workers=0", "warmup_epochs=2", "log_step_losses=true", "deterministic=true",
                 # the teacher's batch norm on batch statistics (the original ReviewKD CIFAR trainer): its running
                 # statistics, never checkpointed, must not matter to a resumed run
                 "reviewkd_teacher_train_mode=true"]  # fmt: skip


@pytest.mark.recipe
def test_resumed_reviewkd_run_equals_uninterrupted(digits_dir, digits_teacher, launch, tmp_path):  # noqa: F811
    """The ABF modules and their optimiser state resume too: the whole checkpoint matches, not only the student."""
    from safetensors.torch import load_file

    common = [*REVIEWKD_ARGS, f"data_dir={digits_dir}", f"teacher_checkpoint={digits_teacher}"]
    keys = ["train_loss", "reviewkd", "ce", "step_losses", "test_top1", "test_loss", "lr"]
    straight, resumed = straight_and_resumed(launch, common, tmp_path, keys)
    state_a, state_b = (load_file(d / "checkpoints" / "epoch_0002" / "model.safetensors") for d in (straight, resumed))
    assert any(k.startswith("abfs.") for k in state_a)
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
