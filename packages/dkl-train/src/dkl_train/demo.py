"""`make demo`'s closing table: one row per run folder under ``runs/demo`` (every recipe), from its results.json.

Usage: ``python -m dkl_train.demo runs/demo``. Unlike ``make report`` (mean +- std over seeds), this
lists single runs as they are, so a reader sees teacher, student alone and distilled students (and
the adversarial and semi-supervised runs) side by side with what each cost.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# Final metrics shown in their own column when present (robust accuracy of the adv recipe).
EXTRA_METRICS = ("autoattack_clean", "autoattack_robust", "robust_top1", "pgd_robust")


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "-"


def describe(config: dict[str, Any]) -> str:
    """A short model description: ``teacher -> student`` for distillation, the model name otherwise."""
    student = config.get("student") or config.get("model") or config.get("arch") or "?"
    teacher = config.get("teacher")
    method = config.get("method", "")
    if teacher and method not in ("", "ce"):
        return f"{teacher} -> {student}"
    return str(student)


def rows(runs_dir: str | Path) -> list[list[str]]:
    """One row per ``results.json`` under ``runs_dir``: recipe, run, model, method, top-1, extra, time."""
    runs_dir = Path(runs_dir)
    table = []
    for path in sorted(runs_dir.rglob("results.json")):
        result = json.loads(path.read_text())
        config = result.get("config", {})
        final = result.get("final", {})
        best = result.get("best", {}).get("top1", {})
        extras = [f"{k} {_fmt(final[k])}" for k in EXTRA_METRICS if k in final]
        method = str(config.get("method", ""))
        if config.get("consistency") == "ikl":  # the SSL recipe names the loss separately from the method
            method += "-ikl"
        relative = path.parent.relative_to(runs_dir)
        recipe = relative.parts[0] if len(relative.parts) > 1 else ""
        table.append(
            [
                recipe,
                relative.name,
                describe(config),
                method,
                _fmt(final.get("top1")),
                _fmt(best.get("value") if isinstance(best, dict) else None),
                ", ".join(extras),
                f"{result.get('wall_clock_s', 0):.0f} s",
            ]
        )
    return table


def markdown(table: list[list[str]]) -> str:
    header = ["recipe", "run", "model", "method", "top-1 (%)", "best top-1", "other", "wall-clock"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in table])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dkl_train.demo", description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", nargs="?", default="runs/demo")
    args = parser.parse_args(argv)
    table = rows(args.runs_dir)
    if not table:
        raise SystemExit(f"no results.json under {args.runs_dir}; run `make demo` first")
    print(markdown(table))


if __name__ == "__main__":
    main()
