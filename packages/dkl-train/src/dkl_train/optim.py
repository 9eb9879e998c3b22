"""The optimiser and the one owner of the learning-rate schedule.

The rates are pure functions of the epoch or iteration (:func:`learning_rate`, :func:`iteration_learning_rate`:
the released formulas). :class:`StepScheduler`, built once per run by :func:`build_scheduler`, turns them
into each parameter group's rate: the training loop steps it after every optimiser step and the run saves
it in every checkpoint, so a resumed run continues with the rates of the uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from .config import BaseConfig, EpochConfig, IterationConfig


def build_optimizer(config: BaseConfig, params: Iterable[Any]) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay on all parameters, as mdistiller) or AdamW, from the config."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=config.nesterov
        )
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def learning_rate(config: EpochConfig, epoch: int) -> float:
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
    if config.lr_schedule == "cosine_shifted":
        # cos(pi * (epoch + 1) / (epochs + 1)): the per-epoch formula of the released DKL adversarial
        # scripts (already below lr in the first epoch, above 0 in the last); recipes opt in.
        return 0.5 * config.lr * (1.0 + math.cos(math.pi * (epoch + 1) / (config.epochs + 1)))
    return config.lr


def iteration_learning_rate(config: IterationConfig, iteration: int) -> float:
    """USB's schedule at (0-based) ``iteration``: linear warm-up from 0, then ``max(0, cos(pi * cycles * progress))``."""
    if iteration < config.warmup_iters:
        return config.lr * iteration / max(1, config.warmup_iters)
    progress = (iteration - config.warmup_iters) / max(1, config.iterations - config.warmup_iters)
    return config.lr * max(0.0, math.cos(math.pi * config.lr_cycles * progress))


class StepScheduler(LambdaLR):
    """torch's ``LambdaLR`` over optimiser steps: group ``g``'s rate at step ``s`` is ``lr_scale_g * rate_at_step(s)``.

    ``lr_scale`` is a group's own factor (timm's layer-wise decay; 1 without), so per-group scales survive.
    LambdaLR sets a group's rate to ``initial_lr * lambda(step)``; with ``initial_lr`` the group's scale and
    the lambda the rate itself, the product is exactly the released rate (a lambda of ``rate / lr`` times a
    peak ``initial_lr`` would round). Step it once after every optimiser step (the loop does).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, rate_at_step: Callable[[int], float]) -> None:
        for group in optimizer.param_groups:
            group["initial_lr"] = group.get("lr_scale", 1.0)
        super().__init__(optimizer, rate_at_step)

    @property
    def rate(self) -> float:
        """The rate of the next optimiser step before per-group scales (what the run logs as ``lr``)."""
        return self.lr_lambdas[0](self.last_epoch)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the position, then set the groups' rates there (a resume may lengthen ``epochs``: cosine)."""
        super().load_state_dict(state_dict)
        rate = self.rate
        for group, scale in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = scale * rate
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def build_scheduler(
    config: BaseConfig,
    optimizer: torch.optim.Optimizer,
    *,
    steps_per_epoch: int | None = None,
    epoch_rate: Callable[[int], float] | None = None,
) -> StepScheduler:
    """The run's schedule: per iteration for an :class:`IterationConfig` (USB's warm-up + cosine), else per epoch.

    Per epoch, step ``s`` takes the rate of epoch ``s // steps_per_epoch`` (optimiser steps per epoch), so the
    rate is constant within an epoch; ``epoch_rate(epoch)`` replaces :func:`learning_rate` (e.g. LBGAT's
    first-epoch rate).
    """
    if isinstance(config, IterationConfig):
        return StepScheduler(optimizer, lambda step: iteration_learning_rate(config, step))
    if not steps_per_epoch or steps_per_epoch < 1:
        raise ValueError(f"an epoch schedule needs the optimiser steps per epoch (got {steps_per_epoch})")
    rate = epoch_rate or (lambda epoch: learning_rate(config, epoch))
    return StepScheduler(optimizer, lambda step: rate(step // steps_per_epoch))
