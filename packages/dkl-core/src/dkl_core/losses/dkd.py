"""Decoupled Knowledge Distillation (DKD), the baseline every KD comparison table includes."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import (
    check_logits_pair,
    check_non_negative,
    check_positive,
    check_reduction,
    check_targets,
    compute_dtype,
    reduce,
)
from ._precision import full_precision
from ._tokens import over_tokens


def _binary_log_probs(log_probs: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """``[log p_target, log (1 - p_target)]`` per sample, computed stably from log-probabilities."""
    log_target = log_probs.masked_select(target_mask).unsqueeze(1)
    log_rest = log_probs.masked_fill(target_mask, float("-inf")).logsumexp(dim=1, keepdim=True)
    return torch.cat([log_target, log_rest], dim=1)


def _non_target(logits: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """The ``[B, C-1]`` logits of the non-target classes, in class order."""
    batch, num_classes = logits.shape
    return logits.masked_select(~target_mask).view(batch, num_classes - 1)


def _check_dkd_options(tckd_weight: float, nckd_weight: float, temperature: float) -> None:
    check_non_negative("tckd_weight", tckd_weight)
    check_non_negative("nckd_weight", nckd_weight)
    check_positive("temperature", temperature)


def _needs_tokens(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, num_items_in_batch: object) -> bool:
    """Token-shaped input, ``num_items_in_batch`` or an ignored target: the path of :func:`over_tokens`."""
    if not isinstance(logits, torch.Tensor) or not isinstance(targets, torch.Tensor):
        return False  # check_logits_pair / check_targets say what is wrong
    if logits.dim() != 2 or targets.dim() != 1 or num_items_in_batch is not None:
        return True
    return bool((targets == ignore_index).any())


@full_precision
def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    tckd_weight: float = 1.0,
    nckd_weight: float = 8.0,
    temperature: float = 4.0,
    reduction: str = "mean",
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    r"""DKD of Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022.

    Splits the KD loss into a target-class term (TCKD, the binary target/non-target distributions)
    and a non-target-class term (NCKD, the distribution over the ``C - 1`` other classes):

    .. math::
        \ell_b = T^2\Big(\text{tckd\_weight}\,\mathrm{KL}(b^t\,\|\,b^s)
                 + \text{nckd\_weight}\,\mathrm{KL}(\hat p^t\,\|\,\hat p^s)\Big)

    with ``b = [p_y, 1 - p_y]`` from ``softmax(logits / T)`` and ``p̂`` the softmax over the non-target
    logits divided by ``T``.

    Temperature: ``temperature`` (``T``) divides both logits before the softmax (in both terms); the loss is
    multiplied by ``T^2``.

    The non-target classes are gathered rather than masked with a large constant, so the
    result is exact. Gradients flow into both logits (detach the teacher for distillation).

    Args:
        student_logits: ``[B, C]``, or ``[..., V]`` for tokens.
        teacher_logits: the student's shape.
        targets: ``[B]`` (or ``[...]``) integer labels in ``[0, C)``, or ``ignore_index`` for a position that
            contributes nothing (padding, prompt tokens).
        tckd_weight: the paper's ``alpha``, finite and ``>= 0`` (1.0 in every published config).
        nckd_weight: the paper's ``beta``, finite and ``>= 0`` (8.0 for most CIFAR-100 pairs, 2.0 or 6.0 for some).
        temperature: ``T > 0``, divides both logits; the loss carries the ``T^2`` factor (4 on CIFAR-100, 1 on
            ImageNet).
        reduction: ``"mean"`` over the valid positions (``"batchmean"`` is an alias), ``"sum"`` or ``"none"``
            (``[B]``, or ``[...]`` with zeros at ignored positions).
        ignore_index: the target value that marks an ignored position (default -100). With every position
            ignored the loss is 0 with zero gradients.
        num_items_in_batch: divide the sum by this instead of the number of valid positions under ``"mean"``
            (the valid positions of all micro-batches of an accumulated step).
    """
    _check_dkd_options(tckd_weight, nckd_weight, temperature)
    reduction = check_reduction(reduction)
    if _needs_tokens(student_logits, targets, ignore_index, num_items_in_batch):
        loss_fn = functools.partial(
            dkd_loss, tckd_weight=tckd_weight, nckd_weight=nckd_weight, temperature=temperature,
            ignore_index=ignore_index,
        )  # fmt: skip
        return over_tokens(
            loss_fn, student_logits, teacher_logits, labels=targets, ignore_index=ignore_index,
            num_items_in_batch=num_items_in_batch, reduction=reduction, pass_labels=True,
        )  # fmt: skip
    check_logits_pair(student_logits, teacher_logits)
    batch, num_classes = student_logits.shape
    check_targets(targets, batch, num_classes)
    dtype = compute_dtype(student_logits, teacher_logits)
    student = student_logits.to(dtype) / temperature
    teacher = teacher_logits.to(dtype) / temperature
    target_mask = F.one_hot(targets.long(), num_classes).bool()

    def kl(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1)

    tckd = kl(
        _binary_log_probs(F.log_softmax(student, dim=1), target_mask),
        _binary_log_probs(F.log_softmax(teacher, dim=1), target_mask),
    )
    nckd = kl(
        F.log_softmax(_non_target(student, target_mask), dim=1),
        F.log_softmax(_non_target(teacher, target_mask), dim=1),
    )
    per_sample = (tckd_weight * tckd + nckd_weight * nckd) * temperature**2
    return reduce(per_sample, reduction)


class DKDLoss(nn.Module):
    """Module form of :func:`dkd_loss`; ``forward(student_logits, teacher_logits, targets)``.

    The arguments are checked here, with the messages :func:`dkd_loss` gives.
    """

    def __init__(
        self,
        tckd_weight: float = 1.0,
        nckd_weight: float = 8.0,
        temperature: float = 4.0,
        reduction: str = "mean",
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        _check_dkd_options(tckd_weight, nckd_weight, temperature)
        check_reduction(reduction)
        self.tckd_weight = tckd_weight
        self.nckd_weight = nckd_weight
        self.temperature = temperature
        self.reduction = reduction

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        targets: torch.Tensor,
        *,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        return dkd_loss(
            student_logits, teacher_logits, targets, tckd_weight=self.tckd_weight, nckd_weight=self.nckd_weight,
            temperature=self.temperature, reduction=self.reduction, ignore_index=self.ignore_index,
            num_items_in_batch=num_items_in_batch,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"tckd_weight={self.tckd_weight!r}, nckd_weight={self.nckd_weight!r}, "
            f"temperature={self.temperature!r}, reduction={self.reduction!r}, ignore_index={self.ignore_index!r}"
        )
