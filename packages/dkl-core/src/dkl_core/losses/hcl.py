"""ReviewKD's hierarchical context loss (HCL) between fused student features and teacher features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._precision import full_precision

# Pyramid levels of the released code: each level whose side is below the feature map's height adds the
# MSE of both maps average-pooled to l x l, at half the weight of the level before.
HCL_LEVELS = (4, 2, 1)


@full_precision
def hcl_loss(student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]) -> torch.Tensor:
    r"""Hierarchical context loss of ReviewKD (Chen et al., "Distilling Knowledge via Knowledge Review", CVPR 2021).

    For each pair of feature maps ``(f_s, f_t)`` of height ``H``, with the pyramid levels
    ``L = {l in (4, 2, 1) : l < H}`` taken in that order and ``P_l`` the adaptive average pool to ``l x l``:

    .. math::
        \ell(f_s, f_t) = \frac{\mathrm{MSE}(f_s, f_t) + \sum_{i=1}^{|L|} 2^{-i}\,
        \mathrm{MSE}(P_{l_i} f_s, P_{l_i} f_t)}{1 + \sum_{i=1}^{|L|} 2^{-i}}, \qquad
        \mathrm{HCL} = \sum_{\text{pairs}} \ell(f_s, f_t)

    where MSE is the mean over all elements. A ``[N, C, 1, 1]`` pair (the pooled feature) is plain MSE.
    The result equals the released mdistiller/ReviewKD ``hcl_loss``; gradients flow into both lists
    (compute the teacher's features under ``no_grad`` for a frozen teacher). The arithmetic runs in
    float32 (float64 for float64 inputs) even under bf16/fp16 autocast.

    Args:
        student_features: ``K`` tensors ``[N, C_k, H_k, W_k]`` (ReviewKD: the ABF outputs).
        teacher_features: ``K`` tensors of the same shapes, in the same order.

    Returns:
        A scalar: the sum over the ``K`` pairs.

    Example:
        >>> fs = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 1, 1)]
        >>> ft = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 1, 1)]
        >>> hcl_loss(fs, ft).shape
        torch.Size([])
    """
    _check_feature_lists(student_features, teacher_features)
    dtype = torch.float64 if any(f.dtype == torch.float64 for f in [*student_features, *teacher_features]) else None
    total = student_features[0].new_zeros((), dtype=dtype or torch.float32)
    for fs, ft in zip(student_features, teacher_features, strict=True):
        fs, ft = fs.to(total.dtype), ft.to(total.dtype)
        total = total + _pyramid_mse(fs, ft)
    return total


def _pyramid_mse(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """One pair's normalised sum of the full-resolution MSE and the pooled levels' MSEs."""
    height = fs.shape[2]
    loss = F.mse_loss(fs, ft)
    weight, weight_sum = 1.0, 1.0
    for level in HCL_LEVELS:
        if level >= height:
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, level), F.adaptive_avg_pool2d(ft, level))
        weight_sum += weight
    return loss / weight_sum


def _check_feature_lists(student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]) -> None:
    """Two equal-length, non-empty lists of floating ``[N, C, H, W]`` tensors, pairwise of one shape."""
    for name, features in (("student_features", student_features), ("teacher_features", teacher_features)):
        if isinstance(features, torch.Tensor) or not isinstance(features, Sequence):
            raise ValueError(
                f"{name} must be a list of [N, C, H, W] tensors (one per level), got {type(features).__name__}"
            )
        if not features:
            raise ValueError(f"{name} is empty; pass one [N, C, H, W] tensor per feature level")
    if len(student_features) != len(teacher_features):
        raise ValueError(
            f"student_features and teacher_features must have the same length (one entry per level), got "
            f"{len(student_features)} and {len(teacher_features)}"
        )
    for index, (fs, ft) in enumerate(zip(student_features, teacher_features, strict=True)):
        for name, tensor in (("student_features", fs), ("teacher_features", ft)):
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.dim() != 4:
                got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ValueError(f"{name}[{index}] must be a floating-point [N, C, H, W] tensor, got {got}")
        if fs.shape != ft.shape:
            raise ValueError(
                f"student_features[{index}] and teacher_features[{index}] must have the same shape, got "
                f"{tuple(fs.shape)} and {tuple(ft.shape)}; ReviewKD's ABF modules map each student level to "
                "the teacher's channels and size (check in/out channels and shapes)"
            )


class HCLLoss(nn.Module):
    """Module form of :func:`hcl_loss`; call as ``loss(student_features, teacher_features)``."""

    def forward(
        self, student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        return hcl_loss(student_features, teacher_features)
