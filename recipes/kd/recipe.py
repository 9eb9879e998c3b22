"""What the repository's tools (``tools.sweep``, ``tools.report``) need to know about the KD recipe."""

from __future__ import annotations

from typing import Any

from dkl_train.recipe_info import Metric, RecipeInfo, Result, best_value, final_value, imported


def row(config: dict[str, Any]) -> str:
    """``teacher -> student``, the papers' KD rows."""
    teacher, student = config.get("teacher"), config.get("student")
    return f"{teacher} -> {student}" if teacher else f"{student} (no teacher)"


def recognise(result: Result) -> bool:
    """Only KD configs name a student (or a teacher)."""
    config = result.get("config") or {}
    return "student" in config or "teacher" in config


RECIPE = RecipeInfo(
    name="kd",
    title="Knowledge distillation",
    methods=imported("dkl_recipe_kd.train", "METHODS"),
    # mdistiller's trainer keeps best_acc = max over epochs of test top-1.
    headline=Metric(
        "top-1 (best epoch)", lambda r: best_value(r, "top1"), "paper_top1", final=lambda r: final_value(r, "top1")
    ),
    row_label="teacher -> student",
    row=row,
    recognise=recognise,
    report_order=0,
)
