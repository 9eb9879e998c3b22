"""PGD-20 / CW-20 validation accuracy: values, determinism, chunking, modes, bad input."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dkl_core.attacks import pgd, robust_accuracy
from tests.unit.attacks_digits import accuracy, digits_tensors, single_thread, train_digits_model


@pytest.fixture(scope="module")
def digits():
    with single_thread():
        model = train_digits_model()
        _, _, x_test, y_test = digits_tensors()
        yield model, x_test[:100], y_test[:100]


@pytest.mark.parametrize("attack", ["pgd", "cw"])
def test_robust_below_clean_and_matches_a_manual_pgd(digits, attack):
    model, x, y = digits
    result = robust_accuracy(model, x, y, eps=0.1, attack=attack, batch_size=64)
    assert result.num_samples == 100
    assert result.clean_accuracy == pytest.approx(accuracy(model, x, y))
    assert result.robust_accuracy < 0.6 * result.clean_accuracy
    # chunk i uses a generator seeded with seed + i: reproduce by hand
    correct = 0
    for i, start in enumerate(range(0, 100, 64)):
        xb, yb = x[start : start + 64], y[start : start + 64]
        x_adv = pgd(
            model, xb, yb, eps=0.1, step_size=0.025, steps=20, loss="ce" if attack == "pgd" else "cw",
            random_start="uniform", generator=torch.Generator().manual_seed(i),
        )  # fmt: skip
        correct += int((model(x_adv).argmax(1) == yb).sum())
    assert result.robust_accuracy == correct / 100


def test_deterministic_restores_modes_and_accepts_datasets(digits):
    model, x, y = digits
    model.train()
    a = robust_accuracy(model, x, y, eps=0.05, batch_size=50)
    assert model.training and all(p.requires_grad for p in model.parameters())
    model.eval()
    b = robust_accuracy(model, TensorDataset(x, y), eps=0.05, batch_size=50)
    assert a == b
    assert robust_accuracy(model, x, y, eps=0.0, steps=3, batch_size=50).robust_accuracy == a.clean_accuracy


def test_bad_input(digits):
    model, x, y = digits
    with pytest.raises(ValueError, match="eps must be >= 0"):
        robust_accuracy(model, x, y, eps=-0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        robust_accuracy(model, x * 16, y, eps=0.1)
    with pytest.raises(ValueError, match="same length"):
        robust_accuracy(model, x, y[:10], eps=0.1)
    with pytest.raises(ValueError, match="attack must be"):
        robust_accuracy(model, x, y, eps=0.1, attack="fgsm")
    with pytest.raises(ValueError, match="labels are required"):
        robust_accuracy(model, x, eps=0.1)
    with pytest.warns(UserWarning, match="probability distribution"):
        robust_accuracy(nn.Sequential(model, nn.Softmax(dim=1)), x[:10], y[:10], eps=0.1, steps=1)
