"""Input checks shared by every loss: each error names the tensor, what was expected and what came."""

from __future__ import annotations

import math

import torch


def check_logits_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    """Both logits must be floating ``[B, C]`` tensors of one shape with ``C >= 2``."""
    for name, logits in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(logits, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape [B, C], got {type(logits).__name__}")
        if not logits.is_floating_point():
            raise ValueError(
                f"{name} must be floating-point logits, got dtype {logits.dtype}; "
                "pass the model's raw outputs (not class indices), e.g. logits.float()"
            )
        if logits.dim() != 2:
            raise ValueError(f"{name} must have shape [B, C] (batch, classes), got {tuple(logits.shape)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student_logits and teacher_logits must have the same shape [B, C], got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    batch, num_classes = student_logits.shape
    if num_classes < 2:
        raise ValueError(f"the logits need at least 2 classes, got C = {num_classes}")
    if batch == 0:
        raise ValueError("the logits hold an empty batch (B = 0); nothing to average over")


def check_weights(weights: torch.Tensor, logits: torch.Tensor) -> None:
    """Class weights must be a non-negative floating ``[B, C]`` tensor matching the logits."""
    if not isinstance(weights, torch.Tensor) or not weights.is_floating_point():
        raise ValueError("weights must be a floating-point tensor of shape [B, C], e.g. prior[targets]")
    if weights.shape != logits.shape:
        raise ValueError(
            f"weights must have the logits' shape {tuple(logits.shape)} (one row of class weights per "
            f"sample, e.g. class_prior.weights(targets)), got {tuple(weights.shape)}"
        )
    # The range check reads a value back to the host: free on CPU, a pipeline stall on an accelerator,
    # where (as in PyTorch's own kernels) only the shape is checked.
    if weights.device.type == "cpu" and weights.numel() and float(weights.detach().min()) < 0:
        raise ValueError("weights must be non-negative (they are class probabilities), found negative entries")


def check_targets(targets: torch.Tensor, batch: int, num_classes: int) -> None:
    """Targets must be integer class indices ``[B]`` in ``[0, C)``."""
    if not isinstance(targets, torch.Tensor) or targets.dtype not in (
        torch.int64,
        torch.int32,
        torch.int16,
        torch.uint8,
    ):
        raise ValueError("targets must be an integer tensor of class indices with shape [B]")
    if targets.shape != (batch,):
        raise ValueError(f"targets must have shape [B] = ({batch},), got {tuple(targets.shape)}")
    if batch and targets.device.type == "cpu":  # a host read-back; on accelerators indexing asserts instead
        low, high = torch.aminmax(targets.long())
        if int(low) < 0 or int(high) >= num_classes:
            raise ValueError(f"targets must lie in [0, {num_classes}), got values in [{int(low)}, {int(high)}]")


#: The accepted ``reduction`` values and what each becomes: ``"batchmean"`` (what ``F.kl_div`` users pass) is
#: an alias of ``"mean"``, which here already is the mean over the batch, not over the ``B*C`` elements.
REDUCTIONS = {"mean": "mean", "batchmean": "mean", "sum": "sum", "none": "none"}


def check_reduction(reduction: str) -> str:
    """The canonical reduction (``"mean"``, ``"sum"`` or ``"none"``) for an accepted name, else a ``ValueError``."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        accepted = ", ".join(repr(name) for name in REDUCTIONS)
        raise ValueError(
            f"reduction must be one of {accepted} ('batchmean' is an alias of 'mean', the mean over the batch), "
            f"got {reduction!r}"
        )
    return REDUCTIONS[reduction]


def check_positive(name: str, value: float) -> None:
    """A finite number ``> 0`` (temperatures)."""
    if not _is_finite_number(value) or not value > 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_non_negative(name: str, value: float, hint: str = "") -> None:
    """A finite number ``>= 0`` (term weights, ``gamma``); ``hint`` is added to the message in parentheses."""
    if not _is_finite_number(value) or not value >= 0:
        detail = f" ({hint})" if hint else ""
        raise ValueError(f"{name} must be a finite number >= 0{detail}, got {value!r}")


def _is_finite_number(value: object) -> bool:
    """A real number (or a one-element tensor) that is neither NaN nor infinite."""
    try:
        return math.isfinite(value)
    except (TypeError, ValueError, RuntimeError):
        return False


def reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """'mean' is the mean over the batch (not over elements), 'sum' the batch sum, 'none' the [B] vector."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 when an input is float64: half precision never reaches the sums."""
    return torch.float64 if any(tensor.dtype == torch.float64 for tensor in tensors) else torch.float32
