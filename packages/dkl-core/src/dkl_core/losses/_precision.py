"""Keep the loss arithmetic in float32 (or float64) when the model runs under bf16/fp16 autocast."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable[..., torch.Tensor])


def full_precision(fn: F) -> F:
    """Run ``fn`` with autocast switched off for the device of its first tensor argument.

    The losses cast their inputs to float32 themselves; switching autocast off as well guarantees that
    no op inside is silently re-cast to half precision. The context is only entered when autocast is
    on, so the common float32 path pays nothing.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device_type = args[0].device.type if args and isinstance(args[0], torch.Tensor) else "cpu"
        context = (
            torch.autocast(device_type=device_type, enabled=False)
            if torch.is_autocast_enabled(device_type)
            else contextlib.nullcontext()
        )
        with context:
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
