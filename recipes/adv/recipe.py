"""What the repository's tools (``tools.sweep``, ``tools.report``) need to know about the adversarial recipe."""

from __future__ import annotations

from typing import Any

from dkl_train.recipe_info import Metric, RecipeInfo, Result, imported, number


def _attack(result: Result) -> dict[str, Any]:
    return result.get("autoattack") or {}


def primary_robust(result: Result) -> float | None:
    """AutoAttack robust accuracy of the primary weights ``eval.py`` reported (None before it ran)."""
    return number(_attack(result).get("robust", (result.get("final") or {}).get("autoattack_robust")))


def averaged_robust(result: Result) -> float | None:
    """Robust accuracy of the checkpoint-averaged weights (what the released models are), else the primary's."""
    weights = _attack(result).get("weights") or {}
    if "checkpoint_average" in weights:
        return number((weights["checkpoint_average"] or {}).get("robust"))
    return primary_robust(result)


def averaged_clean(result: Result) -> float | None:
    """Clean accuracy of the weights whose robust accuracy is the headline (checkpoint average first)."""
    attack = _attack(result)
    averaged = (attack.get("weights") or {}).get("checkpoint_average") or {}
    return number(averaged.get("clean", attack.get("clean")))


def row(config: dict[str, Any]) -> str:
    """``dataset model``: the papers' adversarial rows."""
    return f"{config.get('dataset')} {config.get('model')}"


def recognise(result: Result) -> bool:
    """AutoAttack results (a bare checkpoint's too) or adversarial config fields."""
    config = result.get("config") or {}
    return "autoattack" in result or "paper_autoattack" in config or "attack_loss" in config


ROBUST = Metric(
    "AutoAttack robust (checkpoint average)", averaged_robust, "paper_autoattack", final=primary_robust,
    label="AutoAttack robust",
)  # fmt: skip
CLEAN = Metric("clean top-1 (checkpoint average)", averaged_clean, "paper_clean", label="clean")

RECIPE = RecipeInfo(
    name="adv",
    title="Adversarial training",
    methods=imported("dkl_recipe_adv.train", "METHODS"),
    headline=ROBUST,
    row_label="data set, model",
    row=row,
    cell=(CLEAN, ROBUST),
    evaluate_script="eval.py",  # AutoAttack, resumable; the headline exists only after it
    recognise=recognise,
    report_order=2,
)
