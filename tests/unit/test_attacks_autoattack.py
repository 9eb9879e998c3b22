"""AutoAttack wrapper: equals pyautoattack in eval mode, AA <= PGD <= clean, eval/float32 forced, resume, bad input.

AutoAttack is slow on a CPU (FAB-T and Square loop in Python), so the comparisons use at most 48
digits: at L-inf 0.1 a few samples survive every attack (all four run, ~30 s); at L2 0.55 the last
survivors fall to APGD-T (FAB-T and Square have nothing left to do). The other tests run a custom
attack set (APGD-CE, APGD-T), which exercises the same chunking and bookkeeping in seconds.
"""

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

pyautoattack = pytest.importorskip("pyautoattack")

from dkl_core.attacks import autoattack_evaluation, robust_accuracy  # noqa: E402
from tests.unit.attacks_digits import accuracy, digits_tensors, single_thread, train_digits_model  # noqa: E402

QUICK = {"version": "custom", "attacks": ["apgd-ce", "apgd-t"]}


@pytest.fixture(scope="module")
def digits():
    with single_thread():
        torch.manual_seed(0)
        model = train_digits_model()
        _, _, x_test, y_test = digits_tensors()
        yield model, x_test, y_test


def direct(model, x, y, eps, norm):
    """pyautoattack itself, with the model put in eval mode by hand (it never does so)."""
    adversary = pyautoattack.AutoAttack(model.eval(), eps=eps, norm=norm, version="standard", device="cpu", seed=0)
    _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=x.shape[0])
    return y_adv == y


@pytest.mark.parametrize("norm,eps,n", [("Linf", 0.1, 48), ("L2", 0.55, 32)])
def test_standard_version_equals_pyautoattack_and_is_stronger_than_pgd(digits, norm, eps, n):
    model, x, y = digits
    x, y = x[:n], y[:n]
    model.train()  # the wrapper must switch to eval mode itself
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = autoattack_evaluation(model, x, y, eps=eps, norm=norm, batch_size=n)
        assert model.training
        expected = direct(model, x, y, eps, norm)
    assert list(result.per_attack) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert torch.equal(result.robust, expected)
    assert result.robust_accuracy == int(expected.sum()) / n
    assert result.clean_accuracy == accuracy(model, x, y)
    values = [result.clean_accuracy, *result.per_attack.values()]
    assert values == sorted(values, reverse=True)  # each attack only removes samples
    pgd20 = robust_accuracy(model, x, y, eps=eps, norm=norm.lower(), batch_size=n)
    assert result.robust_accuracy <= pgd20.robust_accuracy <= pgd20.clean_accuracy == result.clean_accuracy
    assert pgd20.robust_accuracy < 0.8 * pgd20.clean_accuracy


def test_eval_mode_and_float32_are_forced(digits):
    model, x, y = digits
    x, y = x[:32], y[:32]
    reference = autoattack_evaluation(model.eval(), x, y, eps=0.08, batch_size=32, **QUICK)
    dropout_model = nn.Sequential(model, nn.Dropout(0.5)).train()  # dropout in train mode would randomise
    assert (
        autoattack_evaluation(dropout_model, x, y, eps=0.08, batch_size=32, **QUICK).per_attack == reference.per_attack
    )
    assert dropout_model.training and model.training
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autoattack_evaluation(model, x, y, eps=0.08, batch_size=32, **QUICK).per_attack == reference.per_attack
    half = train_digits_model().to(torch.bfloat16)
    autoattack_evaluation(half, x, y, eps=0.08, batch_size=32, **QUICK)  # evaluated through a float32 copy
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    model.eval()


class StopAtChunk(nn.Module):
    """Raises (a simulated crash) when asked to classify the clean images of a given chunk."""

    def __init__(self, model, chunk_images):
        super().__init__()
        self.model, self.chunk_images, self.calls = model, chunk_images, 0

    def forward(self, x):
        self.calls += 1
        if x.shape == self.chunk_images.shape and torch.equal(x, self.chunk_images):
            raise KeyboardInterrupt("simulated interruption")
        return self.model(x)


def test_interrupted_then_resumed_equals_uninterrupted(digits, tmp_path):
    model, x, y = digits
    x, y = x[:96], y[:96]
    full = autoattack_evaluation(model, x, y, eps=0.08, batch_size=32, progress_path=tmp_path / "full.pt", **QUICK)
    path = tmp_path / "progress.pt"
    with pytest.raises(KeyboardInterrupt):
        autoattack_evaluation(StopAtChunk(model, x[64:96]), x, y, eps=0.08, batch_size=32, progress_path=path, **QUICK)
    saved = torch.load(path, weights_only=True)
    assert sorted(saved["chunks"]) == [0, 1]
    counting = StopAtChunk(model, x[:32])  # chunk 0 is finished: it must never be evaluated again
    resumed = autoattack_evaluation(counting, x, y, eps=0.08, batch_size=32, progress_path=path, **QUICK)
    assert counting.calls > 0
    assert torch.equal(resumed.robust, full.robust)
    assert resumed.per_attack == full.per_attack and resumed.clean_accuracy == full.clean_accuracy
    assert sorted(torch.load(path, weights_only=True)["chunks"]) == [0, 1, 2]
    # a finished file answers without running the model at all
    idle = StopAtChunk(model, x[:1])
    assert (
        autoattack_evaluation(idle, x, y, eps=0.08, batch_size=32, progress_path=path, **QUICK).per_attack
        == full.per_attack
    )
    assert idle.calls == 0
    with pytest.raises(ValueError, match="other settings"):
        autoattack_evaluation(model, x, y, eps=0.05, batch_size=32, progress_path=path, **QUICK)
    with pytest.raises(ValueError, match="differs"):
        autoattack_evaluation(model, x.flip(0), y.flip(0), eps=0.08, batch_size=32, progress_path=path, **QUICK)
    assert not list(tmp_path.glob("*.tmp*"))  # atomic writes leave no temporary files


def test_dataset_input_equals_tensor_input(digits):
    model, x, y = digits
    x, y = x[:40], y[:40]
    options = {"version": "custom", "attacks": ["apgd-ce"], "eps": 0.08, "batch_size": 16}
    from_tensors = autoattack_evaluation(model, x, y, **options)
    from_dataset = autoattack_evaluation(model, TensorDataset(x, y), **options)
    assert torch.equal(from_tensors.robust, from_dataset.robust)
    assert from_tensors.num_samples == 40


def test_bad_input(digits):
    model, x, y = digits
    x, y = x[:8], y[:8]
    with pytest.raises(ValueError, match="eps must be >= 0"):
        autoattack_evaluation(model, x, y, eps=-1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        autoattack_evaluation(model, x * 16, y, eps=0.1, **QUICK)
    with pytest.raises(ValueError, match="same length"):
        autoattack_evaluation(model, x, y[:5], eps=0.1)
    with pytest.raises(ValueError, match="norm"):
        autoattack_evaluation(model, x, y, eps=0.1, norm="L0")
    with pytest.raises(ValueError, match="custom"):
        autoattack_evaluation(model, x, y, eps=0.1, attacks=["apgd-ce"])
    with pytest.warns(UserWarning, match="probability distribution"):
        autoattack_evaluation(nn.Sequential(model, nn.Softmax(dim=1)), x, y, eps=0.1, **QUICK)
