"""What the repository's tools (``tools.sweep``, ``tools.report``) need to know about the SSL recipe."""

from __future__ import annotations

from typing import Any

from dkl_train.recipe_info import Metric, RecipeInfo, Result, best_value, final_value, imported
from dkl_train.specs import get_spec


def row(config: dict[str, Any]) -> str:
    """``dataset, N labels``: the papers' SSL settings."""
    dataset = str(config.get("dataset"))
    try:
        labels = int(config["labels_per_class"]) * get_spec(dataset).num_classes
    except (KeyError, TypeError, ValueError):
        return dataset
    return f"{dataset}, {labels} labels"


def recognise(result: Result) -> bool:
    """Only SSL configs set a consistency loss, and only SSL runs evaluate EMA weights."""
    config = result.get("config") or {}
    return (
        "consistency" in config or "ema_top1" in (result.get("best") or {}) or "ema_top1" in (result.get("final") or {})
    )


RECIPE = RecipeInfo(
    name="ssl",
    title="Semi-supervised learning",
    methods=imported("dkl_recipe_ssl.train", "METHODS"),
    # USB evaluates with the EMA weights applied and keeps best_eval_acc.
    headline=Metric(
        "EMA top-1 (best evaluation)",
        lambda r: best_value(r, "ema_top1"),
        "paper_top1",
        final=lambda r: final_value(r, "ema_top1"),
    ),
    row_label="setting",
    row=row,
    recognise=recognise,
    report_order=1,
)
