"""dkl_train.config: YAML + key=value overrides, type coercion, unknown keys rejected with the valid ones."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest
import yaml

from dkl_train.config import (
    BaseConfig,
    ConfigError,
    flat_hparams,
    load_config,
    parse_config,
    parse_overrides,
    save_config,
)


@dataclasses.dataclass
class Inner:
    depth: int = 2
    width: float = 1.0


@dataclasses.dataclass
class Demo(BaseConfig):
    method: Literal["ce", "kd"] = "ce"
    teacher: str | None = None
    inner: Inner = dataclasses.field(default_factory=Inner)

    def validate(self) -> None:
        if self.method == "kd" and not self.teacher:
            raise ConfigError("method=kd needs a teacher")


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_are_coerced(tmp_path):
    path = write(tmp_path, "epochs: 3\nlr: 1e-2\nmixed_precision: no\nlr_milestones: [1, 2]\n")
    config = load_config(
        Demo, path, ["batch_size=32", "resume=true", "weight_decay=5e-4", "lr_milestones=5", "teacher=null"]
    )
    assert (config.epochs, config.lr, config.batch_size, config.resume) == (3, 0.01, 32, True)
    assert config.mixed_precision == "no"  # YAML 1.1 reads a bare `no` as false
    assert config.weight_decay == 5e-4 and config.lr_milestones == [5] and config.teacher is None


def test_dotted_override_reaches_nested_dataclass(tmp_path):
    config = load_config(Demo, write(tmp_path, "inner:\n  depth: 4\n"), ["inner.width=0.5"])
    assert config.inner == Inner(depth=4, width=0.5)


def test_unknown_key_in_file_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(Demo, write(tmp_path, "epoch: 3\n"))
    message = str(err.value)
    assert "unknown config key 'epoch'" in message and "Did you mean 'epochs'" in message
    assert "Valid keys:" in message and "batch_size" in message and str(tmp_path) in message


def test_unknown_override_and_nested_key_rejected():
    with pytest.raises(ConfigError, match="unknown config key 'lrr'"):
        load_config(Demo, None, ["lrr=1"])
    with pytest.raises(ConfigError, match="unknown config key 'depht'.*Valid keys: depth, width"):
        load_config(Demo, None, ["inner.depht=1"])


@pytest.mark.parametrize(
    "override, expected",
    [("epochs=2.5", "epochs: expected an integer"), ("resume=maybe", "resume: expected true/false"),
     ("method=dkd", "method: 'dkd' is not one of 'ce', 'kd'"), ("lr=fast", "lr: expected a number"),
     ("epochs", "not of the form key=value")],
)  # fmt: skip
def test_bad_values_say_what_is_expected(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(Demo, None, [override])


def test_validate_hook_runs():
    with pytest.raises(ConfigError, match="needs a teacher"):
        load_config(Demo, None, ["method=kd"])


def test_parse_config_exits_with_message(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(Demo, ["bogus=1"])
    assert exit_info.value.code == 2
    assert "config error: unknown config key 'bogus'" in capsys.readouterr().err


def test_saved_config_reloads_identically(tmp_path):
    config = load_config(Demo, None, ["epochs=7", "inner.depth=3", "teacher=r32"])
    path = save_config(config, tmp_path / "run" / "config.yaml")
    assert yaml.safe_load(path.read_text())["inner"] == {"depth": 3, "width": 1.0}
    assert load_config(Demo, path) == config


def test_flat_hparams_are_scalars():
    flat = flat_hparams(load_config(Demo, None, []))
    assert flat["inner.depth"] == 2 and flat["lr_milestones"] == "[150, 180, 210]" and flat["teacher"] == "None"
    assert all(isinstance(v, int | float | str | bool) for v in flat.values())


def test_parse_overrides_uses_yaml_syntax():
    assert parse_overrides(["a=[1,2]", "b=true", "c=text", "d="]) == [
        ("a", [1, 2]),
        ("b", True),
        ("c", "text"),
        ("d", ""),
    ]
