"""What a run records: its counters (:class:`TrainingState`), the history and best metrics, the trackers'
scalars, the line printed per period, exported weights and ``results.json``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from .atomic import write_atomic
from .config import BaseConfig, config_to_dict
from .periods import Periods
from .results import git_revision, write_json_atomic


@dataclass
class TrainingState:
    """Counters and records that must survive a resume (registered for checkpointing)."""

    epoch: int = 0  # completed periods (epochs)
    global_step: int = 0  # completed optimiser steps
    best: dict[str, float] = field(default_factory=dict)  # best value of each evaluation metric
    best_epoch: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per period
    train_seconds: float = 0.0  # time inside the training loop (for throughput)
    train_images: int = 0  # images processed by all processes
    wall_seconds: float = 0.0  # whole periods including evaluation and checkpoints
    # A mid-period (pre-emption) checkpoint: {"epoch": e, ...} with this process's position and running
    # sums inside period e (see Preemption.preempt); None at period boundaries.
    partial: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class RunRecords:
    """A run's history, best metrics, tracker scalars, per-period line, weights files and ``results.json``.

    Args:
        accelerator: the run's (trackers, processes, precision).
        config: the run's config (recorded in ``results.json``).
        state: the run's counters and records.
        periods: the run's periods (the line printed per period names them).
        run_dir: the run folder.
        tracker_dir: TensorBoard's folder, if it logs there.
        say: prints once (main process).
    """

    def __init__(
        self,
        accelerator: Accelerator,
        config: BaseConfig,
        state: TrainingState,
        periods: Periods,
        run_dir: Path,
        tracker_dir: Path | None,
        say: Callable[[str], None],
    ) -> None:
        self.accelerator, self.config, self.state, self.periods = accelerator, config, state, periods
        self.run_dir, self.tracker_dir, self.say = run_dir, tracker_dir, say
        self._start_time = time.perf_counter()

    def end_period(self, period: int, train_metrics: dict[str, Any], eval_metrics: dict[str, float] | None) -> None:
        """Record the period (history entry with ``test_*`` keys, best metrics, trackers) and print its line."""
        state = self.state
        state.epoch = period + 1
        entry: dict[str, Any] = {"epoch": period + 1, "global_step": state.global_step, **train_metrics}
        for key, value in (eval_metrics or {}).items():
            entry[f"test_{key}"] = value
            if key not in ("loss", "samples") and math.isfinite(value) and value > state.best.get(key, -math.inf):
                state.best[key] = value
                state.best_epoch[key] = period + 1
        now = time.perf_counter()
        state.wall_seconds += now - self._start_time
        self._start_time = now
        state.history.append(entry)
        scalars = {f"epoch/{k}": v for k, v in entry.items() if isinstance(v, int | float)}
        self.accelerator.log(scalars, step=state.global_step)
        summary = ", ".join(
            f"{k}={v:.4g}"
            for k, v in entry.items()
            if isinstance(v, float) and k not in ("lr", "images_per_s", "test_samples")
        )
        self.say(f"{self.periods.label(period)}: {summary}")

    def save_model(self, model: nn.Module, name: str = "model.pth", **metadata: Any) -> Path:
        """Save the (unwrapped) weights as ``{"model": state_dict, "epoch": N, **metadata}`` (mdistiller's format)."""
        path = self.run_dir / name
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            state = {k: v.detach().cpu() for k, v in accelerator.unwrap_model(model).state_dict().items()}
            payload = {"model": state, "epoch": self.state.epoch, **metadata}
            write_atomic(path, lambda tmp: torch.save(payload, tmp))
        accelerator.wait_for_everyone()
        return path

    def finish(self, final_metrics: dict[str, float] | None = None, extra: dict[str, Any] | None = None) -> dict:
        """Write ``results.json`` (main process) and close the trackers; returns the payload.

        ``final_metrics`` defaults to the test metrics of the last evaluated history entry.
        """
        results = self.run_dir / "results.json"
        payload = self.results(final_metrics, extra)
        if self.accelerator.is_main_process:
            write_json_atomic(payload, results)
        self.accelerator.end_training()
        self.say(f"results: {results}")
        if self.tracker_dir is not None:
            self.say(f"TensorBoard: {self.tracker_dir} (.venv/bin/tensorboard --logdir {self.tracker_dir})")
        self.say(report_hint(self.run_dir.parent))
        return payload

    def results(self, final_metrics: dict[str, float] | None, extra: dict[str, Any] | None) -> dict[str, Any]:
        """The ``results.json`` payload."""
        state, accelerator = self.state, self.accelerator
        if final_metrics is None:
            last = next((h for h in reversed(state.history) if "test_top1" in h), {})
            final_metrics = {k[len("test_") :]: v for k, v in last.items() if k.startswith("test_")}
        return {
            "recipe": type(self.config).recipe,
            "config": config_to_dict(self.config),
            "final": final_metrics,
            "best": {k: {"value": v, "epoch": state.best_epoch.get(k)} for k, v in state.best.items()},
            "history": state.history,
            "epochs_completed": state.epoch,
            "global_steps": state.global_step,
            "wall_clock_s": state.wall_seconds,
            "train_images_per_s": state.train_images / state.train_seconds if state.train_seconds else None,
            "num_processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision,  # what ran (config auto: the launcher's)
            "device": str(accelerator.device),
            "git_revision": git_revision(),
            "versions": _versions(),
            **(extra or {}),
        }


def _versions() -> dict[str, str]:
    import accelerate

    return {"torch": torch.__version__, "accelerate": accelerate.__version__}


def report_hint(runs: Path) -> str:
    """Where the mean +- std over the runs in ``runs`` is, or the command that writes it (no report yet)."""
    report = runs / "REPORT.md"
    if report.is_file():
        return f"report: {report} (mean +- std over the runs beside this one; refresh: make report RUNS={runs})"
    return f"mean +- std over the runs beside this one: make report RUNS={runs} (writes {report})"
