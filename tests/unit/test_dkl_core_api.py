"""dkl-core's API contract: "batchmean", argument checks shared by functions and modules, reprs, signatures, ClassPrior labels."""

import inspect
import math
import re

import pytest
import torch
import torch.nn.functional as F

import dkl_core
from dkl_core import (
    ClassPrior,
    DKDLoss,
    DKLLoss,
    GKLLoss,
    IKLLoss,
    KLLoss,
    dkd_loss,
    dkl_loss,
    gkl_loss,
    ikl_loss,
    kl_loss,
)

S, T = torch.randn(6, 10), torch.randn(6, 10)
Y = torch.tensor([0, 3, 9, 2, 2, 7])
MODULES = [(KLLoss, kl_loss), (DKLLoss, dkl_loss), (IKLLoss, ikl_loss), (GKLLoss, gkl_loss), (DKDLoss, dkd_loss)]


def call(function, **options):
    """``function`` on the shared batch (DKD also gets the labels)."""
    return function(S, T, Y, **options) if function is dkd_loss else function(S, T, **options)


# ---------------------------------------------------------------------------------------- reduction


@pytest.mark.parametrize("function", [kl_loss, dkl_loss, ikl_loss, gkl_loss, dkd_loss])
def test_batchmean_is_an_alias_of_mean(function):
    results = []
    for reduction in ("mean", "batchmean"):
        student = S.clone().requires_grad_()
        loss = (
            function(student, T, Y, reduction=reduction)
            if function is dkd_loss
            else function(student, T, reduction=reduction)
        )
        loss.backward()
        results.append((loss.detach(), student.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_batchmean_means_what_it_means_for_kl_div():
    expected = F.kl_div(
        F.log_softmax(S / 4, dim=1), F.log_softmax(T / 4, dim=1), reduction="batchmean", log_target=True
    )
    torch.testing.assert_close(kl_loss(S, T, temperature=4.0, reduction="batchmean"), 16 * expected)


@pytest.mark.parametrize(("module", "function"), MODULES)
def test_modules_accept_batchmean(module, function):
    loss = module(reduction="batchmean")
    value = loss(S, T, Y) if module is DKDLoss else loss(S, T)
    assert torch.equal(value, call(function, reduction="mean"))


@pytest.mark.parametrize("function", [kl_loss, dkl_loss, ikl_loss, gkl_loss, dkd_loss])
@pytest.mark.parametrize("reduction", ["elementwise_mean", "MEAN", "", None])
def test_unknown_reduction_lists_the_accepted_values(function, reduction):
    with pytest.raises(ValueError, match="reduction must be one of") as error:
        call(function, reduction=reduction)
    for accepted in ("'mean'", "'batchmean'", "'sum'", "'none'"):
        assert accepted in str(error.value)
    assert repr(reduction) in str(error.value)


# ---------------------------------------------------------------------------------------- argument checks

BAD = [
    (KLLoss, kl_loss, "temperature", 0),
    (KLLoss, kl_loss, "temperature", -1.0),
    (KLLoss, kl_loss, "temperature", math.nan),
    (KLLoss, kl_loss, "temperature", math.inf),
    (KLLoss, kl_loss, "reduction", "batch"),
    (DKLLoss, dkl_loss, "mse_weight", -1.0),
    (DKLLoss, dkl_loss, "mse_weight", math.nan),
    (DKLLoss, dkl_loss, "ce_weight", math.inf),
    (DKLLoss, dkl_loss, "ce_weight", "1.0"),
    (DKLLoss, dkl_loss, "temperature", 0.0),
    (DKLLoss, dkl_loss, "reduction", "avg"),
    (IKLLoss, ikl_loss, "mse_weight", -1),
    (IKLLoss, ikl_loss, "ce_weight", -0.5),
    (IKLLoss, ikl_loss, "temperature", -4.0),
    (IKLLoss, ikl_loss, "weight_temperature", 0.0),
    (IKLLoss, ikl_loss, "weight_temperature", math.nan),
    (IKLLoss, ikl_loss, "reduction", "batch_mean"),
    (GKLLoss, gkl_loss, "gamma", -1.0),
    (GKLLoss, gkl_loss, "gamma", math.nan),
    (GKLLoss, gkl_loss, "gamma", math.inf),
    (GKLLoss, gkl_loss, "mse_weight", -1.0),
    (GKLLoss, gkl_loss, "weight_temperature", -1.0),
    (GKLLoss, gkl_loss, "temperature", 0.0),
    (GKLLoss, gkl_loss, "reduction", "mean "),
    (DKDLoss, dkd_loss, "tckd_weight", -1.0),
    (DKDLoss, dkd_loss, "nckd_weight", math.nan),
    (DKDLoss, dkd_loss, "temperature", 0.0),
    (DKDLoss, dkd_loss, "reduction", "sum_"),
]


@pytest.mark.parametrize(
    ("module", "function", "name", "value"), BAD, ids=[f"{m.__name__}-{n}={v!r}" for m, _, n, v in BAD]
)
def test_modules_refuse_at_construction_with_the_functions_message(module, function, name, value):
    with pytest.raises(ValueError) as from_function:
        call(function, **{name: value})
    with pytest.raises(ValueError) as from_module:
        module(**{name: value})
    assert str(from_module.value) == str(from_function.value)
    assert str(from_function.value).startswith(name)


def test_messages_say_what_is_accepted():
    with pytest.raises(ValueError, match=r"^temperature must be a finite number > 0, got 0$"):
        KLLoss(temperature=0)
    with pytest.raises(ValueError, match=r"^mse_weight must be a finite number >= 0, got -1$"):
        ikl_loss(S, T, mse_weight=-1)
    with pytest.raises(ValueError, match=r"^mse_weight must be a finite number >= 0, got -1$"):
        IKLLoss(mse_weight=-1)
    with pytest.raises(ValueError, match=r"gamma must be a finite number >= 0 \(0 gives uniform weights\), got -1.0"):
        GKLLoss(-1.0)


@pytest.mark.parametrize(("module", "function"), MODULES)
def test_zero_weights_and_gamma_stay_valid(module, function):
    zeros = {name: 0.0 for name in ("mse_weight", "ce_weight", "tckd_weight", "nckd_weight", "gamma")}
    options = {name: value for name, value in zeros.items() if name in inspect.signature(function).parameters}
    value = module(**options)(S, T, Y) if module is DKDLoss else module(**options)(S, T)
    assert torch.equal(value, call(function, **options))


# ---------------------------------------------------------------------------------------- modules


#: Arguments of one call, given to the modules' forward(): weights, and the token arguments (labels per batch).
PER_CALL = ("weights", "labels", "num_items_in_batch", "mass_sq_sum")


def keyword_defaults(function) -> dict:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty and name not in PER_CALL
    }


@pytest.mark.parametrize(("module", "function"), MODULES)
def test_modules_take_the_functions_arguments_with_the_same_defaults(module, function):
    parameters = inspect.signature(module).parameters
    assert not any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in parameters.values()), parameters
    assert {name: p.default for name, p in parameters.items()} == keyword_defaults(function)


def test_gkl_module_keeps_gamma_first_and_the_rest_by_keyword():
    assert GKLLoss(0.3).gamma == 0.3
    assert list(inspect.signature(GKLLoss).parameters)[0] == "gamma"
    with pytest.raises(TypeError):
        GKLLoss(0.3, 8.0)  # mse_weight only by keyword: no silent reinterpretation of positions
    with pytest.raises(TypeError):
        GKLLoss(gamma=0.3, weight_temprature=4.0)  # a misspelt argument is refused
    assert isinstance(GKLLoss(), IKLLoss)


SETTINGS = [
    (KLLoss, dict(temperature=4.0, reduction="sum")),
    (DKLLoss, dict(mse_weight=2.0, ce_weight=0.5, temperature=2.0, reduction="none", compiled=False)),
    (IKLLoss, dict(mse_weight=8.0, ce_weight=0.5, temperature=4.0, weight_temperature=100.0, detach_weights=False)),
    (GKLLoss, dict(gamma=0.2, mse_weight=4.0, temperature=4.0, weight_temperature=4.0, reduction="batchmean")),
    (DKDLoss, dict(tckd_weight=0.5, nckd_weight=2.0, temperature=2.0, reduction="sum")),
]


@pytest.mark.parametrize(("module", "settings"), SETTINGS, ids=[m.__name__ for m, _ in SETTINGS])
def test_repr_shows_every_setting(module, settings):
    text = repr(module(**settings))
    assert text.startswith(f"{module.__name__}(")
    for name in inspect.signature(module).parameters:
        value = settings.get(name, inspect.signature(module).parameters[name].default)
        assert f"{name}={value!r}" in text, (name, text)


@pytest.mark.parametrize(("module", "settings"), SETTINGS, ids=[m.__name__ for m, _ in SETTINGS])
def test_modules_equal_functions_bit_for_bit(module, settings):
    function = dict(MODULES)[module]
    weights = torch.rand(6, 10)
    if module is DKDLoss:
        assert torch.equal(module(**settings)(S, T, Y), function(S, T, Y, **settings))
    elif module in (IKLLoss, GKLLoss):
        assert torch.equal(module(**settings)(S, T, weights), function(S, T, weights=weights, **settings))
    else:
        assert torch.equal(module(**settings)(S, T), function(S, T, **settings))


def test_hcl_module_has_no_settings():
    assert repr(dkl_core.HCLLoss()) == "HCLLoss()"


# ---------------------------------------------------------------------------------------- ClassPrior


@pytest.mark.parametrize(
    ("labels", "shown"), [([0, 3, 10], r"\[0, 10\]"), ([-1, 2], r"\[-1, 2\]"), ([12], r"\[12, 12\]")]
)
def test_class_prior_weights_name_the_label_range(labels, shown):
    prior = ClassPrior(10)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\) for a prior over 10 classes") as error:
        prior.weights(torch.tensor(labels))
    assert re.search(f"got values in {shown}", str(error.value)), str(error.value)
    assert not isinstance(error.value, IndexError)


def test_class_prior_weights_of_valid_labels_are_unchanged():
    prior = ClassPrior(4, temperature=2.0)
    prior.update(torch.randn(8, 4), torch.tensor([0, 1, 2, 3, 3, 2, 1, 0]))
    prior.end_epoch()
    labels = torch.tensor([3, 0, 0, 2])
    assert torch.equal(prior.weights(labels), prior.prior.float()[labels])
    assert torch.equal(prior.weights(labels.int(), dtype=torch.float64), prior.prior[labels])
    assert prior.weights(torch.tensor([], dtype=torch.long)).shape == (0, 4)
    with pytest.raises(ValueError, match="tensor of class indices"):
        prior.weights([0, 1])
    assert repr(prior) == "ClassPrior(num_classes=4, temperature=2.0, device='cpu')"
