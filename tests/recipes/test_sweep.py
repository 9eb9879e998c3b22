"""A whole-table sweep for real: the SLURM array script of the KD digits table run with bash, two steps a run.

Task 0 trains the in-table teacher, a later task the IKL student distilled from it; that task started
again is skipped as finished. The table then holds the student's number and dashes for what did not run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess

import pytest

from tools import sweep
from tools.report import format_mean_std, headline_metric

TINY = "epochs=1 max_steps_per_epoch=2 batch_size=16 eval_subset=32 eval_batch_size=32 num_workers=0 log_every=1"


@pytest.mark.recipe
def test_slurm_array_script_on_digits(digits_dir, tmp_path, capsys):
    from tests.recipes.conftest import REPO, launch_command

    launcher = launch_command("X")[:-1]  # accelerate launch on one CPU process
    runs = tmp_path / "runs"
    sweep.main([
        "kd", "--table", "digits", "--seeds", "0", "--runs", str(runs), "--submit", "slurm",
        "--launch", shlex.join(launcher), "--args", f"data_dir={digits_dir} {TINY}",
    ])  # fmt: skip
    script = runs / "kd" / "sweep_digits.sh"
    assert f"sbatch --dependency=afterok:$jid --array=1-6 {script}" in capsys.readouterr().out
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}

    def task(index: int) -> str:
        result = subprocess.run(
            ["bash", str(script)], cwd=REPO, env={**env, "SLURM_ARRAY_TASK_ID": str(index)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-6000:]
        return result.stdout

    ikl = int(re.search(r"^\s*(\d+)\) RUN=\S*/digits_resnet14_resnet8_ikl/", script.read_text(), re.M).group(1))
    task(0)
    task(ikl)
    teacher = runs / "kd" / "digits_teacher_resnet14_ce" / "seed0"
    student = runs / "kd" / "digits_resnet14_resnet8_ikl" / "seed0"
    result = json.loads((student / "results.json").read_text())
    assert result["global_steps"] == 2 and result["config"]["teacher_checkpoint"] == str(teacher / "model.pth")
    assert result["config"]["seed"] == 0 and (teacher / "model.pth").is_file()

    again = task(ikl)
    assert f"{student}: finished" in again and "epoch 1/1" not in again  # skipped: nothing trained

    lines = (runs / "kd" / "TABLE_digits.md").read_text().splitlines()
    row = next(line for line in lines if line.startswith("| resnet14 -> resnet8 |"))
    assert f"| {format_mean_std([headline_metric(result)[1]])} |" in row and "| – |" in row  # ikl done, kd not
