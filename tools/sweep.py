"""Whole paper tables: every config of one table, over seeds, then the table in the paper's layout.

    python -m tools.sweep kd --table cifar100 --seeds "0 1 2"              # run here, then the table
    python -m tools.sweep kd --table cifar100 --seeds "0 1 2" --submit slurm  # write a SLURM array script
    python -m tools.sweep kd --table cifar100 --seeds "0 1 2" --submit none   # only (re)write the table
    python -m tools.sweep kd --list                                        # the tables and their configs

A *task* is a recipe: a folder ``recipes/<task>/`` whose ``recipe.py`` declares what this tool needs
(:class:`dkl_train.recipe_info.RecipeInfo`: methods in the paper's column order, headline statistic, how
rows and cells read, which scripts run); this tool names no recipe. A *table* is every training config of
``recipes/<task>/configs/`` with the same ``dataset`` field (the file-name prefix): each paper reports one
table per data set. Evaluation-only configs (no ``method``, e.g. the adversarial ``eval_*.yaml`` of
released weights) belong to no table. The table's columns follow the recipe's ``methods`` (its ``METHODS``
tuple), in the paper's column order: a method added there gets its column here.

Every (config, seed) is one *job* with the run folder ``RUNS/<task>/<config file stem>/seed<N>``,
the folder ``make reproduce-<task>`` uses, so runs made either way count for both. A job is skipped
when its ``results.json`` holds the recipe's headline statistic; otherwise it is started with
``resume=true``, which continues an interrupted run from its newest checkpoint, or starts afresh when there
is none. A recipe that declares an ``evaluate_script`` (adversarial: ``eval.py``, AutoAttack, itself
resumable) has it run when training is done.

One bash script does the jobs, selected by ``SLURM_ARRAY_TASK_ID``: locally this module runs it
once per job, in order; with ``--submit slurm`` it is a SLURM array job (one task per job) that
SLURM signals 120 s before the time limit. The script then sends SIGTERM to the launcher's process
group (every training process finishes its step and the run saves a checkpoint), waits until all of
them have exited, and requeues the task (``scontrol requeue``): the requeued task resumes.
Pre-emption by SLURM (SIGTERM to the job) takes the same path.

KD tables whose students learn from a teacher trained by another config of the same table (the
digits table) train that teacher first, once (the first seed), as the papers' fixed teachers; the
students of every seed use it. On SLURM these teacher tasks are submitted first and the students
depend on them (``--dependency=afterok``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dkl_train.atomic import write_text_atomic
from dkl_train.errors import report_user_errors
from dkl_train.recipe_info import Metric, RecipeInfo
from tools.recipes import RECIPES_DIR, REPO_ROOT, UnknownRecipeError, get_recipe, load_recipes
from tools.report import format_mean_std, read_json


class SweepError(ValueError):
    """A sweep request that cannot be served (unknown task or table, bad seeds); the message says what to do."""


def recipe(task: str, recipes: Path = RECIPES_DIR) -> RecipeInfo:
    """The declaration of ``recipes/<task>/recipe.py``, or a :class:`SweepError` listing the tasks there are."""
    try:
        return get_recipe(task, recipes)
    except UnknownRecipeError as err:
        raise SweepError(str(err)) from None


def recipe_methods(task: str, recipes: Path = RECIPES_DIR) -> tuple[str, ...]:
    """The recipe's methods (its ``METHODS``), in the paper's column order."""
    return recipe(task, recipes).methods()


def shown(path: Path) -> Path:
    """``path`` relative to the repository root when inside it (what the job script, run from there, expects)."""
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


# ----------------------------------------------------------------------------------------------
# Tables: which configs, and where each one sits in the paper's layout


@dataclass(frozen=True)
class Entry:
    """One config of a table: its file, settings, and its row and column in the paper's layout."""

    path: Path
    config: dict[str, Any]
    row: str
    column: str

    @property
    def stem(self) -> str:
        return self.path.stem


def column_name(stem: str, method: str) -> str:
    """The method and any variant after it in the file name: ``cifar100_wrn34_ikl_autoaug`` -> ``ikl_autoaug``."""
    tokens, wanted = stem.split("_"), method.split("_")
    starts = [i for i in range(len(tokens)) if tokens[i : i + len(wanted)] == wanted]
    return "_".join(tokens[starts[-1] :]) if starts else method


def row_name(task: str, config: dict[str, Any], recipes: Path = RECIPES_DIR) -> str:
    """The config's row in the paper's layout, as the recipe declares it (e.g. KD: ``teacher -> student``)."""
    return recipe(task, recipes).row(config)


def configs_dir(task: str, recipes: Path = RECIPES_DIR) -> Path:
    recipe(task, recipes)  # an unknown task fails here, listing the known ones
    return Path(recipes) / task / "configs"


def discover(task: str, recipes: Path = RECIPES_DIR) -> dict[str, list[Entry]]:
    """``{table: entries}`` of a task: training configs grouped by their ``dataset`` field."""
    tables: dict[str, list[Entry]] = {}
    for path in sorted(configs_dir(task, recipes).glob("*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        if not isinstance(config, dict) or "method" not in config or "dataset" not in config:
            continue  # evaluation-only configs (released weights) train nothing
        row = row_name(task, config, recipes)
        entry = Entry(path, config, row, column_name(path.stem, str(config["method"])))
        tables.setdefault(str(config["dataset"]), []).append(entry)
    return tables


def table_entries(task: str, table: str, recipes: Path = RECIPES_DIR) -> list[Entry]:
    """The configs of one table, or a :class:`SweepError` that lists the tables there are."""
    tables = discover(task, recipes)
    if table not in tables:
        known = ", ".join(f"{name} ({len(entries)} configs)" for name, entries in sorted(tables.items()))
        what = f"unknown TABLE {table!r}" if table else "no TABLE given"
        raise SweepError(f"{what} for {task}; the tables are: {known} (e.g. TABLE={min(tables)})")
    return tables[table]


def parse_seeds(text: str | Sequence[int]) -> list[int]:
    """``"0 1 2"`` (or ``"0,1,2"``) -> ``[0, 1, 2]``; duplicates and non-integers are errors."""
    if not isinstance(text, str):
        seeds = [int(s) for s in text]
    else:
        try:
            seeds = [int(s) for s in text.replace(",", " ").split()]
        except ValueError:
            raise SweepError(f'SEEDS={text!r}: give integers separated by spaces, e.g. SEEDS="0 1 2"') from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SweepError(f'SEEDS={text!r}: give at least one seed, each once, e.g. SEEDS="0 1 2"')
    return seeds


# ----------------------------------------------------------------------------------------------
# Jobs: one per (config, seed)


@dataclass
class Job:
    entry: Entry
    seed: int
    run_dir: Path
    overrides: list[str] = field(default_factory=list)  # the sweep's own key=value, before the user's ARGS
    stage: int = 1  # 0: a teacher the table's other configs distil from (runs first)


def run_dir(runs: Path, task: str, entry: Entry, seed: int) -> Path:
    """``RUNS/<task>/<config stem>/seed<N>``: the folder ``make reproduce-<task>`` uses too."""
    return runs / task / entry.stem / f"seed{seed}"


def _same_path(a: Any, b: Any) -> bool:
    return isinstance(a, str) and isinstance(b, str) and os.path.normpath(a) == os.path.normpath(b)


def plan(task: str, entries: list[Entry], seeds: list[int], runs: Path) -> list[Job]:
    """Every job of a table, teachers first; students of an in-table teacher get its sweep checkpoint."""
    teachers = {}  # stem of a student -> the entry that trains its teacher
    for student in entries:
        for teacher in entries:
            trained = f"{teacher.config.get('output_dir', '')}/model.pth"
            if teacher is not student and _same_path(student.config.get("teacher_checkpoint"), trained):
                teachers[student.stem] = teacher
    teacher_stems = {t.stem for t in teachers.values()}
    jobs = []
    for entry in entries:
        is_teacher = entry.stem in teacher_stems
        for seed in seeds[:1] if is_teacher else seeds:
            folder = run_dir(runs, task, entry, seed)
            overrides = [f"seed={seed}", f"output_dir={folder}", "resume=true"]
            if entry.stem in teachers:
                teacher_run = run_dir(runs, task, teachers[entry.stem], seeds[0])
                overrides.append(f"teacher_checkpoint={teacher_run / 'model.pth'}")
            jobs.append(Job(entry, seed, folder, overrides, stage=0 if is_teacher else 1))
    return sorted(jobs, key=lambda job: job.stage)  # stable: config order within a stage


# ----------------------------------------------------------------------------------------------
# State of a run folder


def read_result(folder: Path) -> dict[str, Any] | None:
    """The run's ``results.json``, or None when it is missing or unreadable (a run never finished)."""
    return read_json(folder / "results.json")


def run_state(task: str, folder: Path, recipes: Path = RECIPES_DIR) -> str:
    """``finished`` (headline statistic recorded), ``evaluate`` (trained, the recipe's evaluation missing) or ``train``."""
    info = recipe(task, recipes)
    result = read_result(folder)
    if result is None or "final" not in result:
        return "train"
    if info.headline.value(result) is not None:
        return "finished"
    return "evaluate" if info.evaluate_script else "train"


# ----------------------------------------------------------------------------------------------
# The table


def _cell(values: list[float], expected: int, paper: float | None) -> str:
    text = format_mean_std(values) if values else "–"
    if values and len(values) < expected:
        text += f" ({len(values)}/{expected} runs)"
    return text if paper is None else f"{text} [{paper:.2f}]"


def _column_key(order: tuple[str, ...], column: str) -> tuple[int, str]:
    """Columns in the recipe's method order; a variant (``ikl_autoaug``) right after its method."""
    method = next((m for m in sorted(order, key=len, reverse=True) if column == m or column.startswith(m + "_")), None)
    return (order.index(method) if method else len(order), column)


def _metric_cell(metric: Metric, results: list[dict[str, Any]], expected: int, config: dict[str, Any]) -> str:
    values = [v for v in map(metric.value, results) if v is not None]
    return _cell(values, expected, metric.paper({"config": config}))


def render_table(task: str, table: str, jobs: list[Job], recipes: Path = RECIPES_DIR) -> str:
    """Markdown table in the paper's layout: one cell per (row, method), mean ± std over seeds [paper]."""
    info = recipe(task, recipes)
    cells: dict[tuple[str, str], str] = {}
    expected: dict[str, int] = {}
    for job in jobs:
        expected[job.entry.stem] = expected.get(job.entry.stem, 0) + 1
    for entry in {job.entry.stem: job.entry for job in jobs}.values():
        results = [r for job in jobs if job.entry is entry for r in [read_result(job.run_dir)] if r is not None]
        results = [r for r in results if info.headline.value(r) is not None]  # every figure from evaluated runs
        parts = [_metric_cell(m, results, expected[entry.stem], entry.config) for m in info.cell_metrics]
        cells[(entry.row, entry.column)] = " / ".join(parts)
    rows = sorted({row for row, _ in cells}, key=str.lower)
    columns = sorted({column for _, column in cells}, key=lambda c: _column_key(info.methods(), c))
    what = info.row_label
    if len(info.cell_metrics) > 1:
        what += f" (cell: {' / '.join(m.label or m.name for m in info.cell_metrics)})"
    seeds = sorted({job.seed for job in jobs})
    lines = [
        f"# {task} table `{table}`: {info.headline.name} (%)",
        "",
        f"Mean ± sample std over seeds {', '.join(map(str, seeds))}; the paper's number in brackets; "
        "`–` = no finished run yet.",
        "",
        "| " + " | ".join([what, *columns]) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for row in rows:
        lines.append("| " + " | ".join([row, *(cells.get((row, c), "") for c in columns)]) + " |")
    return "\n".join(lines) + "\n"


def write_table(task: str, table: str, jobs: list[Job], runs: Path, recipes: Path = RECIPES_DIR) -> Path:
    """Write ``RUNS/<task>/TABLE_<table>.md`` (atomically: array tasks may write it at the same time)."""
    path = runs / task / f"TABLE_{table}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, render_table(task, table, jobs, recipes))


# ----------------------------------------------------------------------------------------------
# The job script (local runs and SLURM array tasks)

SCRIPT_BODY = r"""
cd "$ROOT" || exit 1
PREEMPTED_EXIT=__PREEMPTED_EXIT__
preempted=0
child=
# SLURM signals this shell (--signal=B:USR1@120 before the time limit; SIGTERM on pre-emption); Ctrl-C
# locally. Each launch runs in its own process group (setsid): SIGTERM to that group reaches every
# training process, which finishes its step, saves a checkpoint and exits.
forward() {
  preempted=1
  if [ -n "$child" ]; then
    echo "sweep: signal received; asking the run to checkpoint and stop" >&2
    kill -TERM -- "-$child" 2>/dev/null
  fi
}
trap forward USR1 TERM INT

step() {
  setsid "$@" &
  child=$!
  local rc
  while :; do
    wait "$child"; rc=$?
    # wait returns early (status > 128) when a trapped signal arrives; the launcher may still run.
    if [ "$rc" -gt 128 ] && kill -0 "$child" 2>/dev/null; then continue; fi
    break
  done
  # The launcher has exited; its workers may still be writing their checkpoint.
  while kill -0 -- "-$child" 2>/dev/null; do sleep 1; done
  child=
  # A run stopped by a signal exits with $PREEMPTED_EXIT after its checkpoint, but `accelerate launch`
  # reports any failure of its child as 1: the signal this shell received is what tells a pre-emption.
  if [ "$preempted" = 1 ] || [ "$rc" = "$PREEMPTED_EXIT" ]; then
    if [ -n "${SLURM_JOB_ID:-}" ]; then
      echo "sweep: task $SLURM_ARRAY_TASK_ID stopped by a signal; requeueing job $SLURM_JOB_ID (it resumes)" >&2
      scontrol requeue "$SLURM_JOB_ID"
    else
      echo "sweep: stopped by a signal; run the same command again to resume" >&2
    fi
    exit "$PREEMPTED_EXIT"
  fi
  return "$rc"
}

state=$("${PY[@]}" -m tools.sweep state "$TASK" "$RUN" "${RECIPES_ARGS[@]}") || exit 1
echo "sweep: task ${SLURM_ARRAY_TASK_ID} $RUN: $state"
if [ "$state" = train ]; then
  step "${LAUNCH[@]}" "${TRAIN[@]}" || exit $?
fi
# The recipe's evaluation after training (EVALUATE is empty when it declares none).
if [ "${#EVALUATE[@]}" -gt 0 ] && [ "$state" != finished ]; then
  step "${LAUNCH[@]}" "${EVALUATE[@]}" "run_dir=$RUN" "${EVAL[@]}" || exit $?
fi
"${PY[@]}" -m tools.sweep "$TASK" --submit none "${TABLE_ARGS[@]}" "${RECIPES_ARGS[@]}" >/dev/null || exit 1
"""


def _bash_array(words: Sequence[Any]) -> str:
    return "(" + " ".join(shlex.quote(str(w)) for w in words) + ")"


@dataclass
class ScriptOptions:
    launch: list[str]  # the launcher and its options, e.g. ["accelerate", "launch", "--num_processes", "8"]
    python: list[str]  # the interpreter that has dkl_train
    train_args: list[str] = field(default_factory=list)  # the user's key=value overrides for train.py
    eval_args: list[str] = field(default_factory=list)  # key=value for the recipe's evaluate_script (adv: eval.py)
    sbatch: list[str] = field(default_factory=list)  # extra #SBATCH options (--gres=gpu:1, --time=..., ...)


def absolute_command(words: list[str]) -> list[str]:
    """A command whose program is a relative path (``.venv/bin/python``) made absolute (not resolved: a venv's
    interpreter is a symlink that must stay one), so the job script runs the same one from any folder."""
    if words and os.sep in words[0] and not os.path.isabs(words[0]) and os.path.exists(words[0]):
        return [os.path.abspath(words[0]), *words[1:]]
    return words


def job_script(
    task: str, table: str, jobs: list[Job], seeds: list[int], runs: Path, options: ScriptOptions,
    recipes: Path = RECIPES_DIR,
) -> str:  # fmt: skip
    """The bash script of a table: job ``$SLURM_ARRAY_TASK_ID`` of ``jobs``; also an sbatch array script."""
    info, folder = recipe(task, recipes), Path(recipes) / task
    evaluate = [shown(folder / info.evaluate_script)] if info.evaluate_script else []
    recipes_args = [] if Path(recipes).resolve() == RECIPES_DIR else ["--recipes", Path(recipes).resolve()]
    name = f"dkl-{task}-{table}"
    lines = [
        "#!/bin/bash",
        f"# {task} table {table}: {len(jobs)} jobs (config x seed), one per SLURM_ARRAY_TASK_ID.",
        f"# Written by `python -m tools.sweep {task} --table {table}`; run one job with",
        f"#   SLURM_ARRAY_TASK_ID=0 bash {runs / task / f'sweep_{table}.sh'}",
        "# Each task is one `accelerate launch` on one node: its process count and precision come from",
        "# `accelerate config` or LAUNCH below; the resources each task asks for, from the #SBATCH lines.",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --array=0-{len(jobs) - 1}",
        f"#SBATCH --output={runs / task / 'slurm'}/{table}_%A_%a.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --requeue",
        *(f"#SBATCH {option}" for option in options.sbatch),
        "",
        f"ROOT={shlex.quote(str(REPO_ROOT))}",
        f"TASK={task}",
        f"PY={_bash_array(options.python)}",
        f"LAUNCH={_bash_array(options.launch)}",
        f"EVALUATE={_bash_array(evaluate)}",
        f"EVAL={_bash_array(options.eval_args)}",
        f"RECIPES_ARGS={_bash_array(recipes_args)}",
        "TABLE_ARGS=" + _bash_array(["--table", table, "--seeds", " ".join(map(str, seeds)), "--runs", str(runs)]),
        'case "${SLURM_ARRAY_TASK_ID:?set SLURM_ARRAY_TASK_ID to the job index (0-' + f"{len(jobs) - 1})" + '}" in',
    ]
    for index, job in enumerate(jobs):
        train = [shown(folder / info.train_script), "--config", shown(job.entry.path)]
        train += [*job.overrides, *options.train_args]
        lines.append(f"  {index}) RUN={shlex.quote(str(job.run_dir))}")
        lines.append(f"     TRAIN={_bash_array(train)} ;;")
    lines.append(f'  *) echo "no job $SLURM_ARRAY_TASK_ID: this table has jobs 0-{len(jobs) - 1}" >&2; exit 2 ;;')
    lines.append("esac")
    # What a run stopped by a signal exits with (torch: imported here only).
    from dkl_train.training import PREEMPTED_EXIT_CODE

    body = SCRIPT_BODY.replace("__PREEMPTED_EXIT__", str(PREEMPTED_EXIT_CODE))
    return "\n".join(lines) + "\n" + body


def sbatch_commands(script: Path, jobs: list[Job]) -> list[str]:
    """``sbatch`` the script; teachers first, students after them (``--dependency=afterok``)."""
    teachers = sum(job.stage == 0 for job in jobs)
    if not teachers:
        return [f"sbatch {shlex.quote(str(script))}"]
    return [
        f"jid=$(sbatch --parsable --array=0-{teachers - 1} {shlex.quote(str(script))}) && "
        f"sbatch --dependency=afterok:$jid --array={teachers}-{len(jobs) - 1} {shlex.quote(str(script))}"
    ]


def run_locally(script: Path, jobs: list[Job]) -> None:
    """Run every job of the script here, one after the other (finished ones skip themselves)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    for index, job in enumerate(jobs):
        process = subprocess.Popen(["bash", str(script)], env={**env, "SLURM_ARRAY_TASK_ID": str(index)})
        try:
            code = process.wait()
        except KeyboardInterrupt:  # the script got Ctrl-C as well: let the run checkpoint before leaving
            code = process.wait()
        if code:
            raise SystemExit(f"sweep: job {index} ({job.run_dir}) stopped with exit status {code}; fix it and rerun")


# ----------------------------------------------------------------------------------------------
# Command line


def list_tables(tasks: list[str], recipes: Path, headers: bool) -> None:
    """Print the tables of each task and their configs (``[row | column]`` in the paper's layout)."""
    for task in tasks:
        if headers:
            print(f"== {task}")
        for table, entries in sorted(discover(task, recipes).items()):
            print(f"{table}: {len(entries)} configs")
            for entry in entries:
                print(f"  {shown(entry.path)}  [{entry.row} | {entry.column}]")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    recipes_help = "folder of the recipes (<name>/recipe.py; default: this repository's recipes/)"
    if argv[:1] == ["state"]:  # used by the job script: one word on stdout
        parser = argparse.ArgumentParser(prog="python -m tools.sweep state")
        parser.add_argument("task")
        parser.add_argument("run_dir", type=Path)
        parser.add_argument("--recipes", type=Path, default=RECIPES_DIR, help=recipes_help)
        args = parser.parse_args(argv[1:])
        print(run_state(args.task, args.run_dir, args.recipes))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", nargs="?", default="", help="a recipe (recipes/<task>/recipe.py); with --list: all")
    parser.add_argument("--table", default="", help="which table (--list shows them)")
    parser.add_argument(
        "--list", action="store_true", help="list the tables of the task (or of every task) and their configs"
    )
    parser.add_argument("--seeds", default="0 1 2", help='e.g. "0 1 2"')
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="root of the run folders (default: runs)")
    parser.add_argument("--submit", choices=("local", "slurm", "none"), default="local",
                        help="local: run here; slurm: write an sbatch array script; none: only write the table")  # fmt: skip
    parser.add_argument("--launch", default="accelerate launch", help="launcher and its options")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the job script's checks")
    parser.add_argument("--args", default="", help="key=value overrides for every train.py")
    parser.add_argument(
        "--eval-args", default="", help="key=value overrides for the recipe's evaluation (adv: eval.py)"
    )
    parser.add_argument("--sbatch", default="", help='extra #SBATCH options, e.g. "--gres=gpu:1 --time=24:00:00"')
    parser.add_argument("--recipes", type=Path, default=RECIPES_DIR, help=recipes_help)
    args = parser.parse_args(argv)
    try:
        if args.list:
            tasks = [args.task] if args.task else list(load_recipes(args.recipes))
            list_tables(tasks, args.recipes, headers=not args.task)
            return
        if not args.task:
            raise SweepError(f"name a task: one of {', '.join(load_recipes(args.recipes))}")
        entries = table_entries(args.task, args.table, args.recipes)
        seeds = parse_seeds(args.seeds)
    except SweepError as err:
        parser.exit(2, f"sweep: {err}\n")
    args.runs = args.runs.resolve()  # the job script works from the repository root
    jobs = plan(args.task, entries, seeds, args.runs)
    if args.submit != "none":
        options = ScriptOptions(
            launch=absolute_command(shlex.split(args.launch)), python=absolute_command(shlex.split(args.python)),
            train_args=shlex.split(args.args),
            eval_args=shlex.split(args.eval_args), sbatch=shlex.split(args.sbatch),
        )  # fmt: skip
        script = args.runs / args.task / f"sweep_{args.table}.sh"
        (args.runs / args.task / "slurm").mkdir(parents=True, exist_ok=True)
        script.write_text(job_script(args.task, args.table, jobs, seeds, args.runs, options, args.recipes))
        if args.submit == "slurm":
            print(f"wrote {script}: {len(jobs)} array tasks (config x seed). Submit with:")
            print("\n".join(sbatch_commands(script, jobs)))
            return
        run_locally(script, jobs)
    path = write_table(args.task, args.table, jobs, args.runs, args.recipes)
    print(path.read_text())
    print(f"wrote {path}")


if __name__ == "__main__":
    with report_user_errors():
        main()
