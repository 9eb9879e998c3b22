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


# A bare `.venv/bin/accelerate launch` (no wrapper): `make install` puts dkl_train.quiet_launch's start-up hook
# into the environment, so the launcher adds nothing after a run that said why it ended.


@pytest.mark.recipe
def test_a_user_error_through_bare_accelerate_launch_is_one_line(tmp_path):
    temporary = tmp_path / "tmp"  # where the launcher keeps the run's error record
    temporary.mkdir()
    result = subprocess.run(
        [ACCELERATE, "launch", "recipes/kd/train.py", "--config", CONFIG, "lr=abc", f"output_dir={tmp_path / 'run'}"],
        cwd=REPO, env={**environment(), "TMPDIR": str(temporary)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    # No CalledProcessError traceback, no notice of the defaults ("--num_processes ... 0"): the run's line alone.
    assert (result.returncode, (result.stdout + result.stderr).splitlines()) == (
        2, ["config error: lr: expected a number, got 'abc'"]
    )  # fmt: skip
    assert not list(temporary.glob("dkl-error-*"))  # the record is gone with the launcher


@pytest.mark.recipe
def test_bare_accelerate_launch_keeps_the_traceback_of_an_unexplained_failure(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text("raise SystemExit(3)\n")  # a script that says nothing about why it failed
    result = subprocess.run(
        [ACCELERATE, "launch", "--cpu", str(script)], cwd=REPO, env=environment(), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 1 and "CalledProcessError" in result.stderr, result.stderr[-2000:]


@pytest.mark.recipe
def test_ctrl_c_through_bare_accelerate_launch_waits_for_the_save(digits_dir, tmp_path):  # noqa: F811
    """Ctrl-C reaches the terminal's whole group, launcher included: the launcher waits, the run saves after the
    signalled step and ends with status 130, and nobody prints a KeyboardInterrupt traceback."""
    from tests.resume.test_preemption import PREEMPT, run_in_own_group

    run_dir = tmp_path / "run"
    args = ["epochs=2", "max_steps_per_epoch=4", "batch_size=16", "eval_subset=32", "eval_batch_size=32",
            "num_workers=0", f"data_dir={digits_dir}", f"output_dir={run_dir}"]  # fmt: skip
    command = [ACCELERATE, "launch", "--cpu", PREEMPT, "6:SIGINT", "recipes/kd/train.py", "--config", CONFIG, *args]
    status, out = run_in_own_group(command)
    assert status == 130, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    assert "SIGINT: stopped after optimiser step 6 (inside epoch 2)" in out, out[-3000:]
    assert (run_dir / "checkpoints" / "epoch_0001_step_00000006").is_dir()
