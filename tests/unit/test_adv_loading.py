"""recipes/adv/eval.py's loading path takes RobustBench-format Cui2023Decoupled files strictly."""

from __future__ import annotations

import pytest
import torch
from dkl_recipe_adv.eval import EvalConfig, load_model

from dkl_train.config import ConfigError, build_config
from dkl_train.models import CheckpointMismatchError
from tests.unit.test_models_published import dm_wrn, random_state_dict, trades_wrn


def test_wrn34_10_robustbench_file_loads_strictly(tmp_path):
    # Cui2023Decoupled_WRN-34-10 (CIFAR-10): a plain state dict, here saved through DataParallel.
    state = random_state_dict(trades_wrn(34, 10, 10))
    path = tmp_path / "Cui2023Decoupled_WRN-34-10.pt"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    model = load_model("wrn_34_10", 10, path)
    assert not model.training
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert torch.equal(loaded["fc.weight"], state["fc.weight"])
    del state["fc.bias"]
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError, match="fc.bias"):
        load_model("wrn_34_10", 10, path)


def test_wrn28_10_silu_robustbench_file_loads_strictly(tmp_path):
    # Cui2023Decoupled_WRN-28-10 (CIFAR-100), in a {"state_dict": ...} container.
    state = random_state_dict(dm_wrn(28, 10, 100), seed=3)
    path = tmp_path / "Cui2023Decoupled_WRN-28-10.pt"
    torch.save({"state_dict": state}, path)
    model = load_model("wrn_28_10_silu", 100, path)
    assert torch.equal(model.state_dict()["logits.weight"], state["logits.weight"])
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 100)
    with pytest.raises(CheckpointMismatchError):
        load_model("wrn_28_10_silu", 10, path)  # a CIFAR-100 file does not fit a 10-class head


def test_eval_config_needs_exactly_one_source():
    with pytest.raises(ConfigError, match="exactly one"):
        build_config(EvalConfig, {})
    with pytest.raises(ConfigError, match="exactly one"):
        build_config(EvalConfig, {"run_dir": "a", "checkpoint": "b"})
    with pytest.raises(ConfigError, match="unknown labels"):
        build_config(EvalConfig, {"run_dir": "a", "weights": ["swa"]})
