"""Shared helpers for the benchmarks: interleaved timing, peak memory, and writing JSON + Markdown."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).parent / "results"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_side_by_side(
    candidates: dict[str, Callable[[], object]],
    device: torch.device,
    repeats: int = 20,
    warmup: int = 3,
    inner: int = 1,
) -> dict[str, float]:
    """Median seconds per call of each candidate, measured in interleaved rounds.

    Interleaving (A, B, C, A, B, C, ...) exposes every candidate to the same machine load, so the
    ratios stay meaningful on a busy machine even when the absolute times drift.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            synchronize(device)
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(values) for name, values in samples.items()}


def write_results(
    name: str,
    payload: dict,
    table_rows: list[list[str]],
    header: list[str],
    notes: str = "",
    results_dir: Path | None = None,
) -> Path:
    """Write ``<results_dir>/<name>.json`` and ``.md`` (default: ``benchmarks/results``); returns the Markdown path."""
    results_dir = Path(results_dir) if results_dir is not None else RESULTS_DIR
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows]
    markdown = f"# {name}\n\n{notes}\n\n" + "\n".join(lines) + "\n"
    path = results_dir / f"{name}.md"
    path.write_text(markdown)
    print(markdown)
    return path
