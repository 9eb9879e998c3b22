"""ClassPrior: uniform start, exact accumulation, unseen classes, round trip, per-epoch semantics."""

import torch

from dkl_core import ClassPrior
from tests.unit import loss_reference as ref


def random_batches(num_batches=3, batch=16, num_classes=10, seed=0, labels_upto=None):
    g = torch.Generator().manual_seed(seed)
    labels_upto = labels_upto or num_classes
    return [
        (3 * torch.randn(batch, num_classes, generator=g), torch.randint(0, labels_upto, (batch,), generator=g))
        for _ in range(num_batches)
    ]


def test_uniform_before_any_epoch_ends():
    prior = ClassPrior(10)
    assert torch.equal(prior.prior, torch.full((10, 10), 0.1, dtype=torch.float64))
    assert torch.equal(prior.compute(), prior.prior)
    for logits, targets in random_batches():
        prior.update(logits, targets)
    # The accumulated sums only take effect at the end of the epoch.
    torch.testing.assert_close(prior.weights(torch.tensor([3, 7])), torch.full((2, 10), 0.1))


def test_accumulation_matches_reference_and_resets_each_epoch():
    prior = ClassPrior(10, temperature=4.0)
    epochs = [random_batches(seed=1), random_batches(seed=2)]
    for batches in epochs:
        for logits, targets in batches:
            prior.update(logits, targets)
        new = prior.end_epoch()
        expected = ref.class_prior(batches, 10, temperature=4.0)
        torch.testing.assert_close(new, expected, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(prior.prior, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(prior.weights(torch.tensor([2, 2, 5])), prior.prior[[2, 2, 5]].float())
    torch.testing.assert_close(prior.prior.sum(dim=1), torch.ones(10, dtype=torch.float64))


def test_unseen_class_gets_a_uniform_row_not_nan():
    prior = ClassPrior(10)
    for logits, targets in random_batches(labels_upto=6):
        prior.update(logits, targets)
    new = prior.end_epoch()
    assert torch.isfinite(new).all()
    torch.testing.assert_close(new[6:], torch.full((4, 10), 0.1, dtype=torch.float64))
    assert not torch.allclose(new[:6], torch.full((6, 10), 0.1, dtype=torch.float64))


def test_state_dict_round_trip_mid_epoch():
    """The prior *and* the running sums survive a checkpoint, so a resumed epoch ends identically."""
    batches = random_batches(num_batches=4, seed=3)
    uninterrupted = ClassPrior(10, temperature=2.0)
    for logits, targets in batches:
        uninterrupted.update(logits, targets)
    uninterrupted.end_epoch()

    first = ClassPrior(10, temperature=2.0)
    for logits, targets in batches[:2]:
        first.update(logits, targets)
    saved = first.state_dict()
    resumed = ClassPrior(10, temperature=1.0)
    resumed.load_state_dict(saved)
    assert resumed.temperature == 2.0
    for logits, targets in batches[2:]:
        resumed.update(logits, targets)
    resumed.end_epoch()
    torch.testing.assert_close(resumed.prior, uninterrupted.prior, rtol=1e-12, atol=1e-14)


def test_update_takes_no_gradient_and_half_precision_logits():
    prior = ClassPrior(5)
    logits = torch.randn(8, 5, requires_grad=True).to(torch.bfloat16)
    prior.update(logits, torch.arange(8) % 5)
    assert not prior.sums.requires_grad
    assert prior.end_epoch().dtype == torch.float64
