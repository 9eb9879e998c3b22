"""`make demo` end to end, reduced to one epoch per stage (the real targets, through `accelerate launch`).

The KD part trains its teacher, the student alone and the KD and IKL students; the SSL part runs FixMatch
and FixMatch-IKL; the adversarial part TRADES and IKL-AT, each then AutoAttacked; two runs at a time, then
`make report` and the closing table. Only the lengths are cut (one epoch, one evaluation interval, 20
AutoAttack images), through the Makefile's DEMO_*_ARGS, so the table is not compared with the README's
(the demo says so); the data are prepared by the target itself, offline.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REDUCED = {
    "DEMO_KD_ARGS": "epochs=1",  # for every KD run: the teacher's CE reads no warmup_epochs
    "DEMO_SSL_ARGS": "iterations=20 eval_every_iters=20",
    "DEMO_ADV_ARGS": "epochs=1 awp_warmup_epochs=0 robust_val_size=30 robust_val_steps=2",
    "DEMO_EVAL_ARGS": "subset=20 batch_size=20",
}
RUNS = {
    "kd": ["teacher_resnet14", "student_resnet8_ce", "resnet14_resnet8_kd", "resnet14_resnet8_ikl"],
    "ssl": ["fixmatch", "fixmatch_ikl"],
    "adv": ["trades", "ikl"],
}


def table_rows(output: str) -> dict[tuple[str, str], list[str]]:
    """The closing markdown table, keyed by (recipe, run)."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 8 and cells[0] in RUNS:
            rows[(cells[0], cells[1])] = cells
    return rows


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("demo")
    runs = root / "runs"
    command = ["make", "--no-print-directory", "demo", f"DEMO_RUNS={runs}", f"DATA_DIR={root / 'data'}"]
    command += [f"{name}={value}" for name, value in REDUCED.items()]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MAKEFLAGS", None)  # started from `make test`: the inner make must not inherit its flags
    result = subprocess.run(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900
    )
    assert result.returncode == 0, f"make demo failed ({result.returncode}):\n{result.stdout[-8000:]}"
    return runs, result.stdout


@pytest.mark.recipe
def test_every_stage_ran_one_epoch_and_logged_to_tensorboard(demo):
    runs, _ = demo
    for recipe, names in RUNS.items():
        for name in names:
            results = json.loads((runs / recipe / name / "results.json").read_text())
            if recipe == "ssl":
                assert results["global_steps"] == 20
            else:
                assert results["epochs_completed"] == 1
            assert list((runs / recipe / name / "tb").rglob("events.out.tfevents.*")), f"no TensorBoard log: {name}"
    distilled = json.loads((runs / "kd" / "resnet14_resnet8_ikl" / "results.json").read_text())
    assert distilled["config"]["teacher_checkpoint"] == str(runs / "kd" / "teacher_resnet14" / "model.pth")


@pytest.mark.recipe
def test_closing_table_shows_what_the_runs_measured(demo):
    runs, output = demo
    rows = table_rows(output)
    assert set(rows) == {(recipe, name) for recipe, names in RUNS.items() for name in names}
    for (recipe, name), cells in rows.items():
        final = json.loads((runs / recipe / name / "results.json").read_text())["final"]
        assert cells[4] == f"{final['top1']:.2f}"
        if recipe == "adv":  # AutoAttack clean and robust accuracy, written by eval.py into results.json
            assert final["autoattack_robust"] <= final["autoattack_clean"]
            assert f"autoattack_robust {final['autoattack_robust']:.2f}" in cells[6]
    assert rows[("ssl", "fixmatch_ikl")][3] == "fixmatch-ikl" and rows[("adv", "ikl")][3] == "ikl"


@pytest.mark.recipe
def test_each_run_reports_its_end_and_reduced_runs_skip_the_readme_comparison(demo):
    runs, output = demo
    for recipe, names in RUNS.items():
        for name in names:
            assert f"done  {recipe}/{name} in " in output
            assert (runs / "logs" / f"{recipe}_{name}.log").is_file()
    assert "done  adv/ikl_autoattack in " in output and "autoattack_robust" in output
    assert "DEMO_KD_ARGS, DEMO_SSL_ARGS, DEMO_ADV_ARGS, DEMO_EVAL_ARGS set" in output and "not compared" in output


@pytest.mark.recipe
def test_report_and_plots_are_written(demo):
    runs, _ = demo
    report = (runs / "REPORT.md").read_text()
    for name in ("teacher_resnet14", "fixmatch_ikl", "trades"):
        assert name in report
    plots = list((runs / "plots").glob("*.png"))
    assert plots and all(plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for plot in plots)
