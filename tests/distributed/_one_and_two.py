"""One recipe, launched with one process and with two: the runs and the records the tests compare."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def run_one_and_two(
    launch: Callable[..., Any],
    script: str,
    args: Sequence[str],
    root: Path,
    *,
    one: Sequence[str] = (),
    threads: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``results.json`` of ``script args`` on one process (plus ``one``, e.g. gradient accumulation) and on two.

    The runs write to ``root/one`` and ``root/two``; ``threads`` is the one-process run's thread count.
    """
    launch(script, *args, *one, f"output_dir={root / 'one'}", threads=threads)
    launch(script, *args, f"output_dir={root / 'two'}", processes=2)
    results = tuple(json.loads((root / d / "results.json").read_text()) for d in ("one", "two"))
    assert [r["num_processes"] for r in results] == [1, 2]
    return results


def step_losses(results: dict[str, Any]) -> list[float]:
    """Every logged optimiser-step loss of a run, in order (``log_step_losses=true``)."""
    return [x for h in results["history"] for x in h["step_losses"]]


def saved_weights(root: Path, name: str = "model.pth") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The state dicts ``name`` of the one- and two-process runs."""
    return tuple(torch.load(root / d / name)["model"] for d in ("one", "two"))


def assert_same_trained_weights(root: Path) -> None:
    """Every floating-point tensor of ``model.pth`` equal bit for bit, except BatchNorm's running statistics
    (DDP keeps rank 0's, computed on its half of the batch)."""
    weights_one, weights_two = saved_weights(root)
    for name, value in weights_one.items():
        if value.is_floating_point() and "running" not in name:
            assert torch.equal(value, weights_two[name]), name
