"""MobileNetV2 for CIFAR as the KD literature uses it: ``MobileNetV2`` = mdistiller's ``mobile_half``
(expansion 6, width multiplier 0.5, stride-2 stem, 1280-channel head).

Names follow ``mdistiller/models/cifar/mobilenetv2.py``: ``conv1.{0,1}`` (stem conv + BN),
``blocks.{stage}.{i}.conv.{0..7}`` (pw conv, BN, ReLU, dw conv, BN, ReLU, pw-linear conv, BN),
``conv2.{0,1}`` and ``classifier.0``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._layers import classifier_input, init_conv_bn_
from .features import Features
from .registry import register_model

# expansion (None = the model's T), output channels, repeats, first stride
_STAGES = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1))
_STAGES += ((None, 160, 3, 2), (None, 320, 1, 1))
# The stages after which mdistiller's MobileNetV2 takes a feature (f1..f4; f0 is the stem).
_FEATURE_STAGES = (1, 2, 4, 6)


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True)
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> project (1x1, linear); residual when shape is kept.

    The expand convolution exists even at expansion 1 (as in the released model).
    """

    def __init__(self, inp: int, oup: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = inp * expansion
        self.use_residual = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 with expansion ``expansion`` and width ``width_mult`` for 32x32 inputs."""

    def __init__(self, num_classes: int, expansion: int = 6, width_mult: float = 0.5) -> None:
        super().__init__()
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in _STAGES:
            out = int(c * width_mult)
            stage = []
            for i in range(n):
                stage.append(InvertedResidual(channels, out, s if i == 0 else 1, expansion if t is None else t))
                channels = out
            self.blocks.append(nn.Sequential(*stage))
        last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last_channel, num_classes))
        init_conv_bn_(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        return self.classifier(classifier_input(self.conv2(x)))

    def forward_stages(self, x: Tensor) -> tuple[Tensor, Features]:
        """Logits and mdistiller's features: the stem (after its ReLU), then the outputs of stages 1, 2, 4, 6.

        mdistiller's MobileNetV2 returns no ``preact_feats``: its stage outputs are linear bottlenecks (a BN,
        plus the residual, no final ReLU), so the feature is its own pre-activation. ``preact_feats`` is
        therefore the same list as ``feats`` (the same tensors).
        """
        x = self.conv1(x)
        feats = [x]
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in _FEATURE_STAGES:
                feats.append(x)
        pooled = classifier_input(self.conv2(x))
        return self.classifier(pooled), Features(feats, list(feats), pooled)


@register_model("MobileNetV2")
def mobilenetv2_half(num_classes: int) -> CifarMobileNetV2:
    """mdistiller's ``mobile_half``: expansion 6, width 0.5."""
    return CifarMobileNetV2(num_classes, expansion=6, width_mult=0.5)
