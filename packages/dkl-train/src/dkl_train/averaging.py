"""Weight averaging shared by the recipes: an in-loop EMA, the released offline checkpoint average, BN refresh.

The EMA is torch's own ``AveragedModel`` (no hand-written update loop); this module only fixes the
conventions the recipes need: averaged buffers, the unwrapped (not DDP-wrapped) model, and the
offline average the adversarial-training authors used to make their released checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn


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


@torch.no_grad()
def recompute_bn_statistics(
    model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device | str | None = None
) -> None:
    """Re-estimate BatchNorm running statistics of (averaged) weights on ``batches`` of inputs.

    Averaged weights do not match averaged BN statistics exactly; a pass over training data in train
    mode fixes that (torch's ``update_bn``, which resets the statistics and uses a cumulative average).
    """
    update_bn(batches, model, device=device)
