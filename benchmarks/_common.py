"""Shared helpers for the benchmarks: interleaved timing, peak memory, and writing JSON + Markdown.

Where results go is decided here, once for every benchmark: ``runs/benchmarks/`` (not tracked by git) unless
the command line says ``--results-dir DIR``, or ``--update-committed`` to refresh the figures committed in
``benchmarks/results/`` that the READMEs cite. :func:`output_dir` reads that choice; :func:`write_results`
writes there by default and prints the path of every file it writes.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

COMMITTED_RESULTS_DIR = Path(__file__).parent / "results"  # the committed figures the READMEs cite
USER_RESULTS_DIR = Path(__file__).resolve().parents[1] / "runs" / "benchmarks"  # a run's own (runs/ is untracked)


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--results-dir DIR`` and ``--update-committed``: the options :func:`output_dir` reads."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--results-dir", type=Path, default=None, help=f"where to write the results (default: {USER_RESULTS_DIR})"
    )
    group.add_argument(
        "--update-committed", action="store_true",
        help=f"write into {COMMITTED_RESULTS_DIR}, replacing the committed figures the READMEs cite",
    )  # fmt: skip


def output_dir(argv: Sequence[str] | None = None) -> Path:
    """The folder a benchmark writes its results to, as the command line ``argv`` (default: ``sys.argv``) chose it.

    ``--results-dir DIR``: DIR; ``--update-committed``: ``benchmarks/results`` (the committed figures); neither:
    ``runs/benchmarks``, so that measuring on one's own machine never rewrites what the READMEs cite.
    """
    parser = argparse.ArgumentParser(add_help=False)
    add_output_options(parser)
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if args.update_committed:
        return COMMITTED_RESULTS_DIR
    return args.results_dir if args.results_dir is not None else USER_RESULTS_DIR


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
    """Write ``<results_dir>/<name>.json`` and ``.md`` and print their paths; returns the Markdown path.

    ``results_dir`` defaults to :func:`output_dir` of the command line (``runs/benchmarks`` unless it says otherwise).
    """
    results_dir = Path(results_dir) if results_dir is not None else output_dir()
    results_dir.mkdir(parents=True, exist_ok=True)
    data = results_dir / f"{name}.json"
    data.write_text(json.dumps(payload, indent=2) + "\n")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows]
    markdown = f"# {name}\n\n{notes}\n\n" + "\n".join(lines) + "\n"
    path = results_dir / f"{name}.md"
    path.write_text(markdown)
    print(markdown)
    print(f"wrote {data}\nwrote {path}", flush=True)
    return path
