"""ImageNet read in place, pil backend: two processes give the loss curve and weights of one process.

The same plumbing as the digits test (tests/distributed/test_kd_two_processes.py), on a generated
ImageNet tree whose training JPEGs are textured, so a crop drawn from another seed would change the
batch: the per-sample seeds, the uint8 tensor crops and the device normalisation must not depend on
which process reads a sample.
"""

from __future__ import annotations

import pytest

from tests.distributed._one_and_two import assert_same_trained_weights, run_one_and_two, step_losses
from tests.recipes.conftest import launch  # noqa: F401  (shared fixture)
from tests.recipes.imagenet_tree import prepare_imagenet_run


@pytest.mark.distributed
def test_imagenet_pil_backend_two_processes_equal_one(tmp_path, launch):  # noqa: F811
    common = [
        *prepare_imagenet_run(tmp_path), "epochs=1", "warmup_epochs=0", "max_steps_per_epoch=2", "batch_size=8",
        "eval_subset=6", "eval_batch_size=4", "num_workers=0", "log_step_losses=true", "evaluate_teacher=false",
        "channels_last=false",
    ]  # fmt: skip
    # One process accumulating two micro-batches of 4 sees the halves the two processes see (see the digits test).
    one, two = run_one_and_two(
        launch, "recipes/kd/train.py", common, tmp_path, one=["gradient_accumulation_steps=2"], threads=1
    )
    assert len(step_losses(one)) == len(step_losses(two)) == 2
    assert step_losses(one) == pytest.approx(step_losses(two), rel=1e-6)
    assert one["final"]["samples"] == two["final"]["samples"] == 6
    assert_same_trained_weights(tmp_path)
