r"""The fused kernel behind DKL, IKL and GKL: weighted MSE + soft cross-entropy in O(B*C).

Per sample, with ``d = t - s``, ``W = sum_j w_j`` and ``e = d - (sum_j w_j d_j) / W``:

.. math::
    \mathrm{wMSE} = \tfrac14 \sum_{j,k} w_j w_k \big((t_j - t_k) - (s_j - s_k)\big)^2
                  = \tfrac12 W \sum_j w_j e_j^2,
    \qquad
    \mathrm{sCE} = -\sum_j \mathrm{softmax}(t/T)_j \log \mathrm{softmax}(s/T)_j .

The pairwise form needs ``B x C x C`` memory; the centred form above is exact, O(B*C), and stable in
low precision (the expanded ``W sum w d^2 - (sum w d)^2`` cancels badly). The backward pass is written
out in closed form, which saves most of the autograd graph that the forward would otherwise record:

- d wMSE / d t_j = W w_j e_j  (and the negative for ``s``),
- d wMSE / d w_j = (W e_j^2 + sum_k w_k e_k^2) / 2,
- d sCE / d s_j = (softmax(s/T)_j - softmax(t/T)_j) / T, and nothing for ``t`` (its softmax is a
  stop-gradient target).

At the sizes of a classification head every op costs mostly its dispatch (a kernel launch on a GPU, a
few microseconds of framework overhead on a CPU), so the code below counts ops: the batch reduction
happens inside the Function, constants are folded into Python floats, and in-place updates reuse
``[B, C]`` buffers. With ``compiled=True`` both passes go through ``torch.compile`` instead, which fuses
them into a few kernels (each new set of constants or shapes compiles once, seconds to a minute).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F


def row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product ``[B, C] x [B, C] -> [B, 1]``."""
    return (a * b).sum(dim=1, keepdim=True)


def forward_terms(
    student: torch.Tensor,
    teacher: torch.Tensor,
    weights: torch.Tensor,
    mse_weight: float,
    ce_weight: float,
    temperature: float,
    normalize_mass: bool,
    reduction: str,
    keep_for_weights: bool,
) -> tuple[torch.Tensor | None, ...]:
    """The loss and what the backward pass needs: ``(loss, weighted, centred, mass, spread, log_q, p,
    twice_mse, mass_sq_sum)``; ``centred`` and ``twice_mse`` only when ``keep_for_weights``."""
    diff = teacher - student
    mass = weights.sum(dim=1, keepdim=True)
    # A row of all-zero weights has wMSE = 0; clamping keeps its weighted mean finite.
    centred = diff.sub_(row_dot(weights, diff).div_(mass.clamp_min(torch.finfo(mass.dtype).tiny)))
    weighted = weights * centred
    spread = row_dot(weighted, centred)
    twice_mse = mass * spread

    if temperature != 1.0:
        student, teacher = student / temperature, teacher / temperature
    log_q = F.log_softmax(student, dim=1)
    p = F.softmax(teacher, dim=1)
    # per sample: mse_weight * wMSE (/ mean_b W_b^2 for GKL) - ce_weight * sum_j p_j log q_j
    per_sample = row_dot(p, log_q).mul_(-ce_weight)
    if normalize_mass:
        mass_sq_sum = (mass * mass).sum()
        per_sample.addcdiv_(twice_mse, mass_sq_sum, value=0.5 * mse_weight * mass.shape[0])
    else:
        mass_sq_sum = None
        per_sample.add_(twice_mse, alpha=0.5 * mse_weight)

    if reduction == "mean":
        loss = per_sample.mean()
    elif reduction == "sum":
        loss = per_sample.sum()
    else:
        loss = per_sample.squeeze(1)
    if not keep_for_weights:
        centred = twice_mse = None
    return loss, weighted, centred, mass, spread, log_q, p, twice_mse, mass_sq_sum


def backward_terms(
    grad_out: torch.Tensor,
    weighted: torch.Tensor,
    centred: torch.Tensor | None,
    mass: torch.Tensor,
    spread: torch.Tensor,
    log_q: torch.Tensor,
    p: torch.Tensor,
    twice_mse: torch.Tensor | None,
    mass_sq_sum: torch.Tensor | None,
    mse_weight: float,
    ce_over_t: float,
    mse_on_student: bool,
    reduction: str,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Closed-form gradients for (student, teacher, weights); ``None`` where ``needs`` is False."""
    batch = mass.shape[0]
    mse_scale = 0.5 * mse_weight
    # The upstream gradient per sample is g = grad_out * per_sample_factor (a 0-dim tensor when reduced);
    # the constants are folded into one multiplication per term.
    g = grad_out.unsqueeze(1) if reduction == "none" else grad_out
    per_sample_factor = 1.0 / batch if reduction == "mean" else 1.0
    g_ce = g * (per_sample_factor * ce_over_t)
    if mass_sq_sum is None:
        scaled_g = g * (per_sample_factor * mse_scale)
    else:
        scaled_g = torch.div(g, mass_sq_sum).mul_(per_sample_factor * mse_scale * batch)
    need_student, need_teacher, need_weights = needs
    # The term is scale * W * sum_j w_j e_j^2; its gradient in t_j is 2 * scale * W * w_j e_j.
    g_mse = mass * scaled_g

    grad_student = grad_teacher = grad_weights = None
    if need_student:
        grad_student = torch.exp(log_q).sub_(p).mul_(g_ce)
        if mse_on_student:
            grad_student.addcmul_(g_mse, weighted, value=-2.0)
    if need_teacher:
        grad_teacher = (g_mse * weighted).mul_(2.0)
    if need_weights:
        grad_weights = (mass * centred * centred + spread).mul_(scaled_g)
        if mass_sq_sum is not None:
            # The normaliser sum_b W_b^2 depends on the weights too.
            d_normaliser = (scaled_g * twice_mse).sum() * (-2.0) / mass_sq_sum
            grad_weights = grad_weights + d_normaliser * mass
    return grad_student, grad_teacher, grad_weights


@functools.cache
def compiled_terms() -> tuple[Callable, Callable]:
    """``forward_terms`` and ``backward_terms`` through ``torch.compile`` (built on first use)."""
    return torch.compile(forward_terms, fullgraph=True), torch.compile(backward_terms, fullgraph=True)


class DecoupledTerms(torch.autograd.Function):
    """``mse_weight * wMSE + ce_weight * sCE`` per sample, reduced over the batch, with closed-form gradients.

    ``normalize_mass`` (GKL) divides the wMSE term by the batch mean of ``W_b^2``.
    ``mse_on_student=False`` stops the wMSE gradient into the student (DKL's ``S(s)``).
    ``reduction`` is ``"mean"``, ``"sum"`` or ``"none"`` (a ``[B]`` vector). ``compiled`` runs both passes
    through ``torch.compile``.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        student: torch.Tensor,
        teacher: torch.Tensor,
        weights: torch.Tensor,
        mse_weight: float,
        ce_weight: float,
        temperature: float,
        mse_on_student: bool,
        normalize_mass: bool,
        reduction: str,
        compiled: bool = False,
    ) -> torch.Tensor:
        forward = compiled_terms()[0] if compiled else forward_terms
        loss, *saved = forward(
            student, teacher, weights, mse_weight, ce_weight, temperature, normalize_mass, reduction,
            ctx.needs_input_grad[2],
        )  # fmt: skip
        ctx.save_for_backward(*saved)
        ctx.options = (mse_weight, ce_weight / temperature, mse_on_student, reduction, compiled)
        return loss

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor):
        mse_weight, ce_over_t, mse_on_student, reduction, compiled = ctx.options
        backward = compiled_terms()[1] if compiled else backward_terms
        grads = backward(
            grad_out, *ctx.saved_tensors, mse_weight, ce_over_t, mse_on_student, reduction,
            tuple(ctx.needs_input_grad[:3]),
        )  # fmt: skip
        return *grads, None, None, None, None, None, None, None
