"""What the repository's tools (whole-table sweeps, the report) need to know about a recipe, declared by the recipe.

Each recipe folder holds a small ``recipe.py`` with ``RECIPE = RecipeInfo(...)``: its name, title, methods in
the paper's column order, the headline statistic (how to read it from a ``results.json``, and the config key
that holds the paper's number), how a sweep table names its rows and cells, and which scripts a sweep runs.
The tools find these declarations and name no recipe themselves, so a new recipe needs no tool edit.

This module names no recipe either; it also holds the small readers of ``results.json`` the declarations share.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Result = dict[str, Any]  # one run's results.json


def number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def best_value(result: Result, key: str) -> float | None:
    """The best value of metric ``key`` over the run's evaluations (``best.<key>.value``), or None."""
    entry = (result.get("best") or {}).get(key)
    return number(entry.get("value") if isinstance(entry, dict) else entry)


def final_value(result: Result, key: str) -> float | None:
    """The last evaluation's value of metric ``key`` (``final.<key>``), or None."""
    return number((result.get("final") or {}).get(key))


def imported(module: str, name: str) -> Callable[[], Any]:
    """A function that returns ``module.name``, importing ``module`` when first called, not when declared.

    ``RecipeInfo(methods=imported("dkl_recipe_kd.train", "METHODS"))`` keeps reading a declaration cheap: the
    recipe's ``train.py`` imports torch and the rest of its stack, which only drawing a table needs.
    """
    return lambda: getattr(importlib.import_module(module), name)


# (unit, the config's planned length, results.json's count of what was done).
SCHEDULES = (("iteration", "iterations", "global_steps"), ("epoch", "epochs", "epochs_completed"))


def run_progress(result: Result) -> tuple[int, int, str] | None:
    """``(done, planned, unit)`` of a training run, from its results.json; None when it records no schedule.

    Epoch-based configs count epochs (``epochs_completed`` of ``epochs``); iteration-based ones count
    iterations (``global_steps`` of ``iterations``). A run with ``done < planned`` stopped early (e.g.
    ``stop_after_epochs``), so its numbers are not those of its setting.
    """
    config = result.get("config") or {}
    for unit, planned_key, done_key in SCHEDULES:
        planned, done = config.get(planned_key), result.get(done_key)
        if isinstance(planned, int) and isinstance(done, int):
            return done, planned, unit
    return None


@dataclass(frozen=True)
class Metric:
    """One statistic of a run as the tools report it, with the config key holding the paper's number."""

    name: str  # as the tables title it, e.g. "top-1 (best epoch)"
    value: Callable[[Result], float | None]  # the statistic from one results.json; None until the run recorded it
    paper_key: str  # the key holding the paper's number: in the config, else in results.json (any section)
    final: Callable[[Result], float | None] | None = None  # the last evaluation's value, shown beside the statistic
    label: str = ""  # short name in a sweep table's legend ("clean"); defaults to ``name``

    def paper(self, result: Result) -> float | None:
        """The paper's number for this statistic: the config first, then results.json's top level and sections."""
        sections = [result.get("config") or {}, result, *(v for v in result.values() if isinstance(v, dict))]
        return next((n for n in (number(s.get(self.paper_key)) for s in sections) if n is not None), None)


@dataclass(frozen=True)
class RecipeInfo:
    """What the tools need to know about one recipe (``recipes/<name>/recipe.py`` defines ``RECIPE``)."""

    name: str  # the folder under recipes/ and the ``recipe`` field of its results.json
    title: str  # the report's section title
    methods: Callable[[], tuple[str, ...]]  # the recipe's METHODS, paper column order (see :func:`imported`)
    headline: Metric  # the statistic the authors' code reported: skip test, report, table cells
    row_label: str  # a sweep table's first column header, e.g. "teacher -> student"
    row: Callable[[dict[str, Any]], str]  # a config's row in the sweep table
    cell: tuple[Metric, ...] = ()  # what a sweep table cell shows, " / "-joined (default: the headline alone)
    train_script: str = "train.py"  # run with ``accelerate launch`` by a sweep, relative to the recipe folder
    evaluate_script: str | None = None  # run after training (``run_dir=<run>``) while the headline is missing
    # For results.json files that record no ``recipe`` (written before it was recorded): are they this recipe's?
    recognise: Callable[[Result], bool] | None = None
    report_order: int = 100  # sections of the report in this order, then by name

    @property
    def cell_metrics(self) -> tuple[Metric, ...]:
        return self.cell or (self.headline,)
