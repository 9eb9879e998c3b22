"""recipes/adv/eval.py's loading path takes RobustBench-format Cui2023Decoupled files strictly."""

from __future__ import annotations

from pathlib import Path

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


LBGAT_EVAL = sorted((Path(__file__).parents[2] / "recipes" / "adv" / "configs").glob("eval_*_lbgat*.yaml"))


def test_every_released_lbgat_file_has_a_config_with_its_layout_and_eps():
    from dkl_train.config import load_config
    from dkl_train.data import get_spec
    from dkl_train.models import create_model

    # RobustBench's Cui2020Learnable entries: (dataset, width, sub_block1, eps)
    expected = {
        "eval_cifar10_wrn34_lbgat0": ("cifar10", 10, True, 0.031),
        "eval_cifar10_wrn34_20_lbgat0": ("cifar10", 20, True, 0.031),
        "eval_cifar100_wrn34_lbgat0": ("cifar100", 10, True, 0.031),
        "eval_cifar100_wrn34_lbgat6": ("cifar100", 10, True, 0.031),
        "eval_cifar100_wrn34_20_lbgat6": ("cifar100", 20, True, 0.031),
        "eval_cifar100_wrn34_lbgat9_awp": ("cifar100", 10, False, 8 / 255),
    }
    assert {path.stem for path in LBGAT_EVAL} == set(expected)
    for path in LBGAT_EVAL:
        dataset, width, sub_block1, eps = expected[path.stem]
        config = load_config(EvalConfig, path, ["checkpoint=x.pt"])
        assert (config.dataset, config.eps, config.model_kwargs) == (dataset, eps, {"sub_block1": sub_block1})
        classes = get_spec(dataset).num_classes
        with torch.device("meta"):
            model = create_model(config.model, classes, **config.model_kwargs)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert shapes == trades_wrn(34, width, classes, sub_block1=sub_block1), path.name


def test_lbgat_robustbench_file_loads_strictly(tmp_path):
    # Cui2020Learnable_34_10_LBGAT6 (CIFAR-100): every key of RobustBench's WideResNet(sub_block1=True), via DataParallel.
    from dkl_train.config import load_config

    config = load_config(EvalConfig, LBGAT_EVAL[0].parent / "eval_cifar100_wrn34_lbgat6.yaml", ["checkpoint=x.pt"])
    state = random_state_dict(trades_wrn(34, 10, 100, sub_block1=True), seed=5)
    path = tmp_path / "Cui2020Learnable_34_10_LBGAT6.pt"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    model = load_model(config.model, 100, path, model_kwargs=config.model_kwargs)
    loaded = model.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    with pytest.raises(CheckpointMismatchError, match="sub_block1"):
        load_model(config.model, 100, path)  # without the layout the extra block is an unexpected key
