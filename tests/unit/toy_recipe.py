"""A toy recipe written into a temporary folder: what a new recipe declares for the tools, and nothing else."""

from __future__ import annotations

from pathlib import Path

RECIPE_PY = """
from dkl_train.recipe_info import Metric, RecipeInfo, best_value, final_value

RECIPE = RecipeInfo(
    name="toy",
    title="Toy recipe",
    methods=lambda: ("base", "new"),
    headline=Metric("toy score (best)", lambda r: best_value(r, "score"), "paper_score", final=lambda r: final_value(r, "score")),
    row_label="model",
    row=lambda config: f"model {config.get('model')}",
)
"""
CONFIGS = {
    "digits_m1_new.yaml": "dataset: digits\nmethod: new\nmodel: m1\npaper_score: 60.0\n",
    "digits_m1_base.yaml": "dataset: digits\nmethod: base\nmodel: m1\npaper_score: 50.0\n",
}


def write_toy_recipe(recipes: Path) -> Path:
    """``recipes/toy/recipe.py`` and two configs of the table ``digits``; returns ``recipes``."""
    folder = recipes / "toy"
    (folder / "configs").mkdir(parents=True)
    (folder / "recipe.py").write_text(RECIPE_PY)
    for name, text in CONFIGS.items():
        (folder / "configs" / name).write_text(text)
    return recipes


def toy_result(config: dict, seed: int, score: float) -> dict:
    """What a finished toy run's results.json would hold."""
    return {
        "recipe": "toy",
        "config": {**config, "seed": seed},
        "final": {"score": score - 1},
        "best": {"score": {"value": score, "epoch": 1}},
    }
