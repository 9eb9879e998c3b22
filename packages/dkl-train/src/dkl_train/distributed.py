"""Keeping processes in step where torch's DDP does not: a scratch copy of a model whose gradients are averaged."""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn


def synchronised_proxy(model: nn.Module) -> nn.Module:
    """A scratch copy of ``model`` (e.g. AWP's proxy) whose gradients are averaged over processes.

    TODO(dkl-core): ``AdversarialWeightPerturbation`` computes its direction from the local batch
    only; under several processes each would perturb differently. Averaging the proxy's gradients
    (as DDP does for the model) makes N processes perturb as one process does on the whole batch.
    """
    proxy = copy.deepcopy(model)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world = dist.get_world_size()

        def average(grad: torch.Tensor) -> torch.Tensor:
            grad = grad.clone()
            dist.all_reduce(grad)
            return grad / world

        for param in proxy.parameters():
            param.register_hook(average)
    return proxy
