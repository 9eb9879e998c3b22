"""The ImageNet loader benchmark, end-to-end path included, as a dry run on this CPU (tiny sizes).

The end-to-end figures come from a lent GPU (``benchmarks/run_gpu.sh``), where device time is scarce;
this runs the same code on the CPU so a broken benchmark shows up here first. It checks the plumbing
and the report, not the rates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
END_TO_END_RUNS = ("synthetic batch on the device", "pil backend, real loader", "gpu backend, real loader")


@pytest.mark.recipe
def test_imagenet_loader_benchmark_runs_end_to_end_on_cpu(tmp_path):
    command = [
        sys.executable, "-m", "benchmarks", "--only", "imagenet_loader", "--end-to-end",
        "--classes", "4", "--train-per-class", "6", "--val-per-class", "2", "--distinct", "4",
        "--samples", "4", "--repeats", "1", "--batch-size", "4", "--loader-batches", "1",
        "--e2e-batch-size", "4", "--e2e-steps", "4", "--warmup-steps", "1",
        # fp32: bf16 autocast on a CPU without bf16 arithmetic is emulated (180 s here instead of 31 s); the
        # loaders, the recipe and the report are the same code either way.
        "--precision", "no",
        "--dir", str(tmp_path / "tree"), "--results-dir", str(tmp_path / "results"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    payload = json.loads((tmp_path / "results" / "imagenet_loader_end_to_end_cpu.json").read_text())
    per_core = payload["cpu"]["images_per_second_per_core"]
    assert len(per_core) == 9 and all(rate > 0 for rate in per_core.values())
    assert payload["cpu"]["pil_worker_speedup_over_before"] > 0
    rates = payload["end_to_end"]["images_per_s"]
    assert set(END_TO_END_RUNS) <= set(rates) and all(rate > 0 for rate in rates.values())
    assert set(payload["end_to_end"]["fraction_of_synthetic"]) == set(END_TO_END_RUNS[1:])
    table = (tmp_path / "results" / "imagenet_loader_end_to_end_cpu.md").read_text()
    assert all(f"recipes/kd/train.py, {run} |" in table for run in END_TO_END_RUNS)
    # Each run trained through the recipe and wrote its results.
    runs = sorted(p.name for p in (tmp_path / "tree").glob("run_*") if (p / "results.json").exists())
    assert runs == ["run_gpu_False", "run_pil_False", "run_pil_True"]
