"""Training helpers on Accelerate, shared by every recipe: the run folder, the epoch loop's plumbing, checkpoints.

A recipe owns its model, optimiser and loss; :class:`Run` owns everything around them:

- the :class:`~accelerate.Accelerator` (mixed precision, gradient accumulation, multi-process via
  ``accelerate launch``) and the run folder (``config.yaml``, ``tb/`` tensorboard logs,
  ``checkpoints/epoch_XXXX``, ``results.json``);
- checkpoints through ``accelerator.save_state`` with the :class:`TrainingState` (epoch and step
  counters, best metrics, history) and any object the recipe registers (class prior, EMA). Each
  checkpoint is written into a temporary folder and renamed into place, so an interrupted save never
  leaves a checkpoint that :meth:`Run.resume` would pick up; the newest ``keep_checkpoints`` are kept.
  (Accelerate's ``automatic_checkpoint_naming`` writes straight into the final folder, which is why
  the folders are named here instead.) ``resume=true`` restores the newest one, RNG states included;
  the data order depends only on ``(seed, epoch)`` (see :mod:`dkl_train.data`), so the resumed run
  continues exactly; without a checkpoint it starts a new run (requeued cluster jobs). What a resume
  may change, and a finished run left alone, are :mod:`dkl_train.resuming`'s. A damaged newest checkpoint (a missing, truncated or unreadable
  file; each checkpoint lists its files and sizes in ``checkpoint.json``) is moved aside to
  ``damaged_<name>`` with a warning naming it and the previous complete checkpoint, which is loaded
  instead; when none is usable the run stops with a :class:`CheckpointError` naming each damaged file
  (the folder format, atomic writes and damage checks live in :mod:`dkl_train.checkpoints`);
- pre-emption: on SIGTERM or SIGUSR1 (what SLURM sends before a time limit or on pre-emption) every
  process finishes its current optimiser step; the processes agree on the step to stop after, save
  a checkpoint ``epoch_XXXX_step_YYYYYYYY`` that also holds the position inside the epoch (the
  batches already done, skipped on resume; the partial epoch metrics; each process's registered
  objects, e.g. the class prior's running sums), and exit with :data:`PREEMPTED_EXIT_CODE` (143 =
  128 + SIGTERM, the status a shell reports for a job ended by SIGTERM, so job scripts treat both
  alike: requeue with ``resume=true``; ``accelerate launch`` itself does not pass it on). Data-loader
  workers ignore these signals (:func:`dkl_train.data.ignore_stop_signals`), and starting a loader's
  iterator leaves the training RNG untouched, so the resumed run equals an uninterrupted one exactly.
  Further signals during the save are noted and ignored; the save stays atomic;
- :meth:`Run.train_steps` (:meth:`Run.train_epoch` per epoch): ``compute_loss`` -> backward -> step with a
  progress bar on a terminal (:mod:`dkl_train.progress`), a stop with a clear error on a non-finite loss, and throughput accounting. No step
  waits for the device: the loss is checked on the device (:meth:`Run.watch_loss`) and the host reads
  the result at logging steps and at the end of the epoch (:meth:`Run.raise_if_nonfinite`), so the
  error names the first bad step and the steps run since the previous check;
- the input pipeline: loaders from :meth:`Run.train_loader`/:meth:`Run.eval_loader` copy ``uint8``
  batches from pinned memory without blocking and normalise them on the device
  (:class:`~dkl_train.data.DeviceLoader`); ``channels_last`` and ``cudnn_benchmark`` are config options;
- :func:`~dkl_train.evaluation.evaluate`: top-1/top-5 with ``gather_for_metrics`` (N processes give the numbers one gives);
- :meth:`Run.finish`: ``results.json`` (config, final and best metrics, per-epoch history,
  wall-clock, throughput, git revision), written atomically.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, gather_object, set_seed
from torch import nn

from .atomic import write_atomic
from .checkpoints import (
    CheckpointError,
    checkpoint_folders,
    checkpoint_name,
    damaged_path,
    move_aside,
    restore_checkpoint,
    write_checkpoint,
)
from .config import BaseConfig, accelerator_precision, config_to_dict, flat_hparams, save_config
from .data import DeviceLoader, TransformedDataset, make_loader, to_device
from .errors import UserError
from .evaluation import evaluate
from .launch import (
    accelerate_config_file,
    check_trackers,
    gpu_backend_on_cpu_warning,
    launch_sources,
    launcher_options,
    start_trackers,
    unused_gpu_warning,
)
from .nonfinite import LossWatch, NonFiniteLossError, as_scalar, nonfinite_advice
from .optim import learning_rate, set_learning_rate
from .preemption import PREEMPTED_EXIT_CODE, StopSignals
from .progress import progress_bar, write
from .results import git_revision, write_json_atomic
from .resuming import check_resumable
from .run_lock import hold_run_folder

__all__ = ["PREEMPTED_EXIT_CODE", "NonFiniteLossError", "Run", "RunExistsError", "TrainingState", "evaluate"]


class RunExistsError(UserError, FileExistsError):
    """``output_dir`` holds another run's checkpoints and ``resume`` is off."""


@dataclass
class TrainingState:
    """Counters and records that must survive a resume (registered for checkpointing)."""

    epoch: int = 0  # completed epochs
    global_step: int = 0  # completed optimiser steps
    best: dict[str, float] = field(default_factory=dict)  # best value of each evaluation metric
    best_epoch: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch
    train_seconds: float = 0.0  # time inside train_epoch (for throughput)
    train_images: int = 0  # images processed by all processes
    wall_seconds: float = 0.0  # whole epochs including evaluation and checkpoints
    # A mid-epoch (pre-emption) checkpoint: {"epoch": e, ...} with this process's position and running
    # sums inside epoch e (see Run.preempt); None at epoch boundaries.
    partial: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


# ----------------------------------------------------------------------------------------------
# The run


class Run:
    """One training run: accelerator, run folder, state, checkpoints, logging and results.

    Args:
        config: the recipe's resolved config (a :class:`~dkl_train.config.BaseConfig` subclass).
        tracker_name: the trackers' project name; for TensorBoard, the sub-folder of the run folder
            that holds its logs.

    Creating it seeds everything (``config.seed``), writes ``config.yaml``, logs the config as hparams
    to the ``report_to`` trackers and prints one line saying how it was launched: processes, machines,
    device, precision, and where each came from (see :func:`launch_sources`). It refuses to start over an existing run's checkpoints unless
    ``resume=true`` (so a typo in ``output_dir`` never mixes two runs).
    """

    def __init__(self, config: BaseConfig, tracker_name: str = "tb") -> None:
        self.config = config
        self.run_dir = Path(config.output_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        check_trackers(config.report_to)
        # `accelerate launch --multi_gpu --num_processes N` on a machine without CUDA: Accelerate 1.x only
        # picks the multi-process CPU (gloo) mode when told `cpu=True`; otherwise every process believes
        # it is a lone main process and they all write the same files.
        cpu_processes = "LOCAL_RANK" in os.environ and not torch.cuda.is_available()
        self.accelerator = Accelerator(
            cpu=cpu_processes,
            # Batches are copied from pinned memory while the device computes (see data.make_loader).
            dataloader_config=DataLoaderConfiguration(non_blocking=True),
            # auto: None, so the launcher's choice (ACCELERATE_MIXED_PRECISION) stands; explicit values win.
            mixed_precision=accelerator_precision(config.mixed_precision),
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=list(config.report_to) or None,
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir)),
        )
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != self.accelerator.num_processes:
            raise RuntimeError(
                f"launched as {launched} processes but Accelerate runs {self.accelerator.num_processes}; "
                "check the `accelerate launch` options (e.g. --multi_gpu --num_processes N)"
            )
        self._print_launch()
        set_seed(config.seed, deterministic=config.deterministic)
        if config.cudnn_benchmark:  # fixed input sizes: time each convolution's algorithms once, keep the fastest
            torch.backends.cudnn.benchmark = True
        self._loss_watch = LossWatch()
        self.stop_signals = StopSignals(self.accelerator.num_processes)  # SIGTERM/SIGUSR1 -> an agreed stop step
        world = self.accelerator.num_processes * config.gradient_accumulation_steps
        if config.batch_size % world:
            raise ValueError(
                f"batch_size={config.batch_size} (global) must be divisible by num_processes x "
                f"gradient_accumulation_steps = {self.accelerator.num_processes} x {config.gradient_accumulation_steps}"
            )
        self.micro_batch_size = config.batch_size // world  # per process, per forward pass
        make_run_dir(self.run_dir)
        hold_run_folder(self.run_dir, self.accelerator)  # before reading the folder: one run at a time
        latest = self.latest_checkpoint()
        if latest is not None:
            if not config.resume:
                results = self.run_dir / "results.json"
                finished = f" (finished: {results})" if results.is_file() else ""
                raise RunExistsError(
                    f"{self.run_dir} already holds a run{finished}, up to checkpoint {latest.name}; pass resume=true "
                    "to continue it, or choose another output_dir=..."
                )
            check_resumable(config, self.run_dir, latest, self.print)  # may end here: a finished run
        self.state = TrainingState()
        self.accelerator.register_for_checkpointing(self.state)
        self._start_time = time.perf_counter()
        if self.accelerator.is_main_process:
            save_config(config, self.run_dir / "config.yaml")
        self.tracker_dir = self.run_dir / tracker_name if "tensorboard" in config.report_to else None
        start_trackers(self.accelerator, tracker_name, flat_hparams(config), run_name=self.run_dir.name)

    def _print_launch(self) -> None:
        """One line: processes, machines, device, precision and the source of each; warn about idle GPUs and a gpu
        data backend without a GPU."""
        accelerator = self.accelerator
        options = launcher_options()
        config_file, file_values = accelerate_config_file(options)
        sources = launch_sources(self.config.mixed_precision, options, config_file, file_values, dict(os.environ))
        machines = int(os.environ.get("GROUP_WORLD_SIZE", "1"))  # torchrun's node count (1: one machine)
        launcher_precision = os.environ.get("ACCELERATE_MIXED_PRECISION")
        overridden = (
            f"; overrides the launcher's {launcher_precision}"
            if sources["precision"] == "run config" and launcher_precision not in (None, accelerator.mixed_precision)
            else ""
        )
        self.print(
            f"launch: {accelerator.num_processes} process(es) ({sources['processes']}), {machines} machine(s) "
            f"({sources['machines']}), device {accelerator.device.type} ({sources['device']}), precision "
            f"{accelerator.mixed_precision} ({sources['precision']}{overridden})"
        )
        used_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if accelerator.device.type == "cuda" else 0
        notices = [
            unused_gpu_warning(torch.cuda.device_count() if torch.cuda.is_available() else 0, used_here),
            gpu_backend_on_cpu_warning(self.config.data_backend, accelerator.device.type),
        ]
        for warning in filter(None, notices):
            self.print(warning)

    # --- small conveniences -------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    def print(self, *args: Any) -> None:
        """Print once (main process), above any progress bar."""
        if self.accelerator.is_main_process:
            write(" ".join(str(a) for a in args))

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

    # --- epochs -------------------------------------------------------------------------------

    def epochs(self) -> Iterator[int]:
        """The (0-based) epochs still to run: all of them, or those after the resumed checkpoint.

        While it runs, SIGTERM and SIGUSR1 ask the run to stop after its current optimiser step (see
        :meth:`stop_requested`; a signal between epochs stops the run after the next epoch's first
        step). The previous signal handlers come back at the end.
        """
        end = self.config.epochs
        if self.config.stop_after_epochs:
            end = min(end, self.config.stop_after_epochs)  # a simulated interruption (resume tests)
        self.stop_signals.install()
        try:
            yield from range(self.state.epoch, end)
        finally:
            self.stop_signals.complete_pending()  # every process posted it: complete it before any teardown
            self.stop_signals.restore()

    def train_epoch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: Any,
        compute_loss: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]],
        epoch: int,
        *,
        after_step: Callable[[], None] | None = None,
        clip_grad_norm: float | None = None,
    ) -> dict[str, Any]:
        """One epoch of an epoch-based recipe: the epoch's learning rate, then :meth:`train_steps` over ``loader``.

        Resumed inside the epoch, the loader skips the batches already done (Accelerate's
        ``skip_first_batches``: their samples are never loaded).
        """
        set_learning_rate(optimizer, learning_rate(self.config, epoch))
        loader.set_epoch(epoch)

        def batches(done: int) -> Iterable[Any]:
            return _skip_first(loader, done) if done else loader

        return self.train_steps(
            model, optimizer, batches, compute_loss, epoch,
            total=len(loader), after_step=after_step, clip_grad_norm=clip_grad_norm,
        )  # fmt: skip

    def train_steps(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        batches: Callable[[int], Iterable[Any]],
        compute_loss: Callable[[Any], tuple[torch.Tensor, dict[str, torch.Tensor]]],
        period: int,
        *,
        total: int,
        lr_at_step: Callable[[int], float] | None = None,
        after_step: Callable[[], None] | None = None,
        clip_grad_norm: float | None = None,
        images_in: Callable[[Any], int] = lambda batch: int(batch["label"].shape[0]),
    ) -> dict[str, Any]:
        """The training loop of every recipe: one period (an epoch, or SSL's iterations between evaluations).

        ``batches(done)`` gives this process's micro-batches of the period after the first ``done`` (0
        unless resumed inside the period); ``total`` is their number when ``done`` is 0. For each one:
        ``loss, terms = compute_loss(batch)`` (the loss to minimise and detached scalar terms to log),
        backward, optimiser step. ``lr_at_step(step)`` sets the learning rate before optimiser step ``step``
        (0-based, counted over the run; e.g. a per-iteration schedule, as nanoGPT's ``get_lr(it)``);
        without it the caller sets it (per epoch). ``after_step`` runs after every optimiser step (an EMA
        update, removing an AWP perturbation). Gradient accumulation and mixed precision are Accelerate's.
        Returns the period's training metrics (means over all processes): ``train_loss``, each term,
        ``lr``, ``images_per_s`` (with ``images_in(batch)`` images per micro-batch on this process).

        After a stop signal the period ends after the step the processes agree on, with a mid-period
        checkpoint (:meth:`preempt`); resumed from it, the loop continues from ``batches(done)`` with the
        saved running sums, so its metrics are those of the uninterrupted period.
        """
        accelerator = self.accelerator
        model.train()
        partial = self.resumed_progress(period) or {}
        done = int(partial.get("batches", 0))  # this process's micro-batches of the period already trained
        sums: dict[str, torch.Tensor] = partial.get("sums", {})
        micro_losses: list[torch.Tensor] = partial.get("micro_losses", [])
        micro_steps = done
        images = int(partial.get("images", 0))
        start = time.perf_counter() - float(partial.get("seconds", 0.0))
        bar = progress_bar(
            total=total, initial=done, desc=f"epoch {period + 1}/{self.config.epochs}", show=self.is_main_process
        )
        base_lr = None
        for batch in _without_rng_draw(batches(done)):
            if lr_at_step is not None:
                base_lr = lr_at_step(self.state.global_step)
                set_learning_rate(optimizer, base_lr)
            with accelerator.accumulate(model):
                loss, terms = compute_loss(batch)
                self.watch_loss(loss, terms)  # on the device; read at logging steps and at the end
                accelerator.backward(loss)
                if clip_grad_norm is not None and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), clip_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            micro_steps += 1
            bar.update()
            images += images_in(batch)
            detached = loss.detach().float()
            micro_losses.append(detached)
            for name, value in {"loss": detached, **terms}.items():
                value = as_scalar(value, detached.device)
                sums[name] = sums.get(name, torch.zeros((), device=detached.device)) + value
            if accelerator.sync_gradients:
                self.state.global_step += 1
                if after_step is not None:
                    after_step()
                if self.state.global_step % self.config.log_every == 0:
                    self.raise_if_nonfinite(period)  # the host reads the device here anyway
                    self._log_step(detached, terms, optimizer, base_lr)
                    bar.set_postfix(loss=f"{detached.item():.4f}")
                if self.stop_requested():
                    bar.close()
                    self.raise_if_nonfinite(period)  # never checkpoint weights a bad step has touched
                    self.preempt(period, _progress(micro_steps, sums, micro_losses, images, start))
        bar.close()
        self.raise_if_nonfinite(period)
        if self.stop_signals.agreed(wait=True):  # a signal during the period's last step: save before evaluating
            self.preempt(period, _progress(micro_steps, sums, micro_losses, images, start))
        seconds = time.perf_counter() - start
        names = sorted(sums)
        means = accelerator.reduce(torch.stack([sums[n] for n in names]) / max(micro_steps, 1), reduction="mean")
        metrics: dict[str, Any] = {("train_loss" if n == "loss" else n): v for n, v in zip(names, means.tolist())}
        total_images = int(accelerator.reduce(torch.tensor(images, device=self.device), reduction="sum").item())
        self.state.train_seconds += seconds
        self.state.train_images += total_images
        metrics["lr"] = optimizer.param_groups[0]["lr"] if base_lr is None else base_lr  # before layer-wise scales
        metrics["images_per_s"] = total_images / seconds if seconds > 0 else float("nan")
        if self.config.log_step_losses and micro_losses:
            accum = self.config.gradient_accumulation_steps
            per_step = torch.stack(micro_losses)
            per_step = per_step[: len(per_step) // accum * accum].view(-1, accum).mean(dim=1)
            gathered = accelerator.gather(per_step[None])  # [processes, steps]
            metrics["step_losses"] = gathered.mean(dim=0).tolist()
        return metrics

    # --- pre-emption --------------------------------------------------------------------------

    def stop_requested(self) -> bool:
        """Whether every process should stop now; call it on every process after every optimiser step.

        The processes agree (:class:`~dkl_train.preemption.StopSignals`): the answer is the same on every
        process, one step after the first process saw a signal, without a host-device synchronisation.
        """
        return self.stop_signals.agreed(wait=False)

    def preempt(self, epoch: int, progress: dict[str, Any]) -> NoReturn:
        """Save a mid-epoch checkpoint of the run as it is now, then exit with :data:`PREEMPTED_EXIT_CODE`.

        ``progress`` is this process's state inside ``epoch``: the position and running sums its loop
        needs to continue, handed back by :meth:`resumed_progress` after the resume. Every process
        must call it after the same step.
        """
        self.state.partial = {"epoch": epoch, **progress}
        path = self.save_checkpoint()
        self.state.partial = None
        signals = self.stop_signals
        ignored = f"; {signals.extra} more signal(s) after the first were ignored" if signals.extra else ""
        self.print(
            f"{signals.first_name}: stopped after optimiser step {self.state.global_step} (inside epoch {epoch + 1}); "
            f"checkpoint {path}{ignored}. Exiting with status {signals.exit_code}; continue with resume=true."
        )
        self.accelerator.end_training()
        self.stop_signals.restore()  # (signals until here are still only counted)
        raise SystemExit(signals.exit_code)  # 143, or 130 after Ctrl-C

    def resumed_progress(self, epoch: int) -> dict[str, Any] | None:
        """The progress :meth:`preempt` saved inside ``epoch``, once (tensors on this device); else ``None``."""
        partial = self.state.partial
        if partial is None or partial.get("epoch") != epoch:
            return None
        self.state.partial = None
        return {k: to_device(v, self.device) for k, v in partial.items() if k != "epoch"}

    def watch_loss(self, loss: torch.Tensor, terms: dict[str, Any]) -> None:
        """Note on the device whether this step's ``loss`` is finite (no host-device synchronisation).

        The step is optimiser step ``global_step + 1`` (the one this micro-batch contributes to). Call
        :meth:`raise_if_nonfinite` from time to time (every process, at the same steps) to act on it.
        """
        self._loss_watch.note(self.state.global_step + 1, loss, terms)

    def raise_if_nonfinite(self, epoch: int) -> None:
        """Raise :class:`NonFiniteLossError` if a loss noted by :meth:`watch_loss` since the run started was NaN/inf.

        Reads the device's record (a synchronisation: call it at logging steps and at the end of an
        epoch, not every step) on every process together (a collective), so all stop, naming the first
        bad step of any process with its loss terms, and the steps run since the previous check.
        """
        watch = self._loss_watch
        checked_from, watch.checked_through = watch.checked_through, self.state.global_step
        found = watch.first_bad(self.accelerator)
        if found is None:
            return
        step, terms, loss = found
        shown = ", ".join(f"{name}={value:.4g}" for name, value in terms.items())
        last = self.latest_checkpoint()
        checked = (
            f"; found at the check after step {self.state.global_step} (losses are checked at logging steps, "
            f"log_every={self.config.log_every}, and at the end of each epoch: steps "
            f"{checked_from + 1}-{self.state.global_step} ran since the previous check)"
            if self.state.global_step > step
            else ""
        )
        raise NonFiniteLossError(
            f"non-finite loss {loss:.4g} at epoch {epoch + 1}, optimiser step {step} (terms: {shown or 'none'})"
            f"{checked}. Nothing was saved for this epoch; the last good checkpoint is {last if last else 'none'}. "
            + nonfinite_advice(self.config.lr, self.accelerator.mixed_precision)
        )

    def check_finite(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], epoch: int) -> None:
        """:meth:`watch_loss` and :meth:`raise_if_nonfinite` at once: a synchronisation per call (prefer the two)."""
        self.watch_loss(loss, terms)
        self.raise_if_nonfinite(epoch)

    def _log_step(
        self, loss: torch.Tensor, terms: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, lr: float | None
    ) -> None:
        values = {"train/loss_step": float(loss), "train/lr": optimizer.param_groups[0]["lr"] if lr is None else lr}
        values.update({f"train/{k}_step": float(v) for k, v in terms.items()})
        self.accelerator.log(values, step=self.state.global_step)

    def should_evaluate(self, epoch: int) -> bool:
        last = epoch + 1 == self.config.epochs
        return last or (epoch + 1) % max(self.config.eval_every, 1) == 0

    def end_epoch(self, epoch: int, train_metrics: dict[str, Any], eval_metrics: dict[str, float] | None) -> None:
        """Record the epoch (history, best metrics, tensorboard), advance the counters, checkpoint when due."""
        self.state.epoch = epoch + 1
        entry: dict[str, Any] = {"epoch": epoch + 1, "global_step": self.state.global_step, **train_metrics}
        for key, value in (eval_metrics or {}).items():
            entry[f"test_{key}"] = value
            if key not in ("loss", "samples") and math.isfinite(value) and value > self.state.best.get(key, -math.inf):
                self.state.best[key] = value
                self.state.best_epoch[key] = epoch + 1
        now = time.perf_counter()
        self.state.wall_seconds += now - self._start_time
        self._start_time = now
        self.state.history.append(entry)
        scalars = {f"epoch/{k}": v for k, v in entry.items() if isinstance(v, int | float)}
        self.accelerator.log(scalars, step=self.state.global_step)
        summary = ", ".join(
            f"{k}={v:.4g}"
            for k, v in entry.items()
            if isinstance(v, float) and k not in ("lr", "images_per_s", "test_samples")
        )
        self.print(f"epoch {epoch + 1}/{self.config.epochs}: {summary}")
        last = epoch + 1 == self.config.epochs
        if last or (epoch + 1) % max(self.config.checkpoint_every, 1) == 0:
            self.save_checkpoint()

    # --- checkpoints --------------------------------------------------------------------------

    def _checkpoints(self) -> list[Path]:
        """The complete checkpoint folders, oldest first (their names sort in training order)."""
        return checkpoint_folders(self.checkpoint_dir)

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint folder (temporary folders of interrupted saves are ignored)."""
        done = self._checkpoints()
        return done[-1] if done else None

    def save_checkpoint(self) -> Path:
        """Save the run as ``checkpoints/<name>`` atomically (:func:`~dkl_train.checkpoints.write_checkpoint`).

        ``<name>`` is ``epoch_XXXX`` (completed epochs), plus ``_step_YYYYYYYY`` for a mid-epoch
        (pre-emption) checkpoint, which also holds each process's registered objects (inside an epoch,
        e.g. the class prior's running sums differ). Signals during the save only set flags (see
        :meth:`stop_requested`).
        """
        mid_epoch = self.state.partial is not None
        return write_checkpoint(
            self.accelerator,
            self.checkpoint_dir,
            checkpoint_name(self.state.epoch, self.state.global_step, mid_epoch),
            {"epoch": self.state.epoch, "global_step": self.state.global_step},
            mid_epoch=mid_epoch,
            keep=self.config.keep_checkpoints,
        )

    def resume(self) -> bool:
        """With ``resume=true``, load the newest usable checkpoint (model, optimiser, RNG,
        registered objects, counters, position inside the epoch).

        Call it after ``prepare`` and after registering every object. Returns whether a checkpoint was
        loaded; with no checkpoint the run starts from scratch (and says so). A damaged checkpoint (a
        file missing, shorter or longer than written, or unreadable) is moved aside to
        ``damaged_<name>`` with a warning, and the previous complete one is loaded; every process
        loads the same one. :class:`CheckpointError` when none is usable.
        """
        mode = self.config.resume
        if not mode:
            return False
        candidates = self._checkpoints()
        if not candidates:
            self.print(f"resume={str(mode).lower()}: {self.checkpoint_dir} holds no checkpoint, starting from scratch")
            return False
        damaged: list[tuple[Path, str]] = []
        for path in reversed(candidates):
            problem = self._load_checkpoint(path)
            problems = [p for p in gather_object([problem]) if p]  # agree: a file may fail on one process only
            if not problems:
                break
            damaged.append((path, problems[0]))
        else:
            listing = "; ".join(f"{path}: {problem}" for path, problem in damaged)
            raise CheckpointError(
                f"no usable checkpoint to resume from in {self.checkpoint_dir} ({listing}). Restore the damaged "
                f"files from a copy, or move {self.checkpoint_dir} away (or choose another output_dir=...) to "
                "start the run over."
            )
        for bad, problem in damaged:
            if self.is_main_process:
                move_aside(bad)
            self.print(
                f"warning: checkpoint {bad} is damaged ({problem}); moved it to {damaged_path(bad)} and resumed from the "
                f"previous complete checkpoint {path} instead (the training after it is done again)"
            )
        self.accelerator.wait_for_everyone()
        inside = self.state.partial
        where = f", inside epoch {inside['epoch'] + 1}" if inside is not None else ""
        self.print(f"resumed from {path} (epoch {self.state.epoch}, step {self.state.global_step}{where})")
        return True

    def _load_checkpoint(self, path: Path) -> str | None:
        """Load ``path`` into the run; ``None``, or what is wrong with it (the damaged file when known)."""
        self.state.partial = None  # a checkpoint without the field is an epoch boundary
        return restore_checkpoint(self.accelerator, path)

    # --- results ------------------------------------------------------------------------------

    def save_model(self, model: nn.Module, name: str = "model.pth", **metadata: Any) -> Path:
        """Save the (unwrapped) weights as ``{"model": state_dict, **metadata}`` in the run folder.

        That is mdistiller's teacher format, so a model trained here (e.g. the digits teacher) loads
        with ``dkl_train.models.load_checkpoint`` exactly like a published checkpoint. Written
        atomically (:func:`dkl_train.atomic.write_atomic`).
        """
        path = self.run_dir / name
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            state = {k: v.detach().cpu() for k, v in self.accelerator.unwrap_model(model).state_dict().items()}
            payload = {"model": state, "epoch": self.state.epoch, **metadata}
            write_atomic(path, lambda tmp: torch.save(payload, tmp))
        self.accelerator.wait_for_everyone()
        return path

    def finish(self, final_metrics: dict[str, float] | None = None, extra: dict[str, Any] | None = None) -> dict:
        """Write ``results.json`` (main process) and close the trackers; returns the payload.

        ``final_metrics`` defaults to the test metrics of the last epoch's history entry.
        """
        state = self.state
        if final_metrics is None:
            last = next((h for h in reversed(state.history) if "test_top1" in h), {})
            final_metrics = {k[len("test_") :]: v for k, v in last.items() if k.startswith("test_")}
        payload = {
            "recipe": type(self.config).recipe,
            "config": config_to_dict(self.config),
            "final": final_metrics,
            "best": {k: {"value": v, "epoch": state.best_epoch.get(k)} for k, v in state.best.items()},
            "history": state.history,
            "epochs_completed": state.epoch,
            "global_steps": state.global_step,
            "wall_clock_s": state.wall_seconds,
            "train_images_per_s": state.train_images / state.train_seconds if state.train_seconds else None,
            "num_processes": self.accelerator.num_processes,
            "mixed_precision": self.accelerator.mixed_precision,  # what ran (config auto: the launcher's)
            "device": str(self.device),
            "git_revision": git_revision(),
            "versions": _versions(),
            **(extra or {}),
        }
        results = self.run_dir / "results.json"
        if self.accelerator.is_main_process:
            write_json_atomic(payload, results)
        self.accelerator.end_training()
        self.print(f"results: {results}")
        if self.tracker_dir is not None:
            self.print(f"TensorBoard: {self.tracker_dir} (.venv/bin/tensorboard --logdir {self.tracker_dir})")
        report = self.run_dir.parent / "REPORT.md"
        self.print(f"report: {report}, mean +- std over the runs beside this one (make report RUNS={report.parent})")
        return payload


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


def _without_rng_draw(batches: Iterable[Any]) -> Iterator[Any]:
    """Iterate ``batches`` leaving the global CPU RNG as if the iterator had never been created.

    A DataLoader draws its workers' base seed from the global generator when an iterator starts: at
    every epoch without workers, only at the first with persistent ones, and again for a loader
    rebuilt to skip batches after a resume. The model's own draws (dropout, attack starts) would then
    depend on where the run was resumed; samples are seeded per ``(seed, epoch, index)`` anyway.
    """
    iterator = iter(batches)
    state = torch.get_rng_state()
    try:
        first = next(iterator)
    except StopIteration:
        return
    finally:
        torch.set_rng_state(state)
    yield first
    yield from iterator


def _progress(
    batches: int, sums: dict[str, torch.Tensor], micro_losses: list[torch.Tensor], images: int, start: float
) -> dict[str, Any]:
    """What :meth:`Run.train_epoch` needs to continue an epoch: position, running sums, timing."""
    elapsed = time.perf_counter() - start
    return {"batches": batches, "sums": sums, "micro_losses": micro_losses, "images": images, "seconds": elapsed}


def _skip_first(loader: Any, batches: int) -> Any:
    """``loader`` without the first ``batches`` batches of the epoch (resumed inside it); they are never loaded."""
    if isinstance(loader, DeviceLoader):
        return loader.skip_first(batches)
    return skip_first_batches(loader, batches)


def _versions() -> dict[str, str]:
    import accelerate

    return {"torch": torch.__version__, "accelerate": accelerate.__version__}
