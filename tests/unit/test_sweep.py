"""Whole-table sweeps (tools.sweep): table discovery, job plans, skip logic, the table's layout, the job script."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dkl_train.training import PREEMPTED_EXIT_CODE
from tests.unit.toy_recipe import toy_result, write_toy_recipe
from tools import sweep
from tools.recipes import load_recipes
from tools.report import format_mean_std


def entry(task: str, table: str, stem: str) -> sweep.Entry:
    return next(e for e in sweep.table_entries(task, table) if e.stem == stem)


def write_result(folder: Path, config: dict, **payload) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"config": config, **payload}))


def kd_result(folder: Path, config: dict, best: float) -> None:
    write_result(folder, config, final={"top1": best - 1.0}, best={"top1": {"value": best, "epoch": 3}})


# ----------------------------------------------------------------------------------------------
# Tables


def test_tables_are_the_datasets_of_the_training_configs():
    kd = sweep.discover("kd")
    assert {"cifar100", "imagenet", "digits"} <= set(kd)
    pairs = {}
    for e in kd["cifar100"]:
        pairs.setdefault(e.row, set()).add(e.column)
    # reviewkd_original: ReviewKD as its original code trains it, a variant column right after reviewkd
    assert pairs["resnet32x4 -> resnet8x4"] == {"kd", "dkd", "reviewkd", "reviewkd_original", "ikl", "gkl"}
    assert all(columns - {"reviewkd_original"} == {"kd", "dkd", "reviewkd", "ikl", "gkl"} for columns in pairs.values())
    assert {e.column for e in kd["imagenet"]} == {"kd", "dkd", "reviewkd", "reviewkd_original", "ikl", "gkl"}
    adv = sweep.discover("adv")
    assert {"cifar10", "cifar100", "digits"} == set(adv)
    assert not any(e.stem.startswith("eval_") for entries in adv.values() for e in entries)  # nothing to train
    assert {e.column for e in adv["cifar100"]} >= {"ikl", "ikl_autoaug", "trades_awp", "lbgat_beta0", "lbgat_beta6"}
    # LBGAT sits in the WRN-34-10 row, between TRADES and IKL-AT (the recipe's METHODS order)
    lbgat = [e for entries in adv.values() for e in entries if e.config["method"] == "lbgat"]
    assert {e.row for e in lbgat} == {"cifar10 wrn_34_10", "cifar100 wrn_34_10", "digits timm:vit_tiny_patch16_224"}
    order = sweep.recipe_methods("adv")
    assert order.index("trades") < order.index("lbgat") < order.index("ikl")
    ssl = sweep.discover("ssl")
    assert {e.row for e in ssl["cifar100"]} == {"cifar100, 200 labels"}
    assert {e.column for e in ssl["cifar100"]} >= {"fixmatch", "fixmatch_ikl", "meanteacher", "meanteacher_ikl"}


def test_columns_follow_each_recipes_methods():
    recipes = load_recipes()
    assert {"kd", "adv", "ssl"} <= set(recipes)
    for task in recipes:  # the recipe's own tuple, the one its config validates against
        assert sweep.recipe_methods(task) == importlib.import_module(f"dkl_recipe_{task}.train").METHODS


def test_a_new_recipe_needs_no_tool_edit(tmp_path, capsys):
    recipes = write_toy_recipe(tmp_path / "recipes")
    sweep.main(["--list", "--recipes", str(recipes)])  # every recipe of the folder: the toy one
    listing = capsys.readouterr().out
    assert "== toy" in listing and "digits: 2 configs" in listing and "[model m1 | new]" in listing
    entries = sweep.table_entries("toy", "digits", recipes)
    jobs = sweep.plan("toy", entries, [0, 1], tmp_path / "runs")
    for job in jobs:
        if job.entry.column == "new":
            job.run_dir.mkdir(parents=True)
            (job.run_dir / "results.json").write_text(
                json.dumps(toy_result(job.entry.config, job.seed, 70.0 + job.seed))
            )
    assert sweep.run_state("toy", jobs[-1].run_dir, recipes) == "finished"
    assert sweep.run_state("toy", jobs[0].run_dir, recipes) == "train"
    lines = sweep.render_table("toy", "digits", jobs, recipes).splitlines()
    assert lines[0] == "# toy table `digits`: toy score (best) (%)"
    assert "| model | base | new |" in lines  # the recipe's method order, its row label
    assert f"| model m1 | – [50.00] | {format_mean_std([70.0, 71.0])} [60.00] |" in lines
    script = sweep.job_script("toy", "digits", jobs, [0, 1], tmp_path, options(["accelerate", "launch"]), recipes)
    assert f"{recipes / 'toy' / 'train.py'} --config {recipes / 'toy' / 'configs'}" in script
    assert f"RECIPES_ARGS=(--recipes {recipes})" in script and "EVALUATE=()" in script


def test_unknown_table_lists_the_tables():
    with pytest.raises(sweep.SweepError, match=r"unknown TABLE 'cifar1000'.*cifar100 \(\d+ configs\).*digits"):
        sweep.table_entries("kd", "cifar1000")
    with pytest.raises(sweep.SweepError, match="no TABLE given"):
        sweep.table_entries("ssl", "")
    with pytest.raises(sweep.SweepError, match="unknown task"):
        sweep.discover("gan")


def test_command_line_error_for_an_unknown_table(capsys):
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(["adv", "--table", "svhn", "--submit", "none"])
    assert exit_info.value.code == 2
    assert "unknown TABLE 'svhn' for adv" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("stem", "method", "column"),
    [
        ("cifar100_wrn34_ikl_autoaug", "ikl", "ikl_autoaug"),
        ("cifar10_wrn34_pgd_at", "pgd_at", "pgd_at"),
        ("cifar100_resnet32x4_resnet8x4_kd", "kd", "kd"),
        ("digits_teacher_resnet14_ce", "ce", "ce"),
        ("oddly_named", "gkl", "gkl"),
    ],
)
def test_column_is_the_method_and_its_variant(stem, method, column):
    assert sweep.column_name(stem, method) == column


def test_seeds_are_checked():
    assert sweep.parse_seeds("0 1 2") == [0, 1, 2] and sweep.parse_seeds("3,4") == [3, 4]
    for bad in ("", "0 zero", "1 1"):
        with pytest.raises(sweep.SweepError, match="SEEDS"):
            sweep.parse_seeds(bad)


# ----------------------------------------------------------------------------------------------
# Jobs and their state


def test_plan_trains_an_in_table_teacher_first_and_once(tmp_path):
    jobs = sweep.plan("kd", sweep.table_entries("kd", "digits"), [0, 1], tmp_path)
    teacher = tmp_path / "kd" / "digits_teacher_resnet14_ce" / "seed0"
    assert jobs[0].run_dir == teacher and jobs[0].stage == 0
    assert [j for j in jobs if j.entry.stem == "digits_teacher_resnet14_ce"] == jobs[:1]  # first seed only
    students = [j for j in jobs if j.entry.config.get("teacher")]  # kd, dkd, reviewkd, ikl, gkl; two seeds each
    assert len(students) == 2 * 5 and all(
        f"teacher_checkpoint={teacher / 'model.pth'}" in j.overrides for j in students
    )
    ikl_seed1 = next(j for j in jobs if j.entry.stem == "digits_resnet14_resnet8_ikl" and j.seed == 1)
    assert ikl_seed1.run_dir == tmp_path / "kd" / "digits_resnet14_resnet8_ikl" / "seed1"
    assert ikl_seed1.overrides[:3] == ["seed=1", f"output_dir={ikl_seed1.run_dir}", "resume=true"]
    # Tables whose teachers are published checkpoints run every config for every seed.
    cifar = sweep.plan("kd", sweep.table_entries("kd", "cifar100"), [0, 1, 2], tmp_path)
    assert len(cifar) == 3 * len(sweep.table_entries("kd", "cifar100")) and {j.stage for j in cifar} == {1}
    assert not any(o.startswith("teacher_checkpoint=") for j in cifar for o in j.overrides)


def test_resume_auto_fails_naming_resume_true():
    from dkl_train.config import BaseConfig, ConfigError, load_config

    assert load_config(BaseConfig, None, ["resume=true"]).resume
    with pytest.raises(ConfigError, match=r"resume=auto is now resume=true, which does the same"):
        load_config(BaseConfig, None, ["resume=auto"])


def test_state_skips_only_runs_with_their_headline(tmp_path):
    assert sweep.run_state("kd", tmp_path / "missing") == "train"
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "results.json").write_text('{"config": {')  # a copy cut short
    assert sweep.run_state("kd", tmp_path / "torn") == "train"
    kd_result(tmp_path / "kd", {"method": "ikl"}, 70.0)
    assert sweep.run_state("kd", tmp_path / "kd") == "finished"
    adv_config = {"method": "ikl", "paper_autoattack": 57.13}
    write_result(tmp_path / "adv", adv_config, final={"top1": 80.0}, best={})
    assert sweep.run_state("adv", tmp_path / "adv") == "evaluate"  # trained; AutoAttack still to run
    write_result(
        tmp_path / "adv", adv_config, final={"top1": 80.0}, best={}, autoattack={"clean": 84.0, "robust": 55.0}
    )
    assert sweep.run_state("adv", tmp_path / "adv") == "finished"
    write_result(tmp_path / "ssl", {"consistency": "ikl"}, final={"top1": 10.0}, best={})
    assert sweep.run_state("ssl", tmp_path / "ssl") == "train"  # no EMA evaluation recorded


# ----------------------------------------------------------------------------------------------
# The table


def test_kd_table_layout_from_results(tmp_path):
    entries = [e for e in sweep.table_entries("kd", "cifar100") if e.row == "resnet32x4 -> resnet8x4"]
    jobs = sweep.plan("kd", entries, [0, 1, 2], tmp_path)
    # kd: one seed not finished; dkd, reviewkd, gkl: none
    values = {"ikl": [76.1, 76.5, 76.9], "kd": [73.0, 73.4]}
    for job in jobs:
        column_values = values.get(job.entry.column, [])
        if job.seed < len(column_values):
            kd_result(job.run_dir, job.entry.config, column_values[job.seed])
    text = sweep.render_table("kd", "cifar100", jobs)
    lines = text.splitlines()
    assert "| teacher -> student | kd | dkd | reviewkd | reviewkd_original | ikl | gkl |" in lines  # the papers' order
    row = next(line for line in lines if line.startswith("| resnet32x4 -> resnet8x4 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    paper = {e.column: e.config["paper_top1"] for e in entries}
    assert cells[1] == f"{format_mean_std(values['kd'])} (2/3 runs) [{paper['kd']:.2f}]"
    assert cells[2] == f"– [{paper['dkd']:.2f}]"
    assert cells[3] == "–"  # ReviewKD: no run yet, and no CIFAR-100 number in the DKL papers
    assert cells[4] == "– [75.63]"  # ReviewKD as its original code trains it: the ReviewKD paper's number
    assert cells[5] == f"{format_mean_std(values['ikl'])} [76.59]"
    assert "top-1 (best epoch)" in lines[0] and "seeds 0, 1, 2" in text


def test_adv_table_cells_hold_clean_and_robust(tmp_path):
    entries = sweep.table_entries("adv", "cifar10")
    jobs = sweep.plan("adv", entries, [0], tmp_path)
    ikl = next(j for j in jobs if j.entry.column == "ikl")
    attack = {
        "primary": "checkpoint_average", "clean": 85.0, "robust": 57.0,
        "weights": {"checkpoint_average": {"clean": 85.0, "robust": 57.0}, "raw": {"clean": 86.0, "robust": 50.0}},
    }  # fmt: skip
    write_result(ikl.run_dir, ikl.entry.config, final={"top1": 86.0}, best={}, autoattack=attack)
    trained_only = next(j for j in jobs if j.entry.column == "trades_awp")
    write_result(trained_only.run_dir, trained_only.entry.config, final={"top1": 84.0}, best={})
    lines = sweep.render_table("adv", "cifar10", jobs).splitlines()
    header = next(line for line in lines if line.startswith("| data set"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    order = [columns.index(c) for c in ("pgd_at", "trades_awp", "ikl", "gkl")]  # the papers' order; variants between
    assert order == sorted(order) and len(columns) == 1 + len(entries)
    cells = [
        c.strip() for c in next(line for line in lines if line.startswith("| cifar10 wrn_34_10")).strip("|").split("|")
    ]
    assert cells[columns.index("ikl")] == "85.00 [85.31] / 57.00 [57.13]"
    assert cells[columns.index("trades_awp")] == "– [85.36] / – [56.17]"  # not AutoAttacked yet
    assert cells[columns.index("gkl")] == "– [85.31] / – [57.13]"  # the TPAMI README's GKL-AT row
    assert cells[columns.index("gkl_autoaug")] == "– / –"  # no published number


def test_ssl_table_and_file(tmp_path):
    jobs = sweep.plan("ssl", sweep.table_entries("ssl", "digits"), [0, 1], tmp_path)
    for job in jobs:
        if job.entry.column == "fixmatch_ikl":
            top1 = 90.0 + job.seed
            write_result(job.run_dir, job.entry.config, final={"ema_top1": top1}, best={"ema_top1": {"value": top1}})
    path = sweep.write_table("ssl", "digits", jobs, tmp_path)
    assert path == tmp_path / "ssl" / "TABLE_digits.md"
    row = next(line for line in path.read_text().splitlines() if line.startswith("| digits, 50 labels |"))
    assert f"| {format_mean_std([90.0, 91.0])} |" in row and "EMA top-1" in path.read_text()


# ----------------------------------------------------------------------------------------------
# The job script


def options(launch: list[str], **kwargs) -> sweep.ScriptOptions:
    return sweep.ScriptOptions(launch=launch, python=[sys.executable], **kwargs)


def test_script_is_a_slurm_array_with_signal_and_requeue(tmp_path):
    jobs = sweep.plan("kd", sweep.table_entries("kd", "digits"), [0, 1], tmp_path)
    opts = options(["accelerate", "launch"], train_args=["epochs=1"], sbatch=["--gres=gpu:1"])
    text = sweep.job_script("kd", "digits", jobs, [0, 1], tmp_path, opts)
    assert f"#SBATCH --array=0-{len(jobs) - 1}" in text and "#SBATCH --gres=gpu:1" in text
    assert "#SBATCH --signal=B:USR1@120" in text and "#SBATCH --requeue" in text
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text and "LAUNCH=(accelerate launch)" in text
    assert text.count("recipes/kd/train.py --config recipes/kd/configs/") == len(jobs)
    assert "epochs=1" in text.splitlines()[next(i for i, x in enumerate(text.splitlines()) if x.startswith("  0)")) + 1]
    script = tmp_path / "sweep.sh"
    script.write_text(text)
    subprocess.run(["bash", "-n", str(script)], check=True)
    (command,) = sweep.sbatch_commands(script, jobs)  # the teacher first, the students after it
    assert "--array=0-0" in command and f"--dependency=afterok:$jid --array=1-{len(jobs) - 1}" in command
    assert sweep.sbatch_commands(script, [j for j in jobs if j.stage == 1]) == [f"sbatch {script}"]


def test_main_writes_the_script_and_prints_sbatch(tmp_path, capsys):
    sweep.main(["ssl", "--table", "digits", "--seeds", "0", "--runs", str(tmp_path), "--submit", "slurm"])
    out = capsys.readouterr().out
    script = tmp_path / "ssl" / "sweep_digits.sh"
    assert f"sbatch {script}" in out and script.is_file() and (tmp_path / "ssl" / "slurm").is_dir()


FAKE_LAUNCHER = """\
echo "$@" > "$MARKS/started"
trap 'echo saved > "$MARKS/saved"; exit 7' TERM
for _ in $(seq 600); do sleep 0.05; done  # gives up by itself after about 30 s: no stray process
"""


def run_script(tmp_path: Path, task_env: dict[str, str], jobs: list[sweep.Job]) -> subprocess.Popen:
    (tmp_path / "marks").mkdir(exist_ok=True)
    launcher = tmp_path / "launcher.sh"
    launcher.write_text(FAKE_LAUNCHER)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/bash\necho "$@" >> {tmp_path / "marks" / "scontrol"}\n')
    scontrol.chmod(0o755)
    script = tmp_path / "sweep.sh"
    script.write_text(sweep.job_script("kd", "digits", jobs, [0], tmp_path / "runs", options(["bash", str(launcher)])))
    env = {**os.environ, "MARKS": str(tmp_path / "marks"), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen(
        ["bash", str(script)], env={**env, **task_env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_script_forwards_the_signal_waits_and_requeues(tmp_path):
    jobs = sweep.plan("kd", sweep.table_entries("kd", "digits"), [0], tmp_path / "runs")
    process = run_script(tmp_path, {"SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "4242"}, jobs)
    started = tmp_path / "marks" / "started"
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert started.exists(), process.communicate()[0]
    assert f"output_dir={jobs[1].run_dir}" in started.read_text()  # task 1's train.py arguments
    process.send_signal(signal.SIGUSR1)  # what SLURM sends 120 s before the time limit
    output, _ = process.communicate(timeout=30)
    assert process.returncode == PREEMPTED_EXIT_CODE, output
    assert (tmp_path / "marks" / "saved").read_text().strip() == "saved"  # the run got SIGTERM and saved
    assert (tmp_path / "marks" / "scontrol").read_text().split() == ["requeue", "4242"]


def test_script_skips_a_finished_job(tmp_path):
    jobs = sweep.plan("kd", sweep.table_entries("kd", "digits"), [0], tmp_path / "runs")
    kd_result(jobs[0].run_dir, jobs[0].entry.config, 97.0)
    process = run_script(tmp_path, {"SLURM_ARRAY_TASK_ID": "0"}, jobs)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "finished" in output and not (tmp_path / "marks" / "started").exists()  # nothing launched
    assert "97.00" in (tmp_path / "runs" / "kd" / "TABLE_digits.md").read_text()


def test_reading_the_recipes_imports_no_torch():
    # `tools.sweep state` runs before every job and `make report` on every results folder: neither needs torch
    # until a table is drawn (the recipes' METHODS are imported then).
    code = "import sys; from tools.recipes import load_recipes; load_recipes(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=sweep.REPO_ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
