"""Weight averaging shared by the recipes: an in-loop EMA, the released checkpoint average, BN refresh.

The EMA is torch's own ``AveragedModel`` (no hand-written update loop); this module only fixes the
conventions the recipes need: averaged buffers, the unwrapped (not DDP-wrapped) model, and the
average over per-epoch weights the adversarial-training authors used to make their released
checkpoints (offline, :func:`exponential_checkpoint_average`, or while training, :class:`CheckpointAverage`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

if TYPE_CHECKING:
    from accelerate import Accelerator


def ema_model(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model`` (parameters *and* buffers, e.g. BN statistics).

    Call ``ema.update_parameters(model)`` after each optimiser step; the first call copies the weights.
    ``ema.module`` is the averaged network; ``ema`` has ``state_dict``/``load_state_dict`` so it can be
    registered for checkpointing. Pass the unwrapped model (``accelerator.unwrap_model(model)``).
    Do not move the EMA with ``.to(device)``: its step counter ``n_averaged`` stays in host memory,
    where torch reads it at every update without waiting for the device.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def exponential_checkpoint_average(
    state_dicts: Iterable[Mapping[str, torch.Tensor]], new_weight: float = 0.1
) -> dict[str, torch.Tensor]:
    """``avg_i = new_weight * theta_i + (1 - new_weight) * avg_{i-1}`` over per-epoch state dicts, in order.

    This is how the released IKL-AT models were made (``new_weight = 0.1`` over the epochs'
    checkpoints, BN running statistics included). Integer buffers (``num_batches_tracked``) keep the
    latest value. The first state dict starts the average.
    """
    if not 0.0 < new_weight <= 1.0:
        raise ValueError(f"new_weight must be in (0, 1], got {new_weight}")
    average: dict[str, torch.Tensor] | None = None
    for state in state_dicts:
        if average is None:
            average = {k: v.detach().clone().float() if v.is_floating_point() else v.clone() for k, v in state.items()}
            continue
        if state.keys() != average.keys():
            raise ValueError("the checkpoints to average have different parameter names")
        for key, value in state.items():
            if value.is_floating_point():
                average[key].mul_(1.0 - new_weight).add_(value.float(), alpha=new_weight)
            else:
                average[key] = value.clone()
    if average is None:
        raise ValueError("no checkpoints to average")
    return average


class CheckpointAverage:
    """The released models' exponential average of per-epoch weights, kept as a running average.

    ``update`` after each epoch gives exactly :func:`exponential_checkpoint_average` over the per-epoch
    checkpoints (it is that function, applied one epoch at a time), without keeping every checkpoint on
    disk. It has ``state_dict``/``load_state_dict``: register it for checkpointing and resuming continues it.
    """

    def __init__(self, new_weight: float = 0.1) -> None:
        self.new_weight = new_weight
        self.state: dict[str, torch.Tensor] | None = None
        self.epochs = 0

    def update(self, model: nn.Module) -> None:
        current = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        sources = [current] if self.state is None else [self.state, current]
        self.state = exponential_checkpoint_average(sources, new_weight=self.new_weight)
        self.epochs += 1

    def averaged_copy(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` holding the average (kept in float32; each tensor back in ``model``'s dtype)."""
        if self.state is None:
            raise ValueError("no weights averaged yet: call update() after an epoch first")
        averaged = copy.deepcopy(model)
        dtypes = {k: v.dtype for k, v in averaged.state_dict().items()}
        averaged.load_state_dict({k: v.to(dtype=dtypes[k]) for k, v in self.state.items()})
        return averaged

    def state_dict(self) -> dict[str, Any]:
        return {"new_weight": self.new_weight, "epochs": self.epochs, "state": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.new_weight, self.epochs, self.state = state["new_weight"], state["epochs"], state["state"]


@torch.no_grad()
def recompute_bn_statistics(
    model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device | str | None = None
) -> None:
    """Re-estimate BatchNorm running statistics of (averaged) weights on ``batches`` of inputs.

    Averaged weights do not match averaged BN statistics exactly; a pass over training data in train
    mode fixes that (torch's ``update_bn``, which resets the statistics and uses a cumulative average).
    """
    update_bn(batches, model, device=device)


def natural_batches(loader: Iterable[Any], limit: int) -> Iterator[torch.Tensor]:
    """The ``image`` entries of a loader's batches (at most ``limit``; 0 = all), for :func:`recompute_bn_statistics`.

    With two views per sample (:class:`~dkl_train.data.TwoViews` with ``image`` first) that is the natural,
    basic view.
    """
    for step, batch in enumerate(loader):
        if limit and step >= limit:
            return
        yield batch["image"]


@torch.no_grad()
def average_bn_buffers(model: nn.Module, accelerator: Accelerator) -> None:
    """Make BN running statistics equal on every process (their mean) after a per-process re-estimate."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.copy_(accelerator.reduce(module.running_mean.clone(), reduction="mean"))
            module.running_var.copy_(accelerator.reduce(module.running_var.clone(), reduction="mean"))
