"""ReviewKD's trainable part: attention-based fusion (ABF) of the student's stage features.

Chen et al., "Distilling Knowledge via Knowledge Review" (CVPR 2021), as released in
github.com/dvlab-research/ReviewKD and github.com/megvii-research/mdistiller (``ReviewKD.py``).
The student's levels (its stage features and the pooled feature, deepest first) pass through one ABF
each; every ABF but the deepest fuses its level with the running ("residual") result of the level below
it through a 2-channel attention map, and emits a feature of the teacher's channels and size at that
level. :func:`dkl_core.hcl_loss` then compares those with the teacher's features.

Two released protocols differ in a few places, each a setting here: mdistiller's ``ReviewKD.py`` takes the
teacher's features before their stage's final ReLU everywhere and makes every ABF ``min(512, deepest
student channels)`` wide; the original ReviewKD code does so on CIFAR, but its ImageNet ResNets return
their stage outputs after an in-place ReLU (teacher and ResNet student: ``teacher_levels(preact=False)``,
``student_preact=False``) and its ResNet50 -> MobileNetV1 ABFs are 256 wide (``mid_channels=256``).

:class:`ReviewKDStudent` holds the student and the ABFs in one module, so that one optimiser trains both,
one ``accelerator.prepare`` synchronises both, and one checkpoint holds both; the exported student is
``.student`` alone (the ABFs exist only for training). Parameter names follow the released layout
(``abfs.{i}.conv1.0.weight`` ... with ``abfs[0]`` the deepest level), so a released state dict loads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .features import Features, forward_features

# mdistiller's code and the original CIFAR code cap the ABFs' working width at 512 channels (mdistiller's
# MAX_MID_CHANNEL setting is read but never used: every pair gets min(512, channels of the deepest level)); the
# original ImageNet code names the width per pair instead (ReviewKDStudent's mid_channels).
MAX_MID_CHANNELS = 512


class ABF(nn.Module):
    """One level: 1x1 conv + BN to ``mid_channels``, optional attention fusion, 3x3 conv + BN to ``out_channels``."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        # Two attention weights per pixel: one for this level, one for the (upsampled) residual from below.
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, size: int, out_size: int) -> tuple[Tensor, Tensor]:
        """(output at ``out_size`` for the loss, the fused map at the level's own size for the next level)."""
        x = self.conv1(x)
        if self.att_conv is not None:
            if residual is None:
                raise ValueError("a fusing ABF level needs the residual of the level below it")
            residual = F.interpolate(residual, (size, size), mode="nearest")
            attention = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * attention[:, 0:1] + residual * attention[:, 1:2]
        fused = x
        if x.shape[-1] != out_size:
            x = F.interpolate(x, (out_size, out_size), mode="nearest")
        return self.conv2(x), fused


class ReviewKDStudent(nn.Module):
    """The student plus its ABFs; ``forward(x)`` returns ``(logits, fused features)``, shallowest level first.

    Args:
        student: a model :func:`~dkl_train.models.forward_features` supports.
        in_channels: channels of the student's levels, shallowest first, the pooled feature last
            (released ``IN_CHANNELS``).
        out_channels: the teacher's channels at the same levels (``OUT_CHANNELS``).
        shapes: the student's spatial size at each level, **deepest first** as in the released configs
            (``SHAPES``, e.g. ``[1, 8, 16, 32]``: the pooled level, then the stages from the last).
        out_shapes: the teacher's sizes in the same order (``OUT_SHAPES``); ``None`` means ``shapes``.
        student_preact: take the student's features before their stage's final ReLU (released
            ``STU_PREACT``: on for the ImageNet pairs, off on CIFAR).
        mid_channels: the ABFs' working width; ``None`` is the released ``min(512, in_channels[-1])``
            (the original ImageNet code sets it per pair: 512 for ResNet18, 256 for MobileNetV1).
    """

    def __init__(
        self,
        student: nn.Module,
        in_channels: Sequence[int],
        out_channels: Sequence[int],
        shapes: Sequence[int],
        out_shapes: Sequence[int] | None = None,
        student_preact: bool = False,
        mid_channels: int | None = None,
    ) -> None:
        super().__init__()
        out_shapes = shapes if out_shapes is None else out_shapes
        lengths = {len(in_channels), len(out_channels), len(shapes), len(out_shapes)}
        if len(lengths) != 1 or not in_channels:
            raise ValueError(
                "ReviewKD's in_channels, out_channels, shapes and out_shapes need one entry per level, got "
                f"{list(in_channels)}, {list(out_channels)}, {list(shapes)}, {list(out_shapes)}"
            )
        self.student = student
        self.shapes, self.out_shapes = list(shapes), list(out_shapes)
        self.student_preact = student_preact
        if mid_channels is None:
            mid_channels = min(MAX_MID_CHANNELS, in_channels[-1])
        elif mid_channels < 1:
            raise ValueError(
                f"ReviewKD's ABF width (mid_channels) must be a positive channel count, got {mid_channels}"
            )
        last = len(in_channels) - 1
        abfs = [
            ABF(c_in, mid_channels, c_out, i < last) for i, (c_in, c_out) in enumerate(zip(in_channels, out_channels))
        ]
        self.abfs = nn.ModuleList(abfs[::-1])  # deepest level first, the order of the forward pass

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        logits, features = forward_features(self.student, x)
        levels = student_levels(features, preact=self.student_preact)[::-1][: len(self.abfs)]
        if len(levels) < len(self.abfs):
            raise ValueError(
                f"ReviewKD has {len(self.abfs)} ABF levels but {type(self.student).__name__} gives "
                f"{len(levels)} (stage features + pooled); shorten in_channels/out_channels/shapes"
            )
        outputs, residual = [], None
        # Deepest level first, as the abfs and the released shapes/out_shapes lists are ordered.
        for abf, level, size, out_size in zip(self.abfs, levels, self.shapes, self.out_shapes, strict=True):
            out, residual = abf(level, residual, size, out_size)
            outputs.append(out)
        return logits, outputs[::-1]


def student_levels(features: Features, *, preact: bool) -> list[Tensor]:
    """The student's levels as ReviewKD reads them: every stage feature, then the pooled one as ``[N, C, 1, 1]``."""
    stages = features.preact_feats if preact else features.feats
    return [*stages, features.pooled[:, :, None, None]]


def teacher_levels(features: Features, *, preact: bool = True) -> list[Tensor]:
    """The teacher's targets: its stage features without the stem, then the pooled feature.

    ``preact``: the stage features before their final ReLU (mdistiller's, and the original code's on CIFAR);
    ``False`` takes them after it, as the original ImageNet code's ResNets return them (their in-place
    ReLU overwrites the stage output it returns).
    """
    stages = features.preact_feats if preact else features.feats
    return [*stages[1:], features.pooled[:, :, None, None]]
