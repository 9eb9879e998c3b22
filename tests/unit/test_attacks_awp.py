"""AWP: the proxy ascent step, per-layer rescaling, and a bit-identical restore."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dkl_core import kl_loss
from dkl_core.attacks import AdversarialWeightPerturbation


def model_and_batch(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    x, y = torch.rand(8, 3, 6, 6), torch.randint(0, 5, (8,))
    return model, x, y


def loss_fn(x, y):
    return lambda net: F.cross_entropy(net(x), y) + kl_loss(net(x + 0.01), net(x).detach())


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_bit_identical(a, b):
    for name in a:
        assert a[name].dtype == b[name].dtype
        assert torch.equal(a[name].view(-1).view(torch.uint8) if a[name].is_floating_point() else a[name],
                           b[name].view(-1).view(torch.uint8) if b[name].is_floating_point() else b[name]), name  # fmt: skip


@pytest.mark.parametrize("seed", range(3))
def test_perturb_then_restore_is_bit_identical(seed):
    model, x, y = model_and_batch(seed)
    before = snapshot(model)
    awp = AdversarialWeightPerturbation(model, gamma=0.005, lr=0.1)
    direction = awp.compute(loss_fn(x, y))
    assert_bit_identical(snapshot(model), before)  # compute() leaves the model alone
    awp.perturb(direction)
    assert awp.perturbed
    assert not torch.equal(model[0].weight, before["0.weight"])
    torch.testing.assert_close(model[0].bias, before["0.bias"], rtol=0, atol=0)  # 1-d parameters untouched
    awp.restore()
    assert not awp.perturbed
    assert_bit_identical(snapshot(model), before)
    assert all(p.grad is None for p in model.parameters())


def test_direction_is_rescaled_per_layer_to_the_weight_norm():
    model, x, y = model_and_batch()
    awp = AdversarialWeightPerturbation(model, gamma=0.005, lr=0.1)
    direction = awp.compute(loss_fn(x, y))
    assert set(direction) == {"0.weight", "4.weight"}
    for name, v in direction.items():
        torch.testing.assert_close(v.norm(), model.get_parameter(name).norm(), rtol=1e-5, atol=0)
    awp.perturb(direction)
    for name in direction:
        w0 = awp._backup[name]
        torch.testing.assert_close((model.get_parameter(name) - w0).norm(), 0.005 * w0.norm(), rtol=1e-3, atol=1e-7)
    awp.restore()


def test_direction_ascends_the_loss():
    model, x, y = model_and_batch()
    fn = loss_fn(x, y)
    model.train()
    with torch.no_grad():
        before = fn(model).item()
    awp = AdversarialWeightPerturbation(model, gamma=0.02, lr=0.1)
    awp.perturb(awp.compute(fn))
    with torch.no_grad():
        after = fn(model).item()
    awp.restore()
    assert after > before


def test_restore_keeps_the_optimizer_update():
    model, x, y = model_and_batch()
    reference = copy.deepcopy(model)
    awp = AdversarialWeightPerturbation(model, gamma=0.005, lr=0.1)
    awp.perturb(awp.compute(loss_fn(x, y)))
    perturbed = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(x), y).backward()
    update = {n: -0.1 * p.grad for n, p in model.named_parameters()}
    optimizer.step()
    awp.restore()
    for name, p in model.named_parameters():
        original = reference.get_parameter(name)
        torch.testing.assert_close(
            p, original + (perturbed[name] + update[name] - perturbed[name]), rtol=1e-6, atol=1e-7
        )


def test_misuse_is_reported():
    model, x, y = model_and_batch()
    awp = AdversarialWeightPerturbation(model)
    with pytest.raises(RuntimeError, match="without a matching perturb"):
        awp.restore()
    direction = awp.compute(loss_fn(x, y))
    awp.perturb(direction)
    with pytest.raises(RuntimeError, match="already perturbed"):
        awp.perturb(direction)
    with pytest.raises(RuntimeError, match="restore"):
        awp.compute(loss_fn(x, y))
    awp.restore()
    with pytest.raises(ValueError, match="gamma"):
        AdversarialWeightPerturbation(model, gamma=-1)
    with pytest.raises(ValueError, match="scalar"):
        awp.compute(lambda net: net(x))
