"""Projected gradient descent (Madry et al. 2018) in the L-inf and L2 balls, with the attack losses of adversarial training."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import kl_loss
from ._checks import check_budget, check_images_labels, check_norm, warn_if_probabilities
from ._model_state import frozen

#: ``loss(adv_logits, natural_logits, labels) -> scalar`` that the attack *ascends*. ``natural_logits``
#: is ``None`` for losses that do not need them. Compute per-sample quantities (such as class-prior
#: weights) from ``labels`` inside the callable rather than closing over a fixed batch.
AttackLoss = Callable[[torch.Tensor, "torch.Tensor | None", torch.Tensor], torch.Tensor]


def cross_entropy_attack_loss(
    adv_logits: torch.Tensor, natural_logits: torch.Tensor | None, labels: torch.Tensor
) -> torch.Tensor:
    """Batch *sum* of the cross-entropy (the untargeted PGD loss); float32 even under autocast."""
    return F.cross_entropy(adv_logits.float(), labels, reduction="sum")


def kl_attack_loss(adv_logits: torch.Tensor, natural_logits: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
    """TRADES attack loss: batch sum of ``KL(softmax(natural) || softmax(adv))`` (:func:`dkl_core.kl_loss`)."""
    if natural_logits is None:
        raise ValueError("the KL attack loss needs natural_logits")
    return kl_loss(adv_logits, natural_logits.detach(), reduction="sum")


def cw_attack_loss(
    adv_logits: torch.Tensor, natural_logits: torch.Tensor | None, labels: torch.Tensor, kappa: float = 50.0
) -> torch.Tensor:
    r"""Carlini-Wagner margin loss, batch sum of :math:`\max(\max_{j \ne y} z_j - z_y, -\kappa)`.

    The "CW-20" of TRADES/AWP-style evaluations is PGD on this margin. ``kappa`` (50, as those
    evaluations use) only stops the loss from pushing already-misclassified samples further.
    """
    logits = adv_logits.float()
    true_logit = logits.gather(1, labels.long().view(-1, 1)).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels.long(), logits.shape[1]).bool(), float("-inf"))
    margin = others.max(dim=1).values - true_logit
    return margin.clamp_min(-kappa).sum()


_BUILTIN_LOSSES: dict[str, AttackLoss] = {
    "ce": cross_entropy_attack_loss,
    "kl": kl_attack_loss,
    "trades": kl_attack_loss,
    "cw": cw_attack_loss,
}
_NEEDS_NATURAL = {"kl", "trades"}


def resolve_attack_loss(loss: str | AttackLoss) -> tuple[AttackLoss, bool]:
    """The loss callable and whether it needs the natural logits (callables always get them)."""
    if callable(loss):
        return loss, True
    key = str(loss).lower()
    if key not in _BUILTIN_LOSSES:
        raise ValueError(f"loss must be one of {sorted(_BUILTIN_LOSSES)} or a callable, got {loss!r}")
    return _BUILTIN_LOSSES[key], key in _NEEDS_NATURAL


def project(x_adv: torch.Tensor, images: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project ``x_adv`` onto the ``eps``-ball around ``images`` (per sample), then clamp to ``[0, 1]``.

    Clamping after the L2 projection only moves coordinates towards ``images``, so the result stays
    inside both sets.
    """
    norm = check_norm(norm)
    if norm == "linf":
        x_adv = torch.minimum(torch.maximum(x_adv, images - eps), images + eps)
    else:
        delta = x_adv - images
        norms = delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.dim() - 1)))
        delta = delta * (eps / norms.clamp_min(1e-12)).clamp(max=1.0)
        x_adv = images + delta
    return x_adv.clamp(0.0, 1.0)


def initial_point(
    images: torch.Tensor,
    eps: float,
    norm: str,
    kind: str,
    init_scale: float = 0.001,
    generator: torch.Generator | None = None,
    project_start: bool = True,
) -> torch.Tensor:
    """Starting point of the attack, projected into the ball and ``[0, 1]`` (unless ``project_start=False``).

    ``"normal"``: ``x + init_scale * N(0, 1)`` (TRADES and the released DKL code, ``init_scale=0.001``);
    ``"uniform"``: uniform in the L-inf ball, or a uniformly random direction with a uniform
    radius in the L2 ball (Madry et al.); ``"none"``: ``x`` itself. ``project_start=False`` returns
    the ``"normal"`` start as drawn, as the released TRADES/AWP/DKL code does: its first gradient is
    taken there even where the noise leaves the ball (``eps_t`` below 0.001 early in a ramp) or
    ``[0, 1]``.
    """
    if kind == "none":
        return images.clone()
    if kind == "normal":
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        start = images + init_scale * noise
        return project(start, images, eps, norm) if project_start else start
    if kind == "uniform":
        if check_norm(norm) == "linf":
            noise = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
            return project(images + eps * (2 * noise - 1), images, eps, norm)
        direction = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (images.dim() - 1)))
        radius = torch.rand((images.shape[0],), generator=generator, device=images.device, dtype=images.dtype)
        return project(images + eps * radius.view(-1, *([1] * (images.dim() - 1))) * direction, images, eps, norm)
    raise ValueError(f"random_start must be 'normal', 'uniform' or 'none', got {kind!r}")


def _loss_gradient(
    model: nn.Module,
    x_adv: torch.Tensor,
    natural_logits: torch.Tensor | None,
    labels: torch.Tensor,
    loss_fn: AttackLoss,
) -> torch.Tensor:
    x_adv = x_adv.detach().requires_grad_(True)
    loss = loss_fn(model(x_adv), natural_logits, labels)
    (grad,) = torch.autograd.grad(loss, x_adv)
    return grad


def _gradient(
    model: nn.Module,
    x_adv: torch.Tensor,
    natural_logits: torch.Tensor | None,
    labels: torch.Tensor,
    loss_fn: AttackLoss,
) -> torch.Tensor:
    """Input gradient of the attack loss, recomputed in float32 if low precision zeroed it.

    Under bf16/fp16 autocast the 0.001 start of the KL attack is rounded away, so the adversarial
    logits equal the natural ones and the KL gradient is exactly zero: sign steps would then never
    move (a silent collapse). When any sample's gradient is all zero under autocast, the batch's
    gradient is recomputed with autocast off (one extra pass, usually only at the first step).
    """
    grad = _loss_gradient(model, x_adv, natural_logits, labels, loss_fn)
    device_type = x_adv.device.type
    if torch.is_autocast_enabled(device_type) and bool((grad.flatten(1).abs().amax(dim=1) == 0).any()):
        with torch.autocast(device_type=device_type, enabled=False):
            grad = _loss_gradient(model, x_adv, natural_logits, labels, loss_fn)
    return grad


def pgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str = "linf",
    loss: str | AttackLoss = "ce",
    natural_logits: torch.Tensor | None = None,
    random_start: str = "normal",
    init_scale: float = 0.001,
    eval_mode: bool = True,
    generator: torch.Generator | None = None,
    check_inputs: bool = True,
    project_start: bool = True,
) -> torch.Tensor:
    r"""Projected gradient ascent on an attack loss inside an L-inf or L2 ball (Madry et al., ICLR 2018).

    Each of the ``steps`` iterations moves ``x_adv`` by ``step_size`` along the loss gradient (its
    sign for L-inf, its per-sample unit L2 direction for L2), then projects onto the ``eps``-ball
    around ``images`` and clamps to ``[0, 1]``. Fixed steps, no early stop: the released TRADES, AWP
    and DKL code run that way.

    Attack losses (all ascended, batch *sums* so that small per-sample gradients survive fp16):
    ``"ce"`` cross-entropy; ``"kl"``/``"trades"`` :func:`dkl_core.kl_loss` against the natural logits
    (the TRADES inner maximisation); ``"cw"`` the CW margin; or any :data:`AttackLoss` callable
    ``loss(adv_logits, natural_logits, labels)``, e.g. an IKL loss with class-prior weights
    (see :func:`dkl_core.attacks.inner_maximization`).

    Guarantees: the result lies in the ``eps``-ball and in ``[0, 1]``; each module's train/eval
    flag and each parameter's ``requires_grad`` are restored; no ``.grad`` is left on the
    parameters; under bf16/fp16 autocast the attack still moves (zero gradients caused by rounding
    are recomputed in float32). The forward passes run under whatever autocast is active.

    Args:
        model: returns logits ``[B, C]`` for inputs in ``[0, 1]`` (normalise inside the model).
        images: ``[B, ...]`` floating, in ``[0, 1]``.
        labels: ``[B]`` integer class indices.
        eps: radius of the ball (``>= 0``), e.g. ``8/255`` for L-inf or ``0.5`` for L2.
        step_size: length of one step (``>= 0``), e.g. ``2/255``.
        steps: number of steps (``>= 0``; 0 returns the projected start).
        norm: ``"linf"`` or ``"l2"``.
        loss: a built-in name or a callable, see above.
        natural_logits: logits of ``images`` for losses that need them; computed here (no grad,
            in the attack's mode) when missing.
        random_start: ``"normal"`` (``x + init_scale * N(0, 1)``, the released code), ``"uniform"``
            (uniform in the ball) or ``"none"``.
        init_scale: standard deviation of the ``"normal"`` start.
        eval_mode: run the model in eval mode (TRADES, AWP and DKL attack in eval mode, so BN uses
            its running statistics and is not updated by the attack).
        generator: a ``torch.Generator`` for the random start (else the global RNG).
        check_inputs: validate shapes, ``[0, 1]`` range and the model's outputs (one ``min``/``max``
            over the images); switch off in tight training loops once the data are known good.
        project_start: project the ``"normal"`` start into the ball and ``[0, 1]`` (default). ``False``
            takes the first gradient at the unprojected start, as the released code does; every
            later iterate, and the result, is projected either way.

    Returns:
        The adversarial images, detached, same shape as ``images`` (float32 or float64).

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
        >>> x_adv = pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=10)
        >>> bool(((x_adv - x).abs() <= 8 / 255 + 1e-6).all())
        True
    """
    norm = check_norm(norm)
    check_budget(eps, step_size, steps)
    loss_fn, needs_natural = resolve_attack_loss(loss)
    if check_inputs:
        check_images_labels(images, labels)
        if natural_logits is not None and natural_logits.shape[0] != images.shape[0]:
            raise ValueError(
                f"natural_logits must have one row per image, got {natural_logits.shape[0]} rows "
                f"for {images.shape[0]} images"
            )
    work_dtype = torch.promote_types(images.dtype, torch.float32)
    x_nat = images.detach().to(work_dtype)
    with frozen(model, eval_mode=eval_mode):
        if needs_natural and natural_logits is None:
            with torch.no_grad():
                natural_logits = model(x_nat)
        if natural_logits is not None:
            natural_logits = natural_logits.detach()
        if check_inputs:
            if natural_logits is None:
                with torch.no_grad():
                    warn_if_probabilities(model(x_nat))
            else:
                warn_if_probabilities(natural_logits)
        x_adv = initial_point(x_nat, eps, norm, random_start, init_scale, generator, project_start)
        if int(steps) == 0:
            x_adv = project(x_adv, x_nat, eps, norm)  # the result is always in the ball
        for _ in range(int(steps)):
            grad = _gradient(model, x_adv, natural_logits, labels, loss_fn)
            if norm == "linf":
                step = grad.sign()
            else:
                grad_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
                step = grad / grad_norm.view(-1, *([1] * (grad.dim() - 1)))
            x_adv = project(x_adv.detach() + step_size * step, x_nat, eps, norm)
    return x_adv.detach()
