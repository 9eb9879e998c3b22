"""Run configuration: one dataclass schema per recipe, filled from a YAML file and ``key=value`` overrides.

Every recipe is started as ``accelerate launch recipes/<task>/train.py --config FILE [key=value ...]``.
:func:`parse_config` reads the YAML, applies the command-line overrides (values are parsed as YAML,
so ``resume=true``, ``lr_milestones=[150,180,210]`` and ``teacher_checkpoint=null`` all work; nested
dataclass fields are reached with dotted keys), coerces every value to the field's declared type and
rejects unknown keys with the list of valid ones. Typos in a config must fail before any compute is
spent, never be silently ignored.

The meaning of each field is the ``# comment`` on its line in the dataclass; :func:`field_help` reads
those comments back, so ``train.py --help`` lists every field (type, default, meaning) from the one
place a reader of the code looks. ``train.py --print-config`` prints the resolved YAML and exits.

Fields shared by all recipes live in :class:`BaseConfig`; a recipe extends it with its own dataclass.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import io
import math
import os
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import yaml

from .atomic import write_text_atomic
from .errors import UserError, record_error
from .periods import Periods

if TYPE_CHECKING:
    from .methods import Registry

C = TypeVar("C")


# Datasets read from image files in place (what data_backend=gpu needs); the others are prepared as arrays.
FILE_BACKED_DATASETS = ("imagenet",)


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the recipe's schema (the message says how to fix it)."""


@dataclasses.dataclass
class BaseConfig:
    """Fields every recipe has. Batch sizes are *global* (summed over processes and accumulation steps).

    How long a run is and when it evaluates and saves is the recipe's schedule: :class:`EpochConfig` for
    the epoch-based recipes (KD, adversarial training), :class:`IterationConfig` for SSL. Each says what
    its periods between evaluations are (``periods()``, a :class:`~dkl_train.periods.Periods`), which
    :class:`~dkl_train.training.Run` iterates.
    """

    recipe: ClassVar[str | None] = None  # the recipe's name (kd, adv, ssl), recorded in results.json; not a setting
    # Config fields that name a method class ({"method": registry}): the chosen class's Settings join the schema
    # (dkl_train.methods; resolve_schema).
    components: ClassVar[dict[str, Any]] = {}  # {field: dkl_train.methods.Registry}
    # Settings a resumed run may change (they do not change what it computes): anything else differing from
    # the run's config.yaml stops the resume (see dkl_train.resuming). Recipes add theirs.
    resume_safe: ClassVar[frozenset[str]] = frozenset({
        "output_dir", "resume", "resume_override", "report_to", "data_dir", "num_workers", "eval_batch_size",
        "eval_subset", "keep_checkpoints", "log_every", "log_step_losses", "notes", "deterministic",
        "cudnn_benchmark", "channels_last",
    })  # fmt: skip

    # --- run ---
    output_dir: str = "runs/default"  # the run folder: config.yaml, checkpoints/, tb/, results.json
    seed: int = 0  # seeds Python, NumPy and torch on every process, and the data order
    resume: bool = False  # continue from output_dir's newest checkpoint (a new run when it holds none)
    resume_override: bool = False  # resume although settings that change results differ from config.yaml
    deterministic: bool = False  # torch.use_deterministic_algorithms (tests; slower on GPU)
    report_to: list[str] = dataclasses.field(default_factory=["tensorboard"].copy)  # trackers: tensorboard, wandb, ...
    # --- data ---
    dataset: str = "cifar100"  # digits | cifar10 | cifar100 | imagenet (prepared by `make data`)
    data_dir: str = "data"  # where `make data` put the prepared datasets
    num_workers: int | Literal["auto"] = "auto"  # DataLoader workers per process; auto: its cores / LOCAL_WORLD_SIZE
    augment: bool = True  # False: train on the test-time transform (used by exactness tests)
    data_backend: Literal["pil", "gpu"] = "pil"  # pil: workers decode; gpu: the device decodes in batches (ImageNet)
    # --- batches and precision ---
    batch_size: int = 64  # global batch per optimiser step
    eval_batch_size: int = 256  # global batch of evaluation
    gradient_accumulation_steps: int = 1  # micro-batches per optimiser step (same global batch, less memory)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] | None = "auto"  # auto: as accelerate launch / config says
    channels_last: bool = False  # models and image batches in channels-last memory format (faster GPU convolutions)
    cudnn_benchmark: bool = False  # time cuDNN's convolution algorithms once per input shape (not with deterministic)
    # --- optimiser ---
    optimizer: Literal["sgd", "adamw"] = "sgd"  # the optimiser
    lr: float = 0.05  # peak learning rate
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # SGD with Nesterov momentum
    weight_decay: float = 5e-4  # L2 penalty on all parameters
    # --- checkpoints and logging ---
    keep_checkpoints: int = 2  # how many epoch checkpoints to keep
    log_every: int = 50  # optimiser steps between tracker/progress-bar updates
    log_step_losses: bool = False  # also store every step's loss in results.json (short runs, tests)
    # --- limits for smoke tests and quick looks (0 = no limit) ---
    eval_subset: int = 0  # evaluate on the first N test images only
    train_subset: int = 0  # train on the first N training images only
    notes: str = ""  # free text kept with the run (config.yaml, results.json)

    def __post_init__(self) -> None:
        if self.mixed_precision is None:
            self.mixed_precision = "auto"  # one spelling in config.yaml and results.json
        if self.cudnn_benchmark and self.deterministic:
            raise ConfigError(
                "cudnn_benchmark=true picks convolution algorithms by timing them, which deterministic=true rules "
                "out; set one of them to false"
            )
        if self.num_workers != "auto" and self.num_workers < 0:
            raise ConfigError(f"num_workers: {self.num_workers} is negative; give 0 or more, or auto")
        if self.data_backend == "gpu" and self.dataset not in FILE_BACKED_DATASETS:
            raise ConfigError(
                f"data_backend=gpu decodes image files on the device, but dataset {self.dataset!r} is stored as "
                f"decoded arrays; use data_backend=pil, or a dataset read from image files "
                f"({', '.join(FILE_BACKED_DATASETS)})"
            )
        trackers = _known_trackers()
        unknown = [name for name in self.report_to if name not in trackers]
        if unknown:
            raise ConfigError(
                f"report_to: unknown tracker {', '.join(map(repr, unknown))}; Accelerate supports "
                f"{', '.join(sorted(trackers))} (report_to=[] logs to none)"
            )


@dataclasses.dataclass
class EpochConfig(BaseConfig):
    """A recipe that trains in epochs (KD, adversarial training): the schedule and its limits, per epoch."""

    resume_safe: ClassVar[frozenset[str]] = BaseConfig.resume_safe | {
        "epochs", "checkpoint_every", "eval_every", "stop_after_epochs"
    }  # fmt: skip

    epochs: int = 240  # training epochs
    lr_schedule: Literal["multistep", "cosine", "constant"] = "multistep"  # per-epoch schedule after warm-up
    lr_milestones: list[int] = dataclasses.field(default_factory=lambda: [150, 180, 210])  # multistep: lr decay epochs
    lr_decay_rate: float = 0.1  # multistep: factor per milestone
    lr_warmup_epochs: int = 0  # linear warm-up of the learning rate (ImageNet-style recipes)
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch is always saved)
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated)
    max_steps_per_epoch: int = 0  # end each epoch after N optimiser steps (0 = no limit)
    stop_after_epochs: int = 0  # end the run after N epochs as an interruption would (resume tests; 0 = off)

    def periods(self) -> Periods:
        """Epochs: evaluated every ``eval_every``, saved every ``checkpoint_every``."""
        return Periods(self.epochs, "epoch", self.eval_every, self.checkpoint_every, self.stop_after_epochs)


@dataclasses.dataclass
class IterationConfig(BaseConfig):
    """A recipe that trains in iterations (SSL, as USB): warm-up then cosine per iteration, periods of evaluation.

    :class:`~dkl_train.training.Run` counts in periods of ``eval_every_iters`` iterations (:meth:`periods`):
    evaluation and checkpoints at the end of each one. :func:`~dkl_train.optim.iteration_learning_rate`
    is the schedule.
    """

    resume_safe: ClassVar[frozenset[str]] = BaseConfig.resume_safe | {"checkpoint_every", "stop_after_iters"}

    iterations: int = 204_800  # optimiser steps of the whole run
    eval_every_iters: int = 2_048  # iterations per period (evaluation and checkpoint)
    warmup_iters: int = 5_120  # linear learning-rate warm-up, in iterations
    lr_cycles: float = 7 / 16  # USB's cosine: lr * max(0, cos(pi * lr_cycles * progress))
    checkpoint_every: int = 1  # evaluation periods between checkpoints (the last one is always saved)
    stop_after_iters: int = 0  # stop (after a checkpoint) here without finishing: tests of resume (0 = off)

    def periods(self) -> Periods:
        """Periods of ``eval_every_iters`` iterations (the last one may be shorter), each evaluated."""
        return Periods(
            math.ceil(self.iterations / self.eval_every_iters), "period", 1, self.checkpoint_every,
            self.stop_after_iters // self.eval_every_iters, steps=self.eval_every_iters, total_steps=self.iterations,
        )  # fmt: skip

    def validate(self) -> None:
        if self.gradient_accumulation_steps != 1:
            raise ConfigError(
                "an iteration-based recipe takes one optimiser step per iteration: gradient_accumulation_steps=1"
            )
        for name in ("iterations", "eval_every_iters", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.stop_after_iters and self.stop_after_iters % self.eval_every_iters:
            raise ConfigError(
                f"stop_after_iters={self.stop_after_iters} must be a multiple of eval_every_iters="
                f"{self.eval_every_iters} (checkpoints are written at the end of each period)"
            )


def _known_trackers() -> list[str]:
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return list(LOGGER_TYPE_TO_CLASS)


def accelerator_precision(mixed_precision: str | None) -> str | None:
    """What to pass as ``Accelerator(mixed_precision=...)``: ``None`` lets the launcher's choice stand.

    ``auto``/``null`` defer to ``accelerate launch`` (its ``--mixed_precision`` or the saved
    ``accelerate config``, passed on as ``ACCELERATE_MIXED_PRECISION``); an explicit value wins over both.
    """
    return None if mixed_precision in (None, "auto") else mixed_precision


# ----------------------------------------------------------------------------------------------
# Type coercion


def _fields(schema: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(schema)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(schema) if f.init}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` to ``tp`` (int, float, bool, str, list[...], Optional, Literal, nested dataclass)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own message says what is expected
            return _coerce(value, options[0], key)
        reasons = []
        for arg in options:
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                reasons.append(str(err).removeprefix(f"{key}: "))
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_text(tp)} ({'; '.join(reasons)})")
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
    raise ConfigError(f"{key}: unsupported field type {_type_text(tp)} in the schema")


# Settings that once had another name in some recipe: one name per concept across recipes now. The old
# name fails with the new one (a silent alias would keep two spellings of one setting alive).
RENAMED = {
    "prior_temperature": "weight_temperature",  # adv: T of the class prior's softmax, as kd and ssl name it
    "ikl_temperature": "temperature",  # ssl: T of the IKL soft cross-entropy, as kd names it
}


def _readers(schema: type, key: str) -> dict[str, list[str]]:
    """``{component field: names of the methods whose settings include key}`` (only fields with such methods)."""
    readers: dict[str, list[str]] = {}
    for field, registry in getattr(schema, "components", {}).items():
        names = [cls.name for cls in registry if key in {f.name for f in dataclasses.fields(cls.Settings)}]
        if names:
            readers[field] = names
    return readers


def _method_keys(schema: type) -> list[str]:
    """Every setting of every registered method of ``schema``'s components."""
    registries = getattr(schema, "components", {}).values()
    return sorted({f.name for registry in registries for cls in registry for f in dataclasses.fields(cls.Settings)})


def _unknown_key(key: str, valid: list[str], where: str, schema: type | None = None) -> ConfigError:
    readers = _readers(schema, key) if schema is not None else {}
    if readers:
        chosen = getattr(schema, "chosen", {})
        field, names = next(iter(readers.items()))
        now = f"{field}={chosen[field].name}" if field in chosen else "this run"
        return ConfigError(
            f"{key!r} is read by {field}={' | '.join(names)}, not by {now}: remove it, or choose one of those "
            f"(`--help` lists each {field}'s settings)"
        )
    if RENAMED.get(key) in valid:
        location = f" in {where}" if where else ""
        return ConfigError(
            f"config key {key!r}{location} is now called {RENAMED[key]!r} (the same setting, one name in every "
            f"recipe). Did you mean {RENAMED[key]!r}? Rename it in the config or override: {RENAMED[key]}=..."
        )
    elsewhere = _method_keys(schema) if schema is not None else []
    close = difflib.get_close_matches(key, valid + [k for k in elsewhere if k not in valid], n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    if close and close[0] not in valid:
        field, names = next(iter(_readers(schema, close[0]).items()))
        hint = f" Did you mean {close[0]!r} (read by {field}={' | '.join(names)})?"
    location = f" in {where}" if where else ""
    return ConfigError(f"unknown config key {key!r}{location}.{hint} Valid keys: {', '.join(sorted(valid))}")


def build_config(schema: type[C], values: dict[str, Any], where: str = "") -> C:
    """Instantiate ``schema`` from a mapping, coercing types and rejecting unknown keys.

    A schema with ``components`` becomes the schema of the chosen methods first (:func:`resolve_schema`),
    and each chosen method's ``check`` sees the finished config.
    """
    schema = resolve_schema(schema, values)
    fields = _fields(schema)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown_key(key, list(fields), where, schema)
        kwargs[key] = _coerce(value, fields[key][1], f"{where}.{key}" if where else key)
    try:
        config = schema(**kwargs)
    except TypeError as err:  # a field without a default was not given
        raise ConfigError(f"{schema.__name__}: {err}") from err
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    for method in chosen_methods(config).values():
        method.check(config)
    return config


# ----------------------------------------------------------------------------------------------
# Methods' own settings (dkl_train.methods)


def resolve_schema(schema: type[C], values: dict[str, Any]) -> type[C]:
    """``schema`` plus the ``Settings`` of the method each component field of ``values`` names (else its default)."""
    components = getattr(schema, "components", {})
    if not components or getattr(schema, "chosen", None) is not None:
        return schema
    defaults = {f.name: _default(f) for f in dataclasses.fields(schema)}
    chosen = tuple(registry.get(str(values.get(field, defaults[field]))) for field, registry in components.items())
    return _with_settings(schema, chosen)


@functools.cache
def _with_settings(schema: type, chosen: tuple[type, ...]) -> type:
    """One dataclass per (schema, chosen methods): the schema's fields, then each method's settings."""
    own = set(_fields(schema))
    settings: list[type] = []
    for method in chosen:
        clash = own & {f.name for f in dataclasses.fields(method.Settings)}
        if clash:
            raise TypeError(f"{method.__name__}.Settings redefines {sorted(clash)} of {schema.__name__}")
        if method.Settings not in settings and dataclasses.fields(method.Settings):
            settings.append(method.Settings)
    combined = dataclasses.make_dataclass(schema.__name__, [], bases=(*reversed(settings), schema))
    combined.__module__, combined.__qualname__ = schema.__module__, schema.__qualname__
    combined.__doc__ = schema.__doc__
    combined.chosen = dict(zip(schema.components, chosen, strict=True))
    combined.base_schema = schema
    return combined


def with_method(config: C, name: str, field: str = "method") -> C:
    """``config`` with another method: settings the new method does not read are dropped, its own take defaults."""
    schema = getattr(type(config), "base_schema", type(config))
    own = {f.name for f in dataclasses.fields(schema)}
    values = {k: v for k, v in config_to_dict(config).items() if k in own}
    return build_config(schema, {**values, field: name})


def chosen_methods(config: Any) -> dict[str, type]:
    """``{component field: the method class the config chose}`` (empty for a schema without components)."""
    return dict(getattr(type(config), "chosen", None) or {})


def _set_dotted(values: dict[str, Any], dotted: str, value: Any, schema: type) -> None:
    """Put ``value`` at ``a.b.c`` in the nested mapping, checking each key against the schema."""
    keys = dotted.split(".")
    node, current = values, schema
    for depth, key in enumerate(keys):
        fields = _fields(current)
        if key not in fields:
            raise _unknown_key(key, list(fields), ".".join(keys[:depth]) or "the command line", current)
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
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(err)}; fix the file") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must contain a mapping of settings, got {type(loaded).__name__}")
        values = loaded or {}
    pairs = parse_overrides(overrides)
    schema = resolve_schema(schema, {**values, **dict(pairs)})  # the method's settings join the schema
    fields = _fields(schema)
    for key in values:
        if key not in fields:
            raise _unknown_key(key, list(fields), str(path), schema)
    for dotted, value in pairs:
        _set_dotted(values, dotted, value, schema)
    if values.get("resume") == "auto":
        raise ConfigError(
            "resume=auto is now resume=true, which does the same: continue from output_dir's newest checkpoint, or "
            "start the run when there is none"
        )
    return build_config(schema, values)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's complaint in one line: what is wrong and where (1-based line and column)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


# ----------------------------------------------------------------------------------------------
# The command line: --help from the schema, --print-config


def _comments_by_line(source: str) -> tuple[dict[int, str], set[int]]:
    """``({line: comment text}, {lines holding nothing but a comment})``."""
    comments, alone = {}, set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
            if not token.line[: token.start[1]].strip():
                alone.add(token.start[0])
    return comments, alone


def _meaning(node: ast.AnnAssign, comments: dict[int, str], alone: set[int]) -> str:
    """The comment on the field's line(s), else the comment block right above it (not a ``# --- section``)."""
    lines = range(node.lineno, (node.end_lineno or node.lineno) + 1)
    inline = next((comments[n] for n in lines if n in comments and n not in alone), "")
    if inline:
        return inline
    block, n = [], node.lineno - 1
    while n in alone and not comments[n].startswith("---"):
        block.insert(0, comments[n])
        n -= 1
    return " ".join(block)


def field_help(schema: type) -> dict[str, str]:
    """``{field: meaning}`` from each field's ``# comment`` (on its line, else right above it).

    Base classes first: a subclass that gives a field a new default without a comment keeps the meaning.

    A field without a comment maps to ``""``; a class whose source cannot be read contributes nothing.
    """
    meanings: dict[str, str] = {}
    for cls in reversed(schema.__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):
            continue
        comments, alone = _comments_by_line(source)
        body = next(node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)).body
        for node in body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                meaning = _meaning(node, comments, alone)
                meanings[node.target.id] = meaning or meanings.get(node.target.id, "")
    return {name: meanings.get(name, "") for name in _fields(schema)}


def _type_text(tp: Any) -> str:
    if tp is type(None):
        return "None"
    if isinstance(tp, type) and typing.get_origin(tp) is None:
        return tp.__name__
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_text(a) for a in typing.get_args(tp))
    return str(tp).replace("typing.", "")


def _yaml_inline(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 20).splitlines()[0]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def describe_fields(schema: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(key, type, default as YAML, meaning)`` for every field, nested dataclass fields as dotted keys."""
    rows = []
    meanings = field_help(schema)
    for name, (f, tp) in _fields(schema).items():
        default = _default(f)
        if dataclasses.is_dataclass(tp):
            rows.append((prefix + name, tp.__name__, "(group)", meanings[name]))
            rows += describe_fields(tp, f"{prefix}{name}.")
            continue
        shown = "(required)" if default is dataclasses.MISSING else _yaml_inline(_as_yaml_value(default))
        rows.append((prefix + name, _type_text(tp), shown, meanings[name]))
    return rows


def _as_yaml_value(value: Any) -> Any:
    """A field value as it appears in YAML (dataclasses as mappings, tuples as lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return list(value) if isinstance(value, tuple) else value


def config_help(schema: type) -> str:
    """The field listing of ``--help``: ``key: type = default`` and its meaning on the next line.

    The recipe's own fields first, then each method's settings, grouped by the methods that read them.
    """
    lines = ["config fields (override any as key=value, in YAML syntax; nested fields as a.b=value):"]
    lines += _field_lines(describe_fields(schema))
    for field, registry in getattr(schema, "components", {}).items():
        lines += ["", *_method_settings_help(field, registry)]
    return "\n".join(lines)


def _field_lines(rows: list[tuple[str, str, str, str]]) -> list[str]:
    lines = []
    for key, tp, default, meaning in rows:
        lines.append(f"  {key}: {tp} = {default}")
        if meaning:
            lines.append(f"      {meaning}")
    return lines


def _method_settings_help(field: str, registry: Registry) -> list[str]:
    """The settings of every method of ``registry``, one group per set of methods that read them."""
    readers: dict[str, list[str]] = {}
    rows: dict[str, tuple[str, str, str, str]] = {}
    for cls in registry:
        for row in describe_fields(cls.Settings):
            readers.setdefault(row[0], []).append(cls.name)
            rows.setdefault(row[0], row)
    groups: dict[tuple[str, ...], list[str]] = {}
    for key, names in readers.items():
        groups.setdefault(tuple(names), []).append(key)
    lines = [f"settings of each {field} (a setting the chosen {field} does not read is refused):"]
    for names, keys in groups.items():
        lines.append(f" read by {field}={' | '.join(names)}:")
        lines += _field_lines([rows[key] for key in keys])
    without = [cls.name for cls in registry if not dataclasses.fields(cls.Settings)]
    if without:
        lines.append(f" {field}={' | '.join(without)}: no settings of its own")
    return lines


def parse_config(schema: type[C], argv: Sequence[str] | None = None, description: str = "") -> C:
    """The command line of every recipe: ``--config FILE [--print-config] [key=value ...]``.

    ``--help`` lists every field of ``schema``; ``--print-config`` prints the resolved config as YAML
    and exits before the recipe touches data or devices (once, from rank 0, under ``accelerate launch``).
    """
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=config_help(schema),
    )
    parser.add_argument("--config", default=None, help="YAML file with the run's settings")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config (file + overrides) as YAML and exit"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)
    try:
        config = load_config(schema, args.config, args.overrides)
    except ConfigError as err:
        record_error(f"config error: {err}")  # for the Makefile's wrapper of accelerate launch
        parser.exit(2, f"config error: {err}\n")
    if args.print_config:
        if int(os.environ.get("RANK", "0")) == 0:
            sys.stdout.write(yaml.safe_dump(config_to_dict(config), sort_keys=False))
        parser.exit(0)
    return config


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
    write_text_atomic(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return path
