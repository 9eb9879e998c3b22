"""What a resume may change: the saved ``config.yaml`` against the new settings, and a finished run left alone.

A resumed run must compute what the run it continues would have computed. Settings that only change how
it is logged, evaluated or stored (each config class lists them in ``resume_safe``), and a longer
``epochs``, may differ: each difference is printed. Any other difference (``lr``, ``method``,
``batch_size``, ...) stops the resume with every old and new value, unless ``resume_override=true`` says
it is deliberate. A run that already finished (its last checkpoint ends the schedule and its
``results.json`` exists) is left untouched: the command says so and exits with status 0.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .config import BaseConfig, config_to_dict
from .errors import UserError

_ABSENT = "(not set)"
_QUIET = {"resume", "resume_override"}  # differ on every resume: not worth a line


class ResumeConflictError(UserError):
    """The new settings would change what the resumed run computes; the message lists each old and new value."""


def check_resumable(config: BaseConfig, run_dir: Path, latest: Path, say: Callable[[str], None]) -> None:
    """Compare ``config`` with ``run_dir/config.yaml`` and stop if the run in ``run_dir`` is finished.

    Raises :class:`ResumeConflictError` for differences that change the result (without
    ``resume_override``); prints the others through ``say``; exits with status 0 for a finished run.
    """
    saved_file = run_dir / "config.yaml"
    if saved_file.is_file():
        saved = yaml.safe_load(saved_file.read_text()) or {}
        changes = config_changes(saved, _as_saved(config))
        refused = {key: change for key, change in changes.items() if key not in type(config).resume_safe}
        if refused and not config.resume_override:
            listing = "; ".join(f"{key}: {old!r} in {saved_file}, {new!r} now" for key, (old, new) in refused.items())
            raise ResumeConflictError(
                f"cannot resume {run_dir} with other settings that change what it computes ({listing}). Resume "
                "with the saved values (drop those overrides), start a new run with another output_dir=..., or add "
                "resume_override=true to continue with the new values deliberately"
            )
        for key, (old, new) in changes.items():
            if key not in _QUIET:
                note = " (resume_override=true)" if key in refused else ""
                say(f"resume: {key} changed from {old!r} to {new!r}{note}")
    epoch, mid_epoch = checkpoint_position(latest)
    results = run_dir / "results.json"
    periods = config.periods()
    if not mid_epoch and epoch >= periods.count and results.is_file():
        longer = " (to train longer, resume with a larger epochs=...)" if periods.steps is None else ""
        say(
            f"{run_dir} holds a finished run: its last checkpoint {latest.name} ends {periods.name} {epoch} of "
            f"{periods.count} and its results are in {results}. Nothing to do{longer}."
        )
        raise SystemExit(0)


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, new value)}`` for every top-level setting that differs (absent on one side included)."""
    keys = sorted(set(saved) | set(new))
    return {
        key: (saved.get(key, _ABSENT), new.get(key, _ABSENT))
        for key in keys
        if saved.get(key, _ABSENT) != new.get(key, _ABSENT)
    }


def checkpoint_position(path: Path) -> tuple[int, bool]:
    """``(completed epochs, inside an epoch)`` from a checkpoint folder's name (``epoch_0003[_step_00001234]``)."""
    parts = path.name.split("_")
    return int(parts[1]), "step" in parts


def _as_saved(config: BaseConfig) -> dict[str, Any]:
    """The config as ``config.yaml`` holds it (YAML types: lists, not tuples)."""
    return yaml.safe_load(yaml.safe_dump(config_to_dict(config), sort_keys=False))
