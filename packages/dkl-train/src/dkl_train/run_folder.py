"""The run folder: created writable, never another run's (unless resumed), ``config.yaml`` inside."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .config import BaseConfig
from .errors import UserError
from .resuming import check_resumable


class RunExistsError(UserError, FileExistsError):
    """``output_dir`` holds another run's checkpoints and ``resume`` is off."""


def check_existing_run(config: BaseConfig, run_dir: Path, latest: Path | None, say: Callable[[str], None]) -> None:
    """Refuse a folder that holds a run's checkpoints unless ``resume=true``; then check what the resume changes.

    Ends the process (status 0) for a finished run (:func:`~dkl_train.resuming.check_resumable`).
    """
    if latest is None:
        return
    if not config.resume:
        results = run_dir / "results.json"
        finished = f" (finished: {results})" if results.is_file() else ""
        raise RunExistsError(
            f"{run_dir} already holds a run{finished}, up to checkpoint {latest.name}; pass resume=true "
            "to continue it, or choose another output_dir=..."
        )
    check_resumable(config, run_dir, latest, say)  # may end here: a finished run


def make_run_dir(run_dir: Path) -> None:
    """Create the run folder (every process: they may not share a file system) or say why it cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write_test_{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(f"cannot write the run folder {run_dir} ({reason}); choose a writable output_dir=...") from None
