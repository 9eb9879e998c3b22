"""Two processes give the loss curve, class prior and weights of one process with the same global batch."""

from __future__ import annotations

import pytest
import torch

from tests.distributed._one_and_two import assert_same_trained_weights, run_one_and_two, step_losses
from tests.recipes.conftest import digits_dir, digits_teacher, launch  # noqa: F401  (shared fixtures)

ARGS = ["--config", "recipes/kd/configs/digits_resnet14_resnet8_ikl.yaml", "student=resnet8", "teacher=resnet8",
        "epochs=2", "max_steps_per_epoch=3", "batch_size=16", "eval_subset=50", "eval_batch_size=16",
        "num_workers=0", "warmup_epochs=2", "log_step_losses=true", "lr=0.02"]  # fmt: skip


@pytest.mark.distributed
def test_two_processes_equal_one(digits_dir, digits_teacher, launch, tmp_path):  # noqa: F811
    common = [*ARGS, f"data_dir={digits_dir}", f"teacher_checkpoint={digits_teacher}"]
    # One process accumulating two micro-batches of 8 sees exactly the halves the two processes see
    # (BatchNorm statistics included), and a sum of two gradients rounds the same in either order, so with
    # the same thread count per process (kernels round differently with another) the runs agree bit for bit.
    one, two = run_one_and_two(
        launch, "recipes/kd/train.py", common, tmp_path, one=["gradient_accumulation_steps=2"], threads=1
    )
    assert len(step_losses(one)) == len(step_losses(two)) == 6
    # The logged step loss is a mean over the processes (all-reduce), which may round in its last bit.
    assert step_losses(one) == pytest.approx(step_losses(two), rel=1e-6)
    # Evaluation over 50 images (uneven over 2 processes): gather_for_metrics drops the padding.
    assert [h["test_samples"] for h in two["history"]] == [50, 50]

    def prior(d):
        return torch.load(tmp_path / d / "checkpoints" / "epoch_0002" / "custom_checkpoint_1.pkl", weights_only=False)

    assert torch.allclose(prior("one")["prior"], prior("two")["prior"], rtol=1e-6, atol=1e-9)
    assert_same_trained_weights(tmp_path)


@pytest.mark.distributed
def test_reviewkd_two_processes_equal_one(digits_dir, digits_teacher, launch, tmp_path):  # noqa: F811
    """ReviewKD's ABF modules are synchronised with the student: the whole trained state, not only model.pth."""
    from safetensors.torch import load_file

    # With the teacher's batch norm on batch statistics (the original ReviewKD CIFAR trainer): per micro-batch, so
    # one process accumulating two micro-batches still sees what two processes see.
    args = ["--config", "recipes/kd/configs/digits_resnet14_resnet8_reviewkd.yaml", "teacher=resnet8",
            *ARGS[4:], f"data_dir={digits_dir}", f"teacher_checkpoint={digits_teacher}",
            "reviewkd_teacher_train_mode=true"]  # fmt: skip
    one, two = run_one_and_two(
        launch, "recipes/kd/train.py", args, tmp_path, one=["gradient_accumulation_steps=2"], threads=1
    )
    assert len(step_losses(one)) == len(step_losses(two)) == 6
    assert step_losses(one) == pytest.approx(step_losses(two), rel=1e-6)
    states = [load_file(tmp_path / d / "checkpoints" / "epoch_0002" / "model.safetensors") for d in ("one", "two")]
    trained = [k for k in states[0] if states[0][k].is_floating_point() and "running" not in k]
    assert any(k.startswith("abfs.") for k in trained)
    for name in trained:
        assert torch.equal(states[0][name], states[1][name]), name
