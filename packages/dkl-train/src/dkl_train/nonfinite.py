"""The watch for a non-finite loss: noted on the device every step, read by the host at checks only.

The training loop notes every micro-batch's loss in the run's :class:`NonFiniteGuard` (:meth:`LossWatch.note`
queues device operations only, so no step waits for the device) and checks at logging steps and at the end
of each period (:meth:`LossWatch.first_bad`, a collective), raising :class:`NonFiniteLossError` for the first
bad step of any process, with its loss terms.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from .errors import UserError


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or infinite; the message names the step and the loss terms, and what to try."""


class LossWatch:
    """The first optimiser step whose loss was not finite, and its loss and terms, kept on the device."""

    def __init__(self) -> None:
        self.names: list[str] = []  # the terms, in the order of ``values[1:]``
        self.first: torch.Tensor | None = None  # int64: the first bad step, -1 while every loss is finite
        self.values: torch.Tensor | None = None  # float32 [1 + len(names)]: loss and terms at that step
        self.checked_through = 0  # the optimiser step of the previous check

    def note(self, step: int, loss: torch.Tensor, terms: dict[str, Any]) -> None:
        """Record ``loss`` and ``terms`` of optimiser step ``step`` if it is the first non-finite one (on the device)."""
        loss = loss.detach()
        for name in terms:
            if name not in self.names:
                self.names.append(name)
        missing = float("nan")  # a term this step did not report
        values = torch.stack(
            [loss.float().reshape(()), *(as_scalar(terms.get(n, missing), loss.device) for n in self.names)]
        )
        if self.first is None or self.values is None:
            self.first = torch.full((), -1, dtype=torch.int64, device=loss.device)
            self.values = torch.full_like(values, float("nan"))
        elif self.values.numel() < values.numel():  # a term appeared: widen the record
            pad = torch.full((values.numel() - self.values.numel(),), float("nan"), device=loss.device)
            self.values = torch.cat([self.values, pad])
        new = ~torch.isfinite(loss).all() & (self.first < 0)
        self.first = torch.where(new, step, self.first)
        self.values = torch.where(new, values, self.values)

    def first_bad(self, accelerator: Accelerator) -> tuple[int, dict[str, float], float] | None:
        """``(step, terms, loss)`` of the first non-finite step of any process, or ``None`` (every process calls it)."""
        if self.first is None or self.values is None:
            return None
        firsts = accelerator.gather(self.first[None]).tolist()
        values = accelerator.gather(self.values[None]).tolist()
        bad = [(step, row) for step, row in zip(firsts, values, strict=True) if step >= 0]
        if not bad:
            return None
        step, row = min(bad, key=lambda item: item[0])
        return step, dict(zip(self.names, row[1:], strict=False)), row[0]


class NonFiniteGuard:
    """A run's :class:`LossWatch` and its error message: notes each micro-batch, raises at the checks.

    Args:
        accelerator: the run's (the check is a collective).
        state: the run's counters (``global_step``: the optimiser steps done).
        last_checkpoint: the newest complete checkpoint (named in the error).
        log_every: the steps between checks at logging steps (named in the error).
        lr: the peak learning rate (the advice names it).
        period_name: what a period is called ("epoch", "period").
    """

    def __init__(
        self,
        accelerator: Accelerator,
        state: Any,
        last_checkpoint: Callable[[], Path | None],
        *,
        log_every: int,
        lr: float,
        period_name: str = "epoch",
    ) -> None:
        self.accelerator, self.state, self.last_checkpoint = accelerator, state, last_checkpoint
        self.log_every, self.lr, self.period_name = log_every, lr, period_name
        self.watch = LossWatch()

    def note(self, loss: torch.Tensor, terms: dict[str, Any]) -> None:
        """Note on the device whether the loss of optimiser step ``global_step + 1`` is finite (no synchronisation)."""
        self.watch.note(self.state.global_step + 1, loss, terms)

    def check(self, period: int) -> None:
        """Raise :class:`NonFiniteLossError` if a noted loss was NaN/inf (a sync and a collective: every process)."""
        watch, now = self.watch, self.state.global_step
        checked_from, watch.checked_through = watch.checked_through, now
        found = watch.first_bad(self.accelerator)
        if found is None:
            return
        step, terms, loss = found
        shown = ", ".join(f"{name}={value:.4g}" for name, value in terms.items())
        last = self.last_checkpoint()
        checked = (
            f"; found at the check after step {now} (losses are checked at logging steps, log_every="
            f"{self.log_every}, and at the end of each {self.period_name}: steps {checked_from + 1}-{now} ran "
            "since the previous check)"
            if now > step
            else ""
        )
        raise NonFiniteLossError(
            f"non-finite loss {loss:.4g} at {self.period_name} {period + 1}, optimiser step {step} (terms: "
            f"{shown or 'none'}){checked}. Nothing was saved for this {self.period_name}; the last good checkpoint "
            f"is {last if last else 'none'}. " + nonfinite_advice(self.lr, self.accelerator.mixed_precision)
        )


def nonfinite_advice(lr: float, precision: str) -> str:
    """What to try after a non-finite loss, given the run's learning rate and the precision it ran in."""
    tries = [f"lower the learning rate (lr={lr:g})", "or the loss weights"]
    if precision != "no":
        tries.append(f"or train in float32 (mixed_precision=no; this run used {precision})")
    return "Try: " + ", ".join(tries) + "."


def as_scalar(value: Any, device: torch.device) -> torch.Tensor:
    """A loss term as a float32 scalar on ``device``; a Python number is filled in there (a copy would block)."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().reshape(()).to(device)
    return torch.full((), float(value), device=device)
