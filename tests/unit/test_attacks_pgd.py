"""PGD: bounds, L2 projection, mode/grad restoration, determinism, bf16, attack losses, bad input."""

import warnings

import pytest
import torch
from torch import nn

from dkl_core import kl_loss
from dkl_core.attacks import initial_point, pgd, project
from tests.unit.attacks_digits import accuracy, digits_tensors, single_thread, train_digits_model


@pytest.fixture(scope="module")
def digits():
    with single_thread():
        model = train_digits_model()
        _, _, x_test, y_test = digits_tensors()
        yield model, x_test[:200], y_test[:200]


def random_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2),
        nn.Flatten(), nn.Linear(4 * 6 * 6, 5),
    )  # fmt: skip


def random_batch(seed: int, batch: int = 8):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 6, 6, generator=g), torch.randint(0, 5, (batch,), generator=g)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("linf", 0.3), ("l2", 0.5), ("l2", 3.0)])
@pytest.mark.parametrize("start", ["normal", "uniform", "none"])
def test_result_in_ball_and_unit_box(seed, norm, eps, start):
    model, (x, y) = random_model(seed), random_batch(seed)
    x_adv = pgd(model, x, y, eps=eps, step_size=eps / 3, steps=5, norm=norm, random_start=start)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert bool((size <= eps * (1 + 1e-5) + 1e-7).all())


@pytest.mark.parametrize("seed", range(3))
def test_l2_projection_is_the_euclidean_projection(seed):
    g = torch.Generator().manual_seed(seed)
    x = 0.25 + 0.5 * torch.rand(6, 3, 4, 4, generator=g)  # far from the box edges: only the ball acts
    eps = 0.2
    point = x + 0.3 * torch.randn(x.shape, generator=g)
    projected = project(point, x, eps, "l2")
    delta, raw = (projected - x).flatten(1), (point - x).flatten(1)
    raw_norm = raw.norm(dim=1, keepdim=True)
    expected = torch.where(raw_norm > eps, raw * eps / raw_norm, raw)  # closest point of the ball
    torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-6)
    inside = x + 0.01 * torch.randn(x.shape, generator=g) / 48**0.5
    torch.testing.assert_close(project(inside, x, eps, "l2"), inside.clamp(0, 1))


def test_l2_step_direction_on_a_linear_model():
    # loss = w . x: the optimal L2 step is eps * w / ||w|| (the box does not bind from the centre).
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.linspace(-1, 1, 12), torch.zeros(12)]))
    x, y = torch.full((1, 3, 2, 2), 0.5), torch.tensor([1])
    x_adv = pgd(model, x, y, eps=0.1, step_size=0.1, steps=1, norm="l2", random_start="none")
    w = model[1].weight[0]
    torch.testing.assert_close((x_adv - x).flatten(), 0.1 * w / w.norm(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("initially_training", [True, False])
def test_modes_and_requires_grad_restored_and_no_parameter_grads(initially_training):
    model, (x, y) = random_model(0), random_batch(0)
    model.train(initially_training)
    model[1].eval()  # a deliberately mixed state must survive
    model[0].weight.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    seen_modes = []
    handle = model.register_forward_pre_hook(lambda module, args: seen_modes.append(module.training))
    running_mean = model[1].running_mean.clone()
    pgd(model, x, y, eps=0.1, step_size=0.05, steps=3, loss="kl")
    handle.remove()
    assert seen_modes and not any(seen_modes)  # attacked in eval mode
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(model[1].running_mean, running_mean, rtol=0, atol=0)  # BN not updated


def test_modes_restored_after_an_exception():
    model, (x, y) = random_model(0), random_batch(0)
    model.train()

    def failing_loss(adv, nat, labels):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        pgd(model, x, y, eps=0.1, step_size=0.05, steps=2, loss=failing_loss)
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_train_mode_attack_when_asked():
    model, (x, y) = random_model(0), random_batch(0)
    model.eval()
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    pgd(model, x, y, eps=0.1, step_size=0.05, steps=1, eval_mode=False)
    assert seen and not any(seen) and not model.training  # eval_mode=False keeps the caller's mode


def test_deterministic_under_fixed_seed():
    model, (x, y) = random_model(1), random_batch(1)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append(pgd(model, x, y, eps=0.1, step_size=0.03, steps=4, random_start="uniform"))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = pgd(model, x, y, eps=0.1, step_size=0.03, steps=4, random_start="normal", generator=g1)
    b = pgd(model, x, y, eps=0.1, step_size=0.03, steps=4, random_start="normal", generator=g2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_initial_points():
    x = torch.full((4, 3, 5, 5), 0.5)
    normal = initial_point(x, 8 / 255, "linf", "normal", generator=torch.Generator().manual_seed(0))
    assert 0 < float((normal - x).std()) < 0.002  # the released code's 0.001 * N(0, 1)
    uniform = initial_point(x, 0.1, "linf", "uniform", generator=torch.Generator().manual_seed(0))
    assert float((uniform - x).abs().max()) <= 0.1 + 1e-7 and float((uniform - x).abs().mean()) > 0.03
    torch.testing.assert_close(initial_point(x, 0.1, "l2", "none"), x)


@pytest.mark.parametrize("loss", ["ce", "kl", "cw"])
def test_pgd_lowers_digits_accuracy_sharply(digits, loss):
    model, x, y = digits
    clean = accuracy(model, x, y)
    x_adv = pgd(model, x, y, eps=0.15, step_size=0.03, steps=10, loss=loss, random_start="uniform")
    robust = accuracy(model, x_adv, y)
    assert clean > 0.9
    assert robust < 0.5 * clean, (clean, robust)


def test_more_steps_attack_at_least_as_well_on_average(digits):
    model, x, y = digits
    torch.manual_seed(0)
    weak = accuracy(model, pgd(model, x, y, eps=0.1, step_size=0.1, steps=1, random_start="none"), y)
    strong = accuracy(model, pgd(model, x, y, eps=0.1, step_size=0.025, steps=20, random_start="none"), y)
    assert strong <= weak


def test_callable_loss_gets_adv_natural_and_labels(digits):
    model, x, y = digits
    calls = []

    def loss(adv_logits, natural_logits, labels):
        calls.append((adv_logits.shape, natural_logits.shape, labels.shape))
        return nn.functional.cross_entropy(adv_logits, labels, reduction="sum")

    pgd(model, x[:16], y[:16], eps=0.1, step_size=0.05, steps=2, loss=loss)
    assert calls == [(torch.Size([16, 10]), torch.Size([16, 10]), torch.Size([16]))] * 2


def test_kl_attack_moves_under_bf16_autocast(digits):
    model, x, y = digits
    # pixels in [0.5, 0.75): bf16 spacing there is 2**-8, so the 0.001 start is rounded away entirely
    x, y = 0.5 + 0.25 * x[:64], y[:64]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = pgd(model, x, y, eps=0.1, step_size=0.05, steps=3, loss="kl")
    moved = (x_adv - x).abs().flatten(1).amax(dim=1)
    assert bool((moved > 0.05).all()), "some samples never moved: a zero-gradient collapse"
    with torch.no_grad():
        natural = model(x)
        assert kl_loss(model(x_adv), natural) > 10 * kl_loss(model(x + 0.001 * torch.randn_like(x)), natural)


def test_zero_step_budget_returns_the_start():
    model, (x, y) = random_model(0), random_batch(0)
    torch.testing.assert_close(pgd(model, x, y, eps=0.0, step_size=0.0, steps=5), x)
    torch.testing.assert_close(pgd(model, x, y, eps=0.1, step_size=0.1, steps=0, random_start="none"), x)


def test_bad_input_is_rejected_clearly():
    model, (x, y) = random_model(0), random_batch(0)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        pgd(model, x, y, eps=-0.1, step_size=0.01, steps=1)
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\]"):
        pgd(model, x * 255, y, eps=0.1, step_size=0.01, steps=1)
    with pytest.raises(ValueError, match="same batch size"):
        pgd(model, x, y[:3], eps=0.1, step_size=0.01, steps=1)
    with pytest.raises(ValueError, match="norm must be"):
        pgd(model, x, y, eps=0.1, step_size=0.01, steps=1, norm="l1")
    with pytest.raises(ValueError, match="loss must be one of"):
        pgd(model, x, y, eps=0.1, step_size=0.01, steps=1, loss="mse")
    with pytest.raises(ValueError, match="steps must be"):
        pgd(model, x, y, eps=0.1, step_size=0.01, steps=-1)
    with pytest.raises(ValueError, match="integer tensor"):
        pgd(model, x, y.float(), eps=0.1, step_size=0.01, steps=1)


def test_model_returning_probabilities_warns():
    model = nn.Sequential(random_model(0), nn.Softmax(dim=1))
    x, y = random_batch(0)
    with pytest.warns(UserWarning, match="probability distribution"):
        pgd(model, x, y, eps=0.1, step_size=0.01, steps=1, loss="kl")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pgd(random_model(0), x, y, eps=0.1, step_size=0.01, steps=1, loss="kl")


class _FirstInput(nn.Module):
    """A linear model that keeps the input of its first forward pass with gradients (the attack's start)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 5))
        self.first: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first is None and x.requires_grad:
            self.first = x.detach().clone()
        return self.net(x)


@pytest.mark.parametrize("steps", [0, 3])
def test_unprojected_start_is_where_the_first_gradient_is_taken(steps):
    # eps below the 0.001 noise (the first epochs of a ramp) and pixels at 0 and 1: the released code
    # takes its first gradient at x + 0.001 N(0, 1) as drawn, outside the ball and [0, 1].
    x, y = random_batch(0)
    x[:, 0] = 0.0
    x[:, 1] = 1.0
    eps = 1e-4
    for project_start in (True, False):
        model = _FirstInput()
        g = torch.Generator().manual_seed(1)
        x_adv = pgd(model, x, y, eps=eps, step_size=eps / 2, steps=steps, loss="kl", generator=g,
                    project_start=project_start)  # fmt: skip
        # the result is projected either way, also with no step
        assert (x_adv - x).abs().max() <= eps + 1e-7 and x_adv.min() >= 0 and x_adv.max() <= 1
        if steps == 0:
            continue
        start = model.first
        expected = x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        if project_start:
            assert torch.equal(start, project(expected, x, eps, "linf"))
        else:
            assert torch.equal(start, expected)
            assert (start - x).abs().max() > eps and start.min() < 0 and start.max() > 1


def test_project_start_default_keeps_the_projected_start():
    x = torch.rand(4, 3, 6, 6)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(initial_point(x, 1e-4, "linf", "normal", generator=g1),
                       project(initial_point(x, 1e-4, "linf", "normal", generator=g2, project_start=False), x, 1e-4, "linf"))  # fmt: skip
