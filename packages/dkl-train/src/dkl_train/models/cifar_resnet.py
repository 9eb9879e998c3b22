"""CIFAR ResNets of the KD literature: resnet8 ... resnet110, resnet8x4, resnet32x4.

Three stages at 32/16/8 px on a 3x3 stem, as in CRD and mdistiller
(``mdistiller/models/cifar/resnet.py``). Parameter names and shapes match that file, so the
teachers of mdistiller's ``cifar_teachers.tar`` (``ckpt["model"]``) load strictly: ``conv1``,
``bn1``, ``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}``, the projection shortcut as
``layer{s}.0.downsample.{0,1}`` and the classifier ``fc``.

The residual blocks live here once; ``cifar_resnet50.py`` (mdistiller's "resnetv2", which names the
shortcut ``shortcut``) builds from the same blocks.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from ._layers import classifier_input, init_conv_bn_
from .features import Features
from .registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual; the shortcut module is stored under ``shortcut_attr``.

    mdistiller's two ResNet families differ only in that name (``downsample`` in resnet.py,
    ``shortcut`` in resnetv2.py, where an identity shortcut is an empty ``nn.Sequential``).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut_attr: str = "downsample") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self._add_shortcut(in_planes, planes, stride, shortcut_attr)

    def _add_shortcut(self, in_planes: int, planes: int, stride: int, shortcut_attr: str) -> None:
        """A 1x1 projection + BN when the shape changes, else the identity (no parameters)."""
        self._shortcut_attr = shortcut_attr
        out_planes = planes * self.expansion
        projection = None
        if stride != 1 or in_planes != out_planes:
            projection = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
            )
        setattr(self, shortcut_attr, projection)

    def residual(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    def preact(self, x: Tensor) -> Tensor:
        """Residual + shortcut before the block's final ReLU (mdistiller's ``preact`` feature)."""
        shortcut = getattr(self, self._shortcut_attr)
        return self.residual(x) + (x if shortcut is None else shortcut(x))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.preact(x))


class Bottleneck(BasicBlock):
    """1x1 -> 3x3 (strided) -> 1x1 with 4x expansion (used by the CIFAR ResNet50)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut_attr: str = "downsample") -> None:
        nn.Module.__init__(self)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self._add_shortcut(in_planes, planes, stride, shortcut_attr)

    def residual(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


def make_stage(
    block: type[BasicBlock], in_planes: int, planes: int, num_blocks: int, stride: int, shortcut_attr: str
) -> tuple[nn.Sequential, int]:
    """``num_blocks`` blocks, the first one strided; returns the stage and its output width."""
    layers = []
    for i in range(num_blocks):
        layers.append(block(in_planes, planes, stride if i == 0 else 1, shortcut_attr=shortcut_attr))
        in_planes = planes * block.expansion
    return nn.Sequential(*layers), in_planes


def run_stage(stage: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
    """A stage of residual blocks: (output, its last block's pre-ReLU sum)."""
    for block in stage[:-1]:
        x = block(x)
    preact = stage[-1].preact(x)
    return F.relu(preact), preact


class CifarResNet(nn.Module):
    """ResNet-(6n+2) with stage widths ``widths = [stem, stage1, stage2, stage3]``."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        planes = widths[0]
        self.layer1, planes = make_stage(BasicBlock, planes, widths[1], n, 1, "downsample")
        self.layer2, planes = make_stage(BasicBlock, planes, widths[2], n, 2, "downsample")
        self.layer3, planes = make_stage(BasicBlock, planes, widths[3], n, 2, "downsample")
        self.fc = nn.Linear(planes, num_classes)
        init_conv_bn_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(classifier_input(x))

    def forward_stages(self, x: Tensor) -> tuple[Tensor, Features]:
        """Logits and mdistiller's features: the stem (after its ReLU, in both lists), then each stage."""
        stem = F.relu(self.bn1(self.conv1(x)))
        feats, preacts = [stem], [stem]
        for stage in (self.layer1, self.layer2, self.layer3):
            x, preact = run_stage(stage, feats[-1])
            feats.append(x)
            preacts.append(preact)
        pooled = classifier_input(x)
        return self.fc(pooled), Features(feats, preacts, pooled)


_SLIM = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)
_DEPTHS = {"resnet8": (8, _SLIM), "resnet14": (14, _SLIM), "resnet20": (20, _SLIM), "resnet32": (32, _SLIM)}
_DEPTHS |= {"resnet44": (44, _SLIM), "resnet56": (56, _SLIM), "resnet110": (110, _SLIM)}
_DEPTHS |= {"resnet8x4": (8, _WIDE), "resnet32x4": (32, _WIDE)}


def _register(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    @register_model(name)
    def factory(num_classes: int) -> CifarResNet:
        return CifarResNet(depth, widths, num_classes)


for _name, (_depth, _widths) in _DEPTHS.items():
    _register(_name, _depth, _widths)
