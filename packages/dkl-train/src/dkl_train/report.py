"""`make report RUNS=<folder>`: aggregate every ``results.json`` under a folder into REPORT.md and plots.

Runs whose configs differ only in run-specific fields (seed, output folder, resume, workers, ...)
form one *setting*; each setting gets the mean +- sample std over its runs of every final and best
metric, next to the paper's number from the config (``paper_*`` fields) and the difference.
Training curves of the settings that share a top-level sub-folder of RUNS (one *experiment*, e.g.
``runs/kd_resnet32x4_resnet8x4/{kd,ikl}/seed*``) are drawn on one PNG, averaged over seeds.

Usage: ``python -m dkl_train.report RUNS [--output REPORT.md]``.
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

# Config fields that vary between repetitions of one setting, not between settings.
RUN_SPECIFIC_KEYS = {
    "seed", "output_dir", "resume", "data_dir", "num_workers", "notes", "checkpoint_every",
    "keep_checkpoints", "log_every", "eval_every", "teacher_checkpoint", "init_checkpoint",
    "stop_after_epochs", "log_step_losses", "evaluate_teacher",
}  # fmt: skip
# Which measured metric a paper number is compared with (the first one present wins).
PAPER_TARGETS = {
    "paper_top1": ("final_top1",),
    "paper_clean": ("autoattack_clean", "final_top1"),
    "paper_autoattack": ("autoattack_robust",),
}
# Top-level results.json keys that are not metrics.
NOT_METRICS = {"config", "history", "versions", "best", "final", "git_revision", "device", "mixed_precision"}
SEED_COMPONENT = re.compile(r"^seed[_-]?\d+$")


@dataclass
class Setting:
    name: str
    experiment: str
    config: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)

    def metric_values(self) -> dict[str, list[float]]:
        values: dict[str, list[float]] = defaultdict(list)
        for result in self.runs:
            for key, value in run_metrics(result).items():
                values[key].append(value)
        return dict(values)

    def paper_numbers(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.config.items() if k.startswith("paper_") and isinstance(v, (int, float))}


def _numeric_leaves(prefix: str, value: Any) -> dict[str, float]:
    if isinstance(value, bool):
        return {}
    if isinstance(value, (int, float)) and math.isfinite(value):
        return {prefix: float(value)}
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for key, inner in value.items():
            out.update(_numeric_leaves(f"{prefix}_{key}", inner))
        return out
    return {}


def run_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Flatten one results.json into ``{metric: value}``: final_*, best_*, and other numeric sections."""
    metrics = _numeric_leaves("final", result.get("final", {}))
    for key, entry in result.get("best", {}).items():
        value = entry.get("value") if isinstance(entry, dict) else entry
        metrics.update(_numeric_leaves(f"best_{key}", value))
    for key, value in result.items():
        if key not in NOT_METRICS and isinstance(value, dict):
            metrics.update(_numeric_leaves(key, value))
    for key in ("wall_clock_s", "train_images_per_s"):
        metrics.update(_numeric_leaves(key, result.get(key)))
    return metrics


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
        config = result.get("config", {})
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


def comparison_rows(setting: Setting) -> list[list[str]]:
    """Rows ``metric | mean ± std | runs | paper | difference`` of one setting."""
    values = setting.metric_values()
    papers = setting.paper_numbers()
    compared = {}
    for paper_key, number in papers.items():
        target = next((m for m in PAPER_TARGETS.get(paper_key, ()) if m in values), None)
        if target:
            compared[target] = number
    rows = []
    for metric in sorted(values):
        if metric.startswith(("final_", "best_", "autoattack_", "ema_")) or metric in compared:
            paper = compared.get(metric)
            mean, _ = mean_std(values[metric])
            rows.append([
                metric, format_mean_std(values[metric]), str(len(values[metric])),
                "" if paper is None else f"{paper:.2f}", "" if paper is None else f"{mean - paper:+.2f}",
            ])  # fmt: skip
    return rows


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


def plot_experiment(experiment: str, settings: list[Setting], out_dir: Path) -> Path | None:
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
    path = out_dir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', experiment).strip('_') or 'runs'}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(root: Path, output: Path | None = None) -> Path:
    """Write ``REPORT.md`` (and ``plots/*.png``) for every run under ``root``; returns the report path."""
    settings = collect(root)
    if not settings:
        raise SystemExit(f"no results.json under {root}: train something first (e.g. make demo)")
    output = output or root / "REPORT.md"
    lines = [f"# Report: {root}", "", f"{sum(len(s.runs) for s in settings)} runs in {len(settings)} settings.", ""]
    by_experiment: dict[str, list[Setting]] = defaultdict(list)
    for setting in settings:
        by_experiment[setting.experiment].append(setting)
    for experiment, members in sorted(by_experiment.items()):
        lines += [f"## {experiment}", ""]
        plot = plot_experiment(experiment, members, output.parent / "plots")
        if plot:
            lines += [f"![{experiment}]({plot.relative_to(output.parent)})", ""]
        for setting in members:
            lines += [f"### {setting.name} ({len(setting.runs)} run{'s' * (len(setting.runs) > 1)})", ""]
            lines += ["| metric | mean ± std | runs | paper | difference |", "|---|---|---|---|---|"]
            lines += ["| " + " | ".join(row) + " |" for row in comparison_rows(setting)]
            lines.append("")
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
    main()
