"""Checkpoint folders on disk: atomic saves through Accelerate, a manifest of their files, damage checks.

:class:`~dkl_train.training.Run` decides when to save; this module knows the folder format and what to
resume from (:class:`Checkpoints`). A checkpoint is ``checkpoints/epoch_XXXX`` (completed epochs) or
``epoch_XXXX_step_YYYYYYYY`` (saved inside an epoch on pre-emption): ``accelerator.save_state``'s files,
each process's registered objects for a mid-epoch one (``process_state_<rank>.pkl``; Accelerate saves the
main process's only), and ``checkpoint.json`` listing every file and its size. It is written into
``.tmp_<name>``, flushed to disk and only then renamed, so a crash or kill at any moment leaves the
previous complete checkpoint as the newest. Names sort in training order.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from .atomic import fsync_dir, fsync_tree

CHECKPOINT_PREFIX = "epoch_"
TMP_PREFIX = ".tmp_"
DAMAGED_PREFIX = "damaged_"
MANIFEST = "checkpoint.json"  # the files of a checkpoint and their sizes (truncation check on resume)
PROCESS_STATE = "process_state_{}.pkl"  # mid-epoch checkpoints: each process's registered objects


class CheckpointError(FileNotFoundError):
    """No usable checkpoint to resume from; the message names the damaged files and what to do.

    A :class:`FileNotFoundError`, so the recipes' entry points print it as one line, without a traceback.
    """


def checkpoint_name(epoch: int, global_step: int, mid_epoch: bool) -> str:
    """``epoch_0003`` < ``epoch_0003_step_00001234`` < ``epoch_0004``: names sort in training order."""
    name = f"{CHECKPOINT_PREFIX}{epoch:04d}"
    return f"{name}_step_{global_step:08d}" if mid_epoch else name


def checkpoint_folders(checkpoint_dir: Path) -> list[Path]:
    """The complete checkpoint folders, oldest first (temporary folders of interrupted saves are left out)."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(p for p in checkpoint_dir.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def write_checkpoint(
    accelerator: Accelerator,
    checkpoint_dir: Path,
    name: str,
    counters: dict[str, Any],
    *,
    mid_epoch: bool,
    keep: int,
) -> Path:
    """Save the accelerator's state as ``checkpoint_dir/name`` atomically; keep the newest ``keep``.

    Every process calls it. ``counters`` (e.g. epoch and step) go into the manifest; ``mid_epoch`` also
    saves each process's registered objects.
    """
    final = checkpoint_dir / name
    tmp = checkpoint_dir / f"{TMP_PREFIX}{name}"
    if accelerator.is_main_process:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if mid_epoch:
        states = [obj.state_dict() for obj in accelerator._custom_objects]
        torch.save(states, tmp / PROCESS_STATE.format(accelerator.process_index))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
        manifest = {**counters, "mid_epoch": mid_epoch, "num_processes": accelerator.num_processes, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        fsync_tree(tmp)
        if final.exists():  # re-saved position: move the old copy aside first, so a kill never leaves half of it
            old = checkpoint_dir / f"{TMP_PREFIX}old_{name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(checkpoint_dir)
        prune_checkpoints(checkpoint_dir, keep)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(checkpoint_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` (at least one) checkpoints, and leftovers of interrupted saves."""
    for old in checkpoint_folders(checkpoint_dir)[: -max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoint_dir.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)


def restore_checkpoint(accelerator: Accelerator, path: Path) -> str | None:
    """Load ``path`` into ``accelerator`` (and this process's registered objects of a mid-epoch checkpoint).

    Returns ``None``, or what is wrong with the checkpoint (the damaged file when known). Raises
    :class:`CheckpointError` for a mid-epoch checkpoint of another process count, which cannot be resumed.
    """
    manifest, problem = read_manifest(path)
    if problem:
        return problem
    processes = accelerator.num_processes
    if manifest.get("mid_epoch") and manifest.get("num_processes", processes) != processes:
        saved = manifest["num_processes"]
        previous = [p for p in checkpoint_folders(path.parent) if p < path]
        instead = f"the previous checkpoint {previous[-1]}" if previous else "scratch"
        raise CheckpointError(
            f"{path} was saved inside an epoch by {saved} processes and holds each one's running state, so "
            f"it resumes with exactly {saved} processes (this run has {processes}): launch with "
            f"--num_processes {saved}, or move {path} away to resume from {instead}"
        )
    rank = accelerator.process_index
    rng = path / f"random_states_{rank}.pkl"
    if rng.is_file():  # Accelerate skips an unreadable RNG file silently: the resume would not be exact
        try:
            torch.load(rng, weights_only=False)
        except Exception as err:
            return f"{rng.name} cannot be read ({short_error(err)})"
    try:
        accelerator.load_state(str(path))
        own = path / PROCESS_STATE.format(rank)
        if own.is_file():
            states = torch.load(own, map_location="cpu", weights_only=False)
            for obj, state in zip(accelerator._custom_objects, states, strict=True):
                obj.load_state_dict(state)
    except Exception as err:
        return unreadable_file(path) or f"loading it failed ({short_error(err)})"
    return None


def damaged_path(path: Path) -> Path:
    """Where a damaged checkpoint is moved aside: ``damaged_<name>`` beside it (never resumed from)."""
    return path.with_name(f"{DAMAGED_PREFIX}{path.name}")


def move_aside(path: Path) -> None:
    """Rename a damaged checkpoint to :func:`damaged_path` (replacing an older one of that name)."""
    aside = damaged_path(path)
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(path, aside)


def read_manifest(path: Path) -> tuple[dict[str, Any], str | None]:
    """``checkpoint.json`` of ``path`` and the first missing or resized file it lists (older checkpoints: none)."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return {}, None
    try:
        manifest = json.loads(manifest_path.read_text())
        files = dict(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return {}, f"{MANIFEST} cannot be read ({short_error(err)})"
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return manifest, f"{name} is missing"
        actual = file.stat().st_size
        if actual != size:
            return manifest, f"{name} is {actual} bytes but {size} were written (truncated or altered)"
    return manifest, None


def unreadable_file(path: Path) -> str | None:
    """The first file of checkpoint ``path`` that does not load, and why (asked only after a failed load)."""
    from safetensors.torch import load_file

    for file in sorted(path.rglob("*")):
        if not file.is_file() or file.suffix not in (".safetensors", ".bin", ".pkl", ".pt", ".pth"):
            continue
        try:
            if file.suffix == ".safetensors":
                load_file(file)
            else:
                torch.load(file, map_location="cpu", weights_only=False)
        except Exception as err:
            return f"{file.relative_to(path)} cannot be read ({short_error(err)})"
    return None


def short_error(err: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters of it)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}".rstrip(": ")


class Checkpoints:
    """A run's checkpoint folder: when a save is mid-period, what to resume from, damaged ones moved aside.

    Args:
        accelerator: the run's (saves and loads its prepared and registered objects).
        directory: ``<run folder>/checkpoints``.
        state: the run's counters (``epoch``, ``global_step``, ``partial``: set inside a period).
        keep: how many checkpoints to keep.
        say: prints once (main process).
        period_name: what a period is called ("epoch", "period") in messages.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        directory: Path,
        state: Any,
        *,
        keep: int,
        say: Callable[[str], None],
        period_name: str = "epoch",
    ) -> None:
        self.accelerator, self.directory, self.state = accelerator, directory, state
        self.keep, self.say, self.period_name = keep, say, period_name

    def folders(self) -> list[Path]:
        """The complete checkpoint folders, oldest first (their names sort in training order)."""
        return checkpoint_folders(self.directory)

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder (temporary folders of interrupted saves are ignored)."""
        done = self.folders()
        return done[-1] if done else None

    def save(self) -> Path:
        """Save the run as ``checkpoints/<name>`` atomically (:func:`write_checkpoint`); mid-period when ``state.partial`` is set."""
        state = self.state
        mid_epoch = state.partial is not None
        return write_checkpoint(
            self.accelerator,
            self.directory,
            checkpoint_name(state.epoch, state.global_step, mid_epoch),
            {"epoch": state.epoch, "global_step": state.global_step},
            mid_epoch=mid_epoch,
            keep=self.keep,
        )

    def resume(self) -> Path | None:
        """Load the newest usable checkpoint; ``None`` when there is none (the run starts from scratch).

        A damaged one (a file missing, resized or unreadable on any process) is moved aside to
        ``damaged_<name>`` with a warning and the previous one is loaded; every process loads the same one.
        :class:`CheckpointError` when none is usable.
        """
        candidates = self.folders()
        if not candidates:
            return None
        damaged: list[tuple[Path, str]] = []
        for path in reversed(candidates):
            self.state.partial = None  # a checkpoint without the field is a period boundary
            problem = restore_checkpoint(self.accelerator, path)
            problems = [p for p in gather_object([problem]) if p]  # agree: a file may fail on one process only
            if not problems:
                break
            damaged.append((path, problems[0]))
        else:
            listing = "; ".join(f"{path}: {problem}" for path, problem in damaged)
            raise CheckpointError(
                f"no usable checkpoint to resume from in {self.directory} ({listing}). Restore the damaged "
                f"files from a copy, or move {self.directory} away (or choose another output_dir=...) to "
                "start the run over."
            )
        for bad, problem in damaged:
            if self.accelerator.is_main_process:
                move_aside(bad)
            self.say(
                f"warning: checkpoint {bad} is damaged ({problem}); moved it to {damaged_path(bad)} and resumed from the "
                f"previous complete checkpoint {path} instead (the training after it is done again)"
            )
        self.accelerator.wait_for_everyone()
        inside = self.state.partial
        name = self.period_name
        where = f", inside {name} {inside['epoch'] + 1}" if inside is not None else ""
        self.say(f"resumed from {path} ({name} {self.state.epoch}, step {self.state.global_step}{where})")
        return path
