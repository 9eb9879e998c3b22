"""The training-speed benchmark (``make bench-kd-speed``) as a dry run on this CPU: batch 2, one round.

Its GPU figures need a lent device, where time is scarce; this runs the same code here so a broken
benchmark shows up first. It checks the plumbing and the report (every method of both pairs timed, the
ratio to IKL-KD, the paper's figures beside them), not the rates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.recipe
def test_kd_speed_benchmark_times_every_method_of_both_pairs(tmp_path):
    command = [sys.executable, "-m", "benchmarks", "--only", "kd_speed", "--device", "cpu", "--batch-size", "2",
               "--repeats", "1", "--warmup", "0", "--results-dir", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert f"wrote {tmp_path / 'kd_speed_cpu.json'}\nwrote {tmp_path / 'kd_speed_cpu.md'}" in done.stdout

    payload = json.loads((tmp_path / "kd_speed_cpu.json").read_text())
    pairs = payload["seconds_per_iter"]["fp32"]
    assert set(pairs) == {"ResNet34 -> ResNet18", "ResNet50 -> MobileNetV1"}
    for per_method in pairs.values():
        assert set(per_method) == {"ce", "kd", "dkd", "reviewkd", "ikl", "gkl"}
        assert all(seconds > 0 for seconds in per_method.values())
    table = (tmp_path / "kd_speed_cpu.md").read_text()
    assert "| ResNet34 -> ResNet18 | fp32 | reviewkd |" in table and "0.319 s/iter, 1.62x" in table
    assert "0.526 s/iter, 2.09x" in table and payload["end_to_end"] is False
