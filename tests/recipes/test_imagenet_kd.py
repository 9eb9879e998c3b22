"""The KD recipe on ImageNet read in place: two steps of the ResNet-34 -> ResNet-18 IKL config on a generated tree.

The tree is the unit tests' 1,000-class ImageNet of tiny JPEGs (flat val/ with Kaggle's labels), indexed
with ``prepare`` as ``make data DATASET=imagenet`` does; the timm student is built from scratch and the
timm teacher is loaded from a local file (random weights: the test checks the plumbing, not accuracy).
"""

from __future__ import annotations

import json

import pytest

from tests.recipes.imagenet_tree import prepare_imagenet_run


@pytest.mark.recipe
def test_kd_trains_two_steps_on_an_imagenet_tree_read_in_place(tmp_path, launch):
    run_dir = tmp_path / "run"
    launch(
        "recipes/kd/train.py", *prepare_imagenet_run(tmp_path), f"output_dir={run_dir}", "epochs=1",
        "warmup_epochs=0", "max_steps_per_epoch=2", "batch_size=4", "eval_subset=4", "eval_batch_size=4",
        "num_workers=1", "log_every=1",
    )  # fmt: skip
    results = json.loads((run_dir / "results.json").read_text())
    assert results["global_steps"] == 2 and results["epochs_completed"] == 1
    assert results["final"]["samples"] == 4 and "top1" in results["teacher"]
    assert results["config"]["student"] == "timm:resnet18" and results["config"]["dataset"] == "imagenet"
