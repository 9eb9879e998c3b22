"""The ImageNet-shaped ResNet18/ResNet50 adapted to 32x32 (mdistiller's ``resnetv2.py``).

A 3x3 stride-1 stem without max-pool, four stages of 64/128/256/512 planes, global pooling and a
classifier named ``linear``; projection shortcuts are ``layer{s}.{i}.shortcut.{0,1}``. These are
the names of mdistiller's ``ResNet50_vanilla`` CIFAR-100 teacher, which loads strictly.

``resnet18_lbgat`` is the natural model LBGAT trains beside its robust WRN (``ResNet18_cifar`` of
``dvlab-research/LBGAT`` ``models/resnetcifar.py``): the same names, but the second stage keeps stride 1,
so the stages run at 32/32/16/8 px (the pooled map is 8x8, pooled by ``avg_pool2d(out, 8)`` there), and its
weights keep PyTorch's default initialisation (the released file initialises nothing: a 3x3 conv of 64 inputs
draws from U(-1/24, 1/24), std 0.024, where mdistiller's He-normal fan-out has std 0.059).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from ._layers import classifier_input, init_conv_bn_
from .cifar_resnet import BasicBlock, Bottleneck, make_stage, run_stage
from .features import Features
from .registry import register_model


class CifarResNetV2(nn.Module):
    """Four-stage ResNet for 32x32 inputs; ``num_blocks`` per stage, ``block`` basic or bottleneck."""

    def __init__(
        self,
        block: type[BasicBlock],
        num_blocks: tuple[int, int, int, int],
        num_classes: int,
        strides: tuple[int, int, int, int] = (1, 2, 2, 2),
        he_init: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        planes = 64
        self.layer1, planes = make_stage(block, planes, 64, num_blocks[0], strides[0], "shortcut")
        self.layer2, planes = make_stage(block, planes, 128, num_blocks[1], strides[1], "shortcut")
        self.layer3, planes = make_stage(block, planes, 256, num_blocks[2], strides[2], "shortcut")
        self.layer4, planes = make_stage(block, planes, 512, num_blocks[3], strides[3], "shortcut")
        self.linear = nn.Linear(planes, num_classes)
        if he_init:  # mdistiller's; without it every layer keeps PyTorch's default
            init_conv_bn_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(classifier_input(x))

    def forward_stages(self, x: Tensor) -> tuple[Tensor, Features]:
        """Logits and mdistiller's features: the stem (after its ReLU, in both lists), then the four stages."""
        stem = F.relu(self.bn1(self.conv1(x)))
        feats, preacts = [stem], [stem]
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x, preact = run_stage(stage, feats[-1])
            feats.append(x)
            preacts.append(preact)
        pooled = classifier_input(x)
        return self.linear(pooled), Features(feats, preacts, pooled)


@register_model("ResNet18")
def resnet18_cifar(num_classes: int) -> CifarResNetV2:
    """mdistiller's CIFAR ``ResNet18`` (basic blocks 2-2-2-2)."""
    return CifarResNetV2(BasicBlock, (2, 2, 2, 2), num_classes)


@register_model("resnet18_lbgat")
def resnet18_lbgat(num_classes: int) -> CifarResNetV2:
    """LBGAT's natural model ``ResNet18_cifar``: ``ResNet18`` with a stride-1 second stage (32/32/16/8 px) and
    PyTorch's default initialisation."""
    return CifarResNetV2(BasicBlock, (2, 2, 2, 2), num_classes, strides=(1, 1, 2, 2), he_init=False)


@register_model("ResNet50")
def resnet50_cifar(num_classes: int) -> CifarResNetV2:
    """mdistiller's CIFAR ``ResNet50`` (bottlenecks 3-4-6-3), a CIFAR-100 teacher of the KD tables."""
    return CifarResNetV2(Bottleneck, (3, 4, 6, 3), num_classes)
