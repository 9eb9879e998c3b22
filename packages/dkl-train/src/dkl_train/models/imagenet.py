"""ImageNet models through timm: ``create_model("timm:<name>", ...)``.

The KD ImageNet pairs use ``timm:resnet34.tv_in1k`` -> ``timm:resnet18`` and
``timm:resnet50.tv_in1k`` -> a MobileNetV1. The ``.tv_in1k`` tags are the original torchvision
weights (recipes.md); timm's ResNet uses torchvision's parameter names, so a torchvision
``resnet34-*.pth`` file also loads. timm's only MobileNetV1 family is ``mobilenetv1_100``
(also ``_100h``, ``_125``): the paper's 1.0-width depthwise-separable network (about 4.2M
parameters with 1000 classes), but timm's pretrained tags (``ra4_e3600_r224_in1k``) come from a
modern recipe, not the original Google weights, and its activation is ReLU6 where mdistiller's
(ReviewKD's) ImageNet MobileNetV1 uses ReLU: ``create_model("timm:mobilenetv1_100", act_layer="relu")``
gives that network layer for layer. The student is trained from scratch in the KD tables, so only the
architecture matters there.

No machine here reaches the Hugging Face hub: ``pretrained=True`` is for users with access;
``pretrained_file=`` loads the same weights from a local file through timm's own pretrained path
(its key filters apply, and a classifier of another size is dropped, as timm does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

TIMM_PREFIX = "timm:"


def create_timm_model(
    name: str,
    num_classes: int | None = None,
    *,
    pretrained: bool = False,
    pretrained_file: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build timm model ``name`` (``"resnet34.tv_in1k"``; without the ``timm:`` prefix).

    Args:
        num_classes: classifier size; ``None`` keeps timm's default (1000 for ImageNet models).
        pretrained: fetch timm's weights for the tag (needs the hub).
        pretrained_file: a local file with those weights (``.pth``/``.bin``/``.safetensors``); implies
            ``pretrained``.
        **kwargs: passed to :func:`timm.create_model` (``drop_path_rate``, ``img_size`` ...).
    """
    import timm  # imported here so that the CIFAR zoo does not pay for it

    if not timm.is_model(name):
        raise ValueError(f"timm has no model {name!r}; see timm.list_models(), e.g. 'resnet18', 'mobilenetv1_100'")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if pretrained_file is not None:
        path = Path(pretrained_file)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained_file for timm:{name} not found: {path}")
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as error:
        if not pretrained:
            raise
        raise RuntimeError(
            f"could not fetch pretrained weights for timm:{name} ({error}). Without hub access, download "
            "them elsewhere and pass pretrained_file=PATH."
        ) from error
