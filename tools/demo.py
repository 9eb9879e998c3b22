"""`make demo`'s closing table: one row per run folder under ``runs/demo`` (every recipe), from its results.json.

Usage: ``python -m tools.demo runs/demo [--readme README.md]`` (``--summary RUN_DIR``: one run's figures). Unlike ``make report`` (mean +- std
over seeds), this lists single runs as they are, so a reader sees teacher, student alone and distilled
students (and the adversarial and semi-supervised runs) side by side with what each cost.

With ``--readme``, the table is compared with the sample table in that README, and any difference
fails the command: the figures a newcomer reads before running anything must be the ones the demo
prints. Only the wall-clock column may differ (it measures the machine, not the code).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from dkl_train.errors import report_user_errors

# Final metrics shown in their own column when present (robust accuracy of the adv recipe).
EXTRA_METRICS = ("autoattack_clean", "autoattack_robust", "robust_top1", "pgd_robust")
HEADER = ["recipe", "run", "model", "method", "top-1 (%)", "best top-1", "other", "wall-clock"]
# Columns that may differ between the README's sample and a fresh run: timing depends on the machine and its load.
IGNORED_COLUMNS = ("wall-clock",)


class TableMismatchError(Exception):
    """The demo's table and the README's sample table disagree (or the README has no sample table)."""


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


def summary(run_dir: str | Path) -> str:
    """One run's headline figures for the line ``make demo`` prints when the run ends, e.g. ``top-1 88.89``."""
    final = json.loads((Path(run_dir) / "results.json").read_text()).get("final", {})
    figures = [f"top-1 {_fmt(final.get('top1'))}"]
    figures += [f"{k} {_fmt(final[k])}" for k in EXTRA_METRICS if k in final]
    return ", ".join(figures)


def markdown(table: list[list[str]]) -> str:
    """The table as GitHub markdown, in the layout of the README's sample."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in table])


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


# A sample table may be labelled with the CPU kernels it was printed with, on a line before it:
# <!-- demo-sample: cpu=AVX512 -->. The runs are deterministic for one machine, but torch's CPU kernels
# (AVX2, AVX512, ...) round differently, so a table is only checked against the sample of the same kernels.
SAMPLE_MARK = re.compile(r"<!--\s*demo-sample:\s*cpu=(\w+)\s*-->")


def readme_samples(text: str) -> list[tuple[str | None, list[list[str]]]]:
    """Every sample table of a README (header :data:`HEADER`), each with the CPU label before it, if any."""
    lines = text.splitlines()
    samples, label = [], None
    for i, line in enumerate(lines):
        mark = SAMPLE_MARK.search(line)
        if mark:
            label = mark.group(1)
        if line.lstrip().startswith("|") and _cells(line) == HEADER:
            table = []
            for row in lines[i + 2 :]:  # skip the |---| line
                if not row.lstrip().startswith("|"):
                    break
                table.append(_cells(row))
            samples.append((label, table))
            label = None
    if not samples:
        raise TableMismatchError(f"no sample table with the header | {' | '.join(HEADER)} | found")
    return samples


def readme_table(text: str) -> list[list[str]]:
    """The first sample table of a README."""
    return readme_samples(text)[0][1]


def cpu_kernels() -> str:
    """The vector instructions torch's CPU kernels use here (``AVX2``, ``AVX512``, ...): what the rounding depends on."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def differences(table: list[list[str]], sample: list[list[str]]) -> list[str]:
    """Every disagreement between a fresh table and the README's sample, one line each; wall-clock ignored."""
    compared = [i for i, name in enumerate(HEADER) if name not in IGNORED_COLUMNS]
    fresh = {tuple(row[:2]): row for row in table}
    readme = {tuple(row[:2]): row for row in sample}
    found = []
    for key in sorted(readme.keys() - fresh.keys()):
        found.append(f"{'/'.join(key)}: in the README's table, not among the runs")
    for key in sorted(fresh.keys() - readme.keys()):
        found.append(f"{'/'.join(key)}: a run the README's table does not list")
    for key in sorted(fresh.keys() & readme.keys()):
        ours, theirs = fresh[key], readme[key]
        if len(theirs) != len(HEADER):
            found.append(f"{'/'.join(key)}: the README's row has {len(theirs)} cells, expected {len(HEADER)}")
            continue
        for i in compared:
            if ours[i] != theirs[i]:
                found.append(f"{'/'.join(key)}: {HEADER[i]} is {ours[i]!r} here, {theirs[i]!r} in the README")
    return found


class OtherKernels(Exception):
    """No sample of the README was printed with this machine's CPU kernels: the table cannot be checked here."""


def check_readme(table: list[list[str]], readme: str | Path, kernels: str | None = None) -> None:
    """Raise :class:`TableMismatchError` listing every difference between ``table`` and the README's sample.

    The sample is the one labelled with this machine's CPU kernels (``kernels``, default :func:`cpu_kernels`),
    else an unlabelled one; when every sample is labelled with other kernels, :class:`OtherKernels` says so.
    """
    readme = Path(readme)
    try:
        samples = readme_samples(readme.read_text(encoding="utf-8"))
    except TableMismatchError as err:
        raise TableMismatchError(f"{readme}: {err}") from None
    kernels = kernels or cpu_kernels()
    same = [t for label, t in samples if label == kernels] or [t for label, t in samples if label is None]
    if not same:
        labels = ", ".join(sorted({label for label, _ in samples if label}))
        raise OtherKernels(
            f"this CPU runs torch's {kernels} kernels and the samples in {readme} were printed with {labels}; "
            "they round differently, so the table above is not compared (nothing is wrong)."
        )
    found = differences(table, same[0])
    if found:
        raise TableMismatchError(
            f"the table above differs from the sample table in {readme}:\n  "
            + "\n  ".join(found)
            + "\nThe demo's runs are seeded and deterministic for a given machine and thread count; another CPU"
            "\nor library build can round differently. If the code or the digits configs changed, paste the"
            f"\ntable above into {readme}."
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", nargs="?", default="runs/demo")
    parser.add_argument("--summary", action="store_true", help="print one run folder's headline figures and exit")
    parser.add_argument("--readme", default=None, help="fail if the table differs from this README's sample table")
    parser.add_argument(
        "--overridden",
        nargs="*",
        default=[],
        metavar="NAME",
        help="settings that change the runs (e.g. DEMO_KD_ARGS): the README comparison is skipped, saying so",
    )
    args = parser.parse_args(argv)
    if args.summary:
        print(summary(args.runs_dir))
        return
    table = rows(args.runs_dir)
    if not table:
        raise SystemExit(f"no results.json under {args.runs_dir}; run `make demo` first")
    print(markdown(table))
    if args.readme and args.overridden:
        print(
            f"\n{', '.join(args.overridden)} set: these are not the default demo runs, so the table is not"
            f" compared with the sample in {args.readme}."
        )
    elif args.readme:
        try:
            check_readme(table, args.readme)
        except OtherKernels as note:
            print(f"\n{note}")
            return
        except TableMismatchError as err:
            print(f"\nerror: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        print(f"\nThe table matches the sample in {args.readme} (wall-clock aside).")


if __name__ == "__main__":
    with report_user_errors():
        main()
