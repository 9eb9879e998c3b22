"""ReviewKD's hierarchical context loss against a literal float64 reference: values, gradients, errors."""

from __future__ import annotations

import pytest
import torch

import dkl_core
from dkl_core import hcl_loss
from tests.unit import loss_reference as ref

# (C, H, W) per level: the CIFAR resnet8x4 levels, the ImageNet sizes (7 and 14: windows that overlap when
# pooled to 4x4), a non-square map and the pooled 1x1 level.
LEVEL_SHAPES = [
    [(4, 32, 32), (6, 16, 16), (8, 8, 8), (8, 1, 1)],
    [(3, 14, 14), (5, 7, 7), (5, 1, 1)],
    [(2, 6, 10), (3, 3, 3), (2, 2, 2)],
]


def features(shapes, seed, batch=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *shape, dtype=torch.float64, generator=g, requires_grad=True) for shape in shapes]


@pytest.mark.parametrize("shapes", LEVEL_SHAPES, ids=["cifar", "imagenet", "odd"])
def test_values_and_gradients_match_the_reference(shapes):
    fs, ft = features(shapes, 0), features(shapes, 1)
    value = hcl_loss(fs, ft)
    expected = ref.hcl(fs, ft)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-14)
    got = torch.autograd.grad(value, [*fs, *ft])
    want = torch.autograd.grad(expected, [*fs, *ft])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_level_weights_halve_and_normalise():
    # A constant offset d between the maps gives MSE d^2 at every pyramid level, so each pair's loss is d^2
    # whatever the number of levels, and the total is the sum over pairs.
    fs = [torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 1, 1)]
    ft = [torch.full((2, 3, 8, 8), 2.0), torch.full((2, 3, 1, 1), 3.0)]
    assert hcl_loss(fs, ft).item() == pytest.approx(4.0 + 9.0)
    # Only the full-resolution term differs here (pooled means agree): 1 / (1 + 1/2 + 1/4 + 1/8) of its MSE.
    checker = torch.tensor([[1.0, -1.0] * 4, [-1.0, 1.0] * 4] * 4).expand(1, 1, 8, 8)
    assert hcl_loss([checker], [torch.zeros_like(checker)]).item() == pytest.approx(1.0 / 1.875)


def test_gradcheck():
    fs, ft = features([(2, 5, 5), (2, 1, 1)], 2, batch=2), features([(2, 5, 5), (2, 1, 1)], 3, batch=2)
    assert torch.autograd.gradcheck(lambda *x: hcl_loss(list(x[:2]), list(x[2:])), (*fs, *ft))


def test_bf16_autocast_inputs_give_float32_results():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    x, target = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fs = conv(x)
        assert fs.dtype == torch.bfloat16
        value = hcl_loss([fs], [target])
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, hcl_loss([fs.float()], [target]))
    value.backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


def test_module_equals_function():
    fs, ft = features(LEVEL_SHAPES[0], 4), features(LEVEL_SHAPES[0], 5)
    assert torch.equal(dkl_core.HCLLoss()(fs, ft), hcl_loss(fs, ft))


@pytest.mark.parametrize(
    "student, teacher, message",
    [
        ([torch.zeros(1, 2, 4, 4)], [torch.zeros(1, 2, 4, 4)] * 2, "same length"),
        ([torch.zeros(1, 2, 4, 4)], [torch.zeros(1, 3, 4, 4)], r"student_features\[0\] and teacher_features\[0\]"),
        ([], [], "empty"),
        (torch.zeros(1, 2, 4, 4), [torch.zeros(1, 2, 4, 4)], "list of"),
        ([torch.zeros(2, 4, 4)], [torch.zeros(2, 4, 4)], r"\[N, C, H, W\]"),
        ([torch.zeros(1, 2, 4, 4, dtype=torch.long)], [torch.zeros(1, 2, 4, 4)], "floating-point"),
    ],
)
def test_bad_inputs_say_what_is_wrong(student, teacher, message):
    with pytest.raises(ValueError, match=message):
        hcl_loss(student, teacher)
