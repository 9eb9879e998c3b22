r"""The fused kernel behind DKL, IKL and GKL: weighted MSE + soft cross-entropy in O(B*C).

Per sample, with ``d = t - s``, ``W = sum_j w_j`` and ``e = d - (sum_j w_j d_j) / W``:

.. math::
    \mathrm{wMSE} = \tfrac14 \sum_{j,k} w_j w_k \big((t_j - t_k) - (s_j - s_k)\big)^2
                  = \tfrac12 W \sum_j w_j e_j^2,
    \qquad
    \mathrm{sCE} = -\sum_j \mathrm{softmax}(t/T)_j \log \mathrm{softmax}(s/T)_j .

The pairwise form needs ``B x C x C`` memory; the centred form above is exact, O(B*C), and stable in
low precision (the expanded ``W sum w d^2 - (sum w d)^2`` cancels badly). The gradients are written
out in closed form and, as fused cross-entropy kernels do, computed in the forward pass, so the backward
pass is one multiplication by the upstream gradient:

- d wMSE / d t_j = W w_j e_j  (and the negative for ``s``),
- d wMSE / d w_j = (W e_j^2 + sum_k w_k e_k^2) / 2  (the only gradient left to the backward pass),
- d sCE / d s_j = (softmax(s/T)_j - softmax(t/T)_j) / T, and nothing for ``t`` (its softmax is a
  stop-gradient target).

At the sizes of a classification head every op costs mostly its dispatch (a kernel launch on a GPU, a
few microseconds of framework overhead on a CPU), so the code below counts ops: the batch reduction
happens inside the Function (a dot product over all elements is one op), constants are folded into
Python floats, and in-place updates reuse ``[B, C]`` buffers. With ``compiled=True`` the forward pass
goes through ``torch.compile`` instead (each new set of constants or shapes compiles once, seconds to a
minute); the backward pass has too little left to gain from it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F


class TermOptions(NamedTuple):
    """The constants of one call. ``normalize_mass`` (GKL) divides the wMSE term by the batch mean of
    ``W_b^2``; ``mse_on_student=False`` stops the wMSE gradient into the student (DKL's ``S(s)``);
    ``reduction`` is ``"mean"``, ``"sum"`` or ``"none"`` (a ``[B]`` vector)."""

    mse_weight: float
    ce_weight: float
    temperature: float
    mse_on_student: bool
    normalize_mass: bool
    reduction: str


def row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product ``[B, C] x [B, C] -> [B, 1]``."""
    return (a * b).sum(dim=1, keepdim=True)


def scaled_add(total: torch.Tensor, term: torch.Tensor, scale: float, divisor: torch.Tensor | None) -> torch.Tensor:
    """``total += scale * term / divisor`` (``divisor`` a 0-dim tensor, or ``None`` for one) in one op."""
    if divisor is None:
        return total.add_(term, alpha=scale)
    return total.addcdiv_(term, divisor, value=scale)


def flat_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum(a * b)`` over every element, as one op (a BLAS dot; never TF32, unlike a matmul)."""
    return torch.dot(a.view(-1), b.view(-1))


def forward_terms(
    student: torch.Tensor,
    teacher: torch.Tensor,
    weights: torch.Tensor,
    options: TermOptions,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | float | None, ...]:
    """The loss and what the backward pass needs: ``(loss, grad_student, grad_teacher, centred, mass,
    spread, mass_sq_sum, mse_scale)``.

    The gradients of ``student`` and ``teacher`` are computed here, for an upstream gradient of one (per
    sample when ``reduction="none"``), so that the backward pass is one multiplication; they are ``None``
    where ``needs`` says no gradient is wanted. ``centred``, ``spread`` and ``mass_sq_sum`` are kept only
    for the weights' gradient. ``W_b sum_j w_j e_j^2`` (twice the wMSE) enters the loss times the float
    ``mse_scale``, and for GKL divided by ``mass_sq_sum = sum_b W_b^2``.
    """
    mse_weight, ce_weight, temperature, mse_on_student, normalize_mass, reduction = options
    need_student, need_teacher, need_weights = needs
    batch = student.shape[0]
    factor = 1.0 / batch if reduction == "mean" else 1.0
    diff = teacher - student
    mass = weights.sum(dim=1, keepdim=True)
    # A row of all-zero weights has wMSE = 0; clamping keeps its weighted mean finite.
    centred = diff.addcdiv_(row_dot(weights, diff), mass.clamp_min(torch.finfo(mass.dtype).tiny), value=-1.0)
    # GKL divides the wMSE term by the batch mean of W_b^2: times B here, by sum_b W_b^2 where it is used.
    mse_scale = 0.5 * mse_weight * factor * (batch if normalize_mass else 1.0)
    mass_sq_sum = flat_dot(mass, mass) if normalize_mass else None
    weighted = weights * centred
    spread = row_dot(weighted, centred) if need_weights or reduction == "none" else None
    mass_weighted = weighted.mul_(mass)  # W w_j e_j = d(W sum_k w_k e_k^2)/dt_j / 2

    # Inline temporaries and the in-place updates below keep few [B, C] tensors alive at once: the forward
    # pass now holds the gradients too, so its peak is the step's peak.
    log_q = F.log_softmax(student / temperature if temperature != 1.0 else student, dim=1)
    p = F.softmax(teacher / temperature if temperature != 1.0 else teacher, dim=1)
    # mse_weight * wMSE (/ mean_b W_b^2 for GKL) - ce_weight * sum_j p_j log q_j, reduced over the batch
    if reduction == "none":
        loss = scaled_add(row_dot(p, log_q).mul_(-ce_weight), mass * spread, mse_scale, mass_sq_sum).squeeze(1)
    else:
        ce_sum = flat_dot(p, log_q).mul_(-ce_weight * factor)
        loss = scaled_add(ce_sum, flat_dot(mass_weighted, centred), mse_scale, mass_sq_sum)

    if not need_weights:
        centred = None  # frees it before the gradients are made
    # d(mse term)/dt_j = 2 mse_scale W w_j e_j (/ sum_b W_b^2), and minus that for s_j
    grad_student = grad_teacher = None
    if need_student:
        # d(soft CE)/ds_j = (softmax(s/T)_j - p_j) / T; p is a stop-gradient target
        grad_student = log_q.exp_().sub_(p).mul_(ce_weight * factor / temperature)
        if mse_on_student:
            scaled_add(grad_student, mass_weighted, -2.0 * mse_scale, mass_sq_sum)
    if need_teacher:  # last: it reuses mass_weighted's memory
        grad_teacher = mass_weighted.mul_(2.0 * mse_scale)
        if mass_sq_sum is not None:
            grad_teacher.div_(mass_sq_sum)
    if not need_weights:
        mass = spread = mass_sq_sum = None
    return loss, grad_student, grad_teacher, centred, mass, spread, mass_sq_sum, mse_scale


def backward_terms(
    grad_out: torch.Tensor,
    grad_student: torch.Tensor | None,
    grad_teacher: torch.Tensor | None,
    centred: torch.Tensor | None,
    mass: torch.Tensor | None,
    spread: torch.Tensor | None,
    mass_sq_sum: torch.Tensor | None,
    mse_scale: float,
    reduction: str,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients for (student, teacher, weights): the forward pass's, times the upstream gradient; the
    weights' (kept only when wanted: ``centred`` is not ``None``) in closed form."""
    g = grad_out.unsqueeze(1) if reduction == "none" else grad_out
    grad_student = None if grad_student is None else grad_student * g
    grad_teacher = None if grad_teacher is None else grad_teacher * g
    grad_weights = None
    if centred is not None:
        scaled_g = g * mse_scale if mass_sq_sum is None else g * mse_scale / mass_sq_sum
        # e is stationary in w (sum_k w_k e_k = 0), so d(W sum_k w_k e_k^2)/dw_j = W e_j^2 + sum_k w_k e_k^2.
        grad_weights = (mass * centred).mul_(centred).add_(spread).mul_(scaled_g)
        if mass_sq_sum is not None:
            # GKL's normaliser sum_b W_b^2 depends on the weights too: d/dW_b = -2 W_b (sum of terms) / sum W^2.
            d_normaliser = (mass * spread).mul_(scaled_g).sum().mul_(-2.0).div_(mass_sq_sum)
            grad_weights.addcmul_(mass, d_normaliser)
    return grad_student, grad_teacher, grad_weights


@functools.cache
def compiled_forward_terms() -> Callable:
    """``forward_terms`` through ``torch.compile`` (built on first use)."""
    return torch.compile(forward_terms, fullgraph=True)


class DecoupledTerms(torch.autograd.Function):
    """``mse_weight * wMSE + ce_weight * sCE`` per sample, reduced over the batch, with closed-form gradients.

    ``compiled`` runs the forward pass through ``torch.compile``. ``grad_enabled`` is the caller's grad mode
    (``forward`` always runs without it): under ``torch.no_grad`` no gradient is prepared.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        student: torch.Tensor,
        teacher: torch.Tensor,
        weights: torch.Tensor,
        options: TermOptions,
        compiled: bool,
        grad_enabled: bool,
    ) -> torch.Tensor:
        # Inside a caller's torch.compile the outer graph already compiles these terms: no nested compile.
        forward = compiled_forward_terms() if compiled and not torch.compiler.is_compiling() else forward_terms
        needs = tuple(grad_enabled and need for need in ctx.needs_input_grad[:3])
        loss, *saved, mse_scale = forward(student, teacher, weights, options, needs)
        ctx.save_for_backward(*saved)
        ctx.backward_options = (mse_scale, options.reduction)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable  # the saved gradients carry no graph: say so, not silently 0
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor):
        mse_scale, reduction = ctx.backward_options
        grads = backward_terms(grad_out, *ctx.saved_tensors, mse_scale, reduction)
        return *grads, None, None, None


def decoupled_terms(
    student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor, options: TermOptions, compiled: bool
) -> torch.Tensor:
    """The fused loss of ``options`` on float32/64 ``[B, C]`` inputs: :class:`DecoupledTerms` in the caller's
    grad mode."""
    return DecoupledTerms.apply(student, teacher, weights, options, compiled, torch.is_grad_enabled())
