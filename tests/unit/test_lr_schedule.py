"""The run's one learning-rate scheduler: at every optimiser step each parameter group's rate is the released
formula's (float equality) times the group's own ``lr_scale``, and a restored scheduler continues exactly."""

from __future__ import annotations

import math

import pytest
import torch

from dkl_train.config import EpochConfig, IterationConfig, load_config
from dkl_train.optim import StepScheduler, build_scheduler

STEPS_PER_EPOCH = 3
SCALES = (1.0, 0.25)  # a group without lr_scale, and one with timm's layer-wise decay scale


def optimizer() -> torch.optim.Optimizer:
    """Two parameter groups: the first without ``lr_scale`` (1), the second with one, as timm's layer decay."""
    first, second = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    return torch.optim.SGD([{"params": [first]}, {"params": [second], "lr_scale": SCALES[1]}], lr=123.0)


# The released formulas, written out here independently of dkl_train.optim (mdistiller's multistep, the
# DKL adversarial scripts' shifted cosine, LBGAT's first epoch, USB's warm-up + 7/16 cosine).
def multistep(epoch: int) -> float:
    return 0.05 * 0.1 ** sum(epoch >= m for m in (2, 4))


def cosine_with_warmup(epoch: int) -> float:
    return 0.2 * (epoch + 1) / 2 if epoch < 2 else 0.5 * 0.2 * (1.0 + math.cos(math.pi * epoch / 6))


def cosine_shifted(epoch: int) -> float:
    return 0.5 * 0.1 * (1.0 + math.cos(math.pi * (epoch + 1) / (6 + 1)))


def lbgat(epoch: int) -> float:
    return 0.02 if epoch == 0 else 0.1 * 0.1 ** sum(epoch >= m for m in (3,))


EPOCH_CASES = {
    "multistep": ({"lr": 0.05, "lr_schedule": "multistep", "lr_milestones": "[2,4]", "epochs": 6}, None, multistep),
    "cosine+warmup": ({"lr": 0.2, "lr_schedule": "cosine", "lr_warmup_epochs": 2, "epochs": 6}, None, cosine_with_warmup),
    "cosine_shifted": ({"lr": 0.1, "lr_schedule": "cosine_shifted", "epochs": 6}, None, cosine_shifted),
    "constant": ({"lr": 0.3, "lr_schedule": "constant", "epochs": 6}, None, lambda epoch: 0.3),
    "lbgat": ({"lr": 0.1, "lr_schedule": "multistep", "lr_milestones": "[3]", "epochs": 6}, 0.02, lbgat),
}  # fmt: skip


def epoch_config(settings: dict) -> EpochConfig:
    schedule = settings["lr_schedule"]
    config = load_config(EpochConfig, None, [f"{k}={v}" for k, v in settings.items() if k != "lr_schedule"])
    config.lr_schedule = schedule  # cosine_shifted is a recipe's option (adv), not EpochConfig's Literal
    return config


def rates(scheduler: StepScheduler, opt: torch.optim.Optimizer, steps: int) -> list[tuple[float, list[float]]]:
    """``(scheduler.rate, each group's lr)`` before each of ``steps`` optimiser steps, stepping as the loop does."""
    seen = []
    for _ in range(steps):
        seen.append((scheduler.rate, [group["lr"] for group in opt.param_groups]))
        opt.step()
        scheduler.step()
    return seen


@pytest.mark.parametrize("case", list(EPOCH_CASES))
def test_epoch_schedules_give_the_released_rate_at_every_step_over_group_scales(case):
    settings, first_epoch, formula = EPOCH_CASES[case]
    config, opt = epoch_config(settings), optimizer()
    epoch_rate = None
    if first_epoch is not None:  # what the adversarial recipe passes for LBGAT (lr_first_epoch)
        from dkl_train.optim import learning_rate

        epoch_rate = lambda epoch: first_epoch if epoch == 0 else learning_rate(config, epoch)  # noqa: E731
    scheduler = build_scheduler(config, opt, steps_per_epoch=STEPS_PER_EPOCH, epoch_rate=epoch_rate)
    for step, (rate, groups) in enumerate(rates(scheduler, opt, config.epochs * STEPS_PER_EPOCH)):
        expected = formula(step // STEPS_PER_EPOCH)  # constant within an epoch
        assert rate == expected and groups == [expected * scale for scale in SCALES], (case, step)
    assert opt.param_groups[1]["lr_scale"] == SCALES[1]  # the group's own scale is left alone


def test_iteration_schedule_is_usb_warmup_then_cosine_at_every_step_over_group_scales():
    config = load_config(IterationConfig, None, ["lr=0.0005", "iterations=40", "warmup_iters=8", "eval_every_iters=10"])
    opt = optimizer()
    scheduler = build_scheduler(config, opt)

    def usb(it: int) -> float:
        if it < 8:
            return 0.0005 * it / 8
        return 0.0005 * max(0.0, math.cos(math.pi * (7 / 16) * (it - 8) / (40 - 8)))

    for step, (rate, groups) in enumerate(rates(scheduler, opt, 40)):
        assert rate == usb(step) and groups == [usb(step) * scale for scale in SCALES], step


def test_a_restored_scheduler_continues_with_the_uninterrupted_rates():
    config = epoch_config(EPOCH_CASES["cosine+warmup"][0])
    opt = optimizer()
    straight = rates(build_scheduler(config, opt, steps_per_epoch=STEPS_PER_EPOCH), opt, 18)
    first_opt = optimizer()
    first = build_scheduler(config, first_opt, steps_per_epoch=STEPS_PER_EPOCH)
    rates(first, first_opt, 7)  # stopped inside epoch 3
    saved_opt, saved = first_opt.state_dict(), first.state_dict()
    resumed_opt = optimizer()  # a new process: the schedule is built again, then loaded
    resumed = build_scheduler(config, resumed_opt, steps_per_epoch=STEPS_PER_EPOCH)
    resumed_opt.load_state_dict(saved_opt)
    resumed.load_state_dict(saved)
    assert rates(resumed, resumed_opt, 11) == straight[7:]


def test_an_epoch_schedule_needs_the_steps_per_epoch():
    with pytest.raises(ValueError, match="steps per epoch"):
        build_scheduler(epoch_config(EPOCH_CASES["constant"][0]), optimizer())
