"""Small pieces several architectures of the zoo share."""

from __future__ import annotations

import torch
from torch import nn


def init_conv_bn_(model: nn.Module, *, linear_std: float | None = None, zero_linear_bias: bool = False) -> None:
    """Initialise weights the way the CIFAR KD zoo (CRD/mdistiller) does.

    Convolutions get He-normal weights with fan-out (mdistiller writes it either as
    ``kaiming_normal_(mode="fan_out")`` or as ``normal_(0, sqrt(2 / (k * k * out_channels)))``: the
    same distribution), batch norms start at weight 1 / bias 0. Linear layers keep PyTorch's default
    unless ``linear_std`` (VGG and MobileNetV2 use N(0, 0.01)) or ``zero_linear_bias`` (WRN) says
    otherwise. Only matters for training from scratch; loaded checkpoints overwrite all of it.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(module.weight, 0.0, linear_std)
            if (linear_std is not None or zero_linear_bias) and module.bias is not None:
                nn.init.zeros_(module.bias)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: [N, g*c, H, W] -> [N, c*g, H, W] (interleave the groups)."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def classifier_input(x: torch.Tensor) -> torch.Tensor:
    """Global average pool + flatten.

    The released CIFAR models pool with a fixed window (``AvgPool2d(8)`` / ``avg_pool2d(out, 4)``) that
    equals a global average at 32x32; the adaptive form gives the same numbers there and also
    accepts other input sizes (the 64x64 and 224x224 uses of the same nets).
    """
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
