"""ShuffleNet V1 (g=3) and V2 (1x) for 32x32 inputs: ``ShuffleV1``, ``ShuffleV2``.

Both use a 1x1 stem without down-sampling and three down-sampling stages, as in
``mdistiller/models/cifar/ShuffleNetv1.py`` / ``ShuffleNetv2.py``, whose parameter names they keep
(``conv{k}``/``bn{k}`` inside each block, ``layer{1,2,3}``, ``linear``; V2 adds ``conv2``/``bn2``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._layers import channel_shuffle, classifier_input
from .features import Features
from .registry import register_model


class ShuffleV1Block(nn.Module):
    """Grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1; stride 2 concatenates an avg-pooled input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = out_planes // 4
        # The stem has 24 channels, not divisible by g=3 in the released net: first 1x1 is ungrouped there.
        self.first_groups = 1 if in_planes == 24 else groups
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, mid, kernel_size=1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def preact(self, x: Tensor) -> Tensor:
        """The branch joined with the shortcut (concatenated at stride 2, summed otherwise), before the ReLU."""
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1)
        return out + x

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.preact(x))


class CifarShuffleNetV1(nn.Module):
    """ShuffleNet V1 with stage widths 240/480/960 and 4/8/4 blocks (groups 3)."""

    def __init__(
        self,
        num_classes: int,
        out_planes: tuple[int, ...] = (240, 480, 960),
        num_blocks: tuple[int, ...] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_planes = 24
        stages = []
        for width, blocks in zip(out_planes, num_blocks):
            layers = []
            for i in range(blocks):
                # The strided first block concatenates its input, so its own branch is narrower.
                layers.append(
                    ShuffleV1Block(in_planes, width - (in_planes if i == 0 else 0), 2 if i == 0 else 1, groups)
                )
                in_planes = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(out_planes[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(classifier_input(x))

    def forward_stages(self, x: Tensor) -> tuple[Tensor, Features]:
        """Logits and mdistiller's features: the stem (after its ReLU, in both lists), then each stage's
        output and its last block's pre-ReLU join."""
        x = F.relu(self.bn1(self.conv1(x)))
        feats, preacts = [x], [x]
        for stage in (self.layer1, self.layer2, self.layer3):
            for block in stage[:-1]:
                x = block(x)
            preact = stage[-1].preact(x)
            x = F.relu(preact)
            feats.append(x)
            preacts.append(preact)
        pooled = classifier_input(x)
        return self.linear(pooled), Features(feats, preacts, pooled)


class ShuffleV2Block(nn.Module):
    """Split channels in half; 1x1 -> depthwise 3x3 -> 1x1 on one half; concatenate; shuffle."""

    def __init__(self, channels: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split_ratio = split_ratio
        c = int(channels * split_ratio)
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def split_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(the untouched half, the other half's branch before its final ReLU)."""
        c = int(x.shape[1] * self.split_ratio)
        kept, branch = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(branch)))
        out = self.bn2(self.conv2(out))
        return kept, self.bn3(self.conv3(out))

    def forward(self, x: Tensor) -> Tensor:
        kept, preact = self.split_preact(x)
        return channel_shuffle(torch.cat([kept, F.relu(preact)], 1), 2)


class ShuffleV2DownBlock(nn.Module):
    """Stride-2 unit: depthwise+1x1 on the left, 1x1+depthwise+1x1 on the right, concatenated."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class CifarShuffleNetV2(nn.Module):
    """ShuffleNet V2 1x: stage widths 116/232/464, 3/7/3 blocks after each down-sampling unit, 1024 head."""

    def __init__(
        self,
        num_classes: int,
        out_channels: tuple[int, ...] = (116, 232, 464, 1024),
        num_blocks: tuple[int, ...] = (3, 7, 3),
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_channels = 24
        stages = []
        for width, blocks in zip(out_channels[:3], num_blocks):
            stages.append(
                nn.Sequential(ShuffleV2DownBlock(in_channels, width), *[ShuffleV2Block(width) for _ in range(blocks)])
            )
            in_channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.linear(classifier_input(x))

    def forward_stages(self, x: Tensor) -> tuple[Tensor, Features]:
        """Logits and mdistiller's features: the stem (after its ReLU, in both lists), then per stage its
        shuffled output (``feats``) and, as mdistiller defines it, its last block's concatenation
        ``[kept half, branch before ReLU]`` *before* the channel shuffle (``preact_feats``: so
        ``relu(preact) != feat`` here, the channel order differs). ``pooled`` follows the 1x1 ``conv2``
        head (1024 channels)."""
        x = F.relu(self.bn1(self.conv1(x)))
        feats, preacts = [x], [x]
        for stage in (self.layer1, self.layer2, self.layer3):
            for block in stage[:-1]:
                x = block(x)
            kept, branch = stage[-1].split_preact(x)
            x = channel_shuffle(torch.cat([kept, F.relu(branch)], 1), 2)
            feats.append(x)
            preacts.append(torch.cat([kept, branch], 1))
        pooled = classifier_input(F.relu(self.bn2(self.conv2(x))))
        return self.linear(pooled), Features(feats, preacts, pooled)


@register_model("ShuffleV1")
def shufflenet_v1(num_classes: int) -> CifarShuffleNetV1:
    """mdistiller's ``ShuffleV1``: groups 3, widths 240/480/960."""
    return CifarShuffleNetV1(num_classes)


@register_model("ShuffleV2")
def shufflenet_v2(num_classes: int) -> CifarShuffleNetV2:
    """mdistiller's ``ShuffleV2`` (net_size 1): widths 116/232/464, head 1024."""
    return CifarShuffleNetV2(num_classes)
