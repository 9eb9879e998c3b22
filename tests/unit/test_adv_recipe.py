"""The adversarial-training recipe's own logic: attack budgets, the inner maximisation, the loss, averaging, loading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dkl_recipe_adv.train import (
    AdvConfig,
    CheckpointAverage,
    adversarial_images,
    epoch_attack,
    resolved_attack_loss,
    robust_loss,
    training_loss,
)
from torch import nn

from dkl_core import ClassPrior, ikl_loss, kl_loss
from dkl_core.attacks import inner_maximization
from dkl_train.averaging import exponential_checkpoint_average
from dkl_train.config import ConfigError, build_config

EPS = 8 / 255


def schedule_table(budget: str, epochs: int = 200) -> list[tuple[int, float, float]]:
    config = AdvConfig(epochs=epochs, budget=budget)
    return [(s.steps, s.step_size / s.eps, s.eps) for s in (epoch_attack(config, e) for e in range(epochs))]


def test_faithful_high_budget_is_five_half_steps_all_run():
    # The released script's chain of `if`s: 5 steps of eps_t / 2 from the first to the last epoch.
    table = schedule_table("high_as_released")
    assert {steps for steps, _, _ in table} == {5}
    assert all(ratio == pytest.approx(0.5) for _, ratio, _ in table)
    assert AdvConfig().budget == "high_as_released"  # the default reproduces the released checkpoints


def test_intended_high_budget_steps_up_by_quarter():
    table = schedule_table("high")
    steps = [s for s, _, _ in table]
    # 1-based epochs 1-50: 2 steps of eps_t; 51-100: 3 of 2 eps_t / 3; 101-150: 4 of eps_t / 2; 151-200: 5 of eps_t / 2.
    assert (
        steps[:50] == [2] * 50 and steps[50:100] == [3] * 50 and steps[100:150] == [4] * 50 and steps[150:] == [5] * 50
    )
    ratios = [r for _, r, _ in table]
    assert ratios[0] == pytest.approx(1.0) and ratios[60] == pytest.approx(2 / 3) and ratios[120] == pytest.approx(0.5)
    # The quarters scale with the run: a 20-epoch run switches after epochs 5, 10 and 15.
    assert [s for s, _, _ in schedule_table("high", epochs=20)] == [2] * 5 + [3] * 5 + [4] * 5 + [5] * 5


def test_eps_ramps_linearly_over_the_run():
    eps = [e for _, _, e in schedule_table("high_as_released")]
    assert eps[0] == pytest.approx(EPS / 200) and eps[99] == pytest.approx(EPS / 2) and eps[-1] == pytest.approx(EPS)
    fixed = AdvConfig(epochs=10, budget="fixed", eps_ramp=False, attack_steps=10, attack_step_size=2 / 255)
    assert [(s.eps, s.steps, s.step_size) for s in (epoch_attack(fixed, 0), epoch_attack(fixed, 9))] == [
        (pytest.approx(EPS), 10, 2 / 255)
    ] * 2


def test_attack_loss_by_dataset_and_method():
    assert resolved_attack_loss(AdvConfig(dataset="cifar10")) == "kl"
    assert resolved_attack_loss(AdvConfig(dataset="cifar100")) == "ikl"
    assert resolved_attack_loss(AdvConfig(dataset="cifar100", method="trades")) == "kl"
    assert resolved_attack_loss(AdvConfig(method="pgd_at")) == "ce"


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5))


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_default_attack_is_dkl_core_inner_maximization(dataset):
    model = _tiny_model()
    images, labels = torch.rand(6, 3, 4, 4), torch.tensor([0, 1, 2, 3, 4, 0])
    prior = ClassPrior(5)
    prior.update(torch.randn(6, 5), labels)
    prior.end_epoch()
    config = AdvConfig(dataset=dataset, epochs=8)
    torch.manual_seed(1)
    ours = adversarial_images(config, model, images, labels, epoch_attack(config, 5), prior)
    torch.manual_seed(1)
    reference = inner_maximization(
        model, images, labels, epoch=6, epochs=8, budget="high_as_released",
        attack_loss=resolved_attack_loss(config), class_prior=prior.prior,
    )  # fmt: skip
    assert torch.equal(ours, reference)
    assert not torch.equal(ours, images)


def test_losses_are_the_papers_formulas():
    torch.manual_seed(0)
    t, s, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    w = torch.softmax(torch.randn(5, 5), dim=1)[y]
    loss, terms = robust_loss(AdvConfig(method="ikl"), t, s, y, w)
    expected = F.cross_entropy(t, y) + ikl_loss(s, t, mse_weight=20.0, ce_weight=3.0, weights=w)
    assert torch.allclose(loss, expected) and set(terms) == {"ce", "ikl"}
    loss, _ = robust_loss(AdvConfig(method="trades", trades_beta=6.0), t, s, y, None)
    assert torch.allclose(loss, F.cross_entropy(t, y) + 6.0 * kl_loss(s, t))
    loss, _ = robust_loss(AdvConfig(method="pgd_at"), None, s, y, None)
    assert torch.allclose(loss, F.cross_entropy(s, y))


def test_compiled_loss_equals_eager():
    torch.manual_seed(0)
    t, s, y = torch.randn(8, 5, requires_grad=True), torch.randn(8, 5, requires_grad=True), torch.randint(0, 5, (8,))
    w = torch.softmax(torch.randn(5, 5), dim=1)[y]
    results = []
    for compiled in (False, True):
        loss, _ = robust_loss(AdvConfig(method="ikl", compile_loss=compiled), t, s, y, w)
        results.append((loss.detach(), *torch.autograd.grad(loss, (t, s))))
    for eager, compiled in zip(*results, strict=True):
        torch.testing.assert_close(compiled, eager)


def test_autoaug_half_is_weighted():
    model = _tiny_model()
    x, x_adv, y = torch.rand(8, 3, 4, 4), torch.rand(8, 3, 4, 4), torch.randint(0, 5, (8,))
    w = torch.full((8, 5), 0.2)
    config = AdvConfig(method="ikl", autoaug_weight=0.3)
    both, terms, _ = training_loss(config, model, x, x_adv, y, w, halves=2)
    first, _, _ = training_loss(config, model, x[:4], x_adv[:4], y[:4], w[:4], halves=1)
    second, _, _ = training_loss(config, model, x[4:], x_adv[4:], y[4:], w[4:], halves=1)
    assert torch.allclose(both, first + 0.3 * second)
    assert {"ce", "ikl", "ce_aug", "ikl_aug"} == set(terms)


def test_running_checkpoint_average_equals_offline_average():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    average, states = CheckpointAverage(0.1), []
    for _ in range(4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net.train()(torch.randn(5, 3))  # moves the BN buffers too
        states.append({k: v.clone() for k, v in net.state_dict().items()})
        average.update(net)
    offline = exponential_checkpoint_average(states, new_weight=0.1)
    assert average.epochs == 4
    for key, value in offline.items():
        assert torch.allclose(average.state[key], value), key
    restored = CheckpointAverage()
    restored.load_state_dict(average.state_dict())
    assert restored.epochs == 4 and torch.equal(restored.state["0.weight"], average.state["0.weight"])


def test_config_rejects_inconsistent_settings():
    with pytest.raises(ConfigError, match="class prior"):
        build_config(AdvConfig, {"method": "trades", "attack_loss": "ikl"})
    with pytest.raises(ConfigError, match="gradient_accumulation_steps"):
        build_config(AdvConfig, {"awp": True, "gradient_accumulation_steps": 2})
    with pytest.raises(ConfigError, match="unknown config key"):
        build_config(AdvConfig, {"mse_wieght": 1.0})


def test_every_config_loads_and_states_its_target():
    from pathlib import Path

    from dkl_recipe_adv.eval import EvalConfig

    from dkl_train.config import load_config

    configs = sorted((Path(__file__).parents[2] / "recipes" / "adv" / "configs").glob("*.yaml"))
    assert len(configs) >= 12
    for path in configs:
        text = path.read_text()
        assert text.startswith("# ") and "# Reproduces:" in text and "# Run:" in text, path.name
        if path.name.startswith("eval_"):
            config = load_config(EvalConfig, path, ["checkpoint=x.pt"])
        else:
            config = load_config(AdvConfig, path)
        assert hasattr(config, "paper_autoattack"), path.name
    default = load_config(AdvConfig, configs[0].parent / "cifar10_wrn34_ikl.yaml")
    assert (default.paper_clean, default.paper_autoattack) == (85.31, 57.13)
    assert (default.ce_weight, default.mse_weight, default.prior_temperature) == (3.0, 20.0, 4.0)
