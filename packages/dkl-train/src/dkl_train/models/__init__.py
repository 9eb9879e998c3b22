"""The model zoo the three recipes share.

- CIFAR KD zoo with mdistiller's names and state-dict layout: ``resnet8/14/20/32/44/56/110``,
  ``resnet8x4``, ``resnet32x4``, ``wrn_16_1``, ``wrn_16_2``, ``wrn_40_1``, ``wrn_40_2``,
  ``vgg8/11/13/16/19`` (with BN), ``MobileNetV2`` (half width), ``ShuffleV1``, ``ShuffleV2``,
  ``ResNet18``, ``ResNet50`` (CIFAR variants). Inputs: normalised by the data pipeline.
- Adversarial training: ``wrn_34_10``, ``wrn_34_20`` (TRADES; ``sub_block1=True`` for the LBGAT files) and
  ``wrn_28_10_silu`` (DeepMind style, normalises internally); they take [0, 1] images and load RobustBench's
  ``Cui2023Decoupled_*`` and ``Cui2020Learnable_*`` files. ``resnet18_lbgat``: LBGAT's natural model.
- SSL: ``vit_small_patch2_32`` (timm ViT-S/2 at 32 px); ``fmt="usb"`` loads USB's pretrained file.
- ImageNet: any timm model as ``"timm:<name>"`` (``timm:resnet34.tv_in1k``, ``timm:mobilenetv1_100``).

Every model's ``forward(x)`` returns logits ``[B, num_classes]``.

Stage features (for feature distillation, ReviewKD): ``forward_features(model, x)`` returns
``(logits, Features(feats, preact_feats, pooled))`` with mdistiller's per-stage maps after and before
each stage's final ReLU and the pooled classifier input, for the CIFAR KD zoo and timm's ResNets and
MobileNetV1 (see :mod:`.features` for what each architecture gives).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from . import cifar_resnet, cifar_resnet50, cifar_vgg, cifar_wrn, mobilenetv2, robust_wrn, shufflenet, vit  # noqa: F401
from .checkpoint import (
    CheckpointMismatchError,
    CheckpointReadError,
    LoadReport,
    extract_state_dict,
    load_checkpoint,
    read_checkpoint,
)
from .features import Features, forward_features
from .imagenet import TIMM_PREFIX, create_timm_model
from .registry import get_factory, register_model, registered_names


def create_model(
    name: str,
    num_classes: int | None = None,
    *,
    checkpoint: str | Path | None = None,
    checkpoint_key: str | None = None,
    checkpoint_format: str = "auto",
    **kwargs: Any,
) -> nn.Module:
    """Build model ``name`` with a ``num_classes``-way classifier, optionally loading weights.

    Args:
        name: a name from :func:`list_models` or ``"timm:<timm model name>"``.
        num_classes: classifier size (required except for timm models, where ``None`` keeps timm's
            default of 1000).
        checkpoint: a file to load strictly with :func:`load_checkpoint` (mdistiller, RobustBench,
            USB with ``checkpoint_format="usb"``, or our own).
        checkpoint_key: container key of that file when it is not found automatically.
        checkpoint_format: ``"auto"`` or ``"usb"``.
        **kwargs: architecture options (``drop_rate`` for WRNs, ``drop_path_rate`` for the ViT,
            ``mean``/``std`` for ``wrn_28_10_silu``; for timm models ``pretrained``,
            ``pretrained_file`` and anything :func:`timm.create_model` takes).

    Raises:
        ValueError: unknown name (the message lists the known ones) or missing ``num_classes``.
        CheckpointMismatchError: the checkpoint does not fit (keys and shapes named).
    """
    if name.startswith(TIMM_PREFIX):
        model = create_timm_model(name[len(TIMM_PREFIX) :], num_classes, **kwargs)
    else:
        factory = get_factory(name)
        if num_classes is None:
            raise ValueError(f"create_model({name!r}) needs num_classes (e.g. 100 for CIFAR-100)")
        model = factory(num_classes=num_classes, **kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, key=checkpoint_key, fmt=checkpoint_format)
    return model


def list_models() -> list[str]:
    """Names :func:`create_model` knows besides ``"timm:<name>"`` (sorted)."""
    return registered_names()


__all__ = [
    "CheckpointMismatchError",
    "CheckpointReadError",
    "Features",
    "LoadReport",
    "create_model",
    "extract_state_dict",
    "forward_features",
    "list_models",
    "load_checkpoint",
    "read_checkpoint",
    "register_model",
]
