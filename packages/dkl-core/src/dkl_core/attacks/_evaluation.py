"""Context shared by the evaluations: eval mode, float32, the model's device."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from ._model_state import frozen


def model_device(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def float32_eval(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode with frozen parameters, in float32, with autocast off.

    A model whose floating parameters or buffers are not float32 is evaluated through a float32
    copy (the original is left untouched): FAB writes ``1e10`` into tensors, which overflows fp16,
    and rounding in half precision makes gradient attacks weaker than they should be.
    """
    device_type = model_device(model).type
    not_float32 = any(
        t.is_floating_point() and t.dtype != torch.float32 for t in list(model.parameters()) + list(model.buffers())
    )
    target = copy.deepcopy(model).float() if not_float32 else model
    with frozen(target, eval_mode=True), torch.autocast(device_type=device_type, enabled=False):
        yield target
