"""dkl-core losses against the naive reference of every formula (float64, values and gradients)."""

import pytest
import torch

import dkl_core
from dkl_core import dkd_loss, dkl_loss, gkl_loss, ikl_loss, kl_loss
from tests.unit import loss_reference as ref

CLASS_COUNTS = [2, 10, 100, 1000]
BATCH = 3


def make_inputs(num_classes, seed=0, scale=3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = (scale * torch.randn(BATCH, num_classes, generator=g, dtype=dtype)).requires_grad_()
    t = (scale * torch.randn(BATCH, num_classes, generator=g, dtype=dtype)).requires_grad_()
    prior_rows = torch.distributions.Dirichlet(torch.ones(num_classes, dtype=dtype)).sample((BATCH,))
    return s, t, prior_rows


# name -> (dkl-core call returning per-sample losses, reference per-sample losses, weights get gradients)
PER_SAMPLE_VARIANTS = {
    "kl_T4": (lambda s, t, w, r: kl_loss(s, t, temperature=4.0, reduction=r), lambda s, t, w: ref.kl(s, t, 4.0)),
    "dkl_unit": (lambda s, t, w, r: dkl_loss(s, t, reduction=r), lambda s, t, w: ref.dkl(s, t)),
    "dkl_weighted_T2": (
        lambda s, t, w, r: dkl_loss(s, t, mse_weight=2.0, ce_weight=0.5, temperature=2.0, reduction=r),
        lambda s, t, w: ref.dkl(s, t, 2.0, 0.5, 2.0),
    ),
    # NeurIPS KD: GI off, T2 = 100, T = 4.
    "ikl_kd_no_gi": (
        lambda s, t, w, r: ikl_loss(s, t, mse_weight=8.0, temperature=4.0, weight_temperature=100.0, reduction=r),
        lambda s, t, w: ref.ikl(s, t, 8.0, 1.0, 4.0, weight_temperature=100.0),
    ),
    # Adversarial training / KD with GI: weights = prior[y], both logits carry gradients.
    "ikl_gi": (
        lambda s, t, w, r: ikl_loss(s, t, mse_weight=20.0, ce_weight=3.0, temperature=4.0, weights=w, reduction=r),
        lambda s, t, w: ref.ikl(s, t, 20.0, 3.0, 4.0, weights=w),
    ),
    # Semi-supervised as released: weights softmax(t/T2) with the gradient flowing through them.
    "ikl_ssl_weights_not_detached": (
        lambda s, t, w, r: ikl_loss(s, t, mse_weight=0.1, detach_weights=False, reduction=r),
        lambda s, t, w: ref.ikl(s, t, 0.1, 1.0, detach_weights=False),
    ),
    "ikl_given_weights_not_detached": (
        lambda s, t, w, r: ikl_loss(s, t, mse_weight=0.5, weights=w, detach_weights=False, reduction=r),
        lambda s, t, w: ref.ikl(s, t, 0.5, 1.0, weights=w, detach_weights=False),
    ),
}

# GKL's mass normalisation is a batch quantity: compare the batch loss of the TPAMI formula.
GKL_VARIANTS = {
    "gkl_kd_gi": (dict(mse_weight=4.0, temperature=4.0, gamma=0.2), True, True),
    "gkl_kd_no_gi": (dict(mse_weight=4.0, temperature=4.0, weight_temperature=4.0, gamma=0.1), False, True),
    "gkl_gamma0": (dict(mse_weight=8.0, temperature=4.0, gamma=0.0), True, True),
    "gkl_adv_gamma1": (dict(mse_weight=20.0, ce_weight=3.0, temperature=4.0, gamma=1.0), True, True),
    "gkl_weights_not_detached": (dict(mse_weight=0.5, gamma=0.5, detach_weights=False), True, False),
    "gkl_softmax_weights_not_detached": (dict(mse_weight=0.5, gamma=0.7, detach_weights=False), False, False),
}


def grads(value, tensors):
    return torch.autograd.grad(value, tensors, allow_unused=True)


def assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("num_classes", CLASS_COUNTS)
@pytest.mark.parametrize("variant", sorted(PER_SAMPLE_VARIANTS))
def test_per_sample_variants_match_reference(variant, num_classes):
    ours, reference = PER_SAMPLE_VARIANTS[variant]
    s, t, w = make_inputs(num_classes)
    w.requires_grad_()
    inputs = (s, t, w)
    expected = reference(s, t, w)
    for reduction, reduce in (("none", lambda x: x), ("mean", torch.mean), ("sum", torch.sum)):
        actual = ours(s, t, w, reduction)
        assert actual.dtype == torch.float64
        assert_close(actual, reduce(expected))
    # Gradients of a weighted sum of per-sample losses, for every input (None where none flows).
    coeffs = torch.linspace(0.5, 1.5, BATCH, dtype=torch.float64)
    for got, want in zip(
        grads((ours(s, t, w, "none") * coeffs).sum(), inputs), grads((expected * coeffs).sum(), inputs)
    ):
        if want is None or not want.abs().sum():
            assert got is None or not got.abs().sum()
        else:
            assert_close(got, want)


@pytest.mark.parametrize("num_classes", CLASS_COUNTS)
@pytest.mark.parametrize("variant", sorted(GKL_VARIANTS))
def test_gkl_matches_tpami_formula(variant, num_classes):
    options, use_prior, detach = GKL_VARIANTS[variant]
    s, t, w = make_inputs(num_classes)
    weights = w.requires_grad_() if use_prior else None
    ours = gkl_loss(s, t, weights=weights, **options)
    expected = ref.gkl_mean(s, t, weights=weights, **options)
    assert_close(ours, expected)
    inputs = (s, t, w) if use_prior and not detach else (s, t)
    for got, want in zip(grads(ours, inputs), grads(expected, inputs)):
        assert_close(got, want)
    per_sample = gkl_loss(s, t, weights=weights, reduction="none", **options)
    assert per_sample.shape == (BATCH,)
    assert_close(per_sample.mean(), ours)
    assert_close(gkl_loss(s, t, weights=weights, reduction="sum", **options), per_sample.sum())


@pytest.mark.parametrize("num_classes", CLASS_COUNTS)
def test_dkd_matches_reference(num_classes):
    s, t, _ = make_inputs(num_classes)
    y = torch.arange(BATCH) % num_classes
    options = dict(tckd_weight=1.0, nckd_weight=8.0, temperature=4.0)
    expected = ref.dkd(s, t, y, **options)
    assert_close(dkd_loss(s, t, y, reduction="none", **options), expected)
    assert_close(dkd_loss(s, t, y, reduction="sum", **options), expected.sum())
    ours = dkd_loss(s, t, y, **options)
    assert_close(ours, expected.mean())
    for got, want in zip(grads(ours, (s, t)), grads(expected.mean(), (s, t))):
        assert_close(got, want)


def test_ssl_masked_variant_averages_over_whole_unlabeled_batch():
    """FixMatch-IKL as released: per-sample loss x confidence mask, mean over the whole batch."""
    s, t, _ = make_inputs(10)
    mask = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    ours = (ikl_loss(s, t, mse_weight=0.1, detach_weights=False, reduction="none") * mask).mean()
    expected = (ref.ikl(s, t, 0.1, 1.0, detach_weights=False) * mask).mean()
    assert_close(ours, expected)
    for got, want in zip(grads(ours, (s, t)), grads(expected, (s, t))):
        assert_close(got, want)


@pytest.mark.parametrize("num_classes", [2, 10, 100, 1000])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkl_with_unit_weights_has_the_gradients_of_kl(num_classes, temperature):
    """Theorem 1: DKL's gradients equal KL's for both the student and the teacher logits."""
    s, t, _ = make_inputs(num_classes, seed=1)
    dkl_grads = grads(dkl_loss(s, t, temperature=temperature), (s, t))
    kl_grads = grads(kl_loss(s, t, temperature=temperature) / temperature**2, (s, t))
    for got, want in zip(dkl_grads, kl_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


def test_ikl_with_frozen_teacher_differs_from_dkl_only_by_the_student_mse_gradient():
    s, t, _ = make_inputs(10, seed=2)
    teacher = t.detach()
    dkl_grad = grads(dkl_loss(s, teacher), (s,))[0]
    ikl_grad = grads(ikl_loss(s, teacher), (s,))[0]
    mse_grad = grads(ref.pairwise_wmse(s, teacher, ref.softmax(teacher)).mean(), (s,))[0]
    assert_close(ikl_grad - dkl_grad, mse_grad)


def test_gkl_with_gamma_one_and_normalised_weights_is_ikl():
    s, t, w = make_inputs(10, seed=3)
    assert_close(gkl_loss(s, t, weights=w, mse_weight=3.0), ikl_loss(s, t, weights=w, mse_weight=3.0))


# name -> (call, which of (s, t, w) are checked). The soft cross-entropy treats softmax(t/T) as a
# stop-gradient target, which finite differences cannot respect, so the teacher is only checked where
# every term is differentiable in it (KL, DKD, and the wMSE alone with ce_weight=0).
GRADCHECK_CALLS = {
    "kl": (lambda s, t, w: kl_loss(s, t, temperature=2.0), (True, True, False)),
    "dkd": (lambda s, t, w: dkd_loss(s, t, torch.tensor([0, 2, 1, 4]), nckd_weight=2.0), (True, True, False)),
    # DKL's wMSE sees S(s) and S(softmax(t)): only its cross-entropy part is a plain derivative. Its full
    # gradient is checked against KL's (Theorem 1) and against the reference above.
    "dkl_ce_part": (lambda s, t, w: dkl_loss(s, t, mse_weight=0.0, temperature=1.5), (True, False, False)),
    "ikl": (
        lambda s, t, w: ikl_loss(s, t, mse_weight=3.0, temperature=2.0, weights=w, detach_weights=False),
        (True, False, True),
    ),
    "ikl_wmse_only": (
        lambda s, t, w: ikl_loss(s, t, ce_weight=0.0, weights=w, detach_weights=False, reduction="none"),
        (True, True, True),
    ),
    "ikl_softmax_weights": (
        lambda s, t, w: ikl_loss(s, t, mse_weight=3.0, weight_temperature=2.0, detach_weights=False),
        (True, False, False),
    ),
    "gkl": (
        lambda s, t, w: gkl_loss(s, t, mse_weight=3.0, gamma=0.6, weights=w, detach_weights=False),
        (True, False, True),
    ),
    "gkl_wmse_only_none": (
        lambda s, t, w: gkl_loss(s, t, ce_weight=0.0, gamma=0.3, weights=w, detach_weights=False, reduction="none"),
        (True, True, True),
    ),
}


@pytest.mark.parametrize("name", sorted(GRADCHECK_CALLS))
def test_gradcheck(name):
    call, checked = GRADCHECK_CALLS[name]
    g = torch.Generator().manual_seed(4)
    s = torch.randn(4, 5, dtype=torch.float64, generator=g)
    t = torch.randn(4, 5, dtype=torch.float64, generator=g)
    w = torch.rand(4, 5, dtype=torch.float64, generator=g) + 0.1
    for tensor, check in zip((s, t, w), checked):
        tensor.requires_grad_(check)
    assert torch.autograd.gradcheck(call, (s, t, w))


@pytest.mark.parametrize("loss", [kl_loss, dkl_loss, ikl_loss, gkl_loss])
def test_bf16_autocast_inputs_give_float32_results(loss):
    g = torch.Generator().manual_seed(5)
    features = torch.randn(16, 32, generator=g)
    student_head, teacher_head = torch.nn.Linear(32, 100), torch.nn.Linear(32, 100)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s, t = student_head(features), teacher_head(features)
        assert s.dtype == torch.bfloat16
        value = loss(s, t, temperature=4.0)
    assert value.dtype == torch.float32
    expected = loss(s.float(), t.float(), temperature=4.0)
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)
    value.backward()
    assert student_head.weight.grad is not None and torch.isfinite(student_head.weight.grad).all()


def test_wmse_is_stable_for_large_logits_in_float32():
    """The centred form keeps float32 accuracy where the expanded form cancels catastrophically."""
    g = torch.Generator().manual_seed(6)
    t64 = 1e4 + torch.randn(8, 100, generator=g, dtype=torch.float64)
    s64 = 1e4 + torch.randn(8, 100, generator=g, dtype=torch.float64)
    w64 = ref.softmax(torch.randn(8, 100, generator=g, dtype=torch.float64))
    expected = ikl_loss(s64, t64, weights=w64, ce_weight=0.0)
    got = ikl_loss(s64.float(), t64.float(), weights=w64.float(), ce_weight=0.0)
    torch.testing.assert_close(got.double(), expected, rtol=1e-3, atol=0)


def test_extreme_logits_stay_finite():
    s = torch.tensor([[1e4, -1e4, 0.0], [-50.0, 50.0, 0.0]], requires_grad=True)
    t = torch.tensor([[-1e4, 1e4, 0.0], [50.0, -50.0, 0.0]])
    for loss in (kl_loss, dkl_loss, ikl_loss, gkl_loss):
        value = loss(s, t)
        (grad,) = torch.autograd.grad(value, s)
        assert torch.isfinite(value) and torch.isfinite(grad).all(), loss.__name__


def test_zero_weight_rows_give_zero_mse_not_nan():
    s, t = torch.randn(2, 4, requires_grad=True), torch.randn(2, 4)
    weights = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    value = ikl_loss(s, t, weights=weights, ce_weight=0.0, reduction="none")
    assert value[0] == 0 and value[1] > 0
    assert torch.isfinite(torch.autograd.grad(value.sum(), s)[0]).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_no_grad_values_equal_grad_mode_values(reduction):
    # Under no_grad the fused forward skips preparing gradients; the loss must not change.
    s, t, w = make_inputs(10, seed=3)
    calls = [
        lambda: dkl_loss(s, t, mse_weight=2.0, temperature=2.0, reduction=reduction),
        lambda: ikl_loss(s, t, mse_weight=8.0, temperature=4.0, weights=w, reduction=reduction),
        lambda: gkl_loss(s, t, mse_weight=4.0, gamma=0.2, detach_weights=False, reduction=reduction),
    ]
    for call in calls:
        with_grad = call()
        with torch.no_grad():
            without_grad = call()
        assert with_grad.requires_grad and not without_grad.requires_grad
        assert_close(without_grad, with_grad.detach())


def test_second_derivatives_raise_instead_of_being_silently_wrong():
    # The upstream gradient depends on a learned loss weight, so autograd would otherwise build a graph
    # for the input gradient that misses the loss's own curvature.
    s, t, w = make_inputs(10)
    loss_weight = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss_weight * ikl_loss(s, t.detach(), weights=w), s, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad.sum().backward()


def test_modules_equal_functions():
    s, t, w = make_inputs(10, seed=7)
    y = torch.tensor([1, 2, 3])
    pairs = [
        (dkl_core.KLLoss(temperature=4.0)(s, t), kl_loss(s, t, temperature=4.0)),
        (dkl_core.DKLLoss(mse_weight=2.0)(s, t), dkl_loss(s, t, mse_weight=2.0)),
        (
            dkl_core.IKLLoss(mse_weight=8.0, temperature=4.0)(s, t, w),
            ikl_loss(s, t, mse_weight=8.0, temperature=4.0, weights=w),
        ),
        (dkl_core.GKLLoss(gamma=0.2, mse_weight=4.0)(s, t, w), gkl_loss(s, t, gamma=0.2, mse_weight=4.0, weights=w)),
        (dkl_core.DKDLoss(nckd_weight=2.0)(s, t, y), dkd_loss(s, t, y, nckd_weight=2.0)),
    ]
    for module_value, function_value in pairs:
        assert_close(module_value, function_value)


def test_no_b_by_c_by_c_allocation():
    """Peak extra memory stays linear in B*C: a pairwise tensor at (512, 1000) would need 2 GB."""
    import tracemalloc  # noqa: F401  (documentation: CPU allocations go through torch's allocator)

    from torch.profiler import ProfilerActivity, profile

    s = torch.randn(512, 1000, requires_grad=True)
    t = torch.randn(512, 1000)
    w = torch.softmax(torch.randn(512, 1000), dim=1)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for loss in (ikl_loss, gkl_loss):
            loss(s, t, weights=w, temperature=4.0).backward()
    largest = max(e.cpu_memory_usage for e in prof.key_averages())
    assert largest < 64 * 512 * 1000 * 4, f"an op allocated {largest} bytes"
