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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def vecdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product ``[B, C] x [B, C] -> [B, 1]`` without a ``[B, C]`` temporary."""
    return torch.linalg.vecdot(a, b, dim=1).unsqueeze(1)


class DecoupledTerms(torch.autograd.Function):
    """Per-sample ``mse_scale * wMSE + ce_weight * sCE`` with closed-form gradients.

    ``mse_scale`` is ``mse_weight``, divided by the batch mean of ``W_b^2`` when ``normalize_mass``
    (GKL). ``mse_on_student=False`` stops the wMSE gradient into the student (DKL's ``S(s)``).
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
    ) -> torch.Tensor:
        # In-place updates and vecdot keep the number of [B, C] temporaries at the minimum: on CPU each
        # fresh temporary of that size costs about as much as the arithmetic done on it.
        diff = teacher - student
        mass = weights.sum(dim=1, keepdim=True)
        # A row of all-zero weights has wMSE = 0; clamping keeps its weighted mean finite.
        weighted_mean = vecdot(weights, diff) / mass.clamp_min(torch.finfo(mass.dtype).tiny)
        centred = diff.sub_(weighted_mean)
        weighted = weights * centred
        spread = vecdot(weighted, centred)
        mse = 0.5 * mass * spread
        mass_norm = (mass * mass).mean() if normalize_mass else None
        mse_scale = mse_weight / mass_norm if normalize_mass else mse_weight

        if temperature != 1.0:
            student, teacher = student / temperature, teacher / temperature
        log_q = F.log_softmax(student, dim=1)
        p = F.softmax(teacher, dim=1)
        neg_ce = vecdot(p, log_q)

        need_weights = ctx.needs_input_grad[2]
        ctx.save_for_backward(weighted, centred if need_weights else None, mass, spread, mse, log_q, p, mass_norm)
        ctx.options = (mse_weight, ce_weight, temperature, mse_on_student, normalize_mass)
        ctx.mse_scale = mse_scale
        return (mse_scale * mse).sub_(neg_ce, alpha=ce_weight).squeeze(1)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor):
        weighted, centred, mass, spread, mse, log_q, p, mass_norm = ctx.saved_tensors
        mse_weight, ce_weight, temperature, mse_on_student, normalize_mass = ctx.options
        g = grad_out.unsqueeze(1)
        g_mse = g * ctx.mse_scale * mass
        need_student, need_teacher, need_weights = ctx.needs_input_grad[:3]

        grad_student = grad_teacher = grad_weights = None
        if need_student:
            grad_student = torch.exp(log_q).sub_(p).mul_(g * (ce_weight / temperature))
            if mse_on_student:
                grad_student.addcmul_(g_mse, weighted, value=-1.0)
        if need_teacher:
            grad_teacher = g_mse * weighted
        if need_weights:
            grad_weights = (0.5 * g * ctx.mse_scale) * (mass * centred * centred + spread)
            if normalize_mass:
                # The normaliser mean_b W_b^2 depends on the weights too.
                d_norm = -(g * mse).sum() * mse_weight / (mass_norm * mass_norm)
                grad_weights = grad_weights + d_norm * (2.0 / mass.shape[0]) * mass
        return grad_student, grad_teacher, grad_weights, None, None, None, None, None
