"""`make report RUNS=<folder>`: aggregate every ``results.json`` under a folder into REPORT.md and plots.

The report leads with the answer: one table per recipe (KD, SSL, adversarial) with one row per
*setting*, giving the headline metric as mean ± sample std over its runs (seeds), the paper's number
and the difference. The headline is the statistic each authors' release reported (see
:func:`headline_metric`), so the difference compares like with like; the final value is shown beside
it. The training curves of the recipe follow its table. Everything else (every final/best metric,
and the bookkeeping: seeds, process counts, sample counts, precision, wall clock) is in a collapsible
details section per recipe, kept out of the statistics.

Runs whose configs differ only in run-specific fields (seed, output folder, resume, workers, ...) form
one setting. Curves of the settings that share a top-level sub-folder of RUNS (one *experiment*, e.g.
``runs/kd_resnet32x4_resnet8x4/{kd,ikl}/seed*``) are drawn on one PNG, averaged over seeds.

Usage: ``python -m tools.report RUNS [--output REPORT.md]`` (from the repository root).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dkl_train.errors import report_user_errors

# Config fields that vary between repetitions of one setting, not between settings.
RUN_SPECIFIC_KEYS = {
    "seed", "output_dir", "resume", "data_dir", "num_workers", "notes", "checkpoint_every",
    "keep_checkpoints", "log_every", "eval_every", "teacher_checkpoint", "init_checkpoint",
    "stop_after_epochs", "stop_after_iters", "resume_override", "log_step_losses", "evaluate_teacher", "report_to",
}  # fmt: skip
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
RECIPE_TITLES = {"kd": "Knowledge distillation", "ssl": "Semi-supervised learning", "adv": "Adversarial training"}


@dataclass
class Setting:
    name: str
    experiment: str
    config: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def recipe(self) -> str:
        return recipe_of(self.runs[0]) if self.runs else "kd"

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


# ----------------------------------------------------------------------------------------------
# Headline metric: the statistic each released code base reported, so a paper number is compared
# with the same statistic here.

KD_HEADLINE = "top-1 (best epoch)"  # mdistiller's trainer keeps best_acc = max over epochs of test top-1
SSL_HEADLINE = "EMA top-1 (best evaluation)"  # USB evaluates with the EMA weights applied, keeps best_eval_acc
ADV_HEADLINE = "AutoAttack robust (checkpoint average)"  # the released models are checkpoint averages


def recipe_of(result: dict[str, Any]) -> str:
    """``"adv"``, ``"ssl"`` or ``"kd"``: the recipe one run's ``results.json`` records, else guessed from its keys.

    A ``recipe`` field (top level, or in ``config``) names it. Runs that do not record it (every run written
    so far) are recognised by what only that recipe writes: AutoAttack results or adversarial config
    fields (adv), the SSL consistency loss or EMA metrics (ssl); anything else is KD.
    """
    config = result.get("config") or {}
    for recorded in (result.get("recipe"), config.get("recipe")):
        if isinstance(recorded, str) and recorded:
            return recorded
    if "autoattack" in result or "paper_autoattack" in config or "attack_loss" in config:
        return "adv"
    if "consistency" in config or "ema_top1" in result.get("best", {}) or "ema_top1" in result.get("final", {}):
        return "ssl"
    return "kd"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _best(result: dict[str, Any], key: str) -> float | None:
    entry = result.get("best", {}).get(key)
    return _number(entry.get("value") if isinstance(entry, dict) else entry)


def headline_metric(result: dict[str, Any]) -> tuple[str, float | None, float | None]:
    """``(metric name, statistic the released code reported, final value)`` of one run's ``results.json``.

    - KD: the best test top-1 over epochs (mdistiller's ``best_acc``); final = the last epoch's top-1.
    - SSL: the best test top-1 of the EMA weights over evaluations (USB's ``best_eval_acc``, measured
      with the EMA applied); final = the EMA top-1 at the last iteration.
    - adv: AutoAttack robust accuracy of the checkpoint-averaged weights (what the released models
      are); final = the robust accuracy of the primary weights ``eval.py`` reported (the same model
      when the run kept a checkpoint average). Both None until ``eval.py`` has run.

    A value the run did not record is None (e.g. a run stopped before its first evaluation).
    """
    recipe = recipe_of(result)
    final = result.get("final", {})
    if recipe == "adv":
        attack = result.get("autoattack") or {}
        weights = attack.get("weights", {})
        averaged = weights.get("checkpoint_average", {}).get("robust") if "checkpoint_average" in weights else None
        primary = _number(attack.get("robust", final.get("autoattack_robust")))
        statistic = _number(averaged) if averaged is not None else primary
        return ADV_HEADLINE, statistic, primary
    if recipe == "ssl":
        return SSL_HEADLINE, _best(result, "ema_top1"), _number(final.get("ema_top1"))
    return KD_HEADLINE, _best(result, "top1"), _number(final.get("top1"))


def adv_clean(result: dict[str, Any]) -> float | None:
    """Clean accuracy of the weights whose AutoAttack robust accuracy is the adv headline (checkpoint average first)."""
    attack = result.get("autoattack") or {}
    averaged = (attack.get("weights") or {}).get("checkpoint_average") or {}
    return _number(averaged.get("clean", attack.get("clean")))


def paper_number(result: dict[str, Any]) -> float | None:
    """The paper's number for the headline metric of one run (``paper_top1`` / ``paper_autoattack``), or None."""
    config = result.get("config", {})
    key = "paper_autoattack" if recipe_of(result) == "adv" else "paper_top1"
    for source in (config, result.get("autoattack") or {}, result):
        value = _number(source.get(key))
        if value is not None:
            return value
    return None


def setting_key(config: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in RUN_SPECIFIC_KEYS}, sort_keys=True, default=str)


def setting_name(run_dir: Path, root: Path) -> tuple[str, str]:
    """``(experiment, name)`` from the run folder: seed folders are dropped from the name."""
    parts = [p for p in run_dir.relative_to(root).parts if not SEED_COMPONENT.match(p)]
    experiment = parts[0] if len(parts) > 1 else "."
    return experiment, "/".join(parts) or run_dir.name


def collect(root: Path) -> list[Setting]:
    """Every results.json under ``root``, grouped into settings (sorted by name)."""
    settings: dict[str, Setting] = {}
    for path in sorted(root.rglob("results.json")):
        result = json.loads(path.read_text())
        config = result.get("config") or {k: result.get(k) for k in ("checkpoint", "model", "dataset")}
        key = setting_key(config)
        if key not in settings:
            experiment, name = setting_name(path.parent, root)
            settings[key] = Setting(name=name, experiment=experiment, config=config)
        settings[key].runs.append(result)
    return sorted(settings.values(), key=lambda s: s.name)


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single run)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def format_mean_std(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def headline_row(setting: Setting) -> list[str]:
    """``setting | runs | headline mean ± std | final mean ± std | paper | difference`` of one setting.

    The difference is the headline statistic's mean minus the paper's number; runs that have not
    recorded the statistic yet (an adversarial run before ``eval.py``) are left out of the mean and
    counted as "k of n".
    """
    headlines = [headline_metric(result) for result in setting.runs]
    reported = [value for _, value, _ in headlines if value is not None]
    finals = [value for _, _, value in headlines if value is not None]
    paper = next((p for p in map(paper_number, setting.runs) if p is not None), None)
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
    wall = [v for v in (_number(r.get("wall_clock_s")) for r in runs) if v is not None]
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


def recipe_section(recipe: str, settings: list[Setting], plot_dir: Path, report_dir: Path) -> list[str]:
    """The headline table of one recipe, its curves, then the details in a collapsible section."""
    metric = headline_metric(settings[0].runs[0])[0]
    lines = [f"## {RECIPE_TITLES.get(recipe, recipe)}", ""]
    header = ["setting", "runs", f"{metric}: mean ± std", "final value", "paper", "difference"]
    lines += _table(header, [headline_row(s) for s in settings])
    lines += [
        "",
        f"Mean ± sample std over seeds of the {metric}, the statistic the authors' code reported; "
        "difference = that mean minus the paper's number; the final value is the last evaluation's.",
        "",
    ]
    by_experiment: dict[str, list[Setting]] = defaultdict(list)
    for setting in settings:
        by_experiment[setting.experiment].append(setting)
    for experiment, members in sorted(by_experiment.items()):
        plot = plot_experiment(experiment, members, plot_dir, prefix=recipe)
        if plot:
            lines += [f"![{experiment}]({plot.relative_to(report_dir)})", ""]
    lines += [
        "<details>",
        f"<summary>{RECIPE_TITLES.get(recipe, recipe)}: every metric and how the runs were made</summary>",
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


def write_report(root: Path, output: Path | None = None) -> Path:
    """Write ``REPORT.md`` (and ``plots/*.png``) for every run under ``root``; returns the report path."""
    settings = collect(root)
    if not settings:
        raise SystemExit(f"no results.json under {root}: train something first (e.g. make demo)")
    output = output or root / "REPORT.md"
    lines = [f"# Report: {root}", "", f"{sum(len(s.runs) for s in settings)} runs in {len(settings)} settings.", ""]
    by_recipe: dict[str, list[Setting]] = defaultdict(list)
    for setting in settings:
        by_recipe[setting.recipe].append(setting)
    for recipe in sorted(by_recipe, key=lambda r: list(RECIPE_TITLES).index(r) if r in RECIPE_TITLES else 99):
        lines += recipe_section(recipe, by_recipe[recipe], output.parent / "plots", output.parent)
    output.write_text("\n".join(lines))
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, help="folder searched recursively for results.json")
    parser.add_argument("--output", type=Path, default=None, help="report path (default: RUNS/REPORT.md)")
    args = parser.parse_args(argv)
    path = write_report(args.runs, args.output)
    print(f"wrote {path}")


if __name__ == "__main__":
    with report_user_errors():
        main()
