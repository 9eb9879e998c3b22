"""The IKL/TRADES inner maximisation: eps ramp, step budgets, attack losses built from dkl-core's losses."""

import pytest
import torch
from torch import nn

from dkl_core import ClassPrior, ikl_loss, kl_loss
from dkl_core.attacks import (
    AttackSchedule,
    attack_schedule,
    ikl_attack_loss,
    inner_maximization,
    pgd,
    ramped_epsilon,
)

EPS = 8 / 255


def test_linear_ramp_over_the_whole_run():
    assert ramped_epsilon(0, 200) == 0.0
    assert ramped_epsilon(100, 200) == pytest.approx(EPS / 2)
    assert ramped_epsilon(200, 200) == pytest.approx(EPS)
    assert ramped_epsilon(250, 200) == pytest.approx(EPS)  # capped
    with pytest.raises(ValueError):
        ramped_epsilon(1, 0)


@pytest.mark.parametrize(
    "epoch,steps,step_fraction",
    [
        (1, 2, 1.0),
        (50, 2, 1.0),
        (51, 3, 2 / 3),
        (100, 3, 2 / 3),
        (101, 4, 0.5),
        (150, 4, 0.5),
        (151, 5, 0.5),
        (200, 5, 0.5),
    ],
)
def test_high_budget_as_intended(epoch, steps, step_fraction):
    schedule = attack_schedule(epoch, 200, eps=EPS, budget="high")
    eps_t = EPS * epoch / 200
    assert schedule.steps == steps
    assert schedule.eps == pytest.approx(eps_t)
    assert schedule.step_size == pytest.approx(step_fraction * eps_t)


def test_high_budget_quarters_scale_with_the_run_length():
    assert [attack_schedule(e, 20, budget="high").steps for e in (5, 6, 10, 11, 15, 16, 20)] == [2, 3, 3, 4, 4, 5, 5]


@pytest.mark.parametrize("epoch", [1, 37, 120, 200])
def test_high_as_released_and_low(epoch):
    eps_t = EPS * epoch / 200
    released = attack_schedule(epoch, 200, budget="high_as_released")
    assert (released.steps, released.step_size) == (5, pytest.approx(eps_t / 2))
    low = attack_schedule(epoch, 200, budget="low")
    assert (low.steps, low.step_size) == (2, pytest.approx(eps_t))


def test_default_budget_is_the_released_run():
    assert attack_schedule(10, 200) == attack_schedule(10, 200, budget="high_as_released")


def test_no_ramp_and_bad_budget():
    assert attack_schedule(1, 200, budget="low", ramp=False) == AttackSchedule(EPS, EPS, 2)
    with pytest.raises(ValueError, match="budget"):
        attack_schedule(1, 200, budget="medium")


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(16, 3, 4, 4, generator=g), torch.randint(0, 10, (16,), generator=g)


def test_kl_inner_max_is_pgd_with_kl_loss_and_the_schedule():
    model, (x, y) = small_model(), batch()
    model.train()
    schedule = attack_schedule(
        120,
        200,
    )  # the default budget: high, as released
    a = inner_maximization(model, x, y, epoch=120, epochs=200, generator=torch.Generator().manual_seed(3))
    b = pgd(
        model, x, y, eps=schedule.eps, step_size=schedule.step_size, steps=schedule.steps, loss="kl",
        random_start="normal", generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert float((a - x).abs().max()) <= schedule.eps + 1e-7


def test_ikl_attack_loss_equals_ikl_loss_with_prior_rows():
    prior = ClassPrior(10, temperature=4.0)
    prior.update(torch.randn(64, 10), torch.randint(0, 10, (64,)))
    matrix = prior.end_epoch()
    adv, nat, y = torch.randn(16, 10), torch.randn(16, 10), torch.randint(0, 10, (16,))
    got = ikl_attack_loss(matrix)(adv, nat, y)
    expected = ikl_loss(adv, nat, weights=prior.weights(y), reduction="sum")
    torch.testing.assert_close(got, expected)
    # on a sub-batch the callable picks the rows itself
    torch.testing.assert_close(
        ikl_attack_loss(matrix)(adv[:3], nat[:3], y[:3]),
        ikl_loss(adv[:3], nat[:3], weights=prior.weights(y[:3]), reduction="sum"),
    )


def test_ikl_inner_max_raises_the_ikl_loss_and_needs_a_prior():
    model, (x, y) = small_model(), batch()
    model.eval()
    prior = torch.full((10, 10), 0.1)
    x_adv = inner_maximization(model, x, y, epoch=200, epochs=200, attack_loss="ikl", class_prior=prior)
    with torch.no_grad():
        nat = model(x)
        start = ikl_loss(model(x + 0.001 * torch.randn_like(x)), nat, weights=prior[y])
        assert ikl_loss(model(x_adv), nat, weights=prior[y]) > start
        assert kl_loss(model(x_adv), nat) > 0
    with pytest.raises(ValueError, match="class_prior"):
        inner_maximization(model, x, y, epoch=1, epochs=200, attack_loss="ikl")
    with pytest.raises(ValueError, match="attack_loss"):
        inner_maximization(model, x, y, epoch=1, epochs=200, attack_loss="ce")


def test_epoch_zero_returns_the_natural_images():
    model, (x, y) = small_model(), batch()
    torch.testing.assert_close(inner_maximization(model, x, y, epoch=0, epochs=200), x)
