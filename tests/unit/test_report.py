"""`make report`: synthetic results.json files in, correct means/stds and valid PNG plots out."""

import json
import math
import subprocess
import sys
from pathlib import Path

from PIL import Image

from dkl_train.report import collect, write_report

FINALS = {"kd": [70.0, 71.0, 72.5], "ikl": [72.0, 73.5]}
PAPER = {"kd": 73.33, "ikl": 76.59}


def write_run(root: Path, method: str, seed: int, top1: float) -> None:
    run = root / "kd_resnet32x4_resnet8x4" / method / f"seed{seed}"
    run.mkdir(parents=True)
    history = [{"epoch": e, "train_loss": 2.0 / (e + 1), "test_top1": top1 * (e + 1) / 3} for e in range(3)]
    results = {
        "config": {"method": method, "seed": seed, "output_dir": str(run), "paper_top1": PAPER[method]},
        "final": {"top1": top1, "top5": top1 + 20},
        "best": {"test_top1": {"value": top1 + 0.5, "epoch": 2}},
        "history": history,
        "wall_clock_s": 10.0,
    }
    (run / "results.json").write_text(json.dumps(results))


def make_runs(root: Path) -> None:
    for method, finals in FINALS.items():
        for seed, top1 in enumerate(finals):
            write_run(root, method, seed, top1)


def sample_std(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_runs_are_grouped_by_setting_across_seeds(tmp_path):
    make_runs(tmp_path)
    settings = collect(tmp_path)
    assert [(s.name, len(s.runs)) for s in settings] == [
        ("kd_resnet32x4_resnet8x4/ikl", 2),
        ("kd_resnet32x4_resnet8x4/kd", 3),
    ]
    assert {s.experiment for s in settings} == {"kd_resnet32x4_resnet8x4"}


def test_report_has_means_stds_paper_numbers_and_plots(tmp_path):
    make_runs(tmp_path)
    report = write_report(tmp_path)
    text = report.read_text()
    for method, finals in FINALS.items():
        mean = sum(finals) / len(finals)
        row = f"| final_top1 | {mean:.2f} ± {sample_std(finals):.2f} | {len(finals)} | {PAPER[method]:.2f} | {mean - PAPER[method]:+.2f} |"
        assert row in text, row
        best = [f + 0.5 for f in finals]
        assert f"| best_test_top1 | {sum(best) / len(best):.2f} ± {sample_std(best):.2f} |" in text
    plots = list((tmp_path / "plots").glob("*.png"))
    assert len(plots) == 1 and f"]({plots[0].relative_to(tmp_path)})" in text
    with Image.open(plots[0]) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 100


def test_cli_and_empty_folder(tmp_path):
    make_runs(tmp_path / "runs")
    done = subprocess.run(
        [sys.executable, "-m", "dkl_train.report", str(tmp_path / "runs")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "runs" / "REPORT.md").exists()
    empty = subprocess.run(
        [sys.executable, "-m", "dkl_train.report", str(tmp_path / "none")], capture_output=True, text=True
    )
    assert empty.returncode != 0 and "no results.json" in empty.stderr
