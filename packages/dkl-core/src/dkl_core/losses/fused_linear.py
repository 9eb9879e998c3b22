r"""The losses fused with the output layer: ``[N, V]`` logits never exist, only ``chunk_size`` rows at a time.

A language model's distillation loss sits on ``logits = hidden @ weight.T (+ bias)`` with ``N`` = batch x
sequence rows (thousands) and ``V`` classes (32k-256k): the ``[N, V]`` logits, their softmaxes and their
gradient are several gigabytes. The functions here walk over the valid rows in chunks: for each chunk they
compute the student's (and, from hidden states, the teacher's) logits, the loss of those rows with the dense
function of this package and its gradient with respect to the chunk's logits, and fold that gradient at once
into the gradients of the hidden states, the weight and the bias. The backward pass then only scales the
stored gradients by the upstream gradient. ``reduction="none"`` stores nothing: its backward pass walks the
chunks again with the upstream gradient of each row.

Each value and gradient equals the dense function's on the full logits (to rounding). GKL's normaliser
:math:`\sum_b W_b^2` spans all rows and does not depend on the student: it is summed first (free for prior
weights, one pass over the teacher's logits for ``softmax(t / T_w) ** gamma`` with ``gamma != 1``), then
the chunks run IKL with the wMSE weight rescaled to it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_non_negative, check_positive, check_reduction
from ._tokens import check_num_items, valid_rows, zero_loss
from .decoupled import _check_ikl_options, gkl_weights, ikl_loss, mass_scaled_weight
from .dkd import _check_dkd_options, dkd_loss
from .kl import kl_loss

#: Rows per chunk when ``chunk_size`` is not given: ``2**24 / V`` rounded down to a power of two (a 64 MB
#: float32 ``[chunk, V]`` buffer; 512 rows at V = 32,000, 128 at V = 128,256).
DEFAULT_CHUNK_ELEMENTS = 2**24


class RowWeights(Protocol):
    """What the fused losses need of a class prior: ``weights(labels, dtype)`` -> ``[n, V]`` rows."""

    def weights(self, targets: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor: ...


class _Teacher(NamedTuple):
    """The teacher's logits ``[N, V]``, or its hidden states ``[N, H_t]`` with the output layer."""

    logits: torch.Tensor | None
    hidden: torch.Tensor | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None

    def rows(self, index: torch.Tensor | slice) -> torch.Tensor:
        with torch.no_grad():
            if self.logits is not None:
                return _take(self.logits, index)
            return F.linear(_take(self.hidden, index), self.weight, self.bias)


def _take(tensor: torch.Tensor, index: torch.Tensor | slice) -> torch.Tensor:
    """Rows of ``tensor``: a view for a slice, a gather (copy) for indices."""
    return tensor[index] if isinstance(index, slice) else tensor.index_select(0, index)


class _Plan(NamedTuple):
    """One call's constants: the chunk loss ``loss_fn(student, teacher, labels, weights, reduction)`` on ``[c, V]``
    rows, what the chunks need, and how the sum becomes the result."""

    loss_fn: Callable[..., torch.Tensor]
    teacher: _Teacher
    labels: torch.Tensor | None  # flat [N]
    weights: torch.Tensor | RowWeights | None  # flat [N, V] tensor, or a prior gathered per chunk
    rows: torch.Tensor  # int64 indices of the valid rows of the flat [N, *] views
    every_row: bool  # rows is arange(N): chunks are slices (views), and no scatter back
    chunk_size: int
    reduction: str
    divisor: Any  # of the sum under "mean": valid rows or num_items_in_batch
    lead_shape: torch.Size
    compute_dtype: torch.dtype


def _chunk_weights(plan: _Plan, index: torch.Tensor | slice, labels: torch.Tensor | None) -> torch.Tensor | None:
    if plan.weights is None:
        return None
    if isinstance(plan.weights, torch.Tensor):
        return _take(plan.weights, index).to(plan.compute_dtype)
    return plan.weights.weights(labels, dtype=plan.compute_dtype)


def _chunks(plan: _Plan, need_teacher: bool = True):
    """``(start, stop, index, labels, teacher_logits, weights)`` of each chunk of valid rows (``teacher_logits``
    ``None`` unless ``need_teacher``)."""
    count = plan.rows.numel()
    for start in range(0, count, plan.chunk_size):
        stop = min(start + plan.chunk_size, count)
        index = slice(start, stop) if plan.every_row else plan.rows[start:stop]
        labels = None if plan.labels is None else _take(plan.labels, index)
        teacher = plan.teacher.rows(index).to(plan.compute_dtype) if need_teacher else None
        yield start, stop, index, labels, teacher, _chunk_weights(plan, index, labels)


def _walk(
    plan: _Plan,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    row_grads: torch.Tensor | None,
    want: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """One pass over the chunks: the loss (sum, or per valid row when ``row_grads`` is given or nothing is wanted)
    and the gradients (of the sum, or of ``sum_rows row_grads * loss_row``) wanted for (hidden, weight, bias).

    Gradients accumulate in float32 (float64 for float64 inputs); each chunk's logits and their gradient are
    the only ``[chunk, V]`` tensors alive, besides what the dense loss makes of them.
    """
    want_hidden, want_weight, want_bias = want
    any_grad = any(want)
    per_row = row_grads is not None or (plan.reduction == "none" and not any_grad)
    acc = plan.compute_dtype
    total = hidden.new_zeros(plan.rows.numel() if per_row else (), dtype=acc)
    # each valid row's gradient is written once, by its chunk: no accumulation (index_add_ is slow on CPUs)
    grad_rows = hidden.new_empty(plan.rows.numel(), hidden.shape[1]) if want_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_weight else None
    grad_bias = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if want_bias else None
    inner = "none" if per_row else "sum"
    for start, stop, index, labels, teacher, weights in _chunks(plan):
        rows_hidden = _take(hidden, index)
        with torch.no_grad():
            logits = F.linear(rows_hidden, weight, bias).to(acc)
        if not any_grad:
            with torch.no_grad():
                value = plan.loss_fn(logits, teacher, labels, weights, inner)
        else:
            with torch.enable_grad():
                logits.requires_grad_()
                value = plan.loss_fn(logits, teacher, labels, weights, inner)
                objective = value if row_grads is None else (value * row_grads[start:stop]).sum()
                (grad_logits,) = torch.autograd.grad(objective, logits)
            value = value.detach()
            del logits
            grad_logits = grad_logits.to(weight.dtype)
            if want_hidden:
                torch.mm(grad_logits, weight, out=grad_rows[start:stop])
            if want_weight:
                if grad_logits.dtype == acc:
                    grad_weight.addmm_(grad_logits.t(), rows_hidden)
                else:  # half precision: the chunk's product in its dtype (fp32 inside the GEMM), summed in float32
                    grad_weight.add_(grad_logits.t() @ rows_hidden)
            if want_bias:
                grad_bias.add_(grad_logits.sum(dim=0, dtype=acc))
            del grad_logits
        if per_row:
            total[start:stop] = value.to(acc)
        else:
            total += value.to(acc)
    grad_hidden = grad_rows
    if want_hidden and not plan.every_row:
        grad_hidden = hidden.new_zeros(hidden.shape).index_copy_(0, plan.rows, grad_rows)
    return total, grad_hidden, grad_weight, grad_bias


def _finish_rows(plan: _Plan, per_row: torch.Tensor) -> torch.Tensor:
    """The per-row losses as a ``[...]`` tensor with zeros at ignored positions."""
    full = per_row.new_zeros(plan.lead_shape.numel())
    return full.index_copy(0, plan.rows, per_row).reshape(plan.lead_shape)


class _FusedLinearLoss(torch.autograd.Function):
    """The chunked loss on ``hidden @ weight.T + bias``; gradients for the three, none for the teacher."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        plan: _Plan,
        grad_enabled: bool,
    ) -> torch.Tensor:
        want = tuple(grad_enabled and need for need in ctx.needs_input_grad[:3])
        ctx.plan = plan
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        if plan.reduction == "none":
            ctx.save_for_backward(hidden, weight, bias)
            ctx.want = want
            total, *_ = _walk(plan, hidden, weight, bias, None, (False, False, False))
            return _finish_rows(plan, total)
        total, *grads = _walk(plan, hidden, weight, bias, None, want)
        if plan.reduction == "mean":
            # Divided, as the dense losses do: 1 / an int64 tensor would be a float32 reciprocal (HF Trainer's
            # num_items_in_batch is one), off by a rounding step in float64.
            total = total / plan.divisor
            grads = [None if grad is None else grad.div_(plan.divisor) for grad in grads]
        ctx.save_for_backward(*(None if g is None else g.to(d) for g, d in zip(grads, ctx.dtypes, strict=True)))
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor):
        plan = ctx.plan
        if plan.reduction == "none":
            hidden, weight, bias = ctx.saved_tensors
            row_grads = grad_out.reshape(-1).index_select(0, plan.rows).to(plan.compute_dtype)
            _, *grads = _walk(plan, hidden, weight, bias, row_grads, ctx.want)
            grads = [None if g is None else g.to(d) for g, d in zip(grads, ctx.dtypes, strict=True)]
        else:
            grads = [None if g is None else g * grad_out.to(g.dtype) for g in ctx.saved_tensors]
        return *grads, None, None


def _default_chunk(vocab: int, rows: int) -> int:
    size = 1 << max(0, (DEFAULT_CHUNK_ELEMENTS // max(vocab, 1)).bit_length() - 1)
    return max(1, min(size, max(rows, 1)))


def _check_layer(prefix: str, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[int, int]:
    """``hidden`` ``[..., H]``, ``weight`` ``[V, H]``, ``bias`` ``[V]``; returns ``(V, H)``."""
    for name, tensor in ((f"{prefix}_hidden", hidden), (f"{prefix}_weight", weight)):
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point torch.Tensor")
    if hidden.dim() < 1:
        raise ValueError(f"{prefix}_hidden must have shape [..., H], got a 0-dim tensor")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"{prefix}_weight must have shape [V, H] = [V, {hidden.shape[-1]}] (the output layer of "
            f"{prefix}_hidden [..., {hidden.shape[-1]}]), got {tuple(weight.shape)}"
        )
    if weight.shape[0] < 2:
        raise ValueError(f"the output layer needs at least 2 classes, got V = {weight.shape[0]}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (weight.shape[0],)):
        shape = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise ValueError(f"{prefix}_bias must have shape [V] = ({weight.shape[0]},), got {shape}")
    return weight.shape[0], weight.shape[1]


def _teacher(
    lead_shape: torch.Size,
    vocab: int,
    teacher_logits: torch.Tensor | None,
    teacher_hidden: torch.Tensor | None,
    teacher_weight: torch.Tensor | None,
    teacher_bias: torch.Tensor | None,
) -> _Teacher:
    if (teacher_logits is None) == (teacher_hidden is None):
        raise ValueError("give the teacher either as teacher_logits or as teacher_hidden + teacher_weight, not both")
    if teacher_logits is not None:
        expected = (*lead_shape, vocab)
        if not isinstance(teacher_logits, torch.Tensor) or tuple(teacher_logits.shape) != expected:
            got = tuple(teacher_logits.shape) if isinstance(teacher_logits, torch.Tensor) else type(teacher_logits)
            raise ValueError(f"teacher_logits must have shape [..., V] = {expected}, got {got}")
        if not teacher_logits.is_floating_point():
            raise ValueError(f"teacher_logits must be floating-point, got dtype {teacher_logits.dtype}")
        return _Teacher(teacher_logits.detach().reshape(-1, vocab), None, None, None)
    if teacher_weight is None:
        raise ValueError("teacher_hidden needs teacher_weight, the teacher's [V, H_t] output layer")
    teacher_vocab, _ = _check_layer("teacher", teacher_hidden, teacher_weight, teacher_bias)
    if teacher_hidden.shape[:-1] != lead_shape:
        raise ValueError(
            f"teacher_hidden must have the student's leading shape {tuple(lead_shape)}, "
            f"got {tuple(teacher_hidden.shape[:-1])}"
        )
    if teacher_vocab != vocab:
        raise ValueError(f"teacher_weight has {teacher_vocab} classes, student_weight {vocab}")
    hidden = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
    bias = None if teacher_bias is None else teacher_bias.detach()
    return _Teacher(None, hidden, teacher_weight.detach(), bias)


def _flat_weights(weights: Any, lead_shape: torch.Size, vocab: int, labels: torch.Tensor | None) -> Any:
    if weights is None:
        return None
    if isinstance(weights, torch.Tensor):
        expected = (*lead_shape, vocab)
        if tuple(weights.shape) != expected or not weights.is_floating_point():
            raise ValueError(
                f"weights must be a floating-point [..., V] = {expected} tensor, or a ClassPrior, "
                f"got {tuple(weights.shape)}"
            )
        return weights.detach().reshape(-1, vocab)
    if not callable(getattr(weights, "weights", None)):
        raise ValueError(f"weights must be a [..., V] tensor or a ClassPrior, got {type(weights).__name__}")
    if labels is None:
        raise ValueError("a ClassPrior as weights needs labels: each position takes its label's row")
    return weights


def _fused(
    loss_fn: Callable[..., torch.Tensor],
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    student_bias: torch.Tensor | None,
    teacher: tuple,
    labels: torch.Tensor | None,
    ignore_index: int,
    chunk_size: int | None,
    reduction: str,
    num_items_in_batch: Any,
    weights: Any = None,
    needs_labels: bool = False,
    mass: Callable[[_Plan], Callable[..., torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Check the inputs, build the plan and run :class:`_FusedLinearLoss` (eagerly, also inside torch.compile)."""
    vocab, _ = _check_layer("student", student_hidden, student_weight, student_bias)
    lead_shape = student_hidden.shape[:-1]
    reduction = check_reduction(reduction)
    check_num_items(num_items_in_batch)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int (rows per chunk), got {chunk_size!r}")
    if needs_labels and labels is None:
        raise ValueError("this loss needs labels [...] (the target class of each position)")
    teacher_rows = _teacher(lead_shape, vocab, *teacher)
    rows = valid_rows(labels, lead_shape, ignore_index)
    total_rows = lead_shape.numel()
    every_row = rows is None or rows.numel() == total_rows
    if rows is None:
        rows = torch.arange(total_rows, device=student_hidden.device)
    flat_labels = None if labels is None else labels.reshape(-1).long()
    tensors = [student_hidden, student_weight, teacher_rows.logits, teacher_rows.hidden]
    dtype = torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
    count = rows.numel()
    plan = _Plan(
        loss_fn=loss_fn,
        teacher=teacher_rows,
        labels=flat_labels,
        weights=_flat_weights(weights, lead_shape, vocab, labels),
        rows=rows,
        every_row=every_row,
        chunk_size=chunk_size or _default_chunk(vocab, count),
        reduction=reduction,
        divisor=count if num_items_in_batch is None else num_items_in_batch,
        lead_shape=lead_shape,
        compute_dtype=dtype,
    )
    if count and mass is not None:
        plan = plan._replace(loss_fn=mass(plan))
    hidden = student_hidden.reshape(-1, student_hidden.shape[-1])
    if count == 0:  # nothing to learn from: 0, and zero gradients (never 0 / 0)
        inputs = tuple(t for t in (student_hidden, student_weight, student_bias) if t is not None)
        return zero_loss(inputs, reduction, lead_shape)
    return _apply(hidden, student_weight, student_bias, plan)


def _apply(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: _Plan) -> torch.Tensor:
    """The chunk loop, eager. Inside ``torch.compile`` a graph break: the loop (Python control flow over
    data-dependent row counts) runs eagerly there, and the compiled code around it keeps its graphs."""
    if torch.compiler.is_compiling():
        return _eager_apply()(hidden, weight, bias, plan)
    return _run(hidden, weight, bias, plan)


def _run(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, plan: _Plan) -> torch.Tensor:
    return _FusedLinearLoss.apply(hidden, weight, bias, plan, torch.is_grad_enabled())


@functools.cache
def _eager_apply() -> Callable[..., torch.Tensor]:
    # Made on first use under torch.compile: torch.compiler.disable imports torch._dynamo, which would add
    # seconds to every `import dkl_core`.
    return torch.compiler.disable(_run)


def fused_linear_kl_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    *,
    teacher_logits: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    chunk_size: int | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    r""":func:`kl_loss` on ``student_hidden @ student_weight.T (+ student_bias)``, never holding the ``[N, V]`` logits.

    .. math::
        \mathcal{L} = \frac{1}{|\mathcal{V}|}\sum_{b\in\mathcal{V}} T^2\,
            \mathrm{KL}\big(\mathrm{softmax}(t_b/T)\,\|\,\mathrm{softmax}(s_b/T)\big),
        \qquad s_b = W h_b + c

    over the valid positions :math:`\mathcal{V}` (label not ``ignore_index``). The rows are processed
    ``chunk_size`` at a time, forward and backward: no tensor of more than ``chunk_size`` rows of ``V`` exists.
    Value and gradients (of ``student_hidden``, ``student_weight``, ``student_bias``) equal :func:`kl_loss`'s
    on the dense logits of the valid rows. The teacher gets no gradient (a frozen teacher); give it as
    ``teacher_logits`` ``[..., V]`` or as ``teacher_hidden`` ``[..., H_t]`` with ``teacher_weight``
    ``[V, H_t]`` (and ``teacher_bias``), whose logits are then made per chunk too. The loss is computed in
    float32 (float64 for float64 inputs); bf16/fp16 matmuls keep their dtype and the gradients of the
    weight are summed over chunks in float32. Inside ``torch.compile`` the chunk loop is a graph break
    and runs eagerly.

    Hinton et al., "Distilling the Knowledge in a Neural Network" (2015).

    Args:
        student_hidden: ``[..., H]``, the hidden states before the output layer (e.g. ``[batch, seq, H]``).
        student_weight: ``[V, H]``, the output layer's weight (``lm_head.weight``).
        teacher_logits: ``[..., V]``, or ``None`` when ``teacher_hidden`` is given.
        teacher_hidden: ``[..., H_t]``, the teacher's hidden states (the student's leading shape).
        teacher_weight: ``[V, H_t]``, the teacher's output layer.
        labels: optional ``[...]`` labels; positions equal to ``ignore_index`` contribute nothing.
        ignore_index: the label of an ignored position (default -100).
        student_bias, teacher_bias: optional ``[V]`` output-layer biases.
        chunk_size: rows per chunk; default ``2**24 / V`` rounded down to a power of two (512 at V = 32k).
        temperature: ``T > 0``, as in :func:`kl_loss`.
        reduction: ``"mean"`` over the valid positions, ``"sum"``, or ``"none"`` (``[...]``, zeros at ignored
            positions; its backward pass recomputes the chunks).
        num_items_in_batch: the divisor of ``"mean"`` instead of the valid positions (gradient accumulation).

    Returns:
        A scalar (or ``[...]``); 0 with zero gradients when every position is ignored.

    Example:
        >>> hidden, lm_head = torch.randn(2, 5, 16, requires_grad=True), torch.randn(100, 16, requires_grad=True)
        >>> teacher_logits = torch.randn(2, 5, 100)
        >>> labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 7, 8, 9, -100]])
        >>> loss = fused_linear_kl_loss(hidden, lm_head, teacher_logits=teacher_logits, labels=labels)
        >>> loss.backward()
    """
    check_positive("temperature", temperature)

    def loss_fn(
        student: Tensor, teacher: Tensor, labels: Tensor | None, weights: Tensor | None, reduction: str
    ) -> Tensor:
        return kl_loss(student, teacher, temperature=temperature, reduction=reduction)

    return _fused(
        loss_fn, student_hidden, student_weight, student_bias,
        (teacher_logits, teacher_hidden, teacher_weight, teacher_bias),
        labels, ignore_index, chunk_size, reduction, num_items_in_batch,
    )  # fmt: skip


def _ikl_chunk_fn(
    mse_weight: float, ce_weight: float, temperature: float, weight_temperature: float
) -> Callable[..., Tensor]:
    def loss_fn(
        student: Tensor, teacher: Tensor, labels: Tensor | None, weights: Tensor | None, reduction: str
    ) -> Tensor:
        return ikl_loss(
            student, teacher, mse_weight=mse_weight, ce_weight=ce_weight, temperature=temperature,
            weights=weights, weight_temperature=weight_temperature, reduction=reduction,
        )  # fmt: skip

    return loss_fn


def fused_linear_ikl_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    *,
    teacher_logits: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    chunk_size: int | None = None,
    mse_weight: float = 1.0,
    ce_weight: float = 1.0,
    temperature: float = 1.0,
    weights: torch.Tensor | RowWeights | None = None,
    weight_temperature: float = 1.0,
    reduction: str = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    r""":func:`ikl_loss` on ``student_hidden @ student_weight.T (+ student_bias)``, chunk by chunk.

    .. math::
        \ell_b = \text{mse\_weight}\cdot\tfrac12 W_b \sum_j w_{bj} (e_{bj})^2
               - \text{ce\_weight}\sum_j \mathrm{softmax}(t_b/T)_j \log \mathrm{softmax}(s_b/T)_j,
        \qquad s_b = W h_b + c

    (``e`` the weighted-centred logit difference, see :func:`ikl_loss`), averaged over the valid positions.
    Cui et al., "Decoupled Kullback-Leibler Divergence Loss", NeurIPS 2024.

    ``weights`` is ``None`` (``softmax(t / weight_temperature)``, made per chunk), a ``[..., V]`` tensor, or a
    class prior (:class:`~dkl_core.ClassPrior` or :class:`~dkl_core.TopKClassPrior`) whose row of each
    position's label is gathered per chunk (``labels`` required). The weights get no gradient. Everything else
    (teacher as logits or hidden states, chunks, precision, ``reduction``, ``num_items_in_batch``,
    ``torch.compile``) as in :func:`fused_linear_kl_loss`; value and gradients equal :func:`ikl_loss`'s on the
    dense logits of the valid rows.

    Example:
        >>> hidden, lm_head = torch.randn(2, 5, 16, requires_grad=True), torch.randn(100, 16, requires_grad=True)
        >>> teacher_hidden, teacher_head = torch.randn(2, 5, 24), torch.randn(100, 24)
        >>> loss = fused_linear_ikl_loss(
        ...     hidden, lm_head, teacher_hidden=teacher_hidden, teacher_weight=teacher_head, chunk_size=4
        ... )
        >>> loss.backward()
    """
    _check_ikl_options(mse_weight, ce_weight, temperature, weight_temperature, gamma=None)
    return _fused(
        _ikl_chunk_fn(mse_weight, ce_weight, temperature, weight_temperature),
        student_hidden, student_weight, student_bias,
        (teacher_logits, teacher_hidden, teacher_weight, teacher_bias),
        labels, ignore_index, chunk_size, reduction, num_items_in_batch, weights=weights,
    )  # fmt: skip


def _gkl_mass(
    mse_weight: float,
    ce_weight: float,
    temperature: float,
    weight_temperature: float,
    gamma: float,
    mass_sq_sum: float | Tensor | None,
    num_items_in_batch: int | Tensor | None,
) -> Callable[[_Plan], Callable]:
    """The chunk loss of GKL once its normaliser is known: IKL on ``w ** gamma`` with the wMSE weight
    ``mse_weight * rows / sum_b W_b^2`` (``rows``: the divisor of ``"mean"``, the valid rows otherwise)."""

    def build(plan: _Plan) -> Callable:
        mass = mass_sq_sum
        if mass is None and plan.weights is None and gamma == 1.0:
            mass = plan.rows.numel()  # rows of softmax(t / T_w) have mass 1
        elif mass is None:
            mass = torch.zeros((), dtype=plan.compute_dtype, device=plan.rows.device)
            for _, _, _, _, teacher, weights in _chunks(plan, need_teacher=plan.weights is None):
                mass += gkl_weights(teacher, weights, weight_temperature, gamma).sum(dim=1).square().sum()
        # mse_weight * (rows of the mean) / (the whole batch's sum W^2); without mass_sq_sum the whole batch is
        # taken to have this call's mean W^2, which makes it mse_weight * (valid rows) / (this call's sum W^2).
        accumulated = plan.reduction == "mean" and num_items_in_batch is not None and mass_sq_sum is not None
        rows = num_items_in_batch if accumulated else plan.rows.numel()
        ikl = _ikl_chunk_fn(mass_scaled_weight(mse_weight, rows, mass), ce_weight, temperature, weight_temperature)

        def loss_fn(
            student: Tensor, teacher: Tensor, labels: Tensor | None, weights: Tensor | None, reduction: str
        ) -> Tensor:
            return ikl(student, teacher, labels, gkl_weights(teacher, weights, weight_temperature, gamma), reduction)

        return loss_fn

    return build


def fused_linear_gkl_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    *,
    teacher_logits: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    chunk_size: int | None = None,
    mse_weight: float = 1.0,
    ce_weight: float = 1.0,
    temperature: float = 1.0,
    weights: torch.Tensor | RowWeights | None = None,
    weight_temperature: float = 1.0,
    gamma: float = 1.0,
    reduction: str = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
    mass_sq_sum: float | torch.Tensor | None = None,
) -> torch.Tensor:
    r""":func:`gkl_loss` on ``student_hidden @ student_weight.T (+ student_bias)``, chunk by chunk.

    .. math::
        \mathcal{L} = \text{mse\_weight}\,\frac{\sum_b \mathrm{wMSE}_b(w^\gamma)}{\sum_b W_b^2}
                    + \text{ce\_weight}\,\frac{1}{|\mathcal{V}|}\sum_b \mathrm{sCE}_b(T)

    over the valid positions. Cui et al., "Generalized Kullback-Leibler Divergence Loss", TPAMI 2026.

    The normaliser spans every valid row, exactly: it is summed before the chunks run (free with
    ``gamma = 1`` and the default weights, whose rows have mass 1; one pass over the gathered weights, or over
    the teacher's logits for ``softmax(t / T_w) ** gamma``, otherwise), then read back to the host once.
    ``mass_sq_sum`` gives it instead: with ``num_items_in_batch``, the large batch's :math:`\sum_b W_b^2` makes
    micro-batches add up to it exactly (see :func:`gkl_loss`). Other arguments as in
    :func:`fused_linear_ikl_loss`; value and gradients equal :func:`gkl_loss`'s on the dense logits of the
    valid rows.

    Example:
        >>> hidden, lm_head = torch.randn(6, 16, requires_grad=True), torch.randn(100, 16, requires_grad=True)
        >>> loss = fused_linear_gkl_loss(hidden, lm_head, teacher_logits=torch.randn(6, 100), gamma=0.5)
        >>> loss.backward()
    """
    _check_ikl_options(mse_weight, ce_weight, temperature, weight_temperature, gamma)
    if mass_sq_sum is not None and not isinstance(mass_sq_sum, torch.Tensor):
        check_non_negative("mass_sq_sum", mass_sq_sum)
    build = _gkl_mass(mse_weight, ce_weight, temperature, weight_temperature, gamma, mass_sq_sum, num_items_in_batch)
    return _fused(
        None, student_hidden, student_weight, student_bias,
        (teacher_logits, teacher_hidden, teacher_weight, teacher_bias),
        labels, ignore_index, chunk_size, reduction, num_items_in_batch, weights=weights, mass=build,
    )  # fmt: skip


def fused_linear_dkd_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    *,
    teacher_logits: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    chunk_size: int | None = None,
    tckd_weight: float = 1.0,
    nckd_weight: float = 8.0,
    temperature: float = 4.0,
    reduction: str = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    r""":func:`dkd_loss` on ``student_hidden @ student_weight.T (+ student_bias)``, chunk by chunk.

    .. math::
        \ell_b = T^2\Big(\text{tckd\_weight}\,\mathrm{KL}(b^t\,\|\,b^s)
                 + \text{nckd\_weight}\,\mathrm{KL}(\hat p^t\,\|\,\hat p^s)\Big)

    with ``b`` the target / non-target probabilities of each position's label and ``p̂`` the distribution
    over the other classes. Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022.

    ``labels`` ``[...]`` are required: they are the targets (positions equal to ``ignore_index`` drop out).
    Other arguments as in :func:`fused_linear_kl_loss`; value and gradients equal :func:`dkd_loss`'s on the
    dense logits of the valid rows.

    Example:
        >>> hidden, lm_head = torch.randn(6, 16, requires_grad=True), torch.randn(100, 16, requires_grad=True)
        >>> labels = torch.tensor([1, 2, 3, -100, 5, 6])
        >>> loss = fused_linear_dkd_loss(hidden, lm_head, teacher_logits=torch.randn(6, 100), labels=labels)
        >>> loss.backward()
    """
    _check_dkd_options(tckd_weight, nckd_weight, temperature)

    def loss_fn(
        student: Tensor, teacher: Tensor, labels: Tensor | None, weights: Tensor | None, reduction: str
    ) -> Tensor:
        return dkd_loss(
            student, teacher, labels, tckd_weight=tckd_weight, nckd_weight=nckd_weight, temperature=temperature,
            reduction=reduction,
        )  # fmt: skip

    return _fused(
        loss_fn, student_hidden, student_weight, student_bias,
        (teacher_logits, teacher_hidden, teacher_weight, teacher_bias),
        labels, ignore_index, chunk_size, reduction, num_items_in_batch, needs_labels=True,
    )  # fmt: skip


__all__ = ["fused_linear_dkd_loss", "fused_linear_gkl_loss", "fused_linear_ikl_loss", "fused_linear_kl_loss"]
