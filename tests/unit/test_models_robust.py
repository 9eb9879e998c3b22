"""WRN-34-10 and WRN-28-10-SiLU load RobustBench's Cui2023Decoupled files and take [0, 1] inputs."""

from __future__ import annotations

import pytest
import torch

from dkl_train.models import CheckpointMismatchError, create_model, load_checkpoint
from dkl_train.models.robust_wrn import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD

from .test_models_published import dm_wrn, random_state_dict, trades_wrn

# The published key sets, built once per module (the nets are 46M / 36M parameters).
TRADES_34_10 = trades_wrn(34, 10, 10)
DM_28_10 = dm_wrn(28, 10, 100)


@pytest.fixture(scope="module")
def wrn34():
    return create_model("wrn_34_10", num_classes=10)


@pytest.fixture(scope="module")
def wrn28():
    return create_model("wrn_28_10_silu", num_classes=100)


def test_wrn34_size_and_logits(wrn34):
    assert sum(p.numel() for p in wrn34.parameters()) / 1e6 == pytest.approx(46.16, abs=0.01)
    wrn34.eval()
    with torch.no_grad():
        assert wrn34(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_wrn34_loads_robustbench_file_strictly(tmp_path, wrn34):
    # RobustBench checkpoints: a plain state dict, here also with DataParallel's prefix.
    state = random_state_dict(TRADES_34_10)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "Cui2023Decoupled_WRN-34-10.pt")
    report = load_checkpoint(wrn34, tmp_path / "Cui2023Decoupled_WRN-34-10.pt")
    assert report.loaded == len(TRADES_34_10) == len(wrn34.state_dict())
    assert torch.equal(
        wrn34.state_dict()["block2.layer.0.convShortcut.weight"], state["block2.layer.0.convShortcut.weight"]
    )


def test_wrn34_rejects_sub_block1_checkpoint(wrn34):
    # Older TRADES-family entries (sub_block1=True) carry an extra stage; it must not be ignored silently.
    state = random_state_dict(TRADES_34_10)
    state["sub_block1.layer.0.bn1.weight"] = torch.ones(16)
    with pytest.raises(CheckpointMismatchError, match=r"sub_block1\.layer\.0\.bn1\.weight"):
        load_checkpoint(wrn34, state)


def test_wrn28_silu_loads_robustbench_file_and_normalises(wrn28):
    state = random_state_dict(DM_28_10, seed=1)
    report = load_checkpoint(wrn28, {"state_dict": state})
    assert report.loaded == len(DM_28_10) == len(wrn28.state_dict())
    assert "mean" not in wrn28.state_dict()  # as in RobustBench's DMWideResNet: not a state-dict entry
    assert torch.allclose(wrn28.mean.flatten(), torch.tensor(CIFAR100_MEAN))
    assert torch.allclose(wrn28.std.flatten(), torch.tensor(CIFAR100_STD))
    assert isinstance(wrn28.layer[0].block[0].relu_0, torch.nn.SiLU)
    wrn28.eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        logits = wrn28(x)
        # The same net without its normalisation, fed pre-normalised inputs, gives the same logits.
        mean, std = wrn28.mean.clone(), wrn28.std.clone()
        wrn28.mean.zero_(), wrn28.std.fill_(1.0)
        manual = wrn28((x - mean) / std)
        wrn28.mean.copy_(mean), wrn28.std.copy_(std)
    assert logits.shape == (1, 100)
    assert torch.allclose(logits, manual, atol=1e-5)


def test_wrn28_accepts_checkpoint_that_stores_mean_std(wrn28):
    state = random_state_dict(DM_28_10, seed=2)
    state["mean"], state["std"] = torch.tensor(CIFAR10_MEAN).view(3, 1, 1), torch.tensor(CIFAR10_STD).view(3, 1, 1)
    report = load_checkpoint(wrn28, state)
    assert "mean taken from the checkpoint" in report.notes and "std taken from the checkpoint" in report.notes
    assert torch.allclose(wrn28.mean.flatten(), torch.tensor(CIFAR10_MEAN))
    (
        wrn28.mean.copy_(torch.tensor(CIFAR100_MEAN).view(3, 1, 1)),
        wrn28.std.copy_(torch.tensor(CIFAR100_STD).view(3, 1, 1)),
    )


def test_wrn28_wrong_shape_is_named(wrn28):
    state = random_state_dict(dm_wrn(28, 10, 10))  # a CIFAR-10 file into the CIFAR-100 net
    with pytest.raises(CheckpointMismatchError, match=r"logits\.weight: checkpoint \(10, 640\) vs model \(100, 640\)"):
        load_checkpoint(wrn28, state)


def test_wrn28_default_statistics_follow_num_classes():
    model = create_model("wrn_28_10_silu", num_classes=10)
    assert torch.allclose(model.mean.flatten(), torch.tensor(CIFAR10_MEAN))
