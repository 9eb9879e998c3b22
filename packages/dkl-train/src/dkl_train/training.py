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
  continues exactly;
- :meth:`Run.train_epoch`: one epoch of ``compute_loss`` -> backward -> step with a progress bar on
  the main process, a stop with a clear error on a non-finite loss, and throughput accounting;
- :func:`evaluate`: top-1/top-5 with ``gather_for_metrics`` (N processes give the numbers one gives);
- :meth:`Run.finish`: ``results.json`` (config, final and best metrics, per-epoch history,
  wall-clock, throughput, git revision), written atomically.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from torch import nn
from tqdm.auto import tqdm

from .config import BaseConfig, config_to_dict, flat_hparams, save_config
from .data import TransformedDataset, make_loader
from .results import git_revision, write_json_atomic

CHECKPOINT_PREFIX = "epoch_"
TMP_PREFIX = ".tmp_"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the loss terms."""


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

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


# ----------------------------------------------------------------------------------------------
# Optimiser and learning rate (a pure function of the epoch, so resuming needs no scheduler state)


def build_optimizer(config: BaseConfig, params: Iterable[Any]) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay on all parameters, as mdistiller) or AdamW, from the config."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=config.nesterov
        )
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def learning_rate(config: BaseConfig, epoch: int) -> float:
    """The learning rate of (0-based) ``epoch``: optional linear warm-up, then multistep / cosine / constant.

    ``multistep`` multiplies by ``lr_decay_rate`` once per milestone ``m <= epoch`` (mdistiller's
    1-based ``epoch > m``), so with milestones 150/180/210 epoch index 150 is the first decayed one.
    """
    if epoch < config.lr_warmup_epochs:
        return config.lr * (epoch + 1) / config.lr_warmup_epochs
    if config.lr_schedule == "multistep":
        return config.lr * config.lr_decay_rate ** sum(epoch >= m for m in config.lr_milestones)
    if config.lr_schedule == "cosine":
        return 0.5 * config.lr * (1.0 + math.cos(math.pi * epoch / max(config.epochs, 1)))
    return config.lr


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


# ----------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    accelerator: Accelerator,
    *,
    input_key: str = "image",
    progress: str | None = None,
) -> dict[str, float]:
    """Top-1, top-5 (%) and mean cross-entropy of ``model`` over a loader prepared by ``accelerator``.

    Per-sample results go through ``gather_for_metrics``, which drops the samples Accelerate repeats
    to give every process an equal share, so the numbers do not depend on the number of processes.
    Works for models that were not prepared (a KD teacher): the forward runs under the accelerator's
    autocast.
    """
    was_training = model.training
    model.eval()
    correct1, correct5, losses = [], [], []
    batches = tqdm(loader, desc=progress, leave=False, disable=progress is None or not accelerator.is_main_process)
    for batch in batches:
        images, labels = batch[input_key], batch["label"]
        with accelerator.autocast():
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(labels[:, None])
        loss = nn.functional.cross_entropy(logits, labels, reduction="none")
        c1, c5, lo = accelerator.gather_for_metrics((hits[:, 0], hits.any(dim=1), loss))
        correct1.append(c1.cpu())
        correct5.append(c5.cpu())
        losses.append(lo.cpu())
    model.train(was_training)
    if not correct1:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"), "samples": 0}
    c1, c5, lo = torch.cat(correct1), torch.cat(correct5), torch.cat(losses)
    return {
        "top1": 100.0 * c1.float().mean().item(),
        "top5": 100.0 * c5.float().mean().item(),
        "loss": lo.mean().item(),
        "samples": int(c1.numel()),
    }


# ----------------------------------------------------------------------------------------------
# The run


class Run:
    """One training run: accelerator, run folder, state, checkpoints, logging and results.

    Args:
        config: the recipe's resolved config (a :class:`~dkl_train.config.BaseConfig` subclass).
        tracker_name: sub-folder of the run folder that holds the tensorboard logs.

    Creating it seeds everything (``config.seed``), writes ``config.yaml`` and logs the config as
    tensorboard hparams. It refuses to start over an existing run's checkpoints unless
    ``resume=true`` (so a typo in ``output_dir`` never mixes two runs).
    """

    def __init__(self, config: BaseConfig, tracker_name: str = "tb") -> None:
        self.config = config
        self.run_dir = Path(config.output_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        # `accelerate launch --multi_gpu --num_processes N` on a machine without CUDA: Accelerate 1.x only
        # picks the multi-process CPU (gloo) mode when told `cpu=True`; otherwise every process believes
        # it is a lone main process and they all write the same files.
        cpu_processes = "LOCAL_RANK" in os.environ and not torch.cuda.is_available()
        self.accelerator = Accelerator(
            cpu=cpu_processes,
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir)),
        )
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != self.accelerator.num_processes:
            raise RuntimeError(
                f"launched as {launched} processes but Accelerate runs {self.accelerator.num_processes}; "
                "check the `accelerate launch` options (e.g. --multi_gpu --num_processes N)"
            )
        set_seed(config.seed, deterministic=config.deterministic)
        world = self.accelerator.num_processes * config.gradient_accumulation_steps
        if config.batch_size % world:
            raise ValueError(
                f"batch_size={config.batch_size} (global) must be divisible by num_processes x "
                f"gradient_accumulation_steps = {self.accelerator.num_processes} x {config.gradient_accumulation_steps}"
            )
        self.micro_batch_size = config.batch_size // world  # per process, per forward pass
        if self.latest_checkpoint() is not None and not config.resume:
            raise FileExistsError(
                f"{self.run_dir} already holds checkpoints of a run; pass resume=true to continue it, "
                f"or choose another output_dir=..."
            )
        self.state = TrainingState()
        self.accelerator.register_for_checkpointing(self.state)
        self._start_time = time.perf_counter()
        if self.accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.run_dir / "config.yaml")
        self.accelerator.init_trackers(tracker_name, config=flat_hparams(config))

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
            tqdm.write(" ".join(str(a) for a in args))

    def prepare(self, *objects: Any) -> Any:
        return self.accelerator.prepare(*objects)

    def register_for_checkpointing(self, *objects: Any) -> None:
        """Objects with ``state_dict``/``load_state_dict`` (class prior, EMA) saved in every checkpoint.

        Register them in the same order in every run, before :meth:`resume`.
        """
        self.accelerator.register_for_checkpointing(*objects)

    def train_loader(self, dataset: TransformedDataset) -> Any:
        """A prepared, per-epoch-shuffled training loader with this run's micro-batch size and limits."""
        loader = make_loader(
            dataset, self.micro_batch_size, train=True, num_workers=self.config.num_workers, seed=self.config.seed
        )
        if self.config.max_steps_per_epoch:
            # Truncate the epoch in the sampler, so every loader ends cleanly (Accelerate tracks the end).
            loader.sampler.num_samples = self.config.max_steps_per_epoch * self.config.batch_size
        return self.accelerator.prepare(loader)

    def eval_loader(self, dataset: TransformedDataset) -> Any:
        """A prepared evaluation loader (in order, nothing dropped)."""
        loader = make_loader(dataset, self.config.eval_batch_size, train=False, num_workers=self.config.num_workers)
        return self.accelerator.prepare(loader)

    # --- epochs -------------------------------------------------------------------------------

    def epochs(self) -> Iterator[int]:
        """The (0-based) epochs still to run: all of them, or those after the resumed checkpoint."""
        end = self.config.epochs
        if self.config.stop_after_epochs:
            end = min(end, self.config.stop_after_epochs)  # a simulated interruption (resume tests)
        return iter(range(self.state.epoch, end))

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
        """One epoch: for each batch ``loss, terms = compute_loss(batch)``, backward, optimiser step.

        ``compute_loss`` returns the loss to minimise and a dict of detached scalar terms to log.
        ``after_step`` runs after every optimiser step (e.g. to remove an AWP perturbation). Gradient
        accumulation and mixed precision are Accelerate's. Returns the epoch's training metrics
        (means over all processes): ``train_loss``, each term, ``lr``, ``images_per_s``.
        """
        accelerator = self.accelerator
        model.train()
        set_learning_rate(optimizer, learning_rate(self.config, epoch))
        loader.set_epoch(epoch)
        sums: dict[str, torch.Tensor] = {}
        micro_losses: list[torch.Tensor] = []
        micro_steps = 0
        images = 0
        start = time.perf_counter()
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{self.config.epochs}",
            leave=False,
            dynamic_ncols=True,
            disable=not accelerator.is_main_process,
        )
        for batch in bar:
            with accelerator.accumulate(model):
                loss, terms = compute_loss(batch)
                self.check_finite(loss, terms, epoch)
                accelerator.backward(loss)
                if clip_grad_norm is not None and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), clip_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            micro_steps += 1
            images += int(batch["label"].shape[0])
            detached = loss.detach().float()
            micro_losses.append(detached)
            for name, value in {"loss": detached, **terms}.items():
                value = torch.as_tensor(value, device=detached.device).detach().float()
                sums[name] = sums.get(name, torch.zeros((), device=detached.device)) + value
            if accelerator.sync_gradients:
                self.state.global_step += 1
                if after_step is not None:
                    after_step()
                if self.state.global_step % self.config.log_every == 0:
                    self._log_step(detached, terms, optimizer)
                    bar.set_postfix(loss=f"{detached.item():.4f}")
        seconds = time.perf_counter() - start
        names = sorted(sums)
        means = accelerator.reduce(torch.stack([sums[n] for n in names]) / max(micro_steps, 1), reduction="mean")
        metrics: dict[str, Any] = {("train_loss" if n == "loss" else n): v for n, v in zip(names, means.tolist())}
        total_images = int(accelerator.reduce(torch.tensor(images, device=self.device), reduction="sum").item())
        self.state.train_seconds += seconds
        self.state.train_images += total_images
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        metrics["images_per_s"] = total_images / seconds if seconds > 0 else float("nan")
        if self.config.log_step_losses and micro_losses:
            accum = self.config.gradient_accumulation_steps
            per_step = torch.stack(micro_losses)
            per_step = per_step[: len(per_step) // accum * accum].view(-1, accum).mean(dim=1)
            gathered = accelerator.gather(per_step[None])  # [processes, steps]
            metrics["step_losses"] = gathered.mean(dim=0).tolist()
        return metrics

    def check_finite(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], epoch: int) -> None:
        """Raise :class:`NonFiniteLossError` (naming the epoch, step and loss terms) if ``loss`` is NaN/inf."""
        if torch.isfinite(loss.detach()).all():
            return
        shown = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
        last = self.latest_checkpoint()
        raise NonFiniteLossError(
            f"non-finite loss {float(loss):.4g} at epoch {epoch + 1}, optimiser step {self.state.global_step + 1} "
            f"(terms: {shown or 'none'}). Nothing was saved for this epoch; the last good checkpoint is "
            f"{last if last else 'none'}. Lower the learning rate or the loss weights, or try mixed_precision=no."
        )

    def _log_step(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        values = {"train/loss_step": float(loss), "train/lr": optimizer.param_groups[0]["lr"]}
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

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint folder (temporary folders of interrupted saves are ignored)."""
        if not self.checkpoint_dir.is_dir():
            return None
        done = sorted(p for p in self.checkpoint_dir.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))
        return done[-1] if done else None

    def save_checkpoint(self) -> Path:
        """Save the accelerator state into ``checkpoints/.tmp_epoch_XXXX``, then rename it to ``epoch_XXXX``."""
        accelerator = self.accelerator
        name = f"{CHECKPOINT_PREFIX}{self.state.epoch:04d}"
        final = self.checkpoint_dir / name
        tmp = self.checkpoint_dir / f"{TMP_PREFIX}{name}"
        if accelerator.is_main_process:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._prune_checkpoints()
        accelerator.wait_for_everyone()
        return final

    def _prune_checkpoints(self) -> None:
        keep = max(self.config.keep_checkpoints, 1)
        done = sorted(p for p in self.checkpoint_dir.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.checkpoint_dir.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)

    def resume(self) -> bool:
        """With ``resume=true``, load the newest complete checkpoint (model, optimiser, RNG, registered objects).

        Call it after ``prepare`` and after registering every object. Returns whether a checkpoint was
        loaded; ``resume=true`` with no checkpoint starts from scratch (and says so).
        """
        if not self.config.resume:
            return False
        latest = self.latest_checkpoint()
        if latest is None:
            self.print(f"resume=true but {self.checkpoint_dir} holds no checkpoint: starting from scratch")
            return False
        self.accelerator.load_state(str(latest))
        self.print(f"resumed from {latest} (epoch {self.state.epoch}, step {self.state.global_step})")
        return True

    # --- results ------------------------------------------------------------------------------

    def save_model(self, model: nn.Module, name: str = "model.pth", **metadata: Any) -> Path:
        """Save the (unwrapped) weights as ``{"model": state_dict, **metadata}`` in the run folder.

        That is mdistiller's teacher format, so a model trained here (e.g. the digits teacher) loads
        with ``dkl_train.models.load_checkpoint`` exactly like a published checkpoint. Written to a
        temporary file and renamed.
        """
        path = self.run_dir / name
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            state = {k: v.detach().cpu() for k, v in self.accelerator.unwrap_model(model).state_dict().items()}
            tmp = path.with_name(f".{name}.tmp")
            torch.save({"model": state, "epoch": self.state.epoch, **metadata}, tmp)
            os.replace(tmp, path)
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
            "config": config_to_dict(self.config),
            "final": final_metrics,
            "best": {k: {"value": v, "epoch": state.best_epoch.get(k)} for k, v in state.best.items()},
            "history": state.history,
            "epochs_completed": state.epoch,
            "global_steps": state.global_step,
            "wall_clock_s": state.wall_seconds,
            "train_images_per_s": state.train_images / state.train_seconds if state.train_seconds else None,
            "num_processes": self.accelerator.num_processes,
            "mixed_precision": self.config.mixed_precision,
            "device": str(self.device),
            "git_revision": git_revision(),
            "versions": _versions(),
            **(extra or {}),
        }
        if self.accelerator.is_main_process:
            write_json_atomic(payload, self.run_dir / "results.json")
        self.accelerator.end_training()
        return payload


def _versions() -> dict[str, str]:
    import accelerate

    return {"torch": torch.__version__, "accelerate": accelerate.__version__}
