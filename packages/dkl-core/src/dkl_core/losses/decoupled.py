"""DKL, IKL and GKL: the decoupled forms of the KL divergence.

References:
    Cui et al., "Decoupled Kullback-Leibler Divergence Loss", NeurIPS 2024 (arXiv 2305.13948).
    Cui et al., "Generalized Kullback-Leibler Divergence Loss", TPAMI 2026 (arXiv 2503.08038).

Naming: the paper writes ``alpha`` for the wMSE weight and ``beta`` for the cross-entropy weight; the
released code swaps them. To end the confusion these functions take ``mse_weight`` and ``ce_weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import (
    check_logits_pair,
    check_non_negative,
    check_positive,
    check_reduction,
    check_weights,
    compute_dtype,
)
from ._decoupled_terms import TermOptions, decoupled_terms
from ._precision import full_precision


def _check_dkl_options(mse_weight: float, ce_weight: float, temperature: float) -> None:
    """The scalar arguments every decoupled loss takes (the messages of functions and modules alike)."""
    check_non_negative("mse_weight", mse_weight)
    check_non_negative("ce_weight", ce_weight)
    check_positive("temperature", temperature)


def _check_ikl_options(
    mse_weight: float, ce_weight: float, temperature: float, weight_temperature: float, gamma: float | None
) -> None:
    """:func:`_check_dkl_options` plus ``weight_temperature`` and GKL's ``gamma`` (``None`` for IKL)."""
    _check_dkl_options(mse_weight, ce_weight, temperature)
    check_positive("weight_temperature", weight_temperature)
    if gamma is not None:
        check_non_negative("gamma", gamma, hint="0 gives uniform weights")


@full_precision
def dkl_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    mse_weight: float = 1.0,
    ce_weight: float = 1.0,
    temperature: float = 1.0,
    reduction: str = "mean",
    compiled: bool = False,
) -> torch.Tensor:
    r"""Decoupled KL (Theorem 1 of Cui et al., NeurIPS 2024): KL split into a weighted MSE and a soft CE.

    With ``s = student_logits / T``, ``t = teacher_logits / T`` and :math:`S(\cdot)` the stop-gradient,

    .. math::
        \ell_b = \text{mse\_weight}\cdot\tfrac14\sum_{j,k} w_j w_k
                 \big((t_j - t_k) - (S(s_j) - S(s_k))\big)^2
               - \text{ce\_weight}\sum_j S(\mathrm{softmax}(t))_j \log \mathrm{softmax}(s)_j,
        \qquad w = S(\mathrm{softmax}(t)).

    Temperature: ``temperature`` (``T``) divides both logits before the decoupling (the wMSE, its weights
    and the soft cross-entropy all see ``logits / T``); no ``T^2`` factor.

    With unit weights its gradients with respect to *both* inputs equal those of
    ``KL(softmax(t) || softmax(s))`` (that is, ``kl_loss(..., temperature=T) / T**2``). The wMSE term
    only moves ``teacher_logits``: with a frozen teacher it does nothing, which is what IKL repairs.
    Computed exactly in O(B*C) (no ``B x C x C`` tensor), in float32 under autocast.

    Args:
        student_logits: ``[B, C]``.
        teacher_logits: ``[B, C]``.
        mse_weight: weight of the wMSE term, finite and ``>= 0`` (the paper's ``alpha``, the released code's
            ``beta``).
        ce_weight: weight of the soft cross-entropy term, finite and ``>= 0`` (the paper's ``beta``).
        temperature: ``T > 0``, divides both logits before decoupling; no ``T^2`` factor (default 1).
        reduction: ``"mean"`` over the batch (``"batchmean"`` is an alias), ``"sum"`` or ``"none"`` (``[B]``).
        compiled: run the fused forward pass through ``torch.compile`` (see :func:`ikl_loss`).
    """
    check_logits_pair(student_logits, teacher_logits)
    _check_dkl_options(mse_weight, ce_weight, temperature)
    reduction = check_reduction(reduction)
    dtype = compute_dtype(student_logits, teacher_logits)
    student = student_logits.to(dtype)
    teacher = teacher_logits.to(dtype)
    if temperature != 1.0:
        student, teacher = student / temperature, teacher / temperature
    weights = F.softmax(teacher.detach(), dim=1)
    options = TermOptions(
        mse_weight, ce_weight, temperature=1.0, mse_on_student=False, normalize_mass=False, reduction=reduction
    )
    return decoupled_terms(student, teacher, weights, options, compiled)


def _power(weights: torch.Tensor, gamma: float) -> torch.Tensor:
    """``weights ** gamma`` (``0 ** 0 = 1``). On CPU and without autograd, ``exp(gamma * log w)`` is about
    twice as fast as ``pow`` with a real exponent and keeps ``w = 0`` at 0; on an accelerator ``pow`` is one
    kernel launch instead of three."""
    if gamma == 0.0:
        return torch.ones_like(weights)
    if weights.requires_grad or weights.device.type != "cpu":
        return weights.pow(gamma)
    return torch.log(weights).mul_(gamma).exp_()


def _ikl_family(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mse_weight: float,
    ce_weight: float,
    temperature: float,
    weights: torch.Tensor | None,
    weight_temperature: float,
    detach_weights: bool,
    reduction: str,
    gamma: float | None,
    compiled: bool,
) -> torch.Tensor:
    check_logits_pair(student_logits, teacher_logits)
    _check_ikl_options(mse_weight, ce_weight, temperature, weight_temperature, gamma)
    reduction = check_reduction(reduction)
    dtype = compute_dtype(student_logits, teacher_logits)
    student = student_logits.to(dtype)
    teacher = teacher_logits.to(dtype)
    if weights is None:
        class_weights = F.softmax(teacher / weight_temperature, dim=1)
    else:
        check_weights(weights, student_logits)
        class_weights = weights.to(dtype)
    if detach_weights:
        class_weights = class_weights.detach()
    if gamma is not None and gamma != 1.0:
        class_weights = _power(class_weights, gamma)
    options = TermOptions(
        mse_weight, ce_weight, temperature, mse_on_student=True, normalize_mass=gamma is not None, reduction=reduction
    )
    return decoupled_terms(student, teacher, class_weights, options, compiled)


@full_precision
def ikl_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    mse_weight: float = 1.0,
    ce_weight: float = 1.0,
    temperature: float = 1.0,
    weights: torch.Tensor | None = None,
    weight_temperature: float = 1.0,
    detach_weights: bool = True,
    reduction: str = "mean",
    compiled: bool = False,
) -> torch.Tensor:
    r"""Improved KL (Cui et al., NeurIPS 2024): DKL with the wMSE gradient reaching the student, and class weights.

    .. math::
        \ell_b = \text{mse\_weight}\cdot\tfrac14\sum_{j,k} w_j w_k
                 \big((t_j - t_k) - (s_j - s_k)\big)^2
               - \text{ce\_weight}\sum_j S(\mathrm{softmax}(t/T))_j \log \mathrm{softmax}(s/T)_j

    Temperature: ``temperature`` (``T``) divides both logits in the soft cross-entropy term only (the wMSE
    acts on the raw logits); no ``T^2`` factor. ``weight_temperature`` (``T_w``) divides the teacher logits
    of the default weights ``softmax(t / T_w)``, and does nothing when ``weights`` is given.

    ``w`` is ``weights[b]`` when given — the class-wise prior of the sample's label,
    ``class_prior.weights(targets)`` ("GI") — and otherwise ``softmax(t / weight_temperature)``.
    Gradients flow into both logits (detach the teacher yourself in distillation). Exact O(B*C)
    computation (no ``B x C x C`` tensor), in float32 under bf16/fp16 autocast.

    Args:
        student_logits: ``s``, shape ``[B, C]`` (student, adversarial image, strong view).
        teacher_logits: ``t``, shape ``[B, C]`` (teacher, natural image, weak view / EMA model).
        mse_weight: weight of the wMSE term, finite and ``>= 0`` (the released code's ``beta``).
        ce_weight: weight of the soft cross-entropy, finite and ``>= 0`` (the released code's ``alpha``).
        temperature: ``T > 0``, divides both logits in the cross-entropy term only; no ``T^2`` factor (4 for
            CIFAR-100 distillation, 1 on ImageNet and in adversarial training).
        weights: optional non-negative ``[B, C]`` class weights, e.g. a class-prior row per sample.
        weight_temperature: ``T_w > 0`` of the default weights ``softmax(t / T_w)``, unused when ``weights``
            is given (100 for IKL and 4 for GKL in CIFAR-100 distillation).
        detach_weights: stop the gradient through the weights (the paper). ``False`` lets it flow,
            as the released semi-supervised code ran (it departs from the paper's formula).
        reduction: ``"mean"`` over the batch (``"batchmean"`` is an alias), ``"sum"`` or ``"none"`` (``[B]``).
        compiled: run the fused forward pass (which also prepares the gradients) through ``torch.compile``:
            a few fused kernels instead of about twenty small ones. At classification-head sizes on a GPU,
            where each op costs mostly its launch, that took IKL from 1.2-1.5x the time of a plain KL loss
            to 0.9-1.4x (H200, ``benchmarks/results/losses_cuda_*.md``). The first call with new constants
            or shapes compiles (seconds to a minute); the values equal the eager path's to rounding.
            Inside a caller's ``torch.compile`` (a compiled training step) the outer graph compiles the
            loss either way.

    Example:
        >>> student, teacher = torch.randn(8, 100, requires_grad=True), torch.randn(8, 100)
        >>> loss = ikl_loss(student, teacher, mse_weight=8.0, temperature=4.0, weight_temperature=100.0)
        >>> loss.backward()
    """
    return _ikl_family(
        student_logits, teacher_logits, mse_weight, ce_weight, temperature,
        weights, weight_temperature, detach_weights, reduction, gamma=None, compiled=compiled,
    )  # fmt: skip


@full_precision
def gkl_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    mse_weight: float = 1.0,
    ce_weight: float = 1.0,
    temperature: float = 1.0,
    weights: torch.Tensor | None = None,
    weight_temperature: float = 1.0,
    detach_weights: bool = True,
    gamma: float = 1.0,
    reduction: str = "mean",
    compiled: bool = False,
) -> torch.Tensor:
    r"""Generalized KL (Cui et al., TPAMI 2026): IKL with smoothed weights and a mass-normalised wMSE.

    The weights become :math:`w^\gamma` (``gamma = 0`` makes them uniform) and the batch's wMSE is
    divided by the batch mean of :math:`W_b^2`, :math:`W_b = \sum_j w_{bj}`:

    .. math::
        \mathcal{L} = \text{mse\_weight}\,\frac{\sum_b \mathrm{wMSE}_b(w^\gamma)}{\sum_b W_b^2}
                    + \text{ce\_weight}\,\frac1B\sum_b \mathrm{sCE}_b(T)

    which is the TPAMI code's normalisation (batch sums, not per sample). ``reduction="none"``
    returns ``mse_weight * wMSE_b / mean_b(W_b^2) + ce_weight * sCE_b``, whose mean is the formula.
    With ``gamma = 1`` and weights that sum to 1 per row, GKL equals IKL.

    Temperature: ``temperature`` (``T``) divides both logits in the soft cross-entropy term only (the wMSE
    acts on the raw logits); no ``T^2`` factor. ``weight_temperature`` (``T_w``) divides the teacher logits
    of the default weights ``softmax(t / T_w)`` (before ``** gamma``), and does nothing when ``weights`` is
    given.

    ``gamma`` must be finite and ``>= 0`` (0 gives uniform weights). Other arguments as in :func:`ikl_loss`.
    """
    return _ikl_family(
        student_logits, teacher_logits, mse_weight, ce_weight, temperature,
        weights, weight_temperature, detach_weights, reduction, gamma=gamma, compiled=compiled,
    )  # fmt: skip


class DKLLoss(nn.Module):
    """Module form of :func:`dkl_loss`; call as ``loss(student_logits, teacher_logits)``.

    The arguments are checked here, with the messages :func:`dkl_loss` gives.
    """

    def __init__(
        self,
        mse_weight: float = 1.0,
        ce_weight: float = 1.0,
        temperature: float = 1.0,
        reduction: str = "mean",
        compiled: bool = False,
    ) -> None:
        super().__init__()
        _check_dkl_options(mse_weight, ce_weight, temperature)
        check_reduction(reduction)
        self.mse_weight = mse_weight
        self.ce_weight = ce_weight
        self.temperature = temperature
        self.reduction = reduction
        self.compiled = compiled

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return dkl_loss(
            student_logits, teacher_logits, mse_weight=self.mse_weight, ce_weight=self.ce_weight,
            temperature=self.temperature, reduction=self.reduction, compiled=self.compiled,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"mse_weight={self.mse_weight!r}, ce_weight={self.ce_weight!r}, temperature={self.temperature!r}, "
            f"reduction={self.reduction!r}, compiled={self.compiled!r}"
        )


class IKLLoss(nn.Module):
    """Module form of :func:`ikl_loss`; ``forward(student_logits, teacher_logits, weights=None)``.

    The arguments are checked here, with the messages :func:`ikl_loss` gives.
    """

    def __init__(
        self,
        mse_weight: float = 1.0,
        ce_weight: float = 1.0,
        temperature: float = 1.0,
        weight_temperature: float = 1.0,
        detach_weights: bool = True,
        reduction: str = "mean",
        compiled: bool = False,
    ) -> None:
        super().__init__()
        _check_ikl_options(mse_weight, ce_weight, temperature, weight_temperature, gamma=None)
        check_reduction(reduction)
        self.mse_weight = mse_weight
        self.ce_weight = ce_weight
        self.temperature = temperature
        self.weight_temperature = weight_temperature
        self.detach_weights = detach_weights
        self.reduction = reduction
        self.compiled = compiled

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        return ikl_loss(student_logits, teacher_logits, weights=weights, **self._options())

    def _options(self) -> dict:
        return dict(
            mse_weight=self.mse_weight, ce_weight=self.ce_weight, temperature=self.temperature,
            weight_temperature=self.weight_temperature, detach_weights=self.detach_weights,
            reduction=self.reduction, compiled=self.compiled,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={value!r}" for name, value in self._options().items())


class GKLLoss(IKLLoss):
    """Module form of :func:`gkl_loss`; ``forward(student_logits, teacher_logits, weights=None)``.

    Same arguments and defaults as :func:`gkl_loss`; ``gamma`` may be given by position (as before), the
    rest by keyword. The arguments are checked here, with the messages :func:`gkl_loss` gives.
    """

    def __init__(
        self,
        gamma: float = 1.0,
        *,
        mse_weight: float = 1.0,
        ce_weight: float = 1.0,
        temperature: float = 1.0,
        weight_temperature: float = 1.0,
        detach_weights: bool = True,
        reduction: str = "mean",
        compiled: bool = False,
    ) -> None:
        check_non_negative("gamma", gamma, hint="0 gives uniform weights")
        super().__init__(
            mse_weight=mse_weight, ce_weight=ce_weight, temperature=temperature,
            weight_temperature=weight_temperature, detach_weights=detach_weights, reduction=reduction,
            compiled=compiled,
        )  # fmt: skip
        self.gamma = gamma

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        return gkl_loss(student_logits, teacher_logits, weights=weights, gamma=self.gamma, **self._options())

    def extra_repr(self) -> str:
        return f"gamma={self.gamma!r}, {super().extra_repr()}"
