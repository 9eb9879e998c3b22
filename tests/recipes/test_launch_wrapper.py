"""The Makefile's launch path (``python -m tools.last_error .venv/bin/accelerate launch ...``): a user error is one
line with no traceback, and SIGTERM to make's process group ends the command only after the run has saved its
checkpoint, with the run's exit status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from dkl_train.training import PREEMPTED_EXIT_CODE
from tests.recipes.conftest import REPO, digits_dir  # noqa: F401

CONFIG = "recipes/kd/configs/digits_student_resnet8_ce.yaml"
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


def wrapped(*args: str) -> list[str]:
    """What ``make train-kd ARGS=...`` runs (``--cpu``: whatever accelerate config this machine has saved)."""
    launch = [ACCELERATE, "launch", "--cpu", "recipes/kd/train.py", "--config", CONFIG]
    return [sys.executable, "-m", "tools.last_error", *launch, *args]


def environment() -> dict[str, str]:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}


@pytest.mark.recipe
def test_a_user_error_through_the_launch_wrapper_is_one_line(tmp_path):
    result = subprocess.run(
        wrapped("lr=abc", f"output_dir={tmp_path / 'run'}"),
        cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    # No launcher traceback, no notice of Accelerate's defaults, no repeat: the run's line alone.
    assert (result.stdout + result.stderr).splitlines() == ["config error: lr: expected a number, got 'abc'"]
    assert not (tmp_path / "run").exists()


@pytest.mark.recipe
def test_sigterm_to_makes_process_group_waits_for_the_checkpoint(digits_dir, tmp_path):  # noqa: F811
    """As `timeout`, docker or CI stop `make train-kd`: SIGTERM to the wrapper's process group, during epoch 2."""
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    args = ["epochs=2", "max_steps_per_epoch=4", "batch_size=16", "eval_subset=32", "eval_batch_size=32",
            "num_workers=1", f"data_dir={digits_dir}", f"output_dir={run_dir}"]  # fmt: skip
    with log.open("w") as out:
        wrapper = subprocess.Popen(
            wrapped(*args), cwd=REPO, env=environment(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 300
        while "epoch 1/2: " not in log.read_text() and wrapper.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        os.killpg(wrapper.pid, signal.SIGTERM)
        status = wrapper.wait(timeout=300)
    # The wrapper returned once the run had saved and exited, with the run's status.
    output = log.read_text()
    assert status == PREEMPTED_EXIT_CODE, output[-3000:]
    assert "SIGTERM: stopped after optimiser step " in output and "(inside epoch 2)" in output, output[-3000:]
    assert "Traceback" not in output
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1].startswith("epoch_0001_step_0000000")
    running = [p for p in psutil.process_iter(["cmdline"]) if f"output_dir={run_dir}" in (p.info["cmdline"] or [])]
    assert not running, running
