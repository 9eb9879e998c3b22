"""Token-shaped inputs for every loss: logits [..., V], labels with ignore_index, "mean" over the valid
positions, num_items_in_batch for gradient accumulation, all-ignored batches give 0 and zero gradients."""

import pytest
import torch

from dkl_core import DKDLoss, GKLLoss, IKLLoss, KLLoss, dkd_loss, dkl_loss, gkl_loss, ikl_loss, kl_loss

V = 9
SHAPE = (2, 5)


def make(seed=0):
    g = torch.Generator().manual_seed(seed)
    s = (2 * torch.randn(*SHAPE, V, generator=g, dtype=torch.float64)).requires_grad_()
    t = 2 * torch.randn(*SHAPE, V, generator=g, dtype=torch.float64)
    w = torch.softmax(torch.randn(*SHAPE, V, generator=g, dtype=torch.float64), dim=-1)
    labels = torch.randint(0, V, SHAPE, generator=g)
    labels[0, :2] = -100
    labels[1, 4] = -100
    return s, t, w, labels


LOSSES = {
    "kl": lambda s, t, w, y, **kw: kl_loss(s, t, temperature=2.0, labels=y, **kw),
    "dkl": lambda s, t, w, y, **kw: dkl_loss(s, t, mse_weight=2.0, temperature=2.0, labels=y, **kw),
    "ikl": lambda s, t, w, y, **kw: ikl_loss(s, t, mse_weight=3.0, temperature=2.0, weight_temperature=3.0, labels=y, **kw),
    "ikl_prior": lambda s, t, w, y, **kw: ikl_loss(s, t, mse_weight=3.0, weights=w, labels=y, **kw),
    "gkl": lambda s, t, w, y, **kw: gkl_loss(s, t, mse_weight=3.0, gamma=0.5, weights=w, labels=y, **kw),
    "dkd": lambda s, t, w, y, **kw: dkd_loss(s, t, y, temperature=2.0, **kw),
}  # fmt: skip


def dense_on_valid(name, s, t, w, labels, reduction):
    """The [B, C] loss of the valid rows only (the definition)."""
    keep = labels.reshape(-1) != -100
    rows = [x.reshape(-1, V)[keep] for x in (s, t, w)]
    return (
        LOSSES[name](*rows, None, reduction=reduction)
        if name != "dkd"
        else dkd_loss(rows[0], rows[1], labels.reshape(-1)[keep], temperature=2.0, reduction=reduction)
    )


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ignored_positions_drop_out(name, reduction):
    s, t, w, labels = make()
    ours = LOSSES[name](s, t, w, labels, reduction=reduction)
    expected = dense_on_valid(name, s, t, w, labels, reduction)
    if reduction == "none":
        assert ours.shape == SHAPE
        assert torch.all(ours[labels == -100] == 0)
        ours = ours[labels != -100]
    g = torch.randn_like(ours)
    (grad,) = torch.autograd.grad((ours * g).sum(), s)
    (grad_expected,) = torch.autograd.grad((expected * g).sum(), s)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, grad_expected, rtol=1e-12, atol=1e-12)
    assert torch.all(grad[labels == -100] == 0)


@pytest.mark.parametrize("name", LOSSES)
def test_all_ignored_gives_zero_and_zero_gradients(name):
    s, t, w, labels = make()
    labels = torch.full_like(labels, -100)
    for reduction in ("mean", "sum"):
        loss = LOSSES[name](s, t, w, labels, reduction=reduction)
        (grad,) = torch.autograd.grad(loss, s)
        assert loss.item() == 0.0 and torch.all(grad == 0)
    assert torch.all(LOSSES[name](s, t, w, labels, reduction="none") == 0)


@pytest.mark.parametrize("name", LOSSES)
def test_two_micro_batches_equal_one_batch(name):
    s, t, w, labels = make(1)
    total = int((labels != -100).sum())
    (expected,) = torch.autograd.grad(LOSSES[name](s, t, w, labels), s)
    extra = {}
    if name == "gkl":  # the large batch's normaliser
        extra["mass_sq_sum"] = (w.reshape(-1, V)[labels.reshape(-1) != -100] ** 0.5).sum(-1).square().sum()
    loss = sum(
        LOSSES[name](s[i : i + 1], t[i : i + 1], w[i : i + 1], labels[i : i + 1], num_items_in_batch=total, **extra)
        for i in range(2)
    )
    (grad,) = torch.autograd.grad(loss, s)
    torch.testing.assert_close(loss, LOSSES[name](s, t, w, labels), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


def test_without_labels_every_position_counts_and_2d_is_unchanged():
    s, t, w, _ = make()
    torch.testing.assert_close(
        ikl_loss(s, t, weights=w), ikl_loss(s.reshape(-1, V), t.reshape(-1, V), weights=w.reshape(-1, V))
    )
    two_d = s.reshape(-1, V)[:3].detach()
    assert torch.equal(kl_loss(two_d, t.reshape(-1, V)[:3]), kl_loss(two_d, t.reshape(-1, V)[:3], labels=None))


def test_modules_take_labels_and_ignore_index():
    s, t, w, labels = make()
    shifted = labels.masked_fill(labels == -100, -1)
    assert torch.equal(KLLoss(ignore_index=-1)(s, t, labels=shifted), kl_loss(s, t, labels=labels))
    assert torch.equal(IKLLoss()(s, t, w, labels=labels), ikl_loss(s, t, weights=w, labels=labels))
    assert torch.equal(GKLLoss(0.5)(s, t, w, labels=labels), gkl_loss(s, t, weights=w, gamma=0.5, labels=labels))
    assert torch.equal(DKDLoss(ignore_index=-1)(s, t, shifted), dkd_loss(s, t, labels))


def test_bad_token_inputs_name_the_tensor():
    s, t, w, labels = make()
    with pytest.raises(ValueError, match=r"labels must have the logits' leading shape \(2, 5\)"):
        kl_loss(s, t, labels=labels[:, :3])
    with pytest.raises(ValueError, match="weights must have the logits' shape"):
        ikl_loss(s, t, weights=w[:, :3], labels=labels)
    with pytest.raises(ValueError, match="num_items_in_batch must be > 0"):
        kl_loss(s, t, labels=labels, num_items_in_batch=0)
