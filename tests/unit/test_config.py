"""dkl_train.config: YAML + key=value overrides, type coercion, unknown keys rejected with the valid ones."""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
import yaml

from dkl_train.config import (
    ConfigError,
    EpochConfig,
    accelerator_precision,
    config_to_dict,
    describe_fields,
    flat_hparams,
    load_config,
    parse_config,
    parse_overrides,
    save_config,
)

REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class Inner:
    depth: int = 2
    width: float = 1.0


@dataclasses.dataclass
class Demo(EpochConfig):
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
    [("epochs=2.5", "epochs: expected an integer"), ("resume=maybe", r"resume: expected true/false, got 'maybe'"),
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


# --- precision and trackers ---------------------------------------------------------------------


def test_mixed_precision_auto_null_and_explicit(tmp_path):
    assert load_config(Demo).mixed_precision == "auto"  # the launcher decides unless a config says otherwise
    assert load_config(Demo, write(tmp_path, "mixed_precision: null\n")).mixed_precision == "auto"
    assert load_config(Demo, None, ["mixed_precision=bf16"]).mixed_precision == "bf16"
    assert [accelerator_precision(p) for p in ("auto", None, "no", "bf16")] == [None, None, "no", "bf16"]
    with pytest.raises(ConfigError, match="'fp8' is not one of 'auto', 'no', 'bf16', 'fp16'"):
        load_config(Demo, None, ["mixed_precision=fp8"])


def test_report_to_takes_accelerate_tracker_names():
    assert load_config(Demo).report_to == ["tensorboard"]
    assert load_config(Demo, None, ["report_to=[tensorboard,wandb]"]).report_to == ["tensorboard", "wandb"]
    assert load_config(Demo, None, ["report_to=[]"]).report_to == []
    with pytest.raises(ConfigError, match=r"unknown tracker 'tensorbord'; Accelerate supports .*mlflow.*wandb"):
        load_config(Demo, None, ["report_to=tensorbord"])


def _recipe_schemas() -> dict[str, type]:
    from dkl_recipe_adv.eval import EvalConfig
    from dkl_recipe_adv.train import AdvConfig
    from dkl_recipe_kd.train import KDConfig
    from dkl_recipe_ssl.train import SSLConfig

    return {"kd": KDConfig, "adv": AdvConfig, "ssl": SSLConfig, "adv-eval": EvalConfig}


def _schema_of(config_path: str) -> type:
    task = Path(config_path).parts[-3]
    return _recipe_schemas()["adv-eval" if task == "adv" and "/eval_" in config_path else task]


# What configs and READMEs say about precision. "with bf16", "runs fp32", "Precision: fp32" state what a config
# runs; `--mixed_precision X` is the launcher flag, which only takes effect when the config says `auto`.
CLAIM = re.compile(r"\b(?:with|runs?|ran|Precision:)\s+(fp32|bf16|fp16)\b")
LAUNCHER_FLAG = re.compile(r"--mixed_precision[ =](\w+)")
CONFIG_REF = re.compile(r"(?:recipes/(kd|adv|ssl)/)?configs/(\w+)\.yaml")


def _precision_claims() -> list[tuple[str, str, str]]:
    """``(config file, line, where)`` for every line of a config's comments or a README naming that config."""
    claims = []
    for path in sorted(glob.glob("recipes/*/configs/*.yaml", root_dir=REPO)):
        for line in (REPO / path).read_text().splitlines():
            if "#" in line:
                claims.append((path, line[line.index("#") :], path))
    for readme in ["README.md", *sorted(glob.glob("recipes/*/README.md", root_dir=REPO))]:
        task = Path(readme).parts[1] if readme.startswith("recipes/") else None
        for number, line in enumerate((REPO / readme).read_text().splitlines(), 1):
            for ref_task, name in CONFIG_REF.findall(line):
                path = f"recipes/{ref_task or task}/configs/{name}.yaml"
                if (REPO / path).is_file():
                    claims.append((path, line, f"{readme}:{number}"))
    return [c for c in claims if CLAIM.search(c[1]) or LAUNCHER_FLAG.search(c[1])]


def test_what_configs_and_readmes_say_about_precision_is_true():
    checked = 0
    for path, line, where in _precision_claims():
        schema = _schema_of(path)
        if "mixed_precision" not in {f.name for f in dataclasses.fields(schema)}:
            continue  # an evaluation config: its script fixes the precision itself
        field = load_config(schema, REPO / path).mixed_precision  # the whole file: a KD config needs its teacher
        for flag in LAUNCHER_FLAG.findall(line):
            assert field == "auto", f"{where} passes --mixed_precision {flag}, but {path} fixes {field}: {line}"
            checked += 1
        for claimed in CLAIM.findall(line):
            launched = claimed in LAUNCHER_FLAG.findall(line)
            ok = field == {"fp32": "no"}.get(claimed, claimed) or (field == "auto" and launched)
            assert ok, f"{where} says {claimed}, but {path} resolves mixed_precision={field}: {line}"
            checked += 1
    assert checked >= 10  # the configs do make such claims: the test must not pass by finding none


# --- the command line: --help and --print-config -------------------------------------------------


@dataclasses.dataclass
class Documented(EpochConfig):
    epochs: int = 5
    method: Literal["ce", "kd"] = "ce"  # which loss to train with
    inner: Inner = dataclasses.field(default_factory=Inner)  # the inner group


def test_help_lists_every_field_with_type_default_and_meaning(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(Documented, ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--print-config" in out
    assert "  method: Literal['ce', 'kd'] = ce\n      which loss to train with\n" in out
    # A recipe's new default keeps the base class's meaning; nested fields are listed with dotted keys.
    assert "  epochs: int = 5\n      training epochs\n" in out
    assert "  inner.depth: int = 2\n" in out
    assert "  mixed_precision: Literal['auto', 'no', 'bf16', 'fp16'] | None = auto\n" in out
    for f in dataclasses.fields(Documented):
        assert f"\n  {f.name}: " in out, f.name


@pytest.mark.parametrize("task", ["kd", "adv", "ssl", "adv-eval"])
def test_every_recipe_field_has_a_one_line_meaning(task):
    rows = describe_fields(_recipe_schemas()[task])
    assert not [key for key, _, _, meaning in rows if not meaning], "add a `# comment` on the field's line"


def test_print_config_prints_the_resolved_yaml_and_exits(tmp_path, capsys):
    path = write(tmp_path, "epochs: 3\ninner:\n  depth: 4\n")
    with pytest.raises(SystemExit) as exit_info:
        parse_config(Demo, ["--config", str(path), "--print-config", "lr=0.2", "inner.width=0.5"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == config_to_dict(load_config(Demo, path, ["lr=0.2", "inner.width=0.5"]))
    assert (printed["epochs"], printed["lr"], printed["inner"]) == (3, 0.2, {"depth": 4, "width": 0.5})


def test_recipe_print_config_touches_no_data(tmp_path):
    """The real script: no data folder, no run folder, no teacher file, yet it prints and exits 0."""
    config = "recipes/kd/configs/cifar100_resnet32x4_resnet8x4_ikl.yaml"
    missing = tmp_path / "absent"
    command = [sys.executable, "recipes/kd/train.py", "--config", config, "--print-config", f"data_dir={missing}",
               f"output_dir={missing}/run", f"teacher_checkpoint={missing}/t.pth", "epochs=3"]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = yaml.safe_load(result.stdout)
    assert (printed["epochs"], printed["data_dir"], printed["method"]) == (3, str(missing), "ikl")
    assert not missing.exists()


def test_an_old_name_of_a_renamed_setting_says_the_new_one():
    # One name per concept across recipes: the class prior's temperature is weight_temperature everywhere.
    with pytest.raises(ConfigError, match=r"'prior_temperature' .* is now called 'weight_temperature'"):
        load_config(WithPriorTemperature, None, ["prior_temperature=2.0"])


@dataclasses.dataclass
class WithPriorTemperature(EpochConfig):
    weight_temperature: float = 4.0  # T of the class prior's softmax
