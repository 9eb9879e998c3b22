"""The adversarial-training recipe's own logic: attack budgets, the inner maximisation, the loss, averaging, loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dkl_recipe_adv.attack import adversarial_images, epoch_attack, resolved_attack_loss
from dkl_recipe_adv.train import AdvConfig, build_method, step_loss
from torch import nn

from dkl_core import ClassPrior, gkl_loss, ikl_loss, kl_loss
from dkl_core.attacks import AttackSchedule, inner_maximization
from dkl_train.averaging import CheckpointAverage, exponential_checkpoint_average
from dkl_train.config import ConfigError, build_config

EPS = 8 / 255


def adv_config(**values) -> AdvConfig:
    return build_config(AdvConfig, values)


def schedule_table(budget: str, epochs: int = 200) -> list[tuple[int, float, float]]:
    config = adv_config(epochs=epochs, budget=budget)
    return [(s.steps, s.step_size / s.eps, s.eps) for s in (epoch_attack(config, e) for e in range(epochs))]


def test_faithful_high_budget_is_five_half_steps_all_run():
    # The released script's chain of `if`s: 5 steps of eps_t / 2 from the first to the last epoch.
    table = schedule_table("high_as_released")
    assert {steps for steps, _, _ in table} == {5}
    assert all(ratio == pytest.approx(0.5) for _, ratio, _ in table)
    assert adv_config().budget == "high_as_released"  # the default reproduces the released checkpoints


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
    fixed = adv_config(epochs=10, budget="fixed", eps_ramp=False, attack_steps=10, attack_step_size=2 / 255)
    assert [(s.eps, s.steps, s.step_size) for s in (epoch_attack(fixed, 0), epoch_attack(fixed, 9))] == [
        (pytest.approx(EPS), 10, 2 / 255)
    ] * 2


def test_attack_loss_by_dataset_and_method():
    assert resolved_attack_loss(adv_config(dataset="cifar10")) == "kl"
    assert resolved_attack_loss(adv_config(dataset="cifar100")) == "ikl"
    assert resolved_attack_loss(adv_config(dataset="cifar100", method="trades")) == "kl"
    assert resolved_attack_loss(adv_config(method="pgd_at")) == "ce"


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
    config = adv_config(dataset=dataset, epochs=8)
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
    loss, terms = build_method(adv_config(method="ikl")).view_loss(t, s, y, w)
    expected = F.cross_entropy(t, y) + ikl_loss(s, t, mse_weight=20.0, ce_weight=3.0, weights=w)
    assert torch.allclose(loss, expected) and set(terms) == {"ce", "ikl"}
    loss, _ = build_method(adv_config(method="trades", trades_beta=6.0)).view_loss(t, s, y, None)
    assert torch.allclose(loss, F.cross_entropy(t, y) + 6.0 * kl_loss(s, t))
    loss, _ = build_method(adv_config(method="pgd_at")).view_loss(None, s, y, None)
    assert torch.allclose(loss, F.cross_entropy(s, y))


def test_compiled_loss_equals_eager():
    torch.manual_seed(0)
    t, s, y = torch.randn(8, 5, requires_grad=True), torch.randn(8, 5, requires_grad=True), torch.randint(0, 5, (8,))
    w = torch.softmax(torch.randn(5, 5), dim=1)[y]
    results = []
    for compiled in (False, True):
        loss, _ = build_method(adv_config(method="ikl", compile_loss=compiled)).view_loss(t, s, y, w)
        results.append((loss.detach(), *torch.autograd.grad(loss, (t, s))))
    for eager, compiled in zip(*results, strict=True):
        torch.testing.assert_close(compiled, eager)


@pytest.mark.parametrize("method,gamma", [("ikl", 1.0), ("gkl", 0.4)])
def test_autoaug_loss_is_the_released_one(method, gamma):
    # natural CE over the whole doubled batch; adversarial terms per view (GKL's mass normalised per
    # view), only the augmented view's weighted
    model = _tiny_model()
    x, x_adv, y = torch.rand(8, 3, 4, 4), torch.rand(8, 3, 4, 4), torch.randint(0, 5, (8,))
    w = torch.softmax(torch.randn(5, 5), dim=1)[y]
    config = adv_config(
        method=method, autoaug_weight=0.3, ce_weight=4.0, **({"gamma": gamma} if method == "gkl" else {})
    )
    both, terms, _ = build_method(config).training_loss(model, x, x_adv, y, w, (1.0, 0.3))
    t, s = model(x), model(x_adv)
    term = gkl_loss if method == "gkl" else ikl_loss
    extra = {"gamma": gamma} if method == "gkl" else {}

    def view(part: slice) -> torch.Tensor:
        return term(s[part], t[part], mse_weight=20.0, ce_weight=4.0, weights=w[part], **extra)

    expected = F.cross_entropy(t, y) + view(slice(0, 4)) + 0.3 * view(slice(4, 8))
    torch.testing.assert_close(both, expected)
    assert {"ce", method, f"{method}_aug"} == set(terms)


class _Recorder(nn.Module):
    """Records which inputs each forward pass saw (train-mode passes only: the attack runs in eval mode)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.append(x.detach().clone())
        return self.inner(x)


def test_adversarial_forward_comes_first():
    # BN running statistics end each step on the natural batch, as in the released scripts
    model = _Recorder(_tiny_model()).train()
    x, x_adv, y = torch.rand(4, 3, 4, 4), torch.rand(4, 3, 4, 4), torch.randint(0, 5, (4,))
    build_method(adv_config(method="trades")).training_loss(model, x, x_adv, y, None)
    assert len(model.seen) == 2 and torch.equal(model.seen[0], x_adv) and torch.equal(model.seen[1], x)


class _RecordingAWP:
    """Stands in for AdversarialWeightPerturbation: keeps the proxy loss and the inputs it saw, perturbs nothing."""

    def __init__(self, model: nn.Module) -> None:
        self.proxy = _Recorder(model).train()
        self.loss: torch.Tensor | None = None

    def compute(self, loss_fn):
        self.loss = loss_fn(self.proxy)
        return {}

    def perturb(self, direction) -> None:
        pass


def test_autoaug_step_prior_from_basic_view_and_unweighted_awp_proxy():
    model = _tiny_model()
    config = adv_config(method="ikl", dataset="cifar100", augmentation="autoaug", autoaug_weight=0.3)
    basic, augmented, y = torch.rand(4, 3, 4, 4), torch.rand(4, 3, 4, 4), torch.tensor([0, 1, 2, 0])
    prior = ClassPrior(5, temperature=4.0)
    prior.update(torch.randn(8, 5), torch.randint(0, 5, (8,)))
    prior.end_epoch()
    weights = prior.weights(torch.cat([y, y]))
    awp = _RecordingAWP(model)
    schedule = AttackSchedule(eps=EPS, step_size=EPS / 2, steps=2)
    batch = {"image": basic, "image_aug": augmented, "label": y}
    method = build_method(config)
    method.prior = prior
    step_loss(config, method, model, model, batch, schedule, awp)
    adversarial, natural = awp.proxy.seen
    assert torch.equal(natural, torch.cat([basic, augmented])) and adversarial.shape == natural.shape
    # AWP's proxy ascends CE + ikl over the doubled batch as one, without the view weight
    t, s, labels = model(natural), model(adversarial), torch.cat([y, y])
    expected = F.cross_entropy(t, labels) + ikl_loss(s, t, mse_weight=20.0, ce_weight=3.0, weights=weights)
    torch.testing.assert_close(awp.loss, expected)
    # the class prior accumulated the basic view only
    reference = ClassPrior(5, temperature=4.0)
    reference.update(model(basic), y)
    prior.end_epoch()
    reference.end_epoch()
    torch.testing.assert_close(prior.prior, reference.prior)


def test_autoaugment_view_crops_and_flips_first_then_fills_grey():
    from dkl_recipe_adv.views import AUTOAUG_FILL, train_transform
    from torchvision.transforms import v2

    from dkl_train.data import TwoViews, get_spec

    views = train_transform(adv_config(dataset="cifar100", augmentation="autoaug"), get_spec("cifar100"))
    assert isinstance(views, TwoViews)
    kinds = [type(step) for step in views.augmented.transforms]
    assert kinds[:3] == [v2.RandomCrop, v2.RandomHorizontalFlip, v2.AutoAugment], kinds
    policy = views.augmented.transforms[2]
    assert policy.policy == v2.AutoAugmentPolicy.CIFAR10 and policy.fill == AUTOAUG_FILL == 128
    assert [type(step) for step in views.basic.transforms][:2] == [v2.RandomCrop, v2.RandomHorizontalFlip]


def test_released_cosine_formulas():
    import math

    from dkl_train.optim import learning_rate

    shifted = adv_config(lr=0.2, epochs=200, lr_schedule="cosine_shifted")
    # the released DKL scripts: lr/2 (1 + cos(pi e / (E + 1))) for 1-based e, set once per epoch
    for epoch in (0, 99, 199):
        expected = 0.1 * (1 + math.cos(math.pi * (epoch + 1) / 201))
        assert learning_rate(shifted, epoch) == pytest.approx(expected, rel=1e-12)
    # the released TRADES script: lr/2 (1 + cos(pi (e - 1) / E)), our "cosine"
    plain = adv_config(lr=0.2, epochs=200, lr_schedule="cosine")
    assert [learning_rate(plain, e) for e in (0, 100)] == [pytest.approx(0.2), pytest.approx(0.1)]


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


CONFIGS = Path(__file__).parents[2] / "recipes" / "adv" / "configs"


def _config(name: str) -> AdvConfig:
    from dkl_train.config import load_config

    return load_config(AdvConfig, CONFIGS / f"{name}.yaml")


def test_every_config_loads_and_states_its_target():
    from dkl_recipe_adv.eval import EvalConfig

    from dkl_train.config import load_config

    configs = sorted(CONFIGS.glob("*.yaml"))
    assert len(configs) >= 20
    for path in configs:
        text = path.read_text()
        assert text.startswith("# ") and "# Reproduces:" in text and "# Run:" in text, path.name
        assert "released weights" not in text, path.name  # the checkpoints differ from the launch scripts: say which
        if path.name.startswith("eval_"):
            config = load_config(EvalConfig, path, ["checkpoint=x.pt"])
        else:
            config = load_config(AdvConfig, path)
        if not path.name.startswith("digits_"):
            assert "# Time:" in text and "H200" in text, path.name  # run time from the measured throughput
        assert hasattr(config, "paper_autoattack"), path.name
    default = _config("cifar10_wrn34_ikl")
    assert (default.paper_clean, default.paper_autoattack) == (85.31, 57.13)
    assert (default.ce_weight, default.mse_weight, default.weight_temperature) == (3.0, 20.0, 4.0)


# (config, method, ce/mse/T, gamma, augmentation weight or None) as the released launch scripts ran them
RELEASED_ROWS = [
    ("cifar10_wrn34_ikl", "ikl", (3.0, 20.0, 4.0), None, None),  # ce 3: the logged a3_b20_T4
    ("cifar100_wrn34_ikl", "ikl", (3.0, 20.0, 4.0), None, None),
    ("cifar100_wrn34_ikl_ce4_t2", "ikl", (4.0, 20.0, 2.0), None, None),
    ("cifar100_wrn34_ikl_autoaug", "ikl", (4.0, 20.0, 4.0), None, 0.3),  # NeurIPS --gamma 0.3 = view weight
    ("cifar10_wrn34_gkl", "gkl", (4.0, 20.0, 4.0), 0.2, None),  # T 4: --T 1.0 never reached the script
    ("cifar100_wrn34_gkl", "gkl", (4.0, 20.0, 1.0), 0.4, None),
    ("cifar10_wrn34_gkl_autoaug", "gkl", (4.0, 20.0, 4.0), 1.0, 0.5),
    ("cifar100_wrn34_gkl_autoaug", "gkl", (4.0, 20.0, 4.0), 1.0, 0.5),
]


@pytest.mark.parametrize("name,method,weights,gamma,aug_weight", RELEASED_ROWS)
def test_released_rows_run_as_released(name, method, weights, gamma, aug_weight):
    config = _config(name)
    assert config.method == method
    assert (config.ce_weight, config.mse_weight, config.weight_temperature) == weights
    if gamma is not None:
        assert config.gamma == gamma
    assert config.augmentation == ("basic" if aug_weight is None else "autoaug")
    if aug_weight is not None:
        assert config.autoaug_weight == aug_weight
    assert (config.epochs, config.lr, config.lr_schedule, config.budget, config.eps_ramp) == (
        200, 0.2, "cosine_shifted", "high_as_released", True
    )  # fmt: skip
    assert config.robust_val_size == 0 and config.project_start is False  # all 50,000 images; unprojected start
    assert adv_config().robust_val_size == 0  # held-out robust validation is opt-in everywhere
    assert config.awp and config.checkpoint_average and config.average_new_weight == 0.1


@pytest.mark.parametrize("dataset,beta", [("cifar10", 6.0), ("cifar100", 9.0)])
def test_baselines_are_the_named_recipes(dataset, beta):
    authors = _config(f"{dataset}_wrn34_trades_released")  # train_trades_cifar.py: only the loss differs
    assert (authors.method, authors.trades_beta, authors.budget, authors.eps_ramp) == (
        "trades", beta, "high_as_released", True
    )  # fmt: skip
    assert authors.awp and authors.checkpoint_average and authors.lr_schedule == "cosine" and authors.lr == 0.2
    awp = _config(f"{dataset}_wrn34_trades_awp")  # AWP's recipe: fixed eps, 10 steps of 2/255, step decay
    assert (awp.trades_beta, awp.eps_ramp, awp.attack_steps, awp.lr, awp.lr_schedule, awp.lr_milestones) == (
        6.0, False, 10, 0.1, "multistep", [99, 149]
    )  # fmt: skip
    assert awp.awp and not awp.checkpoint_average
