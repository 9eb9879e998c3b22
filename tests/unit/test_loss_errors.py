"""Every bad input to the losses and the class prior gets a ValueError that names the problem."""

import pytest
import torch

from dkl_core import ClassPrior, dkd_loss, dkl_loss, gkl_loss, ikl_loss, kl_loss

LOSSES = [kl_loss, dkl_loss, ikl_loss, gkl_loss]
S, T = torch.randn(4, 10), torch.randn(4, 10)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize(
    ("student", "teacher", "message"),
    [
        (torch.randn(4, 10), torch.randn(4, 9), "same shape"),
        (torch.randn(4, 10), torch.randn(5, 10), "same shape"),
        (torch.randn(4, 1), torch.randn(4, 1), "at least 2 classes"),
        (torch.randint(0, 5, (4, 10)), torch.randn(4, 10), "floating-point"),
        (torch.randn(4, 10), torch.randint(0, 5, (4, 10)), "floating-point"),
        (torch.randn(40), torch.randn(40), r"shape \[B, (C|V)\]"),
        (torch.randn(0, 10), torch.randn(0, 10), "empty batch"),
    ],
)
def test_bad_logits(loss, student, teacher, message):
    with pytest.raises(ValueError, match=message):
        loss(student, teacher)


@pytest.mark.parametrize("loss", LOSSES)
def test_bad_reduction_and_temperature(loss):
    with pytest.raises(ValueError, match="reduction"):
        loss(S, T, reduction="elementwise_mean")  # "batchmean" is accepted: an alias of "mean"
    with pytest.raises(ValueError, match="temperature"):
        loss(S, T, temperature=0.0)


@pytest.mark.parametrize("loss", [ikl_loss, gkl_loss])
@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (torch.rand(4, 9), "shape"),
        (torch.rand(10), "shape"),
        (torch.ones(4, 10, dtype=torch.int64), "floating-point"),
        (-torch.rand(4, 10), "non-negative"),
    ],
)
def test_bad_weights(loss, weights, message):
    with pytest.raises(ValueError, match=message):
        loss(S, T, weights=weights)


def test_bad_gamma_and_weight_temperature():
    with pytest.raises(ValueError, match="gamma"):
        gkl_loss(S, T, gamma=-1.0)
    with pytest.raises(ValueError, match="weight_temperature"):
        ikl_loss(S, T, weight_temperature=-2.0)


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (torch.tensor([0, 1, 2, 10]), r"\[0, 10\)"),
        (torch.tensor([0, 1, -1, 3]), r"\[0, 10\)"),
        (torch.tensor([0, 1, 2]), "shape"),
        (torch.tensor([0.0, 1.0, 2.0, 3.0]), "integer"),
    ],
)
def test_bad_targets(targets, message):
    with pytest.raises(ValueError, match=message):
        dkd_loss(S, T, targets)
    with pytest.raises(ValueError, match=message):
        ClassPrior(10).update(S, targets)


def test_bad_class_prior_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        ClassPrior(1)
    with pytest.raises(ValueError, match="temperature"):
        ClassPrior(10, temperature=0.0)
    with pytest.raises(ValueError, match="9 classes"):
        ClassPrior(10).update(torch.randn(4, 9), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="100 classes"):
        ClassPrior(10).load_state_dict(ClassPrior(100).state_dict())
