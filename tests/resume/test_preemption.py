"""Pre-emption: SIGTERM (or Ctrl-C's SIGINT) to a run's whole process group in the middle of an epoch, then a
resume, gives the uninterrupted run exactly: KD through ``Run.train_epoch`` with 2 processes (SIGTERM) and 1
(Ctrl-C, exit status 130), and the semi-supervised recipe's own loop. Further signals during the save are harmless; data workers survive the signal; the
stopped process exits with PREEMPTED_EXIT_CODE; a run whose checkpoints are all damaged stops with one
clear line. (The fallback from a damaged checkpoint is unit-tested in tests/unit/test_training.py.)

The signal comes from outside at a point the test does not control, or from the run itself at a known
step (`preempt_at_step.py`, which runs the recipe and signals its process group as a scheduler does, then
the main process once more while it saves). Each run starts in its own session, so the signal never reaches pytest.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dkl_train.preemption import INTERRUPTED_EXIT_CODE
from dkl_train.training import PREEMPTED_EXIT_CODE
from tests.recipes.conftest import REPO, digits_dir, digits_teacher, launch, launch_command  # noqa: F401
from tests.resume.test_ssl_resume import ARGS as SSL_ARGS
from tests.resume.test_ssl_resume import SCRIPT as SSL_SCRIPT

SCRIPT = "recipes/kd/train.py"
PREEMPT = "tests/resume/preempt_at_step.py"  # runs a recipe and signals it after a given optimiser step
# IKL with the class prior (running sums per process inside an epoch), augmentation, a cosine schedule,
# per-step losses and a data worker per loader; 2 epochs of 4 steps: step 6 is inside the second.
ARGS = ["--config", "recipes/kd/configs/digits_resnet14_resnet8_ikl.yaml", "student=resnet8", "teacher=resnet8",
        "epochs=2", "max_steps_per_epoch=4", "batch_size=16", "eval_subset=48", "eval_batch_size=48",
        "num_workers=1", "warmup_epochs=2", "log_step_losses=true", "deterministic=true", "keep_checkpoints=2",
        "evaluate_teacher=false"]  # fmt: skip
KEYS = ["train_loss", "ikl", "ce", "step_losses", "test_top1", "test_top5", "test_loss", "lr"]


def preempted_at(step: int | str, command: list[str]) -> list[str]:
    """``[python, script, args...]`` through ``preempt_at_step.py``: SIGTERM after optimiser step ``step``
    (``"STEP:SIGNAL"``: that signal)."""
    python, script, *args = command
    return [python, str(REPO / PREEMPT), str(step), script, *args]


def run_in_own_group(
    command: list[str], on_line: Callable[[str, int], None] | None = None, timeout: float = 300
) -> tuple[int, str]:
    """Run ``command`` as the leader of a new process group; returns (its exit status, all output).

    The output is read to its end, which comes when every process of the group has exited (the
    training processes may outlive a launcher killed by the signal). ``on_line(line, group)`` sees
    each line as it arrives.
    """
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    watchdog = threading.Timer(timeout, lambda: os.killpg(process.pid, signal.SIGKILL))
    watchdog.start()
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line, process.pid)
        status = process.wait()
    finally:
        watchdog.cancel()
    return status, "".join(lines)


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def assert_same_run(a_dir: Path, b_dir: Path, steps: int = 8) -> None:
    """The same per-epoch records, final metrics, weights and class prior; ``steps`` optimiser steps each."""
    a, b = results(a_dir), results(b_dir)
    assert [[h[k] for k in KEYS] for h in a["history"]] == [[h[k] for k in KEYS] for h in b["history"]]
    assert a["final"] == b["final"] and a["global_steps"] == b["global_steps"] == steps
    weights_a, weights_b = (torch.load(d / "model.pth")["model"] for d in (a_dir, b_dir))
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    prior_a, prior_b = (
        torch.load(d / "checkpoints" / "epoch_0002" / "custom_checkpoint_1.pkl", weights_only=False)
        for d in (a_dir, b_dir)
    )
    assert torch.equal(prior_a["prior"], prior_b["prior"])


@pytest.mark.recipe
def test_external_sigterm_mid_period_then_resume_equals_uninterrupted(digits_dir, tmp_path):  # noqa: F811
    """The semi-supervised recipe (its own loop), one process with a data worker, and a real signal from
    outside to its process group, sent once the first evaluation period is reported.

    The run is then evaluating or saving, or in the second period: it stops after the next iteration,
    inside period 2. The script runs without a launcher, so its own exit status is the one observed.
    """
    command = [sys.executable, str(REPO / SSL_SCRIPT), *SSL_ARGS, f"data_dir={digits_dir}"]
    # Two periods of 3 iterations: the signal has the first period's save and 3 iterations to arrive in.
    command += ["iterations=6", "eval_every_iters=3", "deterministic=true", "num_workers=1"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    status, out = run_in_own_group([*command, f"output_dir={straight}"])
    assert status == 0, out[-3000:]

    def signal_after_first_period(line: str, group: int) -> None:
        if re.match(r"period 1/2: \w+=", line):  # the period's summary, not its progress bar
            os.killpg(group, signal.SIGTERM)  # the data worker is in the group too, and must survive it

    command.append(f"output_dir={stopped}")
    status, out = run_in_own_group(command, signal_after_first_period)
    assert status == PREEMPTED_EXIT_CODE, out[-3000:]
    assert "SIGTERM: stopped after optimiser step" in out and "(inside period 2)" in out and "Traceback" not in out
    (mid,) = (stopped / "checkpoints").glob("epoch_0001_step_*")
    status, resumed = run_in_own_group([*command, "resume=true"])
    assert status == 0 and f"resumed from {mid} (period 1, step " in resumed and ", inside period 2)" in resumed

    a, b = results(straight), results(stopped)
    timing = {"images_per_s", "iterations_per_s"}
    assert [{k: v for k, v in h.items() if k not in timing} for h in a["history"]] == [
        {k: v for k, v in h.items() if k not in timing} for h in b["history"]
    ]
    assert a["final"] == b["final"] and a["global_steps"] == b["global_steps"] == 6
    for name in ("model.pth", "model_ema.pth"):
        wa, wb = (torch.load(d / name)["model"] for d in (straight, stopped))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name

    # Every checkpoint damaged (a crash during a copy) of a run that did not finish (no results.json; a finished
    # run is left alone without loading anything): one clear line naming the file, no traceback.
    (stopped / "results.json").unlink()
    for checkpoint in (stopped / "checkpoints").iterdir():
        model = checkpoint / "model.safetensors"
        model.write_bytes(model.read_bytes()[:100])
    status, out = run_in_own_group([*command, "resume=true"])
    assert status == 2 and "Traceback" not in out, out[-3000:]
    assert "error: no usable checkpoint to resume from" in out and "model.safetensors is 100 bytes" in out


@pytest.mark.recipe
def test_two_processes_sigterm_at_a_known_step_and_during_the_save(digits_dir, digits_teacher, launch, tmp_path):  # noqa: F811
    """Two processes under `accelerate launch`: the main one signals the whole group after step 5 (the
    launcher forwards it to both again) and itself once more during the save."""
    common = [*ARGS, f"data_dir={digits_dir}", f"teacher_checkpoint={digits_teacher}"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    launch(SCRIPT, *common, f"output_dir={straight}", processes=2)
    status, out = run_in_own_group(
        launch_command(PREEMPT, "5", REPO / SCRIPT, *common, f"output_dir={stopped}", processes=2)
    )
    assert status != 0, out[-3000:]  # the launcher is in the signalled group too
    # The processes agree to stop one step after the first one saw the signal: after step 6, inside epoch 2.
    assert "SIGTERM: stopped after optimiser step 6 (inside epoch 2)" in out, out[-3000:]
    assert (
        re.search(r"[12] more signal\(s\) after the first were ignored", out) and f"status {PREEMPTED_EXIT_CODE}" in out
    )
    mid = stopped / "checkpoints" / "epoch_0001_step_00000006"
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir()) == ["epoch_0001", mid.name]
    assert sorted(p.name for p in mid.glob("process_state_*.pkl")) == ["process_state_0.pkl", "process_state_1.pkl"]
    assert not (stopped / "results.json").exists()

    resumed = launch(SCRIPT, *common, f"output_dir={stopped}", "resume=true", processes=2).stdout
    assert f"resumed from {mid} (epoch 1, step 6, inside epoch 2)" in resumed
    assert_same_run(straight, stopped)


@pytest.mark.recipe
def test_one_process_ctrl_c_at_a_known_step(digits_dir, digits_teacher, tmp_path):  # noqa: F811
    """KD through ``Run.train_epoch`` in one process (no launcher): Ctrl-C (SIGINT to the process group, data
    worker included) stops it right after the signalled step, as SIGTERM does, with status 130; a second
    Ctrl-C during the save says that a third would abort, and the save completes."""
    command = [
        sys.executable,
        str(REPO / SCRIPT),
        *ARGS,
        f"data_dir={digits_dir}",
        f"teacher_checkpoint={digits_teacher}",
    ]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    status, out = run_in_own_group([*command, f"output_dir={straight}"])
    assert status == 0, out[-3000:]
    status, out = run_in_own_group(preempted_at("6:SIGINT", command) + [f"output_dir={stopped}"])
    assert status == INTERRUPTED_EXIT_CODE == 130, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    assert "SIGINT: stopped after optimiser step 6 (inside epoch 2)" in out and "1 more signal(s)" in out
    assert "Exiting with status 130; continue with resume=true." in out
    assert "Ctrl-C again: the run exits once its checkpoint is saved; a third Ctrl-C aborts it" in out
    status, out = run_in_own_group([*command, f"output_dir={stopped}", "resume=true"])
    assert (
        status == 0 and f"resumed from {stopped / 'checkpoints' / 'epoch_0001_step_00000006'} (epoch 1, step 6, " in out
    )
    assert_same_run(straight, stopped)
