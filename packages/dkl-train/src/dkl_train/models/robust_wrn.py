"""The adversarial-training architectures of the DKL papers and of LBGAT, loadable from RobustBench.

``wrn_34_10``: the TRADES WideResNet-34-10 (ReLU, no input normalisation; inputs in [0, 1]).
RobustBench builds ``Cui2023Decoupled_WRN-34-10`` (CIFAR-10 and -100, also ``_autoaug``) as
``WideResNet(depth=34, widen_factor=10, sub_block1=False)`` from its ``wide_resnet.py``, which has
the same names as the KD zoo's WRN, so it is :class:`~.cifar_wrn.WideResNet` at depth 34, width 10.
``wrn_34_20`` is the same net at width 20. The LBGAT entries (``Cui2020Learnable_34_10``, ``_34_20``,
``_34_10_LBGAT0`` ...) are built with ``sub_block1=True``: ``model_kwargs: {sub_block1: true}``.

``wrn_28_10_silu``: DeepMind's WideResNet (``dm_wide_resnet.py`` in RobustBench, also the
"wideresnetwithswish" of the better-diffusion-models code the DKL authors trained with), depth 28,
width 10, SiLU. RobustBench builds ``Cui2023Decoupled_WRN-28-10`` as
``DMWideResNet(depth=28, width=10, activation_fn=nn.SiLU, mean=CIFAR{10,100}_MEAN, std=...)``:
the model normalises [0, 1] inputs itself. Names: ``init_conv``,
``layer.{g}.block.{i}.{batchnorm_0,conv_0,batchnorm_1,conv_1,shortcut}``, ``batchnorm``, ``logits``.
The current RobustBench class keeps mean/std as plain attributes (not in the state dict) while an
older one registered them as buffers; here they are non-persistent buffers and a checkpoint that
does carry ``mean``/``std`` is accepted and applied (``optional_state_keys``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._layers import init_conv_bn_
from .cifar_wrn import WideResNet
from .registry import register_model

# Per-channel statistics RobustBench's dm_wide_resnet.py uses for these models.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class DMBlock(nn.Module):
    """Pre-activation block with TensorFlow "SAME" padding done by hand (asymmetric at stride 2)."""

    def __init__(
        self, in_planes: int, out_planes: int, stride: int, activation: type[nn.Module], bn_momentum: float
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"unsupported stride {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(in_planes, momentum=bn_momentum)
        self.relu_0 = activation()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes, momentum=bn_momentum)
        self.relu_1 = activation()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)
            if in_planes != out_planes
            else None
        )
        self.pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu_0(self.batchnorm_0(x))
        residual = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv_0(F.pad(activated, self.pad))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        return residual + out


class DMBlockGroup(nn.Module):
    """A stage: blocks under the attribute ``block`` (as in the checkpoints)."""

    def __init__(
        self,
        num_blocks: int,
        in_planes: int,
        out_planes: int,
        stride: int,
        activation: type[nn.Module],
        bn_momentum: float,
    ) -> None:
        super().__init__()
        self.block = nn.Sequential(
            *[
                DMBlock(
                    in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, activation, bn_momentum
                )
                for i in range(num_blocks)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DMWideResNet(nn.Module):
    """DeepMind-style WRN that takes [0, 1] images and normalises them with its ``mean``/``std``."""

    def __init__(
        self,
        num_classes: int,
        depth: int = 28,
        width: int = 10,
        activation: type[nn.Module] = nn.SiLU,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.init_conv = nn.Conv2d(len(mean), channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(
            DMBlockGroup(n, channels[0], channels[1], 1, activation, bn_momentum),
            DMBlockGroup(n, channels[1], channels[2], 2, activation, bn_momentum),
            DMBlockGroup(n, channels[2], channels[3], 2, activation, bn_momentum),
        )
        self.batchnorm = nn.BatchNorm2d(channels[3], momentum=bn_momentum)
        self.relu = activation()
        self.logits = nn.Linear(channels[3], num_classes)
        init_conv_bn_(self, zero_linear_bias=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.init_conv((x - self.mean) / self.std)
        out = self.relu(self.batchnorm(self.layer(out)))
        return self.logits(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))

    # Entries a checkpoint may carry although our state dict has none (see the module docstring).
    optional_state_keys = ("mean", "std")

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Tensor],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Use ``mean``/``std`` from a checkpoint that stores them (older RobustBench classes), so such
        files load and keep the normalisation they were trained with."""
        for name in self.optional_state_keys:
            value = state_dict.get(prefix + name)
            if value is None:
                continue
            if value.numel() != getattr(self, name).numel():
                error_msgs.append(
                    f"{prefix}{name}: checkpoint has {value.numel()} channels, model {getattr(self, name).numel()}"
                )
                continue
            getattr(self, name).copy_(value.reshape(-1, 1, 1))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


@register_model("wrn_34_10")
def wrn_34_10(num_classes: int, drop_rate: float = 0.0, sub_block1: bool = False) -> WideResNet:
    """TRADES WideResNet-34-10 (ReLU), [0, 1] inputs, no normalisation (RobustBench's Cui2023 WRN-34-10).

    ``sub_block1=True``: the layout of the released LBGAT files (an unused copy of ``block1``).
    """
    return WideResNet(34, 10, num_classes, drop_rate, sub_block1)


@register_model("wrn_34_20")
def wrn_34_20(num_classes: int, drop_rate: float = 0.0, sub_block1: bool = False) -> WideResNet:
    """TRADES WideResNet-34-20 (RobustBench's ``Cui2020Learnable_34_20`` with ``sub_block1=True``)."""
    return WideResNet(34, 20, num_classes, drop_rate, sub_block1)


@register_model("wrn_28_10_silu")
def wrn_28_10_silu(
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    bn_momentum: float = 0.1,
) -> DMWideResNet:
    """DeepMind-style WRN-28-10 with SiLU (RobustBench's Cui2023 WRN-28-10).

    Without ``mean``/``std`` the CIFAR-100 statistics are used for 100 classes and the CIFAR-10
    ones otherwise, as RobustBench does for its CIFAR-100 and CIFAR-10 entries.
    """
    default_mean, default_std = (CIFAR100_MEAN, CIFAR100_STD) if num_classes == 100 else (CIFAR10_MEAN, CIFAR10_STD)
    return DMWideResNet(num_classes, 28, 10, nn.SiLU, mean or default_mean, std or default_std, bn_momentum=bn_momentum)
