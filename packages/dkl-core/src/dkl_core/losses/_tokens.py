"""Token-shaped inputs: logits ``[..., V]`` with optional ``labels`` ``[...]`` whose ``ignore_index`` entries drop out.

Every loss computes on ``[B, C]`` rows; these helpers flatten the leading dimensions, keep the rows whose label
is not ``ignore_index``, and turn the per-row result back into what ``reduction`` asks for: ``"mean"`` divides
the sum by the number of valid rows (or by ``num_items_in_batch``, the valid rows of every micro-batch of an
accumulated step, so that the micro-batches' gradients add up to the large batch's), ``"sum"`` is the sum and
``"none"`` is a ``[...]`` tensor with zeros at the ignored positions. A batch without a valid row gives 0 and
zero gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def flat_rows(name: str, tensor: torch.Tensor, last: str = "V") -> torch.Tensor:
    """``tensor`` ``[..., X]`` as ``[N, X]`` (a view where possible), with a message naming it otherwise."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [..., {last}], got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be floating-point, got dtype {tensor.dtype}")
    if tensor.dim() < 2:  # a lone [V] is far more often a batch that lost its dimension than one position
        raise ValueError(
            f"{name} must have shape [B, {last}] or [..., {last}] (at least one position dimension), "
            f"got {tuple(tensor.shape)}"
        )
    return tensor.reshape(-1, tensor.shape[-1])


def valid_rows(labels: torch.Tensor | None, lead_shape: torch.Size, ignore_index: int) -> torch.Tensor | None:
    """Indices (int64) of the rows whose label is not ``ignore_index``; ``None`` when every row counts."""
    if labels is None:
        return None
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor of shape {tuple(lead_shape)} (the logits' leading dims)")
    if labels.shape != lead_shape:
        raise ValueError(
            f"labels must have the logits' leading shape {tuple(lead_shape)} (one label per position), "
            f"got {tuple(labels.shape)}"
        )
    return (labels.reshape(-1) != ignore_index).nonzero().squeeze(1)


def check_num_items(num_items_in_batch: int | torch.Tensor | None) -> None:
    """``num_items_in_batch`` is ``None`` or a number (or one-element tensor) ``> 0``."""
    if num_items_in_batch is None:
        return
    if isinstance(num_items_in_batch, torch.Tensor):
        if num_items_in_batch.numel() != 1:
            raise ValueError(f"num_items_in_batch must be one number, got shape {tuple(num_items_in_batch.shape)}")
        return  # a device tensor is not read back
    if isinstance(num_items_in_batch, bool) or not isinstance(num_items_in_batch, (int, float)):
        raise ValueError(f"num_items_in_batch must be a number > 0, got {num_items_in_batch!r}")
    if not num_items_in_batch > 0:
        raise ValueError(f"num_items_in_batch must be > 0, got {num_items_in_batch!r}")


def finish(
    value: torch.Tensor,
    reduction: str,
    count: int,
    num_items_in_batch: int | torch.Tensor | None,
    rows: torch.Tensor | None,
    lead_shape: torch.Size,
) -> torch.Tensor:
    """The per-row losses (``reduction="none"``) or their sum as ``reduction`` asks: a ``[...]`` tensor with zeros
    at ignored rows, the sum, or the sum over ``num_items_in_batch`` (default: the ``count`` valid rows)."""
    if reduction == "none":
        if rows is None:
            return value.reshape(lead_shape)
        full = value.new_zeros(lead_shape.numel())
        return full.index_copy(0, rows, value).reshape(lead_shape)
    if reduction == "sum":
        return value
    divisor = count if num_items_in_batch is None else num_items_in_batch
    return value / divisor


def zero_loss(tensors: tuple[torch.Tensor, ...], reduction: str, lead_shape: torch.Size) -> torch.Tensor:
    """0 (or zeros ``[...]``) connected to every input that wants a gradient, so that backward gives zeros."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    total = sum((t.sum() * 0).to(dtype) for t in tensors if t.requires_grad) + tensors[0].new_zeros((), dtype=dtype)
    return total if reduction != "none" else total.expand(lead_shape).clone()


def over_tokens(
    loss_fn: Callable[..., torch.Tensor],
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    labels: torch.Tensor | None,
    ignore_index: int,
    num_items_in_batch: int | torch.Tensor | None,
    reduction: str,
    row_tensors: dict[str, torch.Tensor | None] | None = None,
    pass_labels: bool = False,
) -> torch.Tensor:
    """``loss_fn`` (a loss on ``[B, C]`` rows, called with ``reduction="sum"`` or ``"none"``) over the valid rows.

    ``row_tensors`` (e.g. ``weights``) are ``[..., V]`` tensors selected like the logits and passed by keyword;
    ``pass_labels`` passes the valid labels as the third positional argument (DKD's targets).
    """
    student = flat_rows("student_logits", student_logits)
    teacher = flat_rows("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student_logits and teacher_logits must have the same shape [..., V], got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    check_num_items(num_items_in_batch)
    lead_shape = student_logits.shape[:-1]
    rows = valid_rows(labels, lead_shape, ignore_index)
    extras = {}
    for name, tensor in (row_tensors or {}).items():
        if tensor is not None:
            if not isinstance(tensor, torch.Tensor) or tensor.shape != student_logits.shape:
                shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ValueError(f"{name} must have the logits' shape {tuple(student_logits.shape)}, got {shape}")
            extras[name] = tensor.reshape(student.shape)
    flat_labels = labels.reshape(-1) if labels is not None else None
    if rows is not None:
        if rows.numel() == 0:
            inputs = (student_logits, teacher_logits, *(t for t in extras.values()))
            return zero_loss(inputs, reduction, lead_shape)
        if rows.numel() < student.shape[0]:
            student, teacher = student.index_select(0, rows), teacher.index_select(0, rows)
            extras = {name: tensor.index_select(0, rows) for name, tensor in extras.items()}
            flat_labels = flat_labels.index_select(0, rows)
        else:
            rows = None
    count = student.shape[0]
    inner = "none" if reduction == "none" else "sum"
    args = (student, teacher, flat_labels) if pass_labels else (student, teacher)
    value = loss_fn(*args, reduction=inner, **extras)
    return finish(value, reduction, count, num_items_in_batch, rows, lead_shape)


def is_plain(logits: torch.Tensor, labels: torch.Tensor | None, num_items_in_batch: object) -> bool:
    """A ``[B, C]`` call without labels or ``num_items_in_batch``: the original code path, unchanged."""
    return isinstance(logits, torch.Tensor) and logits.dim() == 2 and labels is None and num_items_in_batch is None
