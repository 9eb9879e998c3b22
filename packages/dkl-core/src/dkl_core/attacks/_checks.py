"""Input checks shared by the attacks: each error names the argument, what was expected and what came."""

from __future__ import annotations

import warnings

import torch


def check_images_labels(images: torch.Tensor, labels: torch.Tensor) -> None:
    """Images must be floating ``[B, ...]`` in ``[0, 1]``; labels integer ``[B]``."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise ValueError("images must be a floating-point tensor of shape [B, ...] with values in [0, 1]")
    if images.dim() < 2 or images.shape[0] == 0:
        raise ValueError(f"images must have shape [B, ...] with B >= 1, got {tuple(images.shape)}")
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.dim() != 1:
        raise ValueError("labels must be an integer tensor of class indices with shape [B]")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"images and labels must have the same batch size, got {images.shape[0]} images and {labels.shape[0]} labels"
        )
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"images must lie in [0, 1] (the eps-ball and the clamp are defined there; normalise inside the "
            f"model instead), got values in [{low:.4g}, {high:.4g}]"
        )


def check_budget(eps: float, step_size: float | None = None, steps: int | None = None) -> None:
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if step_size is not None and not step_size >= 0:
        raise ValueError(f"step_size must be >= 0, got {step_size}")
    if steps is not None and (int(steps) != steps or steps < 0):
        raise ValueError(f"steps must be a non-negative integer, got {steps}")


def check_norm(norm: str) -> str:
    """Accept ``linf``/``Linf``/``l2``/``L2``; return the lower-case name."""
    key = str(norm).lower()
    if key not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    return key


def warn_if_probabilities(outputs: torch.Tensor, tolerance: float = 1e-5) -> None:
    """Warn when a model's outputs look like probabilities (rows in [0, 1] summing to 1) instead of logits.

    Gradient attacks on softmax outputs are weak (saturated gradients) and overstate robustness;
    AutoAttack's own check warns for the same reason.
    """
    outputs = outputs.detach().float()
    if outputs.dim() != 2:
        raise ValueError(f"the model must return logits of shape [B, C], got {tuple(outputs.shape)}")
    looks_like_probabilities = (
        bool(outputs.max() < 1.0 + tolerance)
        and bool(outputs.min() > -tolerance)
        and bool(((outputs.sum(dim=1) - 1.0).abs() < tolerance).all())
    )
    if looks_like_probabilities:
        warnings.warn(
            "the model's outputs look like a probability distribution (in [0, 1], rows summing to 1); "
            "attacks need logits, so return the logits (drop the final softmax)",
            UserWarning,
            stacklevel=3,
        )
