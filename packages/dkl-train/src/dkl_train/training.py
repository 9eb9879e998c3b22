"""Training helpers on Accelerate, shared by every recipe: a thin :class:`Run` composing one piece per job.

A recipe owns its model, optimiser and loss; :class:`Run` puts together what surrounds them:

- the :class:`~accelerate.Accelerator` (mixed precision, gradient accumulation, multi-process via
  ``accelerate launch``), the launch line, seeding and the loaders (here);
- the run folder (``config.yaml``; another run's folder refused unless ``resume=true``):
  :mod:`dkl_train.run_folder`, with :mod:`dkl_train.resuming` for what a resume may change;
- the periods it trains in, epochs or spans of iterations (:class:`~dkl_train.periods.Periods`, from the
  config), and the learning-rate schedule (:class:`~dkl_train.optim.StepScheduler`, built once by
  :meth:`Run.build_scheduler`, stepped by the loop, saved in every checkpoint);
- the loop (:class:`~dkl_train.loop.TrainingLoop`): ``compute_loss`` -> backward -> optimiser and scheduler
  step, a progress bar on a terminal, throughput; no step waits for the device: the loss is checked on
  the device (:class:`~dkl_train.nonfinite.NonFiniteGuard`) and read at logging steps and at the end of a
  period, so the error names the first bad step and the steps run since the previous check;
- checkpoints (:class:`~dkl_train.checkpoints.Checkpoints`): the :class:`TrainingState`, the scheduler and
  every registered object through ``accelerator.save_state``, written into a temporary folder and renamed
  into place, the newest ``keep_checkpoints`` kept; ``resume=true`` restores the newest usable one, RNG
  states included (a damaged one is moved aside to ``damaged_<name>`` and the previous one loaded); the
  data order depends only on ``(seed, epoch)`` (:mod:`dkl_train.data`), so the resumed run continues exactly;
- pre-emption (:class:`~dkl_train.preemption.Preemption`): on SIGTERM or SIGUSR1 every process finishes
  its current optimiser step; the processes agree on the step to stop after, save a checkpoint
  ``epoch_XXXX_step_YYYYYYYY`` that also holds the position inside the period, and exit with
  :data:`PREEMPTED_EXIT_CODE` (143 = 128 + SIGTERM, what a shell reports for a job ended by SIGTERM:
  requeue with ``resume=true``). Data-loader workers ignore these signals, and starting a loader's
  iterator leaves the training RNG untouched, so the resumed run equals an uninterrupted one exactly;
- records (:class:`~dkl_train.records.RunRecords`): the history, best metrics, trackers, the line per
  period, exported weights and ``results.json``, written atomically;
- :func:`~dkl_train.evaluation.evaluate`: top-1/top-5 with ``gather_for_metrics`` (N processes give the numbers one gives).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import torch
from accelerate.utils import set_seed
from torch import nn

from .checkpoints import Checkpoints
from .config import BaseConfig, flat_hparams, save_config
from .data import DeviceLoader, TransformedDataset, make_loader
from .evaluation import evaluate
from .launch import check_trackers, launch_report, make_accelerator, start_trackers
from .loop import LossFn, TrainingLoop, epoch_batches
from .nonfinite import NonFiniteGuard, NonFiniteLossError
from .optim import StepScheduler, build_scheduler
from .preemption import PREEMPTED_EXIT_CODE, Preemption, StopSignals
from .progress import write
from .records import RunRecords, TrainingState
from .run_folder import RunExistsError, check_existing_run, make_run_dir
from .run_lock import hold_run_folder

__all__ = ["PREEMPTED_EXIT_CODE", "NonFiniteLossError", "Run", "RunExistsError", "TrainingState", "evaluate"]


class Run:
    """One training run: the accelerator and loaders, composed with its folder, periods, schedule, loop,
    checkpoints, pre-emption and records.

    Args:
        config: the recipe's resolved config (an :class:`~dkl_train.config.EpochConfig` or
            :class:`~dkl_train.config.IterationConfig` subclass).
        tracker_name: the trackers' project name; for TensorBoard, the sub-folder of the run folder
            that holds its logs.

    Creating it seeds everything (``config.seed``), writes ``config.yaml``, logs the config as hparams
    to the ``report_to`` trackers and prints one line saying how it was launched: processes, machines,
    device, precision, and where each came from (see :func:`~dkl_train.launch.launch_report`). It refuses to start over an existing run's checkpoints unless
    ``resume=true`` (so a typo in ``output_dir`` never mixes two runs).
    """

    def __init__(self, config: BaseConfig, tracker_name: str = "tb") -> None:
        self.config = config
        self.run_dir = Path(config.output_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.plan = config.periods()  # the periods between evaluations: epochs, or spans of iterations
        check_trackers(config.report_to)
        self.accelerator = make_accelerator(config, self.run_dir)
        self._say = main_process_printer(self.accelerator)
        for line in launch_report(self.accelerator, config.mixed_precision, config.data_backend):
            self.print(line)
        set_seed(config.seed, deterministic=config.deterministic)
        if config.cudnn_benchmark:  # fixed input sizes: time each convolution's algorithms once, keep the fastest
            torch.backends.cudnn.benchmark = True
        self.stop_signals = StopSignals(self.accelerator.num_processes)  # SIGTERM/SIGUSR1 -> an agreed stop step
        world = self.accelerator.num_processes * config.gradient_accumulation_steps
        if config.batch_size % world:
            raise ValueError(
                f"batch_size={config.batch_size} (global) must be divisible by num_processes x "
                f"gradient_accumulation_steps = {self.accelerator.num_processes} x {config.gradient_accumulation_steps}"
            )
        self.micro_batch_size = config.batch_size // world  # per process, per forward pass
        self.state = TrainingState()
        self._compose()
        make_run_dir(self.run_dir)
        hold_run_folder(self.run_dir, self.accelerator)  # before reading the folder: one run at a time
        check_existing_run(config, self.run_dir, self.latest_checkpoint(), self.print)  # may end: a finished run
        self.accelerator.register_for_checkpointing(self.state)
        if self.accelerator.is_main_process:
            save_config(config, self.run_dir / "config.yaml")
        tracker_dir = self.run_dir / tracker_name if "tensorboard" in config.report_to else None
        self.records = RunRecords(self.accelerator, config, self.state, self.plan, self.run_dir, tracker_dir, self._say)
        start_trackers(self.accelerator, tracker_name, flat_hparams(config), run_name=self.run_dir.name)

    def _compose(self) -> None:
        """The pieces that share the accelerator and the counters: checkpoints, pre-emption, the NaN guard, the loop.

        None of them holds the run itself: without reference cycles the run, its accelerator and the loaders
        it prepared are freed when the recipe returns, and their data-loader workers (which ignore SIGTERM)
        are shut down before the interpreter's exit waits for child processes.
        """
        accelerator, config, state, name = self.accelerator, self.config, self.state, self.plan.name
        self.checkpoints = Checkpoints(
            accelerator, self.checkpoint_dir, state, keep=config.keep_checkpoints, say=self._say, period_name=name
        )
        self.preemption = Preemption(self.stop_signals, accelerator, state, self.checkpoints.save, self._say, name)
        self.guard = NonFiniteGuard(
            accelerator, state, self.checkpoints.latest, log_every=config.log_every, lr=config.lr, period_name=name
        )
        self.loop = TrainingLoop(
            accelerator, state, self.guard, self.preemption,
            log_every=config.log_every, log_step_losses=config.log_step_losses,
        )  # fmt: skip
        self.scheduler: StepScheduler | None = None  # build_scheduler

    # --- small conveniences -------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    def print(self, *args: Any) -> None:
        """Print once (main process), above any progress bar."""
        self._say(" ".join(str(a) for a in args))

    @property
    def memory_format(self) -> torch.memory_format:
        """``torch.channels_last`` with ``channels_last=true``, else ``torch.contiguous_format``."""
        return torch.channels_last if self.config.channels_last else torch.contiguous_format

    def place_model(self, module: nn.Module) -> nn.Module:
        """Move a model that is not prepared (a frozen teacher) to the device, in the run's memory format."""
        return module.to(self.device, memory_format=self.memory_format)

    def prepare(self, *objects: Any) -> Any:
        """``accelerator.prepare``; models are first put in the run's memory format (``channels_last``)."""
        if self.config.channels_last:
            for obj in objects:
                if isinstance(obj, nn.Module):
                    obj.to(memory_format=torch.channels_last)
        return self.accelerator.prepare(*objects)

    def register_for_checkpointing(self, *objects: Any) -> None:
        """Objects with ``state_dict``/``load_state_dict`` (class prior, EMA) saved in every checkpoint.

        Register them in the same order in every run, before :meth:`resume`.
        """
        self.accelerator.register_for_checkpointing(*objects)

    def train_loader(self, dataset: TransformedDataset) -> DeviceLoader:
        """A prepared, per-epoch-shuffled training loader with this run's micro-batch size and limits.

        Its batches arrive on the device (non-blocking copies from pinned memory), finished by the
        dataset's ``batch_transform`` (e.g. normalised from ``uint8``) and in the run's memory format.
        """
        loader = make_loader(
            dataset, self.micro_batch_size, train=True, num_workers=self.config.num_workers, seed=self.config.seed
        )
        max_steps = getattr(self.config, "max_steps_per_epoch", 0)  # an EpochConfig limit (none without epochs)
        if max_steps:
            # Truncate the epoch in the sampler, so every loader ends cleanly (Accelerate tracks the end).
            loader.sampler.num_samples = max_steps * self.config.batch_size
        return self.device_loader(self.accelerator.prepare(loader), dataset)

    def eval_loader(self, dataset: TransformedDataset) -> DeviceLoader:
        """A prepared evaluation loader (in order, nothing dropped), finished on the device as :meth:`train_loader`."""
        loader = make_loader(dataset, self.config.eval_batch_size, train=False, num_workers=self.config.num_workers)
        return self.device_loader(self.accelerator.prepare(loader), dataset)

    def device_loader(self, loader: Any, dataset: Any, *, copy: bool = False) -> DeviceLoader:
        """``loader`` finished on the device: ``dataset.batch_transform`` (if any), then the memory format.

        ``copy``: also move each batch to the device (non-blocking), for a loader Accelerate did not prepare.
        """
        return DeviceLoader(
            loader,
            getattr(dataset, "batch_transform", None),
            device=self.device if copy else None,
            channels_last=self.config.channels_last,
        )

    # --- the schedule and the loop --------------------------------------------------------------

    def build_scheduler(
        self,
        optimizer: torch.optim.Optimizer,
        train_loader: Any = None,
        *,
        epoch_rate: Callable[[int], float] | None = None,
    ) -> StepScheduler:
        """The run's one learning-rate scheduler (:func:`~dkl_train.optim.build_scheduler`), registered for checkpoints.

        Call it once, after ``prepare`` and before :meth:`resume`. Epoch schedules need the ``train_loader``
        (its micro-batches per epoch give the optimiser steps per epoch); ``epoch_rate(epoch)`` replaces the
        config's per-epoch rate (LBGAT's first epoch).
        """
        if self.scheduler is not None:
            raise RuntimeError("build_scheduler: this run already has its scheduler (one per run)")
        steps = None
        if train_loader is not None:  # an epoch's optimiser steps: Accelerate also steps at the loader's end
            steps = math.ceil(len(train_loader) / self.config.gradient_accumulation_steps)
        self.scheduler = build_scheduler(self.config, optimizer, steps_per_epoch=steps, epoch_rate=epoch_rate)
        self.register_for_checkpointing(self.scheduler)
        return self.scheduler

    def periods(self) -> Iterator[int]:
        """The (0-based) periods still to run: all of them, or those after the resumed checkpoint.

        While it runs, SIGTERM and SIGUSR1 ask the run to stop after its current optimiser step (see
        :meth:`stop_requested`; a signal between periods stops the run after the next period's first
        step). The previous signal handlers come back at the end.
        """
        with self.preemption.watching():
            yield from self.plan.remaining(self.state.epoch)

    def train_epoch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: Any,
        compute_loss: LossFn,
        epoch: int,
        *,
        after_step: Callable[[], None] | None = None,
        clip_grad_norm: float | None = None,
    ) -> dict[str, Any]:
        """One epoch over ``loader`` (:meth:`train_steps`); resumed inside it, the batches done are never loaded."""
        loader.set_epoch(epoch)
        return self.train_steps(
            model, optimizer, epoch_batches(loader), compute_loss, epoch,
            total=len(loader), after_step=after_step, clip_grad_norm=clip_grad_norm,
        )  # fmt: skip

    def train_steps(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        batches: Callable[[int], Iterable[Any]],
        compute_loss: LossFn,
        period: int,
        *,
        total: int,
        after_step: Callable[[], None] | None = None,
        clip_grad_norm: float | None = None,
        images_in: Callable[[Any], int] = lambda batch: int(batch["label"].shape[0]),
    ) -> dict[str, Any]:
        """One period of the loop (:meth:`~dkl_train.loop.TrainingLoop.run_period`) with the run's scheduler."""
        if self.scheduler is None:
            raise RuntimeError("call run.build_scheduler(optimizer, ...) after prepare and before resume")
        return self.loop.run_period(
            model, optimizer, self.scheduler, batches, compute_loss, period,
            total=total, label=self.plan.label(period), after_step=after_step, clip_grad_norm=clip_grad_norm,
            images_in=images_in,
        )  # fmt: skip

    def should_evaluate(self, period: int) -> bool:
        """Whether ``period`` ends with an evaluation (``eval_every``; always the last)."""
        return self.plan.evaluates(period)

    def end_epoch(self, period: int, train_metrics: dict[str, Any], eval_metrics: dict[str, float] | None) -> None:
        """Record the period (history, best metrics, trackers, its line), then checkpoint when due."""
        self.records.end_period(period, train_metrics, eval_metrics)
        if self.plan.checkpoints(period):
            self.save_checkpoint()

    # --- pre-emption and the non-finite check, for custom loops ---------------------------------

    def stop_requested(self) -> bool:
        """Whether every process should stop now (:meth:`~dkl_train.preemption.Preemption.requested`)."""
        return self.preemption.requested()

    def preempt(self, period: int, progress: dict[str, Any]) -> NoReturn:
        """Save a mid-period checkpoint with ``progress``, then exit with :data:`PREEMPTED_EXIT_CODE`."""
        self.preemption.preempt(period, progress)

    def resumed_progress(self, period: int) -> dict[str, Any] | None:
        """The progress :meth:`preempt` saved inside ``period``, once (tensors on this device); else ``None``."""
        return self.preemption.resumed_progress(period, self.device)

    def watch_loss(self, loss: torch.Tensor, terms: dict[str, Any]) -> None:
        """Note on the device whether this step's ``loss`` is finite (:class:`~dkl_train.nonfinite.NonFiniteGuard`)."""
        self.guard.note(loss, terms)

    def raise_if_nonfinite(self, period: int) -> None:
        """Raise :class:`NonFiniteLossError` if a noted loss was NaN/inf (a sync and a collective)."""
        self.guard.check(period)

    def check_finite(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], period: int) -> None:
        """:meth:`watch_loss` and :meth:`raise_if_nonfinite` at once: a synchronisation per call (prefer the two)."""
        self.guard.note(loss, terms)
        self.guard.check(period)

    # --- checkpoints and results ------------------------------------------------------------------

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint folder."""
        return self.checkpoints.latest()

    def save_checkpoint(self) -> Path:
        """Save the run as ``checkpoints/<name>`` atomically (:class:`~dkl_train.checkpoints.Checkpoints`)."""
        return self.checkpoints.save()

    def resume(self) -> bool:
        """With ``resume=true``, load the newest usable checkpoint (model, optimiser, scheduler, RNG, registered
        objects, counters, position inside the period); whether one was loaded.

        Call it after ``prepare``, :meth:`build_scheduler` and registering every object.
        """
        if not self.config.resume:
            return False
        if self.checkpoints.resume() is None:
            self.print(f"resume=true: {self.checkpoint_dir} holds no checkpoint, starting from scratch")
            return False
        return True

    def save_model(self, model: nn.Module, name: str = "model.pth", **metadata: Any) -> Path:
        """Save the (unwrapped) weights in mdistiller's format (:meth:`~dkl_train.records.RunRecords.save_model`)."""
        return self.records.save_model(model, name, **metadata)

    def finish(self, final_metrics: dict[str, float] | None = None, extra: dict[str, Any] | None = None) -> dict:
        """Write ``results.json`` and close the trackers (:meth:`~dkl_train.records.RunRecords.finish`)."""
        return self.records.finish(final_metrics, extra)


def main_process_printer(accelerator: Any) -> Callable[[str], None]:
    """A ``say(text)`` that prints on the main process only, above any progress bar (holds no run)."""

    def say(text: str) -> None:
        if accelerator.is_main_process:
            write(text)

    return say
