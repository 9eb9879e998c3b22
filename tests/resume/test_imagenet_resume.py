"""ImageNet read in place, gpu data backend: a run pre-empted inside an epoch and resumed equals the
uninterrupted run (losses, metrics, class prior, weights).

The gpu backend (here on CPU tensors) finishes each batch in the training process from bytes and crop
boxes the workers drew: a resume must skip the consumed batches and draw the same boxes after it. (The
pil backend reads through the same dataset class as the digits runs of tests/resume/test_preemption.py.)
"""

from __future__ import annotations

import sys

import pytest

from dkl_train.training import PREEMPTED_EXIT_CODE
from tests.recipes.conftest import REPO
from tests.recipes.imagenet_tree import prepare_imagenet_run
from tests.resume.test_preemption import assert_same_run, preempted_at, run_in_own_group

# 2 epochs of 2 steps, a data worker, the class prior (use_prior in the config): step 3 is inside epoch 2.
ARGS = ["epochs=2", "warmup_epochs=0", "max_steps_per_epoch=2", "batch_size=4", "eval_subset=4",
        "eval_batch_size=4", "num_workers=1", "log_step_losses=true", "evaluate_teacher=false",
        "deterministic=true", "cudnn_benchmark=false"]  # fmt: skip


@pytest.mark.recipe
def test_imagenet_gpu_backend_preempted_mid_epoch_then_resumed_equals_uninterrupted(tmp_path):
    command = [sys.executable, str(REPO / "recipes/kd/train.py"), *prepare_imagenet_run(tmp_path), *ARGS]
    command.append("data_backend=gpu")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    status, out = run_in_own_group([*command, f"output_dir={straight}"])
    assert status == 0, out[-3000:]
    assert "warning: data_backend=gpu decodes and crops every batch in the training process" in out
    status, out = run_in_own_group(preempted_at(3, command) + [f"output_dir={stopped}"])
    assert status == PREEMPTED_EXIT_CODE and "stopped after optimiser step 3 (inside epoch 2)" in out, out[-3000:]
    status, out = run_in_own_group([*command, f"output_dir={stopped}", "resume=true"])
    assert status == 0 and "(epoch 1, step 3, inside epoch 2)" in out, out[-3000:]

    assert_same_run(straight, stopped, steps=4)
