"""`make report`: synthetic results.json files in, headline tables, means/stds and valid PNG plots out.

The payloads mimic what the recipes write (``Run.finish`` and ``recipes/adv/eval.py``): ``best`` keyed
by the evaluation metric (``top1``, ``ema_top1``), ``final`` from the last evaluation.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

from PIL import Image

from dkl_train.recipe_info import run_progress
from tests.unit.toy_recipe import toy_result, write_toy_recipe
from tools.recipes import load_recipes
from tools.report import collect, headline_metric, paper_number, write_report

RECIPES = load_recipes()
KD_HEADLINE, SSL_HEADLINE, ADV_HEADLINE = (RECIPES[name].headline.name for name in ("kd", "ssl", "adv"))

# (final top-1, best top-1) per seed: best differs from final so the report must pick the right one.
KD_RUNS = {"kd": [(70.0, 71.0), (71.0, 71.5), (72.5, 73.0)], "ikl": [(72.0, 73.0), (73.5, 74.5)]}
PAPER = {"kd": 73.33, "ikl": 76.59}
REPO = Path(__file__).resolve().parents[2]  # `python -m tools.report` runs from the repository root


def kd_result(method: str, seed: int, final: float, best: float, run: Path) -> dict:
    history = [{"epoch": e, "train_loss": 2.0 / (e + 1), "test_top1": best if e == 1 else final} for e in (1, 2)]
    return {
        "recipe": "kd",
        "config": {"method": method, "seed": seed, "output_dir": str(run), "paper_top1": PAPER[method], "epochs": 2},
        "epochs_completed": 2,
        "final": {"top1": final, "top5": final + 20, "samples": 10000},
        "best": {"top1": {"value": best, "epoch": 1}, "top5": {"value": final + 21, "epoch": 2}},
        "history": history,
        "num_processes": 2,
        "mixed_precision": "no",
        "wall_clock_s": 10.0,
        "method": method,
        "paper_top1": PAPER[method],
    }


def write(root: Path, parts: tuple[str, ...], payload: dict) -> None:
    run = root.joinpath(*parts)
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(payload))


def make_kd_runs(root: Path) -> None:
    for method, runs in KD_RUNS.items():
        for seed, (final, best) in enumerate(runs):
            parts = ("kd_resnet32x4_resnet8x4", method, f"seed{seed}")
            write(root, parts, kd_result(method, seed, final, best, root.joinpath(*parts)))


def ssl_result(seed: int) -> dict:
    return {
        "config": {"method": "fixmatch", "consistency": "ikl", "seed": seed, "paper_top1": 60.0},
        "final": {"top1": 55.0 + seed, "ema_top1": 58.0 + seed, "samples": 10000},
        "best": {"top1": {"value": 56.0 + seed, "epoch": 3}, "ema_top1": {"value": 59.0 + seed, "epoch": 4}},
        "history": [{"epoch": 1, "test_ema_top1": 50.0}],
        "split": {"labeled": 200, "validation": 0, "unlabeled": 49800, "labeled_indices": [1, 2]},
        "num_processes": 1,
    }


def adv_result(robust_average: float, robust_raw: float) -> dict:
    weights = {"raw": {"clean": 80.0, "robust": robust_raw}, "checkpoint_average": {"robust": robust_average}}
    return {
        "config": {"method": "ikl", "attack_loss": "ce", "seed": 0, "paper_clean": 85.0, "paper_autoattack": 57.0},
        "final": {"top1": 84.0, "autoattack_clean": 85.0, "autoattack_robust": robust_average},
        "best": {"top1": {"value": 86.0, "epoch": 5}},
        "autoattack": {
            "primary": "checkpoint_average",
            "clean": 85.0,
            "robust": robust_average,
            "num_samples": 10000,
            "seed": 0,
            "eps": 8 / 255,
            "paper_autoattack": 57.0,
            "weights": weights,
        },  # fmt: skip
    }


def sample_std(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_headline_metric_is_the_released_statistic_per_recipe():
    # KD: mdistiller's best_acc (max over epochs), not the last epoch.
    assert headline_metric(kd_result("kd", 0, 70.0, 71.0, Path("r"))) == (KD_HEADLINE, 71.0, 70.0)
    # SSL: USB's best evaluation accuracy with the EMA weights applied, not the raw model's.
    assert headline_metric(ssl_result(1)) == (SSL_HEADLINE, 60.0, 59.0)
    # adv: AutoAttack of the checkpoint-averaged weights, not the raw last epoch's or the clean top-1.
    assert headline_metric(adv_result(57.5, 55.0)) == (ADV_HEADLINE, 57.5, 57.5)
    assert paper_number(kd_result("ikl", 0, 1.0, 2.0, Path("r"))) == 76.59
    assert paper_number(ssl_result(0)) == 60.0
    assert paper_number(adv_result(57.5, 55.0)) == 57.0


def test_headline_metric_of_unfinished_or_bare_runs():
    # An adversarial run before eval.py: no statistic yet, but it is still an adversarial run.
    before_eval = adv_result(50.0, 49.0)
    del before_eval["autoattack"], before_eval["final"]["autoattack_robust"]
    assert headline_metric(before_eval) == (ADV_HEADLINE, None, None)
    # AutoAttack of a bare checkpoint: no config, the paper's number travels in the autoattack entry.
    bare = {"checkpoint": "x.pt", "autoattack": {"robust": 40.0, "paper_autoattack": 41.0, "weights": {}}}
    assert headline_metric(bare) == (ADV_HEADLINE, 40.0, 40.0)
    assert paper_number(bare) == 41.0
    assert headline_metric({"recipe": "kd", "config": {}, "final": {}, "best": {}}) == (KD_HEADLINE, None, None)
    # Written before runs recorded their recipe: a KD config names its student.
    assert headline_metric({"config": {"student": "resnet8"}, "best": {"top1": 5.0}}) == (KD_HEADLINE, 5.0, None)


def test_a_recorded_recipe_wins_over_the_keys():
    ssl_keys = {"config": {"consistency": "ikl"}, "final": {"top1": 70.0}, "best": {"top1": {"value": 71.0}}}
    assert headline_metric(ssl_keys)[0] == SSL_HEADLINE  # nothing recorded: recognised by its keys
    assert headline_metric(ssl_keys | {"recipe": "kd"}) == (KD_HEADLINE, 71.0, 70.0)
    assert headline_metric(ssl_keys | {"config": {"consistency": "ikl", "recipe": "kd"}})[0] == KD_HEADLINE


def test_runs_are_grouped_by_setting_across_seeds(tmp_path):
    make_kd_runs(tmp_path)
    settings = collect(tmp_path)
    assert [(s.name, len(s.runs)) for s in settings] == [
        ("kd_resnet32x4_resnet8x4/ikl", 2),
        ("kd_resnet32x4_resnet8x4/kd", 3),
    ]
    assert {s.experiment for s in settings} == {"kd_resnet32x4_resnet8x4"}


def test_report_leads_with_one_headline_table_per_recipe(tmp_path):
    make_kd_runs(tmp_path)
    for seed in (0, 1):
        write(tmp_path, ("ssl", f"seed{seed}"), ssl_result(seed))
    write(tmp_path, ("adv", "averaged"), adv_result(57.5, 55.0))
    text = write_report(tmp_path).read_text()
    for method, runs in KD_RUNS.items():
        finals, bests = [f for f, _ in runs], [b for _, b in runs]
        best_mean, final_mean = sum(bests) / len(bests), sum(finals) / len(finals)
        row = (
            f"| kd_resnet32x4_resnet8x4/{method} | {len(runs)} | {best_mean:.2f} ± {sample_std(bests):.2f} | "
            f"{final_mean:.2f} ± {sample_std(finals):.2f} | {PAPER[method]:.2f} | {best_mean - PAPER[method]:+.2f} |"
        )
        assert row in text, row
    assert "| ssl | 2 | 59.50 ± 0.71 | 58.50 ± 0.71 | 60.00 | -0.50 |" in text
    assert "| adv/averaged | 1 | 57.50 | 57.50 | 57.00 | +0.50 |" in text
    # Recipes in a fixed order, each headline table before its details.
    order = [text.index(f"## {title}") for title in ("Knowledge distillation", "Semi", "Adversarial")]
    assert order == sorted(order)
    assert text.index("| setting | runs |") < text.index("<details>")
    # Bookkeeping is out of the statistics: no seed / process / sample count rows with mean ± std.
    statistics_part = text.split("<details>")[0]
    details = text[text.index("<details>") :]
    for word in ("seed", "num_processes", "samples", "labeled", "eps"):
        assert not any(line.startswith(f"| {word}") or f"_{word} |" in line for line in text.splitlines()), word
    assert "| kd_resnet32x4_resnet8x4/kd | 0, 1, 2 | 2 | no | 10000 | 10.00 ± 0.00 |" in details
    assert "| best_top1 |" in details and "| best_top1 |" not in statistics_part


def test_report_plots_the_curves_next_to_their_table(tmp_path):
    make_kd_runs(tmp_path)
    text = write_report(tmp_path).read_text()
    plots = list((tmp_path / "plots").glob("*.png"))
    assert len(plots) == 1
    link = f"]({plots[0].relative_to(tmp_path)})"
    assert text.index("| setting | runs |") < text.index(link) < text.index("<details>")
    with Image.open(plots[0]) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 100


def test_unevaluated_runs_are_counted_not_averaged(tmp_path):
    evaluated, pending = adv_result(57.0, 55.0), adv_result(0.0, 0.0)
    del pending["autoattack"], pending["final"]["autoattack_robust"]
    write(tmp_path, ("adv", "seed0"), evaluated)
    write(tmp_path, ("adv", "seed1"), pending | {"config": evaluated["config"] | {"seed": 1}})
    text = write_report(tmp_path).read_text()
    assert "| adv | 1 of 2 | 57.00 | 57.00 | 57.00 | +0.00 |" in text


def test_cli_and_empty_folder(tmp_path):
    make_kd_runs(tmp_path / "runs")
    done = subprocess.run(
        [sys.executable, "-m", "tools.report", str(tmp_path / "runs")], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "runs" / "REPORT.md").exists()
    empty = subprocess.run(
        [sys.executable, "-m", "tools.report", str(tmp_path / "none")], capture_output=True, text=True, cwd=REPO
    )
    assert empty.returncode != 0 and "no results.json" in empty.stderr


# ----------------------------------------------------------------------------------------------
# Which runs are repeats of one setting (hand-written results.json of each case the report once got wrong)


def student(seed: int, best: float, teacher: str, **changes) -> dict:
    """A ReviewKD student's results.json: 2 epochs planned, ``epochs_completed`` 2 unless changed."""
    result = kd_result("kd", seed, best - 1.0, best, Path("unused"))
    result["config"] |= {"method": "reviewkd", "teacher_checkpoint": teacher, "data_dir": f"/scratch/{seed}"}
    result["config"] |= changes.pop("config", {})
    return result | changes


def headline_cells(text: str, name: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_runs_of_different_teachers_are_different_settings(tmp_path):
    write(tmp_path, ("reviewkd", "seed0"), student(0, 80.0, "teachers/good/model.pth"))
    write(tmp_path, ("reviewkd", "seed1"), student(1, 82.0, "teachers/good/model.pth"))
    write(tmp_path, ("reviewkd", "seed2"), student(2, 9.0, "teachers/bad/model.pth"))
    settings = collect(tmp_path)
    names = [s.name for s in settings]
    good = 'reviewkd (teacher_checkpoint="teachers/good/model.pth")'
    bad = 'reviewkd (teacher_checkpoint="teachers/bad/model.pth")'
    assert sorted(names) == sorted([good, bad])  # the shared name, told apart by the setting that differs
    text = write_report(tmp_path).read_text()
    assert headline_cells(text, good)[1:3] == ["2", "81.00 ± 1.41"]
    assert headline_cells(text, bad)[1:3] == ["1", "9.00"]


def test_a_seed_counts_once(tmp_path):
    write(tmp_path, ("kd", "seed0"), student(0, 70.0, "t.pth"))
    write(tmp_path, ("kd", "seed1"), student(1, 72.0, "t.pth"))
    write(tmp_path, ("kd_rerun", "seed1"), student(1, 90.0, "t.pth"))  # the same seed again, elsewhere
    (setting,) = collect(tmp_path)
    assert len(setting.runs) == 2 and setting.folders == ["kd/seed0", "kd/seed1"]
    assert setting.left_out == [("kd_rerun/seed1", "seed 1 again: counted once, from kd/seed1")]
    text = write_report(tmp_path).read_text()
    assert headline_cells(text, "kd")[1:3] == ["2", "71.00 ± 1.41"]  # not 3 runs, not 77.33
    assert "- `kd`: `kd_rerun/seed1`: seed 1 again: counted once, from kd/seed1" in text
    assert "| kd | 0, 1 |" in text  # the details count each seed once too


def test_unfinished_runs_are_listed_apart(tmp_path):
    write(tmp_path, ("ikl", "seed0"), student(0, 70.0, "t.pth"))
    write(tmp_path, ("ikl", "seed1"), student(1, 10.0, "t.pth", epochs_completed=1))  # e.g. killed, copied back
    stopped = student(2, 20.0, "t.pth", epochs_completed=1, config={"stop_after_epochs": 1})
    write(tmp_path, ("ikl", "seed2"), stopped)
    text = write_report(tmp_path).read_text()
    finished = "ikl (stop_after_epochs=(not set))"
    assert headline_cells(text, finished)[1:3] == ["1", "70.00"]  # seed 1 is not in the mean
    assert headline_cells(text, "ikl (stop_after_epochs=1)")[1:3] == ["0", "–"]
    assert f"- `{finished}`: `ikl/seed1`: unfinished: stopped at epoch 1 of 2" in text
    assert "- `ikl (stop_after_epochs=1)`: `ikl/seed2`: unfinished: stopped at epoch 1 of 2" in text
    assert "1 runs in 2 settings; 2 more left out of the means." in text


def test_how_far_a_run_got():
    assert run_progress({"config": {"epochs": 2}, "epochs_completed": 1}) == (1, 2, "epoch")
    ssl = {"config": {"iterations": 1024, "eval_every_iters": 256}, "global_steps": 512, "epochs_completed": 2}
    assert run_progress(ssl) == (512, 1024, "iteration")
    assert run_progress({"checkpoint": "x.pt", "autoattack": {}}) is None  # a bare evaluation: nothing planned


def test_settings_that_leave_results_alone_do_not_split_a_setting(tmp_path):
    for seed in (0, 1):
        changes = {"num_workers": seed, "log_every": 10 + seed, "output_dir": f"x{seed}", "eval_batch_size": 8 << seed}
        write(tmp_path, ("kd", f"seed{seed}"), student(seed, 70.0 + seed, "t.pth", config=changes))
    (setting,) = collect(tmp_path)
    assert setting.name == "kd" and len(setting.runs) == 2


def test_a_new_recipe_appears_in_the_report(tmp_path):
    recipes = write_toy_recipe(tmp_path / "recipes")
    for seed in (0, 1):
        write(
            tmp_path / "runs",
            ("toy_m1", f"seed{seed}"),
            toy_result({"method": "new", "paper_score": 60.0}, seed, 70 + seed),
        )
    text = write_report(tmp_path / "runs", recipes=recipes).read_text()
    assert "## Toy recipe" in text and "| setting | runs | toy score (best): mean ± std |" in text
    assert "| toy_m1 | 2 | 70.50 ± 0.71 | 69.50 ± 0.71 | 60.00 | +10.50 |" in text
    # A run of a recipe the folder does not hold is listed, not reported.
    text = write_report(tmp_path / "runs").read_text()
    assert "## Runs of no known recipe" in text and "- `toy_m1/seed0`" in text and "## Toy" not in text
