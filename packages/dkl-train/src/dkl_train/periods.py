"""The periods a run trains in, between evaluations: epochs (kd, adv) or spans of iterations (ssl).

:class:`~dkl_train.training.Run` iterates them, evaluates, logs and checkpoints at their ends; each config
class says what its periods are (``EpochConfig.periods()``, ``IterationConfig.periods()``). Standard
library only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Periods:
    """``count`` periods named ``name`` (messages, progress bars); the last one is always evaluated and saved.

    ``steps``: optimiser steps per period when the run counts iterations (``total_steps`` in all; the last
    period may be shorter); ``None`` for epochs, whose length is the loader's. ``stop_after`` (0 = off)
    ends the run after that many periods as an interruption would (resume tests).
    """

    count: int
    name: str = "epoch"
    eval_every: int = 1
    checkpoint_every: int = 1
    stop_after: int = 0
    steps: int | None = None
    total_steps: int | None = None

    def remaining(self, done: int) -> range:
        """The (0-based) periods still to run after ``done`` completed ones."""
        end = min(self.count, self.stop_after) if self.stop_after else self.count
        return range(done, end)

    def is_last(self, period: int) -> bool:
        return period + 1 == self.count

    def evaluates(self, period: int) -> bool:
        """Whether ``period`` ends with an evaluation (every ``eval_every``-th, and the last)."""
        return self.is_last(period) or (period + 1) % max(self.eval_every, 1) == 0

    def checkpoints(self, period: int) -> bool:
        """Whether ``period`` ends with a checkpoint (every ``checkpoint_every``-th, and the last)."""
        return self.is_last(period) or (period + 1) % max(self.checkpoint_every, 1) == 0

    def step_range(self, period: int) -> range:
        """The (0-based, run-wide) optimiser steps of ``period`` of an iteration schedule."""
        if self.steps is None or self.total_steps is None:
            raise ValueError("an epoch's steps are its loader's: only iteration periods have a fixed step range")
        begin = period * self.steps
        return range(begin, min(begin + self.steps, self.total_steps))

    def label(self, period: int) -> str:
        """``epoch 3/240``: the period's name, 1-based number and the count."""
        return f"{self.name} {period + 1}/{self.count}"
