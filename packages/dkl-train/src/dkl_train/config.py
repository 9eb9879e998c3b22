"""Run configuration: one dataclass schema per recipe, filled from a YAML file and ``key=value`` overrides.

Every recipe is started as ``accelerate launch recipes/<task>/train.py --config FILE [key=value ...]``.
:func:`parse_config` reads the YAML, applies the command-line overrides (values are parsed as YAML,
so ``resume=true``, ``lr_milestones=[150,180,210]`` and ``teacher_checkpoint=null`` all work; nested
dataclass fields are reached with dotted keys), coerces every value to the field's declared type and
rejects unknown keys with the list of valid ones. Typos in a config must fail before any compute is
spent, never be silently ignored.

Fields shared by all recipes live in :class:`BaseConfig`; a recipe extends it with its own dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

C = TypeVar("C")


class ConfigError(ValueError):
    """A config file or override that does not fit the recipe's schema (the message says how to fix it)."""


@dataclasses.dataclass
class BaseConfig:
    """Fields every recipe has. Batch sizes are *global* (summed over processes and accumulation steps)."""

    # --- run ---
    output_dir: str = "runs/default"  # the run folder: config.yaml, checkpoints/, tb/, results.json
    seed: int = 0
    resume: bool = False  # continue from the newest complete checkpoint in output_dir/checkpoints
    deterministic: bool = False  # torch.use_deterministic_algorithms (tests; slower on GPU)
    # --- data ---
    dataset: str = "cifar100"  # digits | cifar10 | cifar100 | imagenet (prepared by `make data`)
    data_dir: str = "data"
    num_workers: int = 4  # DataLoader worker processes (decode + augment off the training process)
    augment: bool = True  # False: train on the test-time transform (used by exactness tests)
    # --- schedule ---
    epochs: int = 240
    batch_size: int = 64  # global batch per optimiser step
    eval_batch_size: int = 256
    gradient_accumulation_steps: int = 1
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    # --- optimiser (SGD with per-epoch step decay unless a recipe overrides) ---
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    lr_schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    lr_milestones: list[int] = dataclasses.field(default_factory=lambda: [150, 180, 210])
    lr_decay_rate: float = 0.1
    lr_warmup_epochs: int = 0  # linear warm-up of the learning rate (ImageNet-style recipes)
    # --- checkpoints, evaluation, logging ---
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch is always saved)
    keep_checkpoints: int = 2  # how many epoch checkpoints to keep
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)
    log_every: int = 50  # optimiser steps between tracker/progress-bar updates
    log_step_losses: bool = False  # also store every step's loss in results.json (short runs, tests)
    # --- limits for smoke tests and quick looks (0 = no limit) ---
    max_steps_per_epoch: int = 0
    eval_subset: int = 0  # evaluate on the first N test images only
    train_subset: int = 0  # train on the first N training images only
    stop_after_epochs: int = 0  # end the run after N epochs as an interruption would (resume tests)
    notes: str = ""


# ----------------------------------------------------------------------------------------------
# Type coercion


def _fields(schema: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(schema)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(schema) if f.init}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` to ``tp`` (int, float, bool, str, list[...], Optional, Literal, nested dataclass)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        if isinstance(value, bool) and not any(isinstance(a, bool) for a in args):
            # YAML 1.1 reads a bare `no` as false: `mixed_precision: no` means the string "no".
            value = {False: "no", True: "yes"}[value]
        if value in args:
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, str | int | float) and not isinstance(value, bool) and origin is list:
            value = [value]  # a single milestone given as a scalar
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build_config(tp, value, where=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "5e-4" as a string
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)} in the schema")


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    location = f" in {where}" if where else ""
    return ConfigError(f"unknown config key {key!r}{location}.{hint} Valid keys: {', '.join(sorted(valid))}")


def build_config(schema: type[C], values: dict[str, Any], where: str = "") -> C:
    """Instantiate ``schema`` from a mapping, coercing types and rejecting unknown keys."""
    fields = _fields(schema)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown_key(key, list(fields), where)
        kwargs[key] = _coerce(value, fields[key][1], f"{where}.{key}" if where else key)
    try:
        config = schema(**kwargs)
    except TypeError as err:  # a field without a default was not given
        raise ConfigError(f"{schema.__name__}: {err}") from err
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def _set_dotted(values: dict[str, Any], dotted: str, value: Any, schema: type) -> None:
    """Put ``value`` at ``a.b.c`` in the nested mapping, checking each key against the schema."""
    keys = dotted.split(".")
    node, current = values, schema
    for depth, key in enumerate(keys):
        fields = _fields(current)
        if key not in fields:
            raise _unknown_key(key, list(fields), ".".join(keys[:depth]) or "the command line")
        if depth == len(keys) - 1:
            node[key] = value
            return
        current = fields[key][1]
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"{'.'.join(keys[: depth + 1])} is not a group of settings; cannot set {dotted}")
        node = node.setdefault(key, {})


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """``["lr=0.1", "lr_milestones=[1,2]"]`` -> ``[("lr", 0.1), ("lr_milestones", [1, 2])]`` (values as YAML)."""
    pairs = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        pairs.append((key.strip(), value))
    return pairs


def load_config(schema: type[C], path: str | Path | None = None, overrides: Sequence[str] = ()) -> C:
    """Read ``path`` (YAML mapping; may be ``None`` for defaults only), apply ``key=value`` overrides, validate."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must contain a mapping of settings, got {type(loaded).__name__}")
        values = loaded or {}
        fields = _fields(schema)
        for key in values:
            if key not in fields:
                raise _unknown_key(key, list(fields), str(path))
    for dotted, value in parse_overrides(overrides):
        _set_dotted(values, dotted, value, schema)
    return build_config(schema, values)


def parse_config(schema: type[C], argv: Sequence[str] | None = None, description: str = "") -> C:
    """The command line of every recipe: ``--config FILE [key=value ...]``."""
    parser = argparse.ArgumentParser(
        description=description,
        epilog="Any field of the config can be overridden as key=value (YAML syntax), e.g. epochs=2 resume=true.",
    )
    parser.add_argument("--config", default=None, help="YAML file with the run's settings")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    try:
        return load_config(schema, args.config, args.overrides)
    except ConfigError as err:
        parser.exit(2, f"config error: {err}\n")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config (lists, not tuples), as written to ``config.yaml`` and ``results.json``."""
    return dataclasses.asdict(config)


def flat_hparams(config: Any) -> dict[str, int | float | str | bool]:
    """Flatten to ``a.b`` keys with scalar values (tensorboard hparams accept no lists or None)."""
    out: dict[str, int | float | str | bool] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}", v)
        elif isinstance(node, bool | int | float | str):
            out[prefix] = node
        else:
            out[prefix] = str(node)

    walk("", config_to_dict(config))
    return out


def save_config(config: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (the exact settings of the run, reloadable with :func:`load_config`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    tmp.replace(path)
    return path
