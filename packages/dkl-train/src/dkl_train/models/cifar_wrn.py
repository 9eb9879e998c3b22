"""Wide ResNets (pre-activation, Zagoruyko & Komodakis) as CRD, mdistiller and TRADES define them.

One definition serves two uses: the KD zoo (``wrn_16_1``, ``wrn_16_2``, ``wrn_40_1``, ``wrn_40_2``,
mdistiller's ``mdistiller/models/cifar/wrn.py``) and the adversarial-training WRN-34-10
(``robust_wrn.py``), which RobustBench builds from the TRADES file
``robustbench/model_zoo/architectures/wide_resnet.py`` with the very same names: ``conv1``,
``block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}``, ``bn1``, ``fc``.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from ._layers import classifier_input, init_conv_bn_
from .features import Features
from .registry import register_model


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3 twice. When the width changes, the activated input feeds both the residual
    branch and the 1x1 ``convShortcut`` (the released code's behaviour, kept for exact logits)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_activated(x, self.relu1(self.bn1(x)))

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(output, ``bn1(x)``): the first block of a stage normalises the previous stage's output, and that
        pre-ReLU map is mdistiller's ``preact`` feature of the previous stage (kept intact: no in-place ReLU)."""
        preact = self.bn1(x)
        return self._forward_activated(x, F.relu(preact)), preact

    def _forward_activated(self, x: Tensor, activated: Tensor) -> Tensor:
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        out = self.relu2(self.bn2(self.conv1(activated)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    """A stage of ``num_layers`` blocks under the attribute name ``layer`` (as in the checkpoints)."""

    def __init__(self, num_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(num_layers)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(output, the first block's ``bn1(x)``): the pre-ReLU form of the input, see ``WideBasicBlock``."""
        out, preact = self.layer[0].forward_with_preact(x)
        for block in self.layer[1:]:
            out = block(out)
        return out, preact


class WideResNet(nn.Module):
    """WRN-depth-k: ``(depth - 4) / 6`` blocks per stage, widths 16k/32k/64k.

    Inputs are used as given (no normalisation inside): the KD zoo gets normalised images from the
    data pipeline, and RobustBench's TRADES-style WRN-34-10 entries (``Cui2023Decoupled_WRN-34-10``)
    take raw [0, 1] images.

    ``sub_block1``: a copy of ``block1`` that ``forward`` never runs, present in the released LBGAT files
    (RobustBench's ``WideResNet(..., sub_block1=True)``, ``Cui2020Learnable_*``): only so that they load strictly.
    """

    def __init__(
        self, depth: int, widen_factor: int, num_classes: int, drop_rate: float = 0.0, sub_block1: bool = False
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4 (16, 28, 34, 40), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        if sub_block1:
            self.sub_block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_bn_(self, zero_linear_bias=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(classifier_input(out))

    def forward_stages(self, x: Tensor) -> tuple[Tensor, Features]:
        """Logits and mdistiller's features of this pre-activation net.

        ``feats``: the stem convolution, then the raw output of each stage (no BN/ReLU of their own);
        ``preact_feats``: the stem, then each stage's output through the BN that follows it before a ReLU
        (the next stage's first ``bn1``, the head's ``bn1`` for the last); ``pooled``: the average of
        ``relu(bn1(last stage))``. mdistiller applies those three BNs a second time after its forward pass
        (same values; in training mode their running statistics then move twice per step); here they are
        the tensors of the single pass, so the statistics move once, as in ``forward``.
        """
        stem = self.conv1(x)
        f1 = self.block1(stem)
        f2, pre1 = self.block2.forward_with_preact(f1)
        f3, pre2 = self.block3.forward_with_preact(f2)
        pre3 = self.bn1(f3)
        pooled = classifier_input(F.relu(pre3))
        return self.fc(pooled), Features([stem, f1, f2, f3], [stem, pre1, pre2, pre3], pooled)


def _register(name: str, depth: int, widen_factor: int) -> None:
    @register_model(name)
    def factory(num_classes: int, drop_rate: float = 0.0) -> WideResNet:
        return WideResNet(depth, widen_factor, num_classes, drop_rate)


for _name, _depth, _k in (("wrn_16_1", 16, 1), ("wrn_16_2", 16, 2), ("wrn_40_1", 40, 1), ("wrn_40_2", 40, 2)):
    _register(_name, _depth, _k)
