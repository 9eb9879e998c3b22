"""Smoke runs of recipes/ssl/train.py through `accelerate launch` on the digits: every method x consistency
loss for a few iterations, and the pretrained-ViT path with a checkpoint in USB's layout.

The four method x loss runs share one launch (this file is also the launched script: its ``__main__``
calls the recipe's ``main`` per config) to pay the start-up once.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

SCRIPT = "recipes/ssl/train.py"
CONFIGS = "recipes/ssl/configs"
# A few iterations, two evaluation periods, small evaluation sets: seconds per run.
TINY = ["iterations=2", "eval_every_iters=1", "batch_size=4", "uratio=1", "labels_per_class=2", "val_per_class=2",
        "eval_subset=40", "eval_batch_size=64", "log_every=1"]  # fmt: skip
# A ViT of the recipe's family small enough for a CPU test (same parameter names as ViT-S/2).
TINY_VIT = "model_kwargs={embed_dim: 32, depth: 2, num_heads: 2, patch_size: 8, drop_path_rate: 0.1}"


SMOKE_CONFIGS = ["digits_fixmatch", "digits_fixmatch_ikl", "digits_meanteacher", "digits_meanteacher_ikl"]


@pytest.fixture(scope="module")
def smoke_runs(digits_dir, tmp_path_factory):
    from tests.recipes.conftest import launch_runs

    return launch_runs(__file__, tmp_path_factory.mktemp("ssl_smoke"), SMOKE_CONFIGS, f"data_dir={digits_dir}")


@pytest.mark.recipe
@pytest.mark.parametrize("config", SMOKE_CONFIGS)
def test_every_method_and_loss_runs(config, smoke_runs):
    out = smoke_runs / config
    results = json.loads((out / "results.json").read_text())
    assert results["global_steps"] == 2 and results["epochs_completed"] == 2
    assert results["method"] == config.split("_")[1]
    assert results["consistency"] == ("ikl" if config.endswith("ikl") else results["config"]["consistency"])
    for key in ("top1", "top5", "loss", "ema_top1", "ema_top5", "ema_loss"):
        assert key in results["final"]
    assert set(results["best"]) >= {"top1", "ema_top1"}
    last = results["history"][-1]
    assert {"sup_loss", "unsup_loss", "mask_ratio", "val_top1", "val_ema_top1", "iterations_per_s"} <= set(last)
    assert results["selected"]["selected_on"] == "val_ema_top1"
    assert results["split"] == {**results["split"], "labeled": 20, "validation": 20, "unlabeled": 1327}
    assert (out / "model.pth").is_file() and (out / "model_ema.pth").is_file()
    assert (out / "checkpoints" / "epoch_0002").is_dir()


@pytest.mark.recipe
def test_usb_layout_checkpoint_loads_through_the_launched_recipe(digits_dir, launch, tmp_path):
    from dkl_train.models import create_model

    # A "pretraining" checkpoint of the tiny ViT in USB's layout: weights under "model", a 1000-way head,
    # an extra pretraining MLP head and a position embedding for another grid (8x8 patches instead of 4x4).
    donor = create_model("vit_small_patch2_32", 1000, embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=64)
    state = donor.state_dict() | {"mlp.fc.weight": torch.zeros(8, 32)}
    path = tmp_path / "usb_tiny.pth"
    torch.save({"model": state}, path)
    out = tmp_path / "run"
    result = launch(SCRIPT, "--config", f"{CONFIGS}/digits_fixmatch_ikl.yaml", f"data_dir={digits_dir}",
                    f"output_dir={out}", "model=vit_small_patch2_32", TINY_VIT, f"pretrained={path}",
                    "layer_decay=0.5", "optimizer=adamw", "lr=0.0005", *TINY)  # fmt: skip
    assert "pretrained backbone: loaded" in result.stdout
    assert "pos_embed resampled from 8x8 to 4x4" in result.stdout
    assert "dropped 3 pretraining head tensor(s): head.bias, head.weight, mlp.fc.weight" in result.stdout
    assert json.loads((out / "results.json").read_text())["global_steps"] == 2


if __name__ == "__main__":  # launched by the smoke fixture: every config in one process
    from dkl_recipe_ssl.train import main

    from tests.recipes.conftest import launched_runs

    root, configs, overrides = launched_runs(sys.argv)
    for config in configs:
        main(["--config", f"{CONFIGS}/{config}.yaml", *TINY, *overrides, f"output_dir={root / config}"])
