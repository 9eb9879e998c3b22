"""The optimiser and the learning-rate schedules: pure functions of the epoch or iteration, so a resumed run
needs no scheduler state (the rate is recomputed from the counters in the checkpoint)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

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


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's rate to ``lr`` times its ``lr_scale`` (layer-wise decay; 1 without)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
