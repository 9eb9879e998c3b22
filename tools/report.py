"""`make report RUNS=<folder>`: aggregate every ``results.json`` under a folder into REPORT.md and plots.

The report leads with the answer: one table per recipe with one row per *setting*, giving the headline
metric as mean ± sample std over its runs (seeds), the paper's number and the difference. Each recipe
declares its headline (``recipes/<task>/recipe.py``: the statistic its authors' release reported), so the
difference compares like with like; the final value is shown beside it. The training curves of the
recipe follow its table. Everything else (every final/best metric, and the bookkeeping: seeds, process
counts, sample counts, precision, wall clock) is in a collapsible details section per recipe, kept out of
the statistics.

A setting is every run of one recipe whose config is the same in every field but the seed and the fields
that do not change results (``BaseConfig.resume_safe``: output folder, workers, logging, ...): a different
teacher checkpoint, epoch count or ``stop_after_*`` is another setting, and settings that share a folder
name are told apart by the fields that differ. A seed counts once: another run of a seed already counted
is listed under the table, not averaged again. Runs that stopped before their schedule's end are listed
there too, with how far they got, and left out of every mean. Curves of the settings that share a
top-level sub-folder of RUNS (one *experiment*, e.g. ``runs/kd_resnet32x4_resnet8x4/{kd,ikl}/seed*``)
are drawn on one PNG, averaged over seeds.

Usage: ``python -m tools.report RUNS [--output REPORT.md] [--recipes DIR]`` (from the repository root).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dkl_train.config import BaseConfig
from dkl_train.errors import report_user_errors
from dkl_train.recipe_info import RecipeInfo, Result, number, run_progress
from tools.recipes import RECIPES_DIR, load_recipes, recipe_of

# Config fields that vary between repetitions of one setting: the seed, and what does not change results (the
# fields a resume may change: output folder, workers, logging, ...).
NOT_A_SETTING = frozenset({"seed"}) | BaseConfig.resume_safe
# Top-level results.json keys that are not metrics (``split`` holds sample counts: bookkeeping).
NOT_METRICS = {
    "config", "history", "versions", "best", "final", "git_revision", "device", "mixed_precision", "split",
}  # fmt: skip
# Keys inside metric sections that describe how a number was measured, not a result: bookkeeping.
BOOKKEEPING_KEYS = {
    "seed", "num_processes", "num_samples", "samples", "eps", "subset", "epoch", "iteration", "global_step",
    "seconds", "selected_on",
}  # fmt: skip
SEED_COMPONENT = re.compile(r"^seed[_-]?\d+$")


@dataclass
class Setting:
    """The runs of one recipe and config (seeds aside): ``runs`` enter the statistics, ``left_out`` is listed."""

    name: str
    experiment: str
    config: dict[str, Any]
    recipe: RecipeInfo | None  # None: the runs record no recipe this repository has
    runs: list[dict[str, Any]] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)  # of ``runs``, relative to the report's folder
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (run folder, why it is not in the means)

    def metric_values(self) -> dict[str, list[float]]:
        values: dict[str, list[float]] = defaultdict(list)
        for result in self.runs:
            for key, value in run_metrics(result).items():
                values[key].append(value)
        return dict(values)


def _numeric_leaves(prefix: str, value: Any) -> dict[str, float]:
    if isinstance(value, bool):
        return {}
    if isinstance(value, (int, float)) and math.isfinite(value):
        return {prefix: float(value)}
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for key, inner in value.items():
            if key not in BOOKKEEPING_KEYS and not str(key).startswith("paper_"):
                out.update(_numeric_leaves(f"{prefix}_{key}", inner))
        return out
    return {}


def run_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Flatten one results.json into ``{metric: value}``: final_*, best_*, other numeric sections.

    Bookkeeping (seeds, process and sample counts, wall clock, the paper's numbers) is left out: see
    :func:`bookkeeping`.
    """
    metrics = _numeric_leaves("final", result.get("final", {}))
    for key, entry in result.get("best", {}).items():
        value = entry.get("value") if isinstance(entry, dict) else entry
        metrics.update(_numeric_leaves(f"best_{key}", value))
    for key, value in result.items():
        if key not in NOT_METRICS and isinstance(value, dict):
            metrics.update(_numeric_leaves(key, value))
    metrics.update(_numeric_leaves("train_images_per_s", result.get("train_images_per_s")))
    return metrics


def read_json(path: Path) -> dict[str, Any] | None:
    """A results.json as a dict, or None when it is missing, torn (a copy cut short) or not an object."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def headline_metric(result: Result, recipes: Path = RECIPES_DIR) -> tuple[str, float | None, float | None]:
    """``(metric name, statistic the released code reported, final value)`` of one run's ``results.json``.

    The run's recipe declares both (``RecipeInfo.headline``). A value the run did not record is None (e.g. a
    run stopped before its first evaluation, or an adversarial run before ``eval.py``); so are both for a run
    of no known recipe.
    """
    info = recipe_of(result, recipes)
    if info is None:
        return "headline statistic", None, None
    final = info.headline.final(result) if info.headline.final else None
    return info.headline.name, info.headline.value(result), final


def paper_number(result: Result, recipes: Path = RECIPES_DIR) -> float | None:
    """The paper's number for the headline metric of one run (its recipe's ``paper_key``), or None."""
    info = recipe_of(result, recipes)
    return info.headline.paper(result) if info else None


def setting_config(config: dict[str, Any]) -> dict[str, Any]:
    """The fields of a config that make its setting: every one but the seed and those that leave results alone."""
    return {k: v for k, v in config.items() if k not in NOT_A_SETTING}


def setting_key(recipe: str, config: dict[str, Any]) -> str:
    return json.dumps([recipe, setting_config(config)], sort_keys=True, default=str)


def setting_name(run_dir: Path, root: Path) -> tuple[str, str]:
    """``(experiment, name)`` from the run folder: seed folders are dropped from the name."""
    parts = [p for p in run_dir.relative_to(root).parts if not SEED_COMPONENT.match(p)]
    experiment = parts[0] if len(parts) > 1 else "."
    return experiment, "/".join(parts) or run_dir.name


def split_runs(
    runs: list[tuple[str, Result]], recipe: RecipeInfo | None
) -> tuple[list[tuple[str, Result]], list[tuple[str, str]]]:
    """``(counted, left out)`` of one setting's ``(folder, results)``: unfinished runs and repeated seeds go.

    Of the runs of one seed, the first (by folder) that recorded the headline statistic is counted.
    """
    finished, left_out = [], []
    for folder, result in runs:
        progress = run_progress(result)
        if progress and progress[0] < progress[1]:
            done, planned, unit = progress
            left_out.append((folder, f"unfinished: stopped at {unit} {done} of {planned}"))
        else:
            finished.append((folder, result))
    evaluated = recipe.headline.value if recipe else (lambda result: None)
    finished.sort(key=lambda run: (evaluated(run[1]) is None, run[0]))
    counted = []
    first_of_seed: dict[Any, str] = {}  # seed -> the folder counted for it (runs without a seed all count)
    for folder, result in finished:
        seed = (result.get("config") or {}).get("seed")
        if seed is not None and seed in first_of_seed:
            left_out.append((folder, f"seed {seed} again: counted once, from {first_of_seed[seed]}"))
            continue
        if seed is not None:
            first_of_seed[seed] = folder
        counted.append((folder, result))
    return sorted(counted, key=lambda run: run[0]), sorted(left_out)


def _differences(configs: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Per config, ``{field: value}`` of the fields whose values are not the same in all of ``configs``."""
    fields = sorted({k for c in configs for k in c})
    differing = [k for k in fields if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]
    return [{k: json.dumps(c.get(k), default=str) if k in c else "(not set)" for k in differing} for c in configs]


def name_apart(settings: list[Setting]) -> None:
    """Settings that share a name get the setting fields that tell them apart: ``kd/x (teacher_checkpoint="a")``."""
    by_name: dict[str, list[Setting]] = defaultdict(list)
    for setting in settings:
        by_name[setting.name].append(setting)
    for same in by_name.values():
        if len(same) > 1:
            differences = _differences([setting_config(s.config) for s in same])
            for setting, differing in zip(same, differences):
                told_apart = ", ".join(f"{k}={v}" for k, v in differing.items())
                setting.name += f" ({told_apart or (setting.recipe.name if setting.recipe else 'no recipe')})"


def collect(root: Path, recipes: Path = RECIPES_DIR) -> list[Setting]:
    """Every results.json under ``root``, grouped into settings (sorted by name)."""
    groups: dict[str, list[tuple[str, Result]]] = defaultdict(list)
    settings: dict[str, Setting] = {}
    for path in sorted(root.rglob("results.json")):
        result = read_json(path)
        if result is None:
            print(f"report: {path} is not a readable results.json (a copy cut short?); left out", file=sys.stderr)
            continue
        config = result.get("config") or {k: result.get(k) for k in ("checkpoint", "model", "dataset")}
        info = recipe_of(result, recipes)
        key = setting_key(info.name if info else "", config)
        if key not in settings:
            experiment, name = setting_name(path.parent, root)
            settings[key] = Setting(name=name, experiment=experiment, config=config, recipe=info)
        groups[key].append((str(path.parent.relative_to(root)), result))
    for key, setting in settings.items():
        counted, setting.left_out = split_runs(groups[key], setting.recipe)
        setting.folders, setting.runs = [f for f, _ in counted], [r for _, r in counted]
    name_apart(list(settings.values()))
    return sorted(settings.values(), key=lambda s: s.name)


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single run)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def format_mean_std(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def headline_row(setting: Setting, recipe: RecipeInfo) -> list[str]:
    """``setting | runs | headline mean ± std | final mean ± std | paper | difference`` of one setting.

    The difference is the headline statistic's mean minus the paper's number; runs that have not
    recorded the statistic yet (an adversarial run before ``eval.py``) are left out of the mean and
    counted as "k of n".
    """
    headline = recipe.headline
    reported = [v for v in map(headline.value, setting.runs) if v is not None]
    finals = [v for v in map(headline.final, setting.runs) if v is not None] if headline.final else []
    papers = (headline.paper(r) for r in [*setting.runs, {"config": setting.config}])
    paper = next((p for p in papers if p is not None), None)
    counted = (
        str(len(setting.runs)) if len(reported) == len(setting.runs) else f"{len(reported)} of {len(setting.runs)}"
    )
    difference = "" if paper is None or not reported else f"{statistics.fmean(reported) - paper:+.2f}"
    return [
        setting.name, counted, format_mean_std(reported) if reported else "–",
        format_mean_std(finals) if finals else "–", "" if paper is None else f"{paper:.2f}", difference,
    ]  # fmt: skip


def detail_rows(setting: Setting) -> list[list[str]]:
    """Rows ``metric | mean ± std | runs`` of every metric one setting's runs recorded (bookkeeping excluded)."""
    values = setting.metric_values()
    return [[metric, format_mean_std(values[metric]), str(len(values[metric]))] for metric in sorted(values)]


def bookkeeping(setting: Setting) -> dict[str, str]:
    """How the runs of one setting were made: seeds, processes, precision, sample counts, wall clock."""

    def distinct(values: list[Any]) -> str:
        seen = sorted({str(v) for v in values if v is not None}, key=lambda v: (len(v), v))
        return ", ".join(seen) or "–"

    runs = setting.runs
    attack = [r.get("autoattack") or {} for r in runs]
    wall = [v for v in (number(r.get("wall_clock_s")) for r in runs) if v is not None]
    return {
        "seeds": distinct([r.get("config", {}).get("seed") for r in runs]),
        "processes": distinct([r.get("num_processes") for r in runs]),
        "precision": distinct([r.get("mixed_precision") for r in runs]),
        "test images": distinct([r.get("final", {}).get("samples") for r in runs]),
        "labeled images": distinct([(r.get("split") or {}).get("labeled") for r in runs]),
        "AutoAttack images": distinct([a.get("num_samples") for a in attack]),
        "wall clock (s)": format_mean_std(wall) if wall else "–",
    }


def history_curves(setting: Setting) -> dict[str, tuple[list[int], list[float]]]:
    """Per history metric: epochs and the mean over runs (epochs present in every run)."""
    per_metric: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for result in setting.runs:
        for index, entry in enumerate(result.get("history", [])):
            epoch = int(entry.get("epoch", index))
            for key, value in entry.items():
                if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    per_metric[key][epoch].append(float(value))
    curves = {}
    for key, by_epoch in per_metric.items():
        epochs = sorted(e for e, v in by_epoch.items() if len(v) == len(setting.runs))
        if epochs:
            curves[key] = (epochs, [statistics.fmean(by_epoch[e]) for e in epochs])
    return curves


PLOTTED = ("test_top1", "robust", "loss", "top1")


def plot_experiment(experiment: str, settings: list[Setting], out_dir: Path, prefix: str = "") -> Path | None:
    """One PNG of the curves of ``settings`` (averaged over seeds): ``out_dir/<prefix>_<experiment>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {s.name: history_curves(s) for s in settings}
    metrics = sorted({m for c in curves.values() for m in c if any(p in m for p in PLOTTED) and m != "lr"})
    if not metrics:
        return None
    columns = min(3, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.4 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for name, setting_curves in curves.items():
            if metric in setting_curves:
                ax.plot(*setting_curves[metric], marker="o", markersize=3, label=name)
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"experiment: {experiment}")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{prefix}_{experiment}" if prefix else experiment).strip("_.")
    path = out_dir / f"{stem or 'runs'}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def left_out_lines(settings: list[Setting]) -> list[str]:
    """The runs of ``settings`` kept out of the means (unfinished, a seed again), one line each, or nothing."""
    lines = [f"- `{s.name}`: `{folder}`: {why}" for s in settings for folder, why in s.left_out]
    return ["Left out of the means:", "", *lines, ""] if lines else []


def recipe_section(recipe: RecipeInfo, settings: list[Setting], plot_dir: Path, report_dir: Path) -> list[str]:
    """The headline table of one recipe, its curves, then the details in a collapsible section."""
    metric = recipe.headline.name
    lines = [f"## {recipe.title}", ""]
    header = ["setting", "runs", f"{metric}: mean ± std", "final value", "paper", "difference"]
    lines += _table(header, [headline_row(s, recipe) for s in settings])
    lines += [
        "",
        f"Mean ± sample std over seeds of the {metric}, the statistic the authors' code reported; "
        "difference = that mean minus the paper's number; the final value is the last evaluation's.",
        "",
        *left_out_lines(settings),
    ]
    by_experiment: dict[str, list[Setting]] = defaultdict(list)
    for setting in settings:
        by_experiment[setting.experiment].append(setting)
    for experiment, members in sorted(by_experiment.items()):
        plot = plot_experiment(experiment, members, plot_dir, prefix=recipe.name)
        if plot:
            lines += [f"![{experiment}]({plot.relative_to(report_dir)})", ""]
    lines += [
        "<details>",
        f"<summary>{recipe.title}: every metric and how the runs were made</summary>",
        "",
    ]
    kept = [bookkeeping(s) for s in settings]
    keys = [k for k in kept[0] if any(b[k] != "–" for b in kept)]  # columns no run of this recipe records go
    lines += _table(["setting", *keys], [[s.name, *(b[k] for k in keys)] for s, b in zip(settings, kept)])
    lines.append("")
    for setting in settings:
        lines += [f"### {setting.name}", ""]
        lines += _table(["metric", "mean ± std", "runs"], detail_rows(setting))
        lines.append("")
    lines += ["</details>", ""]
    return lines


def unknown_section(settings: list[Setting], recipes: Path) -> list[str]:
    """The runs whose results.json names no recipe of ``recipes`` (nor looks like one's): listed, not reported."""
    folders = sorted(folder for s in settings for folder in [*s.folders, *(f for f, _ in s.left_out)])
    if not folders:
        return []
    return [
        "## Runs of no known recipe", "",
        f"These results.json record no `recipe` that names a folder of {recipes}, and no recipe recognises them:",
        "", *(f"- `{folder}`" for folder in folders), "",
    ]  # fmt: skip


def write_report(root: Path, output: Path | None = None, recipes: Path = RECIPES_DIR) -> Path:
    """Write ``REPORT.md`` (and ``plots/*.png``) for every run under ``root``; returns the report path."""
    settings = collect(root, recipes)
    if not settings:
        raise SystemExit(f"no results.json under {root}: train something first (e.g. make demo)")
    output = output or root / "REPORT.md"
    counted = sum(len(s.runs) for s in settings if s.recipe)
    left_out = sum(len(s.left_out) for s in settings if s.recipe)
    summary = f"{counted} runs in {len(settings)} settings" + (
        f"; {left_out} more left out of the means" if left_out else ""
    )
    lines = [f"# Report: {root}", "", summary + ".", ""]
    for recipe in load_recipes(recipes).values():  # the recipes' declared order
        members = [s for s in settings if s.recipe is recipe]
        if members:
            lines += recipe_section(recipe, members, output.parent / "plots", output.parent)
    lines += unknown_section([s for s in settings if s.recipe is None], recipes)
    output.write_text("\n".join(lines))
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, help="folder searched recursively for results.json")
    parser.add_argument("--output", type=Path, default=None, help="report path (default: RUNS/REPORT.md)")
    parser.add_argument("--recipes", type=Path, default=RECIPES_DIR, help="folder of the recipes (<name>/recipe.py)")
    args = parser.parse_args(argv)
    path = write_report(args.runs, args.output, args.recipes)
    print(f"wrote {path}")


if __name__ == "__main__":
    with report_user_errors():
        main()
