"""The inner maximisation of IKL/GKL adversarial training, with the released code's epsilon ramp and step budgets.

What the released training scripts (``Adv-training-dkl/train_dkl_cifar{10,100}.py`` of
``jiequancui/DKL``) do: the training eps ramps linearly over the whole run,
``eps_t = eps * epoch / epochs`` with 1-based epochs; the attack runs in eval mode from
``x + 0.001 * N(0, 1)`` with sign-gradient steps, projection to the ``eps_t`` ball and a clamp to
``[0, 1]``. The attack loss is the KL (soft cross-entropy) term alone for CIFAR-10 and soft CE +
wMSE (weights 1 and 1, class-prior weights, gamma 1 even in GKL runs) for CIFAR-100.

Step budgets of the released script (``--train_budget``):

* ``"low"``: 2 steps of size ``eps_t`` for the whole run.
* ``"high"`` as intended: epochs ``<= 50/200`` of the run 2 steps of ``eps_t``, ``<= 100/200`` 3
  steps of ``2 eps_t / 3``, ``<= 150/200`` 4 steps of ``eps_t / 2``, then 5 steps of ``eps_t / 2``
  (thresholds ``int(k * epochs / 200)``).
* ``"high_as_released"`` (the default here): a chain of ``if`` statements makes the last branch
  win, so the released checkpoints were trained with 5 steps of ``eps_t / 2`` for the whole run.

The "high" thresholds and the "low" budget are not in the papers; they are the values of those
scripts' ``--train_budget`` branches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..losses import ikl_loss
from .pgd import AttackLoss, pgd

BUDGETS = ("low", "high", "high_as_released")


@dataclass(frozen=True)
class AttackSchedule:
    """The attack of one training epoch: ball radius, step length and number of steps."""

    eps: float
    step_size: float
    steps: int


def ramped_epsilon(epoch: int, epochs: int, eps: float = 8 / 255) -> float:
    """``eps * epoch / epochs`` (1-based ``epoch``), capped at ``eps``: the released code's linear ramp."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0 (1-based; 0 gives eps 0), got {epoch}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return eps * min(epoch / epochs, 1.0)


def attack_schedule(
    epoch: int, epochs: int, *, eps: float = 8 / 255, budget: str = "high_as_released", ramp: bool = True
) -> AttackSchedule:
    """The attack used in (1-based) ``epoch`` of ``epochs`` under a step ``budget`` (see the module docstring).

    Args:
        epoch: current epoch, 1-based as in the released script.
        epochs: length of the run (the ramp and the budget quarters scale with it).
        eps: final radius, e.g. ``8/255``.
        budget: ``"high_as_released"`` (default: faithful to the run behind the released checkpoints
            and the paper's numbers), ``"high"`` (the 2/3/4/5-step schedule the code intended) or
            ``"low"``.
        ramp: ramp eps linearly (the released code); ``False`` uses ``eps`` from the first epoch.

    Example:
        >>> attack_schedule(20, 200, budget="high")
        AttackSchedule(eps=0.0031372549019607846, step_size=0.0031372549019607846, steps=2)
        >>> attack_schedule(20, 200).steps  # as released: 5 steps of eps_t / 2 throughout
        5
    """
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    eps_t = ramped_epsilon(epoch, epochs, eps) if ramp else ramped_epsilon(epochs, epochs, eps)
    if budget == "low":
        return AttackSchedule(eps_t, eps_t, 2)
    if budget == "high_as_released":
        return AttackSchedule(eps_t, eps_t / 2, 5)
    scale = epochs / 200.0
    if epoch <= int(50 * scale):
        return AttackSchedule(eps_t, eps_t, 2)
    if epoch <= int(100 * scale):
        return AttackSchedule(eps_t, 2 * eps_t / 3, 3)
    if epoch <= int(150 * scale):
        return AttackSchedule(eps_t, eps_t / 2, 4)
    return AttackSchedule(eps_t, eps_t / 2, 5)


def ikl_attack_loss(
    class_prior: torch.Tensor, *, mse_weight: float = 1.0, ce_weight: float = 1.0, temperature: float = 1.0
) -> AttackLoss:
    """The IKL attack loss ``ikl_loss(adv, natural, weights=class_prior[labels])`` (batch sum) as an :data:`AttackLoss`.

    ``class_prior`` is the ``[C, C]`` prior matrix (``ClassPrior.prior``); the rows are picked
    from the labels inside the loss, so the callable works on any sub-batch.
    """
    if class_prior.dim() != 2 or class_prior.shape[0] != class_prior.shape[1]:
        raise ValueError(f"class_prior must be a [C, C] matrix, got {tuple(class_prior.shape)}")

    def loss(adv_logits: torch.Tensor, natural_logits: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        if natural_logits is None:
            raise ValueError("the IKL attack loss needs natural_logits")
        weights = class_prior.to(device=adv_logits.device, dtype=torch.float32)[labels.long()]
        return ikl_loss(
            adv_logits, natural_logits.detach(), mse_weight=mse_weight, ce_weight=ce_weight,
            temperature=temperature, weights=weights, reduction="sum",
        )  # fmt: skip

    return loss


def inner_maximization(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epoch: int,
    epochs: int,
    eps: float = 8 / 255,
    budget: str = "high_as_released",
    attack_loss: str = "kl",
    class_prior: torch.Tensor | None = None,
    mse_weight: float = 1.0,
    ce_weight: float = 1.0,
    natural_logits: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    check_inputs: bool = True,
) -> torch.Tensor:
    """Adversarial images for one training batch, as the released IKL/GKL adversarial training makes them.

    Runs :func:`pgd` in eval mode from ``x + 0.001 * N(0, 1)`` with the schedule of
    :func:`attack_schedule` and either

    * ``attack_loss="kl"``: the KL/soft-CE term alone (:func:`dkl_core.kl_loss`; the released
      CIFAR-10 setting and TRADES), or
    * ``attack_loss="ikl"``: soft CE + wMSE with class-prior weights (:func:`dkl_core.ikl_loss`
      with ``weights = class_prior[labels]``, ``mse_weight = ce_weight = 1`` in the released
      CIFAR-100 setting); ``class_prior`` (``[C, C]``, e.g. ``ClassPrior.prior``) is required.

    The model's modes and ``requires_grad`` flags come back unchanged, so the training step can
    follow directly. Returns detached adversarial images; at ``eps_t = 0`` they equal ``images``.
    """
    schedule = attack_schedule(epoch, epochs, eps=eps, budget=budget)
    if attack_loss == "kl":
        loss: str | AttackLoss = "kl"
    elif attack_loss == "ikl":
        if class_prior is None:
            raise ValueError("attack_loss='ikl' needs class_prior, the [C, C] prior matrix (ClassPrior.prior)")
        loss = ikl_attack_loss(class_prior, mse_weight=mse_weight, ce_weight=ce_weight)
    else:
        raise ValueError(f"attack_loss must be 'kl' or 'ikl', got {attack_loss!r}")
    if schedule.eps == 0:
        return images.detach().clone()
    return pgd(
        model, images, labels, eps=schedule.eps, step_size=schedule.step_size, steps=schedule.steps,
        norm="linf", loss=loss, natural_logits=natural_logits, random_start="normal", init_scale=0.001,
        eval_mode=True, generator=generator, check_inputs=check_inputs,
    )  # fmt: skip
