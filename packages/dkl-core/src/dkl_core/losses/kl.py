"""Hinton's knowledge-distillation loss: the temperature-scaled KL divergence."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_logits_pair, check_positive, check_reduction, compute_dtype, reduce
from ._precision import full_precision
from ._tokens import is_plain, over_tokens


@full_precision
def kl_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Temperature-scaled KL divergence of Hinton et al., "Distilling the Knowledge in a Neural Network" (2015).

    .. math::
        \ell_b = T^2 \sum_j p_j \left(\log p_j - \log q_j\right),\quad
        p = \mathrm{softmax}(t_b / T),\; q = \mathrm{softmax}(s_b / T)

    Temperature: ``temperature`` (``T``) divides both logits before the softmax; the loss is multiplied by ``T^2``.

    Gradients flow into both inputs; detach ``teacher_logits`` (or compute them under ``no_grad``)
    for a frozen teacher. The arithmetic runs in float32 even under bf16/fp16 autocast.

    Args:
        student_logits: ``s``, shape ``[B, C]``, or ``[..., V]`` for tokens (e.g. ``[batch, sequence, vocab]``).
        teacher_logits: ``t``, the student's shape, the target distribution's logits.
        temperature: ``T > 0``, divides both logits; the loss carries the ``T^2`` factor (4 on CIFAR-100, 1 on ImageNet).
        reduction: ``"mean"`` over the batch (not over ``B*C`` elements; ``"batchmean"`` is an alias), ``"sum"``
            or ``"none"`` (``[B]``, or ``[...]`` with zeros at ignored positions).
        labels: optional ``[...]`` integer labels (the logits' leading shape); positions equal to
            ``ignore_index`` (padding, prompt tokens) contribute nothing and ``"mean"`` averages the others.
        ignore_index: the label value that marks an ignored position (default -100).
        num_items_in_batch: divide the sum by this instead of the number of valid positions under ``"mean"``:
            the valid positions of all micro-batches of an accumulated step, so their gradients add up to
            the large batch's.

    Returns:
        A scalar, or the per-sample losses when ``reduction="none"``. With every position ignored, 0 with
        zero gradients.

    Example:
        >>> s, t = torch.randn(8, 10), torch.randn(8, 10)
        >>> kl_loss(s, t, temperature=4.0).shape
        torch.Size([])
    """
    check_positive("temperature", temperature)
    reduction = check_reduction(reduction)
    if not is_plain(student_logits, labels, num_items_in_batch):
        return over_tokens(
            functools.partial(kl_loss, temperature=temperature), student_logits, teacher_logits,
            labels=labels, ignore_index=ignore_index, num_items_in_batch=num_items_in_batch, reduction=reduction,
        )  # fmt: skip
    check_logits_pair(student_logits, teacher_logits)
    dtype = compute_dtype(student_logits, teacher_logits)
    log_q = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)
    log_p = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=1)
    per_sample = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1)
    return reduce(per_sample * temperature**2, reduction)


class KLLoss(nn.Module):
    """Module form of :func:`kl_loss`; call as ``loss(student_logits, teacher_logits)``.

    The arguments are checked here, with the messages :func:`kl_loss` gives.
    """

    def __init__(self, temperature: float = 1.0, reduction: str = "mean", ignore_index: int = -100) -> None:
        super().__init__()
        check_positive("temperature", temperature)
        check_reduction(reduction)
        self.temperature = temperature
        self.reduction = reduction
        self.ignore_index = ignore_index

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        *,
        labels: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        return kl_loss(
            student_logits, teacher_logits, temperature=self.temperature, reduction=self.reduction,
            labels=labels, ignore_index=self.ignore_index, num_items_in_batch=num_items_in_batch,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"temperature={self.temperature!r}, reduction={self.reduction!r}, ignore_index={self.ignore_index!r}"
