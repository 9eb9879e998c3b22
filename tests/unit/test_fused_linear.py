"""fused_linear_*_loss equal the dense losses on hidden @ weight.T + bias over the valid positions, in float64:
values and the gradients of the hidden states, the weight and the bias, for every chunk size, reduction,
teacher form and weighting; and no tensor holds more than chunk_size rows of V."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from dkl_core import (
    ClassPrior,
    TopKClassPrior,
    dkd_loss,
    fused_linear_dkd_loss,
    fused_linear_gkl_loss,
    fused_linear_ikl_loss,
    fused_linear_kl_loss,
    gkl_loss,
    ikl_loss,
    kl_loss,
)

SHAPE, H, HT, V = (2, 7), 5, 7, 11  # 14 positions, odd sizes
N = SHAPE[0] * SHAPE[1]


def make(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*SHAPE, H, generator=g, dtype=dtype).requires_grad_()
    w = torch.randn(V, H, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(V, generator=g, dtype=dtype).requires_grad_()
    th, tw, tb = torch.randn(*SHAPE, HT, generator=g), torch.randn(V, HT, generator=g), torch.randn(V, generator=g)
    labels = torch.randint(0, V, SHAPE, generator=g)
    labels[0, :3] = -100
    labels[1, 5] = -100
    prior_rows = torch.softmax(torch.randn(*SHAPE, V, generator=g, dtype=dtype), dim=-1)
    return h, w, b, th.to(dtype), tw.to(dtype), tb.to(dtype), labels, prior_rows


def trained_prior(kind):
    prior = ClassPrior(V, temperature=2.0) if kind == "dense" else TopKClassPrior(V, top_k=4, temperature=2.0)
    g = torch.Generator().manual_seed(3)
    prior.update(torch.randn(40, V, generator=g), torch.randint(0, V, (40,), generator=g))
    prior.end_epoch()
    return prior


# name -> (fused, dense, settings); dense is called as dense(student_logits, teacher_logits, labels, weights, **kw)
LOSSES = {
    "kl": (fused_linear_kl_loss, lambda s, t, y, w, **kw: kl_loss(s, t, labels=y, **kw), dict(temperature=2.0)),
    "ikl": (
        fused_linear_ikl_loss,
        lambda s, t, y, w, **kw: ikl_loss(s, t, labels=y, weights=w, **kw),
        dict(mse_weight=3.0, ce_weight=0.5, temperature=2.0, weight_temperature=3.0),
    ),
    "gkl": (
        fused_linear_gkl_loss,
        lambda s, t, y, w, **kw: gkl_loss(s, t, labels=y, weights=w, **kw),
        dict(mse_weight=3.0, temperature=2.0, weight_temperature=3.0, gamma=0.5),
    ),
    "gkl_gamma1": (
        fused_linear_gkl_loss,
        lambda s, t, y, w, **kw: gkl_loss(s, t, labels=y, weights=w, **kw),
        dict(mse_weight=3.0, weight_temperature=0.5),
    ),
    "dkd": (
        fused_linear_dkd_loss,
        lambda s, t, y, w, **kw: dkd_loss(s, t, y, **kw),
        dict(tckd_weight=0.5, nckd_weight=2.0, temperature=2.0),
    ),
}


def compare(name, reduction="mean", chunk_size=7, teacher="logits", weights=None, bias=True, seed=0, **extra):
    fused, dense, settings = LOSSES[name]
    h, w, b, th, tw, tb, labels, prior_rows = make(seed)
    teacher_logits = F.linear(th, tw, tb)
    teacher_args = (
        dict(teacher_logits=teacher_logits)
        if teacher == "logits"
        else dict(teacher_hidden=th, teacher_weight=tw, teacher_bias=tb)
    )
    dense_weights = fused_weights = None
    if weights == "rows":
        dense_weights = fused_weights = prior_rows
    elif weights is not None:
        fused_weights = trained_prior(weights)
        dense_weights = fused_weights.weights(labels.clamp_min(0), dtype=torch.float64)
    fused_value = fused(
        h, w, student_bias=b if bias else None, labels=labels, chunk_size=chunk_size, reduction=reduction,
        **({"weights": fused_weights} if fused_weights is not None else {}), **teacher_args, **settings, **extra,
    )  # fmt: skip
    dense_value = dense(
        F.linear(h, w, b if bias else None), teacher_logits, labels, dense_weights,
        reduction=reduction, **settings, **extra,
    )  # fmt: skip
    upstream = torch.randn_like(fused_value)
    inputs = (h, w, b) if bias else (h, w)
    got = torch.autograd.grad((fused_value * upstream).sum(), inputs)
    expected = torch.autograd.grad((dense_value * upstream).sum(), inputs)
    torch.testing.assert_close(fused_value, dense_value, rtol=1e-10, atol=1e-12)
    for a, e in zip(got, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    return fused_value, got


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("chunk_size", [1, 7, 64, N])
def test_chunk_sizes(name, chunk_size):
    compare(name, chunk_size=chunk_size)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_reductions_with_the_teacher_as_hidden_states(name, reduction):
    compare(name, reduction=reduction, teacher="hidden", bias=reduction == "none", chunk_size=5)


@pytest.mark.parametrize("name", ["ikl", "gkl"])
@pytest.mark.parametrize("weights", ["rows", "dense", "topk"])
def test_prior_weights_tensor_or_class_prior(name, weights):
    compare(name, weights=weights, teacher="hidden" if weights == "topk" else "logits")


@pytest.mark.parametrize("name", LOSSES)
def test_all_ignored_gives_zero_and_zero_gradients(name):
    fused, _, settings = LOSSES[name]
    h, w, b, _, _, _, labels, _ = make()
    teacher_logits = torch.randn(*SHAPE, V, dtype=torch.float64)
    ignored = torch.full_like(labels, -100)
    for reduction in ("mean", "sum", "none"):
        value = fused(
            h, w, student_bias=b, teacher_logits=teacher_logits, labels=ignored, reduction=reduction, **settings
        )
        grads = torch.autograd.grad(value.sum(), (h, w, b))
        assert torch.all(value == 0) and all(torch.all(g == 0) for g in grads)


@pytest.mark.parametrize("name", LOSSES)
def test_two_micro_batches_equal_one_batch(name):
    fused, _, settings = LOSSES[name]
    h, w, b, th, tw, _, labels, prior_rows = make(2)
    total = int((labels != -100).sum())
    extra = {"weights": prior_rows} if name.startswith("gkl") or name == "ikl" else {}
    if name == "gkl":
        valid = prior_rows.reshape(-1, V)[labels.reshape(-1) != -100]
        extra["mass_sq_sum"] = (valid ** settings["gamma"]).sum(-1).square().sum()
    common = dict(student_bias=b, chunk_size=4, **settings)

    def loss(rows, **more):
        kw = {k: (v[rows] if k == "weights" else v) for k, v in extra.items()}
        return fused(
            h[rows], w, teacher_hidden=th[rows], teacher_weight=tw, labels=labels[rows], **kw, **common, **more
        )

    one = loss(slice(None))
    expected = torch.autograd.grad(one, (h, w, b))
    two = loss(slice(0, 1), num_items_in_batch=total) + loss(slice(1, 2), num_items_in_batch=total)
    got = torch.autograd.grad(two, (h, w, b))
    torch.testing.assert_close(two, one, rtol=1e-10, atol=1e-12)
    for a, e in zip(got, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


class RowsOfV(TorchDispatchMode):
    """The most rows of any [rows, V] tensor an op creates (views of the weights excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.most = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in () if func.is_view else out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == V:
                self.most = max(self.most, t.numel() // V)
        return out


@pytest.mark.parametrize(("name", "reduction"), [("kl", "none"), ("ikl", "mean"), ("gkl", "none"), ("dkd", "mean")])
def test_never_more_than_chunk_size_rows_of_v(name, reduction):
    fused, _, settings = LOSSES[name]
    h, w, b, th, tw, tb, labels, _ = make()
    with RowsOfV() as tracker:
        value = fused(
            h, w, student_bias=b, teacher_hidden=th, teacher_weight=tw, labels=labels,
            chunk_size=3, reduction=reduction, **settings,
        )  # fmt: skip
        value.sum().backward()
    assert 0 < tracker.most <= 3


def test_bf16_inputs_match_float32_dense():
    h, w, b, th, tw, tb, labels, _ = make(4, dtype=torch.float32)
    teacher_logits = F.linear(th, tw, tb)
    half = [x.detach().to(torch.bfloat16).requires_grad_() for x in (h, w)]
    value = fused_linear_ikl_loss(*half, teacher_logits=teacher_logits, labels=labels, chunk_size=5, mse_weight=2.0)
    assert value.dtype == torch.float32
    value.backward()
    dense = ikl_loss(F.linear(*(x.detach().float() for x in half)), teacher_logits, labels=labels, mse_weight=2.0)
    torch.testing.assert_close(value, dense, rtol=2e-2, atol=2e-2)
    assert half[1].grad.dtype == torch.bfloat16 and torch.isfinite(half[1].grad).all()


def test_inside_torch_compile():
    h, w, b, _, _, _, labels, _ = make()
    teacher_logits = torch.randn(*SHAPE, V, dtype=torch.float64)

    def step(hidden):
        return fused_linear_ikl_loss(hidden * 1.0, w, teacher_logits=teacher_logits, labels=labels, chunk_size=4)

    compiled = torch.compile(step, backend="eager")
    got = torch.autograd.grad(compiled(h), (h, w))
    expected = torch.autograd.grad(step(h), (h, w))
    for a, e in zip(got, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_bad_inputs_name_the_tensor():
    h, w, _, th, tw, _, labels, _ = make()
    t = torch.randn(*SHAPE, V, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"student_weight must have shape \[V, H\] = \[V, 5\]"):
        fused_linear_kl_loss(h, w[:, :3], teacher_logits=t)
    with pytest.raises(ValueError, match="either as teacher_logits or as teacher_hidden"):
        fused_linear_kl_loss(h, w, teacher_logits=t, teacher_hidden=th, teacher_weight=tw)
    with pytest.raises(ValueError, match=r"teacher_logits must have shape \[\.\.\., V\] = \(2, 7, 11\)"):
        fused_linear_kl_loss(h, w, teacher_logits=t[:, :3])
    with pytest.raises(ValueError, match="teacher_weight has 4 classes, student_weight 11"):
        fused_linear_kl_loss(h, w, teacher_hidden=th, teacher_weight=tw[:4])
    with pytest.raises(ValueError, match="needs labels"):
        fused_linear_dkd_loss(h, w, teacher_logits=t)
    with pytest.raises(ValueError, match="a ClassPrior as weights needs labels"):
        fused_linear_ikl_loss(h, w, teacher_logits=t, weights=ClassPrior(V))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        fused_linear_kl_loss(h, w, teacher_logits=t, labels=labels, chunk_size=0)


def test_the_fused_losses_take_the_dense_settings_by_the_same_names():
    import inspect

    fused_only = {"student_hidden", "student_weight", "teacher_logits", "teacher_hidden", "teacher_weight",
                  "student_bias", "teacher_bias", "chunk_size"}  # fmt: skip
    for fused, dense in ((fused_linear_kl_loss, kl_loss), (fused_linear_ikl_loss, ikl_loss),
                         (fused_linear_gkl_loss, gkl_loss), (fused_linear_dkd_loss, dkd_loss)):  # fmt: skip
        ours = inspect.signature(fused).parameters
        theirs = inspect.signature(dense).parameters
        for name, parameter in ours.items():
            if name not in fused_only and not (dense is dkd_loss and name == "labels"):  # DKD's targets
                assert name in theirs, (fused.__name__, name)
                assert parameter.default == theirs[name].default, (fused.__name__, name)
