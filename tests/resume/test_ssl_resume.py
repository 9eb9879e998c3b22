"""A semi-supervised run stopped after its first evaluation period and resumed equals the uninterrupted run:
same losses, metrics, iteration counter, model and EMA weights (MeanTeacher, whose teacher *is* the EMA)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.recipes.conftest import digits_dir, launch  # noqa: F401  (fixtures of the recipe tests)

SCRIPT = "recipes/ssl/train.py"
# p_cutoff=0 keeps the consistency term (and so the EMA teacher) in every step of this short run.
ARGS = ["--config", "recipes/ssl/configs/digits_meanteacher_ikl.yaml", "model=vit_small_patch2_32",
        "model_kwargs={embed_dim: 32, depth: 2, num_heads: 2, patch_size: 8, drop_path_rate: 0.1}",
        "iterations=4", "eval_every_iters=2", "checkpoint_every=1", "keep_checkpoints=2", "batch_size=4",
        "uratio=1", "labels_per_class=2", "val_per_class=2", "eval_subset=40", "eval_batch_size=64",
        "p_cutoff=0.0", "unsup_warmup=0.0", "ema_decay=0.9", "log_every=1"]  # fmt: skip
TIMING = {"images_per_s", "iterations_per_s"}


def _history(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    return results, [{k: v for k, v in h.items() if k not in TIMING} for h in results["history"]]


@pytest.mark.recipe
def test_stopped_and_resumed_run_equals_uninterrupted(digits_dir, launch, tmp_path):  # noqa: F811
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    launch(SCRIPT, *ARGS, f"data_dir={digits_dir}", f"output_dir={whole}")
    launch(SCRIPT, *ARGS, f"data_dir={digits_dir}", f"output_dir={parts}", "stop_after_iters=2")
    assert not (parts / "results.json").exists()
    assert (parts / "checkpoints" / "epoch_0001").is_dir()
    resumed = launch(SCRIPT, *ARGS, f"data_dir={digits_dir}", f"output_dir={parts}", "resume=true")
    assert "resumed from" in resumed.stdout and "iterations 2..4 of 4" in resumed.stdout

    expected, expected_history = _history(whole)
    got, got_history = _history(parts)
    assert got["global_steps"] == expected["global_steps"] == 4
    assert got_history[0]["unsup_loss"] > 0  # the consistency term was active
    assert len(got_history) == len(expected_history) == 2
    for period, (a, b) in enumerate(zip(got_history, expected_history)):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), f"period {period}: {key}"
    assert got["final"] == pytest.approx(expected["final"], rel=1e-6)
    for name in ("model.pth", "model_ema.pth"):
        a, b = torch.load(parts / name)["model"], torch.load(whole / name)["model"]
        for key in b:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7, msg=f"{name}: {key}")
