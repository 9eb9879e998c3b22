"""Put a model in attack mode (eval, frozen parameters) and give it back exactly as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def frozen(model: nn.Module, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Inside the block the parameters do not require grad and, with ``eval_mode``, every module is in eval mode.

    The training flag of *each* module and the ``requires_grad`` flag of each parameter are saved
    and restored one by one on exit (also after an exception), so a model that was deliberately
    in a mixed state (a frozen backbone, BN kept in eval) comes back unchanged. Freezing the
    parameters keeps an attack from building and storing the weight-gradient part of the graph,
    and guarantees that no ``.grad`` appears on the parameters.
    """
    training = [(module, module.training) for module in model.modules()]
    requires_grad = [(param, param.requires_grad) for param in model.parameters()]
    try:
        if eval_mode:
            model.eval()
        for param, _ in requires_grad:
            param.requires_grad_(False)
        yield model
    finally:
        for module, flag in training:
            module.training = flag
        for param, flag in requires_grad:
            param.requires_grad_(flag)
