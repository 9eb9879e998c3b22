"""Two processes with the same global batch run the one-process SSL experiment (gloo CPU processes).

Each process takes half of every labeled and unlabeled batch; DDP averages the per-process gradients
of per-process means, which is the gradient of the global mean. A LayerNorm ViT (no BatchNorm, no
stochastic depth) makes the two runs comparable number for number.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.recipes.conftest import digits_dir, launch  # noqa: F401  (fixtures of the recipe tests)

SCRIPT = "recipes/ssl/train.py"
ARGS = ["--config", "recipes/ssl/configs/digits_fixmatch_ikl.yaml", "model=vit_small_patch2_32",
        "model_kwargs={embed_dim: 32, depth: 2, num_heads: 2, patch_size: 8, drop_path_rate: 0.0}",
        "iterations=3", "eval_every_iters=3", "batch_size=4", "uratio=2", "labels_per_class=2", "val_per_class=2",
        "eval_subset=41", "eval_batch_size=16", "p_cutoff=0.0", "lr=0.05", "log_every=1"]  # fmt: skip
COMPARED = ("train_loss", "sup_loss", "unsup_loss", "mask_ratio", "test_top1", "test_loss", "test_ema_loss",
            "val_top1", "val_loss")  # fmt: skip


@pytest.mark.distributed
def test_two_processes_equal_one_with_the_same_global_batch(digits_dir, launch, tmp_path, monkeypatch):  # noqa: F811
    # On a CUDA build of torch with no GPU, `--multi_gpu` alone gives each process a non-distributed
    # Accelerator (DistributedType.NO); this flag makes them one gloo group (MULTI_CPU).
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    one, two = tmp_path / "one", tmp_path / "two"
    launch(SCRIPT, *ARGS, f"data_dir={digits_dir}", f"output_dir={one}")
    out = launch(SCRIPT, *ARGS, f"data_dir={digits_dir}", f"output_dir={two}", processes=2)
    assert "2 process(es) x 2+4 images" in out.stdout
    a, b = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert (a["num_processes"], b["num_processes"]) == (1, 2)
    ha, hb = a["history"][-1], b["history"][-1]
    assert ha["unsup_loss"] > 0
    for key in COMPARED:
        assert hb[key] == pytest.approx(ha[key], rel=1e-4, abs=1e-5), key
    wa, wb = torch.load(one / "model.pth")["model"], torch.load(two / "model.pth")["model"]
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-5, msg=key)
