"""LBGAT in the adversarial recipe, checked against the released code (dvlab-research/LBGAT): the loss and
its forward order, the attack, the learning-rate schedule, the configs, the natural model's architecture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dkl_recipe_adv.attack import adversarial_images, epoch_attack
from dkl_recipe_adv.lbgat import LBGATPair, epoch_learning_rate
from dkl_recipe_adv.train import AdvConfig, build_method
from torch import nn

from dkl_core import ClassPrior
from dkl_train.config import ConfigError, build_config, load_config
from dkl_train.models import create_model
from dkl_train.optim import build_scheduler
from tests.unit.test_models_published import lbgat_resnet18, trades_wrn

CONFIGS = Path(__file__).parents[2] / "recipes" / "adv" / "configs"
LBGAT_CONFIGS = {  # config -> (dataset, beta, paper clean, paper AutoAttack)
    "cifar100_wrn34_lbgat_beta0": ("cifar100", 0.0, 70.25, 27.16),
    "cifar100_wrn34_lbgat_beta6": ("cifar100", 6.0, 60.64, 29.33),
    "cifar10_wrn34_lbgat_beta0": ("cifar10", 0.0, 88.22, 52.86),
}


class _Logged(nn.Module):
    def __init__(self, name: str, log: list, inner: nn.Module) -> None:
        super().__init__()
        self.name, self.log, self.inner = name, log, inner

    def forward(self, x):
        self.log.append((self.name, x))
        return self.inner(x)


def adv_config(**values) -> AdvConfig:
    return build_config(AdvConfig, values)


def _net(seed: int, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, classes)
    )


def test_loss_is_the_released_formula_and_reaches_both_models():
    log: list = []
    pair = LBGATPair(_Logged("robust", log, _net(0)), _Logged("natural", log, _net(1))).train()
    x, x_adv, y = torch.rand(6, 3, 4, 4), torch.rand(6, 3, 4, 4), torch.tensor([0, 1, 2, 3, 4, 0])
    loss, terms, t = build_method(adv_config(method="lbgat", awp=False, trades_beta=6.0)).training_loss(
        pair, x, x_adv, y, None
    )
    # lbgat.py: out_adv = model(x_adv), out_natural = model(x), out = model_teacher(x), in that order
    assert [(name, inp) for name, inp in log] == [("robust", x_adv), ("robust", x), ("natural", x)]
    out_adv, out_natural, out = pair(x, x_adv)  # train mode: BN of each batch on its own, the same logits again
    kl = F.kl_div(F.log_softmax(out_adv, dim=1), F.softmax(out_natural, dim=1), reduction="sum") / x.shape[0]
    released = F.mse_loss(out_adv, out) + F.cross_entropy(out, y) + 6.0 * kl
    torch.testing.assert_close(loss, released)
    torch.testing.assert_close(terms["lbgat"], 6.0 * kl.detach())
    assert set(terms) == {"mse", "ce_natural", "lbgat"} and torch.equal(t, out_natural)
    loss.backward()
    for model in (pair.robust, pair.natural):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_pair_alone_is_the_robust_model():
    pair = LBGATPair(_net(0), _net(1)).eval()
    x = torch.rand(2, 3, 4, 4)
    assert torch.equal(pair(x), pair.robust(x))


def released_attack(model: nn.Module, x: torch.Tensor, eps: float, step: float, steps: int) -> torch.Tensor:
    """lbgat.py's inner loop: eval mode, KL summed, start x + 0.001 N(0, 1), the first gradient unprojected."""
    model.eval()
    x_adv = x.detach() + 0.001 * torch.randn(x.shape, dtype=x.dtype)
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1), reduction="sum")
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = torch.clamp(torch.min(torch.max(x_adv.detach() + step * grad.sign(), x - eps), x + eps), 0.0, 1.0)
    model.train()
    return x_adv


@pytest.mark.parametrize("name", list(LBGAT_CONFIGS))
def test_attack_is_the_released_one(name):
    config = load_config(AdvConfig, CONFIGS / f"{name}.yaml")
    schedules = {epoch_attack(config, epoch) for epoch in (0, 50, 99)}
    assert len(schedules) == 1  # the same attack in every epoch: no eps ramp
    schedule = schedules.pop()
    assert (schedule.eps, schedule.step_size, schedule.steps) == (0.031, 0.007, 10)
    model = _net(2).double().train()
    x, y = torch.rand(8, 3, 4, 4, dtype=torch.float64), torch.randint(0, 5, (8,))
    torch.manual_seed(7)
    ours = adversarial_images(config, model, x, y, schedule, ClassPrior(5))
    assert model.training and model[1].num_batches_tracked == 0  # eval mode during the attack, then restored
    torch.manual_seed(7)
    torch.testing.assert_close(ours, released_attack(model, x, 0.031, 0.007, 10), rtol=0, atol=1e-12)


def test_learning_rate_per_epoch_is_the_released_one():
    config = load_config(AdvConfig, CONFIGS / "cifar100_wrn34_lbgat_beta6.yaml")
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=config.lr)
    # One optimiser step per epoch here: the run's scheduler, as the recipe builds it.
    scheduler = build_scheduler(config, optimizer, steps_per_epoch=1, epoch_rate=epoch_learning_rate(config))

    def released(epoch: int) -> float:  # train_lbgat_cifar100.py adjust_learning_rate, 1-based epochs
        lr = 0.02 if epoch == 1 else 0.1
        for start, value in ((76, 0.01), (91, 0.001), (101, 0.0001)):
            lr = value if epoch >= start else lr
        return lr

    for epoch in range(config.epochs):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(released(epoch + 1), rel=1e-12), epoch + 1
        optimizer.step()
        scheduler.step()
    assert epoch_learning_rate(config)(0) == 0.02  # the released first-epoch rate, exactly


@pytest.mark.parametrize("name", list(LBGAT_CONFIGS))
def test_configs_run_as_released(name):
    dataset, beta, clean, robust = LBGAT_CONFIGS[name]
    config = load_config(AdvConfig, CONFIGS / f"{name}.yaml")
    assert (config.method, config.dataset, config.trades_beta) == ("lbgat", dataset, beta)
    assert (config.model, config.model_kwargs, config.natural_model) == ("wrn_34_10", {}, "resnet18_lbgat")
    assert (config.optimizer, config.lr, config.momentum, config.weight_decay, config.nesterov) == (
        "sgd", 0.1, 0.9, 2e-4, False
    )  # fmt: skip
    assert (config.epochs, config.batch_size, config.lr_first_epoch, config.lr_milestones) == (
        100,
        128,
        0.02,
        [75, 90, 100],
    )
    assert (config.budget, config.eps_ramp, config.attack_loss, config.random_start, config.project_start) == (
        "fixed", False, "kl", "normal", False
    )  # fmt: skip
    assert not (config.awp or config.checkpoint_average or config.ema_decay or config.robust_val_size)
    assert (config.augmentation, config.augment, config.mixed_precision) == ("basic", True, "no")
    assert (config.paper_clean, config.paper_autoattack) == (clean, robust)


def test_config_rejects_what_lbgat_does_not_do():
    with pytest.raises(ConfigError, match="awp=false"):
        build_config(AdvConfig, {"method": "lbgat"})  # AWP is on by default
    with pytest.raises(ConfigError, match="augmentation=basic"):
        build_config(AdvConfig, {"method": "lbgat", "awp": False, "augmentation": "autoaug"})
    with pytest.raises(ConfigError, match="lr_first_epoch must be positive"):
        build_config(AdvConfig, {"lr_first_epoch": 0.0})


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_natural_model_is_the_released_resnet18_variant():
    model = create_model("resnet18_lbgat", 100)
    assert _shapes(model) == lbgat_resnet18(100)
    sizes = []
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        stage.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape[-1]))
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    assert sizes == [32, 32, 16, 8]  # the second stage keeps stride 1 (mdistiller's ResNet18: 32/16/8/4)


def test_natural_model_keeps_pytorchs_default_initialisation():
    """The released ``ResNet18_cifar`` initialises nothing: each layer, built in this order, draws PyTorch's
    default from the one generator (a 3x3 conv of 64 inputs: U(-1/24, 1/24), std 0.024, not He's 0.059)."""
    torch.manual_seed(0)
    model = create_model("resnet18_lbgat", 100)
    torch.manual_seed(0)
    for name, module in model.named_modules():  # every layer is registered as it is built
        if isinstance(module, nn.Conv2d):
            reference = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, bias=False)
        elif isinstance(module, nn.Linear):
            reference = nn.Linear(module.in_features, module.out_features)
        elif isinstance(module, nn.BatchNorm2d):
            reference = nn.BatchNorm2d(module.num_features)
        else:
            continue
        for key, value in reference.state_dict().items():
            assert torch.equal(module.state_dict()[key], value), f"{name}.{key}"
    assert model.layer1[0].conv1.weight.std().item() == pytest.approx(1 / 1728**0.5, rel=0.02)


def test_robust_wrn_builds_the_lbgat_layout():
    with torch.device("meta"):
        for name, k in (("wrn_34_10", 10), ("wrn_34_20", 20)):
            assert _shapes(create_model(name, 100, sub_block1=True)) == trades_wrn(34, k, 100, sub_block1=True)
            assert _shapes(create_model(name, 10)) == trades_wrn(34, k, 10)
