"""The attack used for training: the epoch's budget (dkl-core's released schedules or a fixed one) and the
inner maximisation of one batch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from dkl_core import ClassPrior
from dkl_core.attacks import AttackSchedule, attack_schedule, ikl_attack_loss, pgd, ramped_epsilon
from dkl_train.config import chosen_methods

if TYPE_CHECKING:
    from dkl_recipe_adv.train import AdvConfig

RELEASED_BUDGETS = ("high_as_released", "high", "low")  # dkl_core.attacks.attack_schedule's names


def resolved_attack_loss(config: AdvConfig) -> str:
    """``auto``: the method's choice (:meth:`~dkl_recipe_adv.methods.AdvMethod.auto_attack_loss`: CE for pgd_at;
    sCE + wMSE with prior weights for ikl/gkl on CIFAR-100; the KL/sCE term otherwise)."""
    if config.attack_loss != "auto":
        return config.attack_loss
    return chosen_methods(config)["method"].auto_attack_loss(config.dataset)


def epoch_attack(config: AdvConfig, epoch: int) -> AttackSchedule:
    """The training attack of (0-based) ``epoch``: dkl-core's released schedules, or a fixed one."""
    if config.budget in RELEASED_BUDGETS:
        return attack_schedule(epoch + 1, config.epochs, eps=config.eps, budget=config.budget, ramp=config.eps_ramp)
    eps_t = ramped_epsilon(epoch + 1 if config.eps_ramp else config.epochs, config.epochs, config.eps)
    return AttackSchedule(eps_t, config.attack_step_size, config.attack_steps)


def adversarial_images(
    config: AdvConfig,
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    schedule: AttackSchedule,
    prior: ClassPrior | None,
) -> Tensor:
    """The inner maximisation of one batch (eval mode; :func:`dkl_core.attacks.pgd` with the epoch's schedule).

    With the defaults this is exactly :func:`dkl_core.attacks.inner_maximization` (tested); calling
    :func:`pgd` directly adds what that function does not offer: the fixed budget, the CE loss of
    Madry's PGD-AT, eps without the ramp, and the uniform start.
    """
    kind = resolved_attack_loss(config)
    if schedule.eps == 0:
        return images.detach().clone()
    loss: Any = ikl_attack_loss(prior.prior) if kind == "ikl" else kind
    return pgd(
        model, images, labels, eps=schedule.eps, step_size=schedule.step_size, steps=schedule.steps,
        norm="linf", loss=loss, random_start=config.random_start, init_scale=0.001, eval_mode=True,
        check_inputs=False, project_start=config.project_start,
    )  # fmt: skip
