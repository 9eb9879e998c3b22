"""The training loop of every recipe: one period of ``compute_loss`` -> backward -> optimiser and scheduler step.

:class:`TrainingLoop` reads no config: the run hands it the few numbers it needs (``log_every``,
``log_step_losses``) and its collaborators (the counters, the non-finite guard, the pre-emption); each
period it gets the model, optimiser, scheduler, batches, the loss callable and the ``after_step`` hook.
No step waits for the device: losses are checked at logging steps and at the period's end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator, skip_first_batches
from torch import nn

from .data import DeviceLoader
from .nonfinite import NonFiniteGuard, as_scalar
from .optim import StepScheduler
from .preemption import Preemption
from .progress import progress_bar
from .records import TrainingState

LossFn = Callable[[Any], tuple[torch.Tensor, dict[str, Any]]]


@dataclass
class PeriodSums:
    """One process's running sums inside a period: what a pre-emption saves and a resume continues from."""

    batches: int = 0  # micro-batches done
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # loss and each term, summed on the device
    micro_losses: list[torch.Tensor] = field(default_factory=list)
    images: int = 0
    start: float = field(default_factory=time.perf_counter)

    @classmethod
    def resumed(cls, progress: dict[str, Any] | None) -> PeriodSums:
        """The sums :meth:`progress` saved (a resume inside the period), or new ones."""
        progress = progress or {}
        return cls(
            int(progress.get("batches", 0)), progress.get("sums", {}), progress.get("micro_losses", []),
            int(progress.get("images", 0)), time.perf_counter() - float(progress.get("seconds", 0.0)),
        )  # fmt: skip

    def add(self, loss: torch.Tensor, terms: dict[str, Any], images: int) -> None:
        self.batches += 1
        self.images += images
        self.micro_losses.append(loss)
        for name, value in {"loss": loss, **terms}.items():
            value = as_scalar(value, loss.device)
            self.sums[name] = self.sums.get(name, torch.zeros((), device=loss.device)) + value

    def progress(self) -> dict[str, Any]:
        """What the loop needs to continue the period: position, running sums, timing."""
        seconds = time.perf_counter() - self.start
        return {"batches": self.batches, "sums": self.sums, "micro_losses": self.micro_losses,
                "images": self.images, "seconds": seconds}  # fmt: skip


class TrainingLoop:
    """Runs periods of training for a run.

    Args:
        accelerator: the run's (gradient accumulation, mixed precision, processes).
        state: the run's counters (``global_step``, ``train_seconds``, ``train_images``).
        guard: notes every loss on the device; checks at logging steps, before a pre-emption and at the end.
        preemption: asked after every optimiser step whether the processes agreed to stop.
        log_every: optimiser steps between logging steps (tracker scalars, progress bar, a finite-loss check).
        log_step_losses: also return every optimiser step's loss (``step_losses``).
    """

    def __init__(
        self,
        accelerator: Accelerator,
        state: TrainingState,
        guard: NonFiniteGuard,
        preemption: Preemption,
        *,
        log_every: int,
        log_step_losses: bool = False,
    ) -> None:
        self.accelerator, self.state, self.guard, self.preemption = accelerator, state, guard, preemption
        self.log_every, self.log_step_losses = log_every, log_step_losses

    def run_period(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: StepScheduler,
        batches: Callable[[int], Iterable[Any]],
        compute_loss: LossFn,
        period: int,
        *,
        total: int,
        label: str,
        after_step: Callable[[], None] | None = None,
        clip_grad_norm: float | None = None,
        images_in: Callable[[Any], int] = lambda batch: int(batch["label"].shape[0]),
    ) -> dict[str, Any]:
        """One period: for each micro-batch of ``batches(done)``, ``loss, terms = compute_loss(batch)``, backward, step.

        ``batches(done)`` gives this process's micro-batches after the first ``done`` (0 unless resumed inside
        the period); ``total`` is their number when ``done`` is 0. After each optimiser step the scheduler
        steps and ``after_step`` runs (an EMA update, removing an AWP perturbation). Returns the period's
        metrics, means over all processes: ``train_loss``, each term, ``lr`` (the period's last rate, before
        per-group scales), ``images_per_s`` (``images_in(batch)`` images per micro-batch on this process).

        After a stop signal the period ends after the step the processes agree on, with a mid-period
        checkpoint; resumed from it, the loop continues with the saved sums, so its metrics are those of
        the uninterrupted period.
        """
        accelerator, state = self.accelerator, self.state
        model.train()
        sums = PeriodSums.resumed(self.preemption.resumed_progress(period, accelerator.device))
        bar = progress_bar(total=total, initial=sums.batches, desc=label, show=accelerator.is_main_process)
        rate = scheduler.rate
        for batch in _without_rng_draw(batches(sums.batches)):
            with accelerator.accumulate(model):
                loss, terms = compute_loss(batch)
                self.guard.note(loss, terms)  # on the device; read at logging steps and at the end
                accelerator.backward(loss)
                if clip_grad_norm is not None and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), clip_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            bar.update()
            detached = loss.detach().float()
            sums.add(detached, terms, images_in(batch))
            if accelerator.sync_gradients:
                rate = scheduler.rate  # the rate this step used
                scheduler.step()
                state.global_step += 1
                if after_step is not None:
                    after_step()
                if state.global_step % self.log_every == 0:
                    self.guard.check(period)  # the host reads the device here anyway
                    self._log_step(detached, terms, rate)
                    bar.set_postfix(loss=f"{detached.item():.4f}")
                if self.preemption.requested():
                    bar.close()
                    self.guard.check(period)  # never checkpoint weights a bad step has touched
                    self.preemption.preempt(period, sums.progress())
        bar.close()
        self.guard.check(period)
        if self.preemption.agreed_at_end():  # a signal during the period's last step: save before evaluating
            self.preemption.preempt(period, sums.progress())
        return self._metrics(sums, rate)

    def _log_step(self, loss: torch.Tensor, terms: dict[str, Any], rate: float) -> None:
        values = {"train/loss_step": float(loss), "train/lr": rate}
        values.update({f"train/{k}_step": float(v) for k, v in terms.items()})
        self.accelerator.log(values, step=self.state.global_step)

    def _metrics(self, sums: PeriodSums, rate: float) -> dict[str, Any]:
        """The period's means over all processes, its rate and throughput (and the run's throughput counters)."""
        accelerator, state = self.accelerator, self.state
        seconds = time.perf_counter() - sums.start
        names = sorted(sums.sums)
        means = accelerator.reduce(torch.stack([sums.sums[n] for n in names]) / max(sums.batches, 1), reduction="mean")
        metrics: dict[str, Any] = {("train_loss" if n == "loss" else n): v for n, v in zip(names, means.tolist())}
        images = int(accelerator.reduce(torch.tensor(sums.images, device=accelerator.device), reduction="sum").item())
        state.train_seconds += seconds
        state.train_images += images
        metrics["lr"] = rate
        metrics["images_per_s"] = images / seconds if seconds > 0 else float("nan")
        if self.log_step_losses and sums.micro_losses:
            accum = accelerator.gradient_accumulation_steps
            per_step = torch.stack(sums.micro_losses)
            per_step = per_step[: len(per_step) // accum * accum].view(-1, accum).mean(dim=1)
            gathered = accelerator.gather(per_step[None])  # [processes, steps]
            metrics["step_losses"] = gathered.mean(dim=0).tolist()
        return metrics


def epoch_batches(loader: Any) -> Callable[[int], Iterable[Any]]:
    """``batches(done)`` of an epoch's loader: resumed inside it, the first ``done`` batches are never loaded."""

    def batches(done: int) -> Iterable[Any]:
        if not done:
            return loader
        if isinstance(loader, DeviceLoader):
            return loader.skip_first(done)
        return skip_first_batches(loader, done)

    return batches


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
