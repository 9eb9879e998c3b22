"""``compiled=True``: the fused passes through torch.compile give the reference's values and gradients.

Each case compiles its forward pass once (seconds on a CPU); the cases cover the three
branches the compiled graphs specialise on: the student-only gradient (IKL, mean), the gradient through
the mass normaliser into the weights (GKL, sum) and the teacher gradient of DKL (per sample).
"""

import pytest
import torch

from dkl_core import dkl_loss, gkl_loss, ikl_loss
from tests.unit import loss_reference as ref

NUM_CLASSES = 10


def make_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    s = (3 * torch.randn(4, NUM_CLASSES, generator=g, dtype=torch.float64)).requires_grad_()
    t = (3 * torch.randn(4, NUM_CLASSES, generator=g, dtype=torch.float64)).requires_grad_()
    w = torch.softmax(torch.randn(4, NUM_CLASSES, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    return s, t, w


CASES = {
    "ikl_mean": (
        lambda s, t, w, c: ikl_loss(s, t.detach(), mse_weight=8.0, temperature=4.0, weights=w.detach(), compiled=c),
        lambda s, t, w: ref.ikl(s, t.detach(), 8.0, 1.0, temperature=4.0, weights=w.detach()).mean(),
    ),
    "gkl_sum_weight_gradient": (
        lambda s, t, w, c: gkl_loss(
            s, t, mse_weight=3.0, gamma=0.6, weights=w, detach_weights=False, reduction="sum", compiled=c
        ),
        lambda s, t, w: ref.gkl_mean(s, t, 3.0, 1.0, weights=w, detach_weights=False, gamma=0.6) * s.shape[0],
    ),
    "dkl_per_sample": (
        lambda s, t, w, c: dkl_loss(s, t, mse_weight=2.0, temperature=2.0, reduction="none", compiled=c).sum(),
        lambda s, t, w: ref.dkl(s, t, mse_weight=2.0, temperature=2.0).sum(),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_compiled_matches_reference_and_eager(case):
    ours, reference = CASES[case]
    results = {}
    for name, fn in (
        ("compiled", lambda *x: ours(*x, True)),
        ("eager", lambda *x: ours(*x, False)),
        ("ref", reference),
    ):
        s, t, w = make_inputs()
        value = fn(s, t, w)
        grads = torch.autograd.grad(value, (s, t, w), allow_unused=True)
        results[name] = (value.detach(), *(torch.zeros_like(s) if g is None else g for g in grads))
    for got, eager, expected in zip(results["compiled"], results["eager"], results["ref"], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(got, eager, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager_loss", "compiled_loss"])
def test_inside_a_compiled_training_step(compiled, recwarn):
    # A user's torch.compile around model + loss: the same value and gradients as eager, with the loss's
    # own compiled=True folded into the outer graph (no nested compile, no warning about it).
    torch.manual_seed(0)
    model = torch.nn.Linear(8, NUM_CLASSES).double()
    images = torch.randn(4, 8, dtype=torch.float64)
    teacher = 3 * torch.randn(4, NUM_CLASSES, dtype=torch.float64)

    def step(images, teacher):
        return ikl_loss(model(images), teacher, mse_weight=8.0, temperature=4.0, compiled=compiled)

    results = []
    for fn in (step, torch.compile(step)):
        model.zero_grad()
        value = fn(images, teacher)
        value.backward()
        results.append((value.detach(), model.weight.grad.clone(), model.bias.grad.clone()))
    for got, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert not [w for w in recwarn if "lru_cache" in str(w.message) or "cache wrapper" in str(w.message)]
