"""The recipes the tools know: every ``recipes/<name>/recipe.py`` and the ``RECIPE`` it declares.

A recipe tells the tools what they need (:class:`dkl_train.recipe_info.RecipeInfo`); the tools name none, so a
folder with a ``recipe.py`` is a recipe of every sweep and report, with no tool edit.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

from dkl_train.errors import UserError
from dkl_train.recipe_info import RecipeInfo, Result

# The checkout this tool belongs to: tools/ is never installed, so its parent is the repository root.
REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES_DIR = REPO_ROOT / "recipes"


class RecipeDeclarationError(UserError):
    """A ``recipe.py`` that does not declare what the tools need; the message says what to write."""


class UnknownRecipeError(UserError):
    """A task name no folder of the recipes declares; the message lists the ones there are."""


def _load(path: Path) -> RecipeInfo:
    # A module name per file: toy recipes in other folders may share a folder name with a real one.
    name = "_dkl_recipe_info_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    info = getattr(module, "RECIPE", None)
    if not isinstance(info, RecipeInfo):
        raise RecipeDeclarationError(f"{path} defines no RECIPE = dkl_train.recipe_info.RecipeInfo(...)")
    if info.name != path.parent.name:
        raise RecipeDeclarationError(f"{path} declares name={info.name!r}: name it {path.parent.name!r}, its folder")
    return info


@functools.cache
def _recipes(folder: Path) -> dict[str, RecipeInfo]:
    return {path.parent.name: _load(path) for path in sorted(folder.glob("*/recipe.py"))}


def load_recipes(folder: Path = RECIPES_DIR) -> dict[str, RecipeInfo]:
    """``{name: RecipeInfo}`` of every ``<folder>/<name>/recipe.py``, in the report's order (each loaded once)."""
    found = _recipes(Path(folder).resolve())
    return dict(sorted(found.items(), key=lambda item: (item[1].report_order, item[0])))


def get_recipe(name: str, folder: Path = RECIPES_DIR) -> RecipeInfo:
    """The recipe called ``name``, or a :class:`UserError` that lists the recipes there are."""
    recipes = load_recipes(folder)
    if name not in recipes:
        raise UnknownRecipeError(f"unknown task {name!r}; choose one of {', '.join(recipes) or '(none)'}")
    return recipes[name]


def recipe_of(result: Result, folder: Path = RECIPES_DIR) -> RecipeInfo | None:
    """The recipe of one run's ``results.json``: the one it records, else the first whose ``recognise`` says so.

    Runs record their recipe (``recipe`` at the top level, or in ``config``); older ones are recognised by what
    only that recipe writes, each recipe declaring its own test. None: no known recipe.
    """
    recipes = load_recipes(folder)
    config = result.get("config") or {}
    for recorded in (result.get("recipe"), config.get("recipe") if isinstance(config, dict) else None):
        if isinstance(recorded, str) and recorded:
            return recipes.get(recorded)
    return next((info for info in recipes.values() if info.recognise and info.recognise(result)), None)
