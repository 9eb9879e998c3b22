"""DKL, IKL and GKL: the decoupled forms of the KL divergence.

References:
    Cui et al., "Decoupled Kullback-Leibler Divergence Loss", NeurIPS 2024 (arXiv 2305.13948).
    Cui et al., "Generalized Kullback-Leibler Divergence Loss", TPAMI 2026 (arXiv 2503.08038).

Naming: the paper writes ``alpha`` for the wMSE weight and ``beta`` for the cross-entropy weight; the
released code swaps them. To end the confusion these functions take ``mse_weight`` and ``ce_weight``.
"""

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
    check_weights,
    compute_dtype,
)
from ._decoupled_terms import TermOptions, decoupled_terms
from ._precision import full_precision
from ._tokens import is_plain, over_tokens


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
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
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
        student_logits: ``[B, C]``, or ``[..., V]`` for tokens.
        teacher_logits: the student's shape.
        mse_weight: weight of the wMSE term, finite and ``>= 0`` (the paper's ``alpha``, the released code's
            ``beta``).
        ce_weight: weight of the soft cross-entropy term, finite and ``>= 0`` (the paper's ``beta``).
        temperature: ``T > 0``, divides both logits before decoupling; no ``T^2`` factor (default 1).
        reduction: ``"mean"`` over the batch (``"batchmean"`` is an alias), ``"sum"`` or ``"none"`` (``[B]``).
        compiled: run the fused forward pass through ``torch.compile`` (see :func:`ikl_loss`).
        labels, ignore_index, num_items_in_batch: token-shaped inputs, as in :func:`ikl_loss`.
    """
    _check_dkl_options(mse_weight, ce_weight, temperature)
    reduction = check_reduction(reduction)
    if not is_plain(student_logits, labels, num_items_in_batch):
        loss_fn = functools.partial(
            dkl_loss, mse_weight=mse_weight, ce_weight=ce_weight, temperature=temperature, compiled=compiled
        )
        return over_tokens(
            loss_fn, student_logits, teacher_logits, labels=labels, ignore_index=ignore_index,
            num_items_in_batch=num_items_in_batch, reduction=reduction,
        )  # fmt: skip
    check_logits_pair(student_logits, teacher_logits)
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
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
    mass_sq_sum: float | torch.Tensor | None = None,
) -> torch.Tensor:
    _check_ikl_options(mse_weight, ce_weight, temperature, weight_temperature, gamma)
    reduction = check_reduction(reduction)
    if not is_plain(student_logits, labels, num_items_in_batch) or mass_sq_sum is not None:
        options = dict(mse_weight=mse_weight, ce_weight=ce_weight, temperature=temperature,
                       weight_temperature=weight_temperature, compiled=compiled)  # fmt: skip
        if gamma is not None and (num_items_in_batch is not None or mass_sq_sum is not None):
            # The normaliser sum_b W_b^2 is the accumulated batch's (or this one's, scaled): IKL's rows with
            # w^gamma and the wMSE weight rescaled to it.
            divisor = num_items_in_batch if reduction == "mean" and mass_sq_sum is not None else None
            loss_fn = functools.partial(gkl_rows, gamma=gamma, mass_sq_sum=mass_sq_sum, divisor=divisor, **options)
        else:
            loss_fn = functools.partial(
                _ikl_family, weights=None, detach_weights=detach_weights, gamma=gamma, **options
            )
        return over_tokens(
            loss_fn, student_logits, teacher_logits, labels=labels, ignore_index=ignore_index,
            num_items_in_batch=num_items_in_batch, reduction=reduction, row_tensors={"weights": weights},
        )  # fmt: skip
    check_logits_pair(student_logits, teacher_logits)
    dtype = compute_dtype(student_logits, teacher_logits)
    student = student_logits.to(dtype)
    teacher = teacher_logits.to(dtype)
    if weights is None:
        class_weights = F.softmax(teacher / weight_temperature if weight_temperature != 1.0 else teacher, dim=1)
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


def gkl_weights(
    teacher: torch.Tensor | None, weights: torch.Tensor | None, weight_temperature: float, gamma: float
) -> torch.Tensor:
    """GKL's detached ``w ** gamma`` of ``[n, C]`` rows in the compute dtype (``softmax(t / T_w)`` by default;
    ``teacher`` may be ``None`` when ``weights`` are given)."""
    dtype = compute_dtype(*(t for t in (teacher, weights) if t is not None))
    if weights is None:
        teacher = teacher.detach().to(dtype)
        weights = F.softmax(teacher / weight_temperature if weight_temperature != 1.0 else teacher, dim=1)
    elif teacher is not None:
        check_weights(weights, teacher)
    weights = weights.detach().to(dtype)
    return weights if gamma == 1.0 else _power(weights, gamma)


def mass_scaled_weight(mse_weight: float, rows: float | torch.Tensor, mass_sq_sum: float | torch.Tensor) -> float:
    """GKL's wMSE weight for IKL's rows: ``mse_weight * rows / sum_b W_b^2`` (0 when every weight is 0), so
    that ``sum_rows ikl / rows`` is ``mse_weight * sum wMSE / sum W^2 + ce_weight * mean sCE``."""
    mass = float(mass_sq_sum)
    return mse_weight * float(rows) / mass if mass > 0 else 0.0


def gkl_rows(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    reduction: str,
    weights: torch.Tensor | None = None,
    mse_weight: float,
    ce_weight: float,
    temperature: float,
    weight_temperature: float,
    compiled: bool,
    gamma: float,
    mass_sq_sum: float | torch.Tensor | None,
    divisor: int | torch.Tensor | None,
) -> torch.Tensor:
    """GKL on ``[n, C]`` rows (``reduction`` ``"sum"`` or ``"none"``) with the normaliser ``mass_sq_sum`` (default:
    these rows' ``sum_b W_b^2``) and ``divisor`` rows in the mean (default: ``n``)."""
    powered = gkl_weights(teacher, weights, weight_temperature, gamma)
    if mass_sq_sum is None:
        mass_sq_sum = powered.sum(dim=1).square().sum()
    rows = student.shape[0] if divisor is None else divisor
    return ikl_loss(
        student, teacher, mse_weight=mass_scaled_weight(mse_weight, rows, mass_sq_sum), ce_weight=ce_weight,
        temperature=temperature, weights=powered, reduction=reduction, compiled=compiled,
    )  # fmt: skip


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
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
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
        student_logits: ``s``, shape ``[B, C]`` (student, adversarial image, strong view), or ``[..., V]`` for
            tokens (e.g. ``[batch, sequence, vocab]``).
        teacher_logits: ``t``, the student's shape (teacher, natural image, weak view / EMA model).
        mse_weight: weight of the wMSE term, finite and ``>= 0`` (the released code's ``beta``).
        ce_weight: weight of the soft cross-entropy, finite and ``>= 0`` (the released code's ``alpha``).
        temperature: ``T > 0``, divides both logits in the cross-entropy term only; no ``T^2`` factor (4 for
            CIFAR-100 distillation, 1 on ImageNet and in adversarial training).
        weights: optional non-negative class weights of the logits' shape, e.g. a class-prior row per sample.
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
        labels: optional ``[...]`` integer labels (the logits' leading shape); positions equal to
            ``ignore_index`` (padding, prompt tokens) contribute nothing and ``"mean"`` averages the others.
            With every position ignored the loss is 0 with zero gradients.
        ignore_index: the label value that marks an ignored position (default -100).
        num_items_in_batch: divide the sum by this instead of the number of valid positions under ``"mean"``:
            the valid positions of all micro-batches of an accumulated step, so their gradients add up to
            the large batch's.

    Example:
        >>> student, teacher = torch.randn(8, 100, requires_grad=True), torch.randn(8, 100)
        >>> loss = ikl_loss(student, teacher, mse_weight=8.0, temperature=4.0, weight_temperature=100.0)
        >>> loss.backward()
    """
    return _ikl_family(
        student_logits, teacher_logits, mse_weight, ce_weight, temperature,
        weights, weight_temperature, detach_weights, reduction, gamma=None, compiled=compiled,
        labels=labels, ignore_index=ignore_index, num_items_in_batch=num_items_in_batch,
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
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
    mass_sq_sum: float | torch.Tensor | None = None,
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

    ``gamma`` must be finite and ``>= 0`` (0 gives uniform weights). ``labels``, ``ignore_index`` and
    ``num_items_in_batch`` work as in :func:`ikl_loss`; the normaliser sums over the valid positions only.

    Gradient accumulation: the normaliser spans the whole batch, so micro-batches equal one large batch when
    each is given ``num_items_in_batch`` and ``mass_sq_sum``, the large batch's :math:`\sum_b W_b^2` (e.g.
    ``(prior.weights(labels) ** gamma).sum(-1).square().sum()`` over its valid positions). Without
    ``mass_sq_sum`` a micro-batch uses its own mean of :math:`W_b^2`, which is the same when every row's weights
    have one mass (``gamma = 1`` with rows that sum to 1). With ``mass_sq_sum`` (or ``num_items_in_batch``) the
    weights get no gradient through the normaliser, and the mass is read back to the host once per call.
    Other arguments as in :func:`ikl_loss`.
    """
    return _ikl_family(
        student_logits, teacher_logits, mse_weight, ce_weight, temperature,
        weights, weight_temperature, detach_weights, reduction, gamma=gamma, compiled=compiled,
        labels=labels, ignore_index=ignore_index, num_items_in_batch=num_items_in_batch, mass_sq_sum=mass_sq_sum,
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
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        _check_dkl_options(mse_weight, ce_weight, temperature)
        check_reduction(reduction)
        self.mse_weight = mse_weight
        self.ce_weight = ce_weight
        self.temperature = temperature
        self.reduction = reduction
        self.compiled = compiled
        self.ignore_index = ignore_index

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        *,
        labels: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        return dkl_loss(
            student_logits, teacher_logits, mse_weight=self.mse_weight, ce_weight=self.ce_weight,
            temperature=self.temperature, reduction=self.reduction, compiled=self.compiled,
            labels=labels, ignore_index=self.ignore_index, num_items_in_batch=num_items_in_batch,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"mse_weight={self.mse_weight!r}, ce_weight={self.ce_weight!r}, temperature={self.temperature!r}, "
            f"reduction={self.reduction!r}, compiled={self.compiled!r}, ignore_index={self.ignore_index!r}"
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
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        _check_ikl_options(mse_weight, ce_weight, temperature, weight_temperature, gamma=None)
        check_reduction(reduction)
        self.ignore_index = ignore_index
        self.mse_weight = mse_weight
        self.ce_weight = ce_weight
        self.temperature = temperature
        self.weight_temperature = weight_temperature
        self.detach_weights = detach_weights
        self.reduction = reduction
        self.compiled = compiled

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        weights: torch.Tensor | None = None,
        *,
        labels: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        return ikl_loss(
            student_logits, teacher_logits, weights=weights, labels=labels, num_items_in_batch=num_items_in_batch,
            **self._options(),
        )  # fmt: skip

    def _options(self) -> dict:
        return dict(
            mse_weight=self.mse_weight, ce_weight=self.ce_weight, temperature=self.temperature,
            weight_temperature=self.weight_temperature, detach_weights=self.detach_weights,
            reduction=self.reduction, compiled=self.compiled, ignore_index=self.ignore_index,
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
        ignore_index: int = -100,
    ) -> None:
        check_non_negative("gamma", gamma, hint="0 gives uniform weights")
        super().__init__(
            mse_weight=mse_weight, ce_weight=ce_weight, temperature=temperature,
            weight_temperature=weight_temperature, detach_weights=detach_weights, reduction=reduction,
            compiled=compiled, ignore_index=ignore_index,
        )  # fmt: skip
        self.gamma = gamma

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        weights: torch.Tensor | None = None,
        *,
        labels: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        mass_sq_sum: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        return gkl_loss(
            student_logits, teacher_logits, weights=weights, gamma=self.gamma, labels=labels,
            num_items_in_batch=num_items_in_batch, mass_sq_sum=mass_sq_sum, **self._options(),
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"gamma={self.gamma!r}, {super().extra_repr()}"
