"""TopKClassPrior: exact (== ClassPrior) with top_k = C, rows that sum to 1 otherwise, token-shaped updates with
ignored positions, exact resume, ClassPrior state dicts load, and the all-reduce merge of several processes."""

import pytest
import torch

from dkl_core import ClassPrior, TopKClassPrior
from dkl_core.prior import TopKRows

C = 7


def batches(seed=0, count=3):
    g = torch.Generator().manual_seed(seed)
    return [(3 * torch.randn(10, C, generator=g), torch.randint(0, C - 1, (10,), generator=g)) for _ in range(count)]


def dense_rows(prior: TopKClassPrior) -> torch.Tensor:
    return prior.weights(torch.arange(C), dtype=torch.float64)


def test_full_top_k_equals_class_prior():
    dense, topk = ClassPrior(C, temperature=2.0), TopKClassPrior(C, top_k=C, temperature=2.0)
    torch.testing.assert_close(dense_rows(topk), dense.weights(torch.arange(C), dtype=torch.float64))
    for logits, labels in batches():
        dense.update(logits, labels)
        topk.update(logits, labels)
    dense.end_epoch()
    topk.end_epoch()
    # class C - 1 never appears: a uniform row in both
    torch.testing.assert_close(dense_rows(topk), dense.prior, rtol=1e-14, atol=1e-15)


def test_small_top_k_keeps_the_largest_entries_and_rows_sum_to_one():
    dense, topk = ClassPrior(C), TopKClassPrior(C, top_k=2)
    logits, labels = batches(1, count=1)[0]  # one update: the kept entries are the exact top 2 of each row
    dense.update(logits, labels)
    topk.update(logits, labels)
    dense.end_epoch()
    topk.end_epoch()
    rows = dense_rows(topk)
    torch.testing.assert_close(rows.sum(dim=1), torch.ones(C, dtype=torch.float64))
    expected, _ = dense.prior.topk(2, dim=1)
    torch.testing.assert_close(rows.topk(2, dim=1).values, expected)
    rest = 1 - expected.sum(dim=1, keepdim=True)
    torch.testing.assert_close(rows.sort(dim=1).values[:, : C - 2], rest.expand(-1, C - 2) / (C - 2))
    assert topk.nbytes() == 2 * C * (2 * 16 + 8)


def test_token_shaped_update_skips_ignored_positions():
    logits, labels = batches(2, count=1)[0]
    tokens, token_labels = logits.reshape(2, 5, C), labels.reshape(2, 5).clone()
    token_labels[0, 1] = -100
    a, b = TopKClassPrior(C, top_k=C), TopKClassPrior(C, top_k=C)
    a.update(tokens, token_labels)
    keep = token_labels.reshape(-1) != -100
    b.update(logits[keep], labels[keep])
    for x, y in zip(a.sums, b.sums, strict=True):
        assert torch.equal(x, y)


def test_state_dict_resumes_exactly_and_class_prior_states_load():
    prior = TopKClassPrior(C, top_k=3)
    first, second = batches(3, count=2)
    prior.update(*first)
    prior.end_epoch()
    prior.update(*second)
    resumed = TopKClassPrior(C, top_k=3)
    resumed.load_state_dict(prior.state_dict())
    for a, b in ((prior.prior, resumed.prior), (prior.sums, resumed.sums)):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
    with pytest.raises(ValueError, match="top_k=3, this one 2"):
        TopKClassPrior(C, top_k=2).load_state_dict(prior.state_dict())

    dense = ClassPrior(C)
    dense.update(*first)
    dense.end_epoch()
    converted = TopKClassPrior(C, top_k=C)
    converted.load_state_dict(dense.state_dict())
    torch.testing.assert_close(dense_rows(converted), dense.prior, rtol=1e-14, atol=1e-15)


def test_merging_processes_equals_one_process():
    """compute(sync=True) all-gathers each process's kept rows and merges them: checked on the merge itself."""
    whole, parts = TopKClassPrior(C, top_k=C), [TopKClassPrior(C, top_k=C) for _ in range(2)]
    for i, (logits, labels) in enumerate(batches(4, count=4)):
        whole.update(logits, labels)
        parts[i % 2].update(logits, labels)
    merged = whole._merge([p.sums for p in parts])
    single = whole._merge([whole.sums])
    for x, y in zip(merged, single, strict=False):
        if x.dtype == torch.float64:
            torch.testing.assert_close(x, y, rtol=1e-14, atol=1e-15)
    assert isinstance(merged, TopKRows)


def test_bad_arguments():
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        TopKClassPrior(C, top_k=0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 7\)"):
        TopKClassPrior(C, top_k=2).weights(torch.tensor([7]))
    with pytest.raises(ValueError, match="targets must be class indices of shape"):
        TopKClassPrior(C, top_k=2).update(torch.randn(4, C), torch.zeros(3, dtype=torch.long))


def test_class_prior_takes_tokens_with_ignored_positions_too():
    logits, labels = batches(5, count=1)[0]
    token_labels = labels.reshape(2, 5).clone()
    token_labels[1, 0] = -100
    tokens, flat = ClassPrior(C), ClassPrior(C)
    tokens.update(logits.reshape(2, 5, C), token_labels, ignore_index=-100)
    keep = token_labels.reshape(-1) != -100
    flat.update(logits[keep], labels[keep])
    assert torch.equal(tokens.sums, flat.sums)
