"""Load weights from the checkpoint formats the recipes meet, and fail loudly on any mismatch.

Formats (all found automatically unless ``key`` says otherwise):

- mdistiller teachers (``cifar_teachers.tar``): ``{"model": state_dict, "optimizer": ..., ...}``.
- RobustBench / TRADES / DM checkpoints: a plain state dict or ``{"state_dict": ...}`` /
  ``{"model_state_dict": ...}``, keys possibly prefixed by ``module.`` (``nn.DataParallel``).
- USB's ImageNet-pretrained ViT: ``{"model": state_dict}`` with a 1000-class head; ``fmt="usb"``
  drops the head and resamples the position embedding (see ``vit.py``).
- Our own files: a plain state dict (``torch.save(model.state_dict())``, Accelerate's
  ``model.safetensors`` / ``pytorch_model.bin``) or any of the above containers.

Missing and unexpected keys are errors under ``strict=True`` and warnings otherwise (never silent);
a shape mismatch is always an error that names the key and both shapes.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError

# Containers tried in this order when ``key`` is not given.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model")
# Wrappers whose prefix is stripped when *every* key carries it (DataParallel/DDP, torch.compile).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 25

StateDict = dict[str, torch.Tensor]
Adapter = Callable[[StateDict, nn.Module], tuple[StateDict, list[str]]]


class CheckpointMismatchError(UserError, RuntimeError):
    """The checkpoint does not fit the model: missing/unexpected keys or wrong shapes (all listed)."""


class CheckpointReadError(UserError, RuntimeError):
    """The checkpoint file cannot be read: damaged or truncated, or it needs ``weights_only=False``."""


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did, for logs and for the recipes' "teacher verified" line."""

    source: str
    container_key: str | None
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: where from, how many tensors, anything not loaded, what was adapted."""
        where = f"{self.source}" + (f"[{self.container_key!r}]" if self.container_key else "")
        parts = [f"loaded {self.loaded} tensors from {where}"]
        if self.missing:
            parts.append(f"missing {len(self.missing)}: {_listing(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected {len(self.unexpected)}: {_listing(self.unexpected)}")
        parts += self.notes
        return "; ".join(parts)


def _listing(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def _numpy_safe_globals() -> list[Any]:
    """Numpy scalar types some training scripts pickle next to the weights (``best_acc`` ...)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with torch's usual installs
        return []
    multiarray = getattr(np, "_core", None) or np.core
    types: list[Any] = [multiarray.multiarray.scalar, np.dtype]
    types += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return types


def read_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu", weights_only: bool = True) -> Any:
    """Read a ``.safetensors`` file or a ``torch.save`` file (with ``weights_only`` unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=str(map_location))
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as error:
        if not weights_only or not _readable_container(path):
            raise CheckpointReadError(
                f"cannot read {path} ({path.stat().st_size:,} bytes): the file is damaged or truncated, or not a "
                f"PyTorch checkpoint ({type(error).__name__}: {str(error).splitlines()[0][:200]}). Download or copy "
                "it again"
            ) from error
        raise CheckpointReadError(
            f"{path} holds objects that weights_only=True does not unpickle ({str(error).splitlines()[0][:200]}). "
            "If you trust this file, pass weights_only=False to load_checkpoint/read_checkpoint"
        ) from error


def _readable_container(path: Path) -> bool:
    """Whether ``path`` is a whole ``torch.save`` file: a complete zip archive, or a legacy pickle stream."""
    if zipfile.is_zipfile(path):
        return True
    with path.open("rb") as file:
        return file.read(1) == b"\x80"  # the pickle protocol opcode of torch's legacy format


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(checkpoint: Any, key: str | None = None) -> tuple[StateDict, str | None]:
    """Find the state dict inside a checkpoint: ``checkpoint[key]`` if given, else the checkpoint
    itself when it maps names to tensors, else the first of :data:`CONTAINER_KEYS` that does."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatchError(f"a checkpoint must be a mapping, got {type(checkpoint).__name__}")
    if key is not None:
        if key not in checkpoint:
            raise CheckpointMismatchError(f"checkpoint has no key {key!r}; its keys: {_listing(list(checkpoint))}")
        state = checkpoint[key]
        if not _is_state_dict(state):
            raise CheckpointMismatchError(f"checkpoint[{key!r}] is not a mapping of names to tensors")
        return dict(state), key
    if _is_state_dict(checkpoint):
        return dict(checkpoint), None
    for candidate in CONTAINER_KEYS:
        if _is_state_dict(checkpoint.get(candidate)):
            return dict(checkpoint[candidate]), candidate
    raise CheckpointMismatchError(
        f"no state dict found in checkpoint (looked for {CONTAINER_KEYS} and a plain name->tensor mapping); "
        f"its keys: {_listing(list(checkpoint))}. Pass key=... to pick one."
    )


def strip_wrapper_prefixes(state: StateDict, extra_prefix: str | None = None) -> tuple[StateDict, list[str]]:
    """Remove ``module.`` / ``_orig_mod.`` (and ``extra_prefix``) when every key carries them."""
    notes = []
    prefixes = WRAPPER_PREFIXES + ((extra_prefix,) if extra_prefix else ())
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                notes.append(f"stripped prefix {prefix!r}")
                changed = True
    if extra_prefix and f"stripped prefix {extra_prefix!r}" not in notes:
        raise CheckpointMismatchError(f"not every checkpoint key starts with prefix={extra_prefix!r}")
    return state, notes


def check_compatible(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, strict: bool
) -> tuple[list[str], list[str]]:
    """Compare names and shapes with ``model.state_dict()``; raise on shape mismatches always and on
    missing/unexpected keys when ``strict``; return (missing, unexpected)."""
    expected = model.state_dict()
    optional = _optional_keys(model)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and k not in optional]
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatch(es): " + "; ".join(wrong_shape[:_MAX_LISTED]))
    if strict and missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if problems:
        raise CheckpointMismatchError(f"checkpoint does not fit {type(model).__name__}: " + " | ".join(problems))
    return missing, unexpected


def _optional_keys(model: nn.Module) -> set[str]:
    """Entries a module accepts from checkpoints without having them in its state dict: declared
    by an ``optional_state_keys`` attribute and consumed in its ``_load_from_state_dict``."""
    keys = set()
    for prefix, module in model.named_modules():
        for name in getattr(module, "optional_state_keys", ()):
            keys.add(f"{prefix}.{name}" if prefix else name)
    return keys


def load_checkpoint(
    model: nn.Module,
    source: str | Path | Mapping[str, Any],
    *,
    key: str | None = None,
    strict: bool = True,
    fmt: str = "auto",
    prefix: str | None = None,
    map_location: str | torch.device = "cpu",
    weights_only: bool = True,
) -> LoadReport:
    """Load ``source`` (a path or an in-memory checkpoint) into ``model`` in place.

    Args:
        model: the network to fill.
        source: file path (``torch.save`` or ``.safetensors``) or an already loaded checkpoint.
        key: container key holding the state dict (``"model"``, ``"state_dict"``, ``"ema_model"`` ...);
            found automatically when omitted.
        strict: when True, any missing or unexpected key raises :class:`CheckpointMismatchError`;
            when False they are loaded around, listed in the report and warned about.
        fmt: ``"auto"`` (containers and wrapper prefixes found automatically)
            or ``"usb"`` (USB's pretrained ViT: head dropped, position embedding resampled).
        prefix: an extra prefix every key carries and that should go (e.g. ``"0."`` for the DKL
            adversarial scripts' ``nn.Sequential(Normalize, net)`` wrapper).
        map_location, weights_only: passed to :func:`torch.load`.

    Returns:
        a :class:`LoadReport` (``report.summary()`` gives one line for the logs).
    """
    if fmt not in _ADAPTERS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; known: {sorted(_ADAPTERS)}")
    if isinstance(source, Mapping):
        checkpoint, where = source, "<in-memory checkpoint>"
    else:
        checkpoint, where = read_checkpoint(source, map_location=map_location, weights_only=weights_only), str(source)
    state, container_key = extract_state_dict(checkpoint, key)
    state, notes = strip_wrapper_prefixes(state, prefix)
    adapter = _ADAPTERS[fmt]
    if adapter is not None:
        state, adapted = adapter(state, model)
        notes += adapted
    notes += [f"{k} taken from the checkpoint" for k in sorted(_optional_keys(model) & set(state))]
    missing, unexpected = check_compatible(model, state, strict=strict and fmt != "usb")
    if fmt == "usb":
        missing, unexpected = _usb_allowed(missing, unexpected, strict)
    if missing or unexpected:
        warnings.warn(
            f"partial load from {where}: missing {_listing(missing) or 'none'}; unexpected {_listing(unexpected) or 'none'}",
            stacklevel=2,
        )
    model.load_state_dict({k: v for k, v in state.items() if k not in unexpected}, strict=False)
    return LoadReport(where, container_key, len(state) - len(unexpected), missing, unexpected, notes)


def _usb_allowed(missing: list[str], unexpected: list[str], strict: bool) -> tuple[list[str], list[str]]:
    """For USB's pretrained backbone the fresh head is expected to be missing; nothing else may be."""
    from .vit import USB_FRESH_KEYS

    others = [k for k in missing if k not in USB_FRESH_KEYS]
    if strict and (others or unexpected):
        raise CheckpointMismatchError(
            f"USB checkpoint does not fit the ViT: missing {_listing(others) or 'none'}; "
            f"unexpected {_listing(unexpected) or 'none'}"
        )
    return others, unexpected


def _usb_adapter(state: StateDict, model: nn.Module) -> tuple[StateDict, list[str]]:
    from .vit import adapt_usb_state_dict

    return adapt_usb_state_dict(state, model)


_ADAPTERS: dict[str, Adapter | None] = {"auto": None, "usb": _usb_adapter}
