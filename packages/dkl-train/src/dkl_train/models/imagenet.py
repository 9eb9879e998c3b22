"""ImageNet models through timm: ``create_model("timm:<name>", ...)``.

The KD ImageNet pairs use ``timm:resnet34.tv_in1k`` -> ``timm:resnet18`` and
``timm:resnet50.tv_in1k`` -> a MobileNetV1. The ``.tv_in1k`` tags are the original torchvision
weights; timm's ResNet uses torchvision's parameter names, so a torchvision
``resnet34-*.pth`` file also loads. timm's only MobileNetV1 family is ``mobilenetv1_100``
(also ``_100h``, ``_125``): the paper's 1.0-width depthwise-separable network (about 4.2M
parameters with 1000 classes), but timm's pretrained tags (``ra4_e3600_r224_in1k``) come from a
modern recipe, not the original Google weights, and its activation is ReLU6 where mdistiller's
(ReviewKD's) ImageNet MobileNetV1 uses ReLU: ``create_model("timm:mobilenetv1_100", act_layer="relu")``
gives that network layer for layer. The student is trained from scratch in the KD tables, so only the
architecture and the initial weights matter there.

Initialisation of a student trained from scratch, matched to the released KD runs (which used
mdistiller's ImageNet definitions):

- ResNet-18: mdistiller's and torchvision's ResNets draw conv weights from N(0, 2 / fan_out) and
  leave every BN at weight 1. timm's ``resnet18`` does the same but, by default, also zeroes the
  weight of the last BN of each block; ``zero_init_last=False`` turns that off, and then the weights
  are bit-identical to torchvision's ``resnet18()`` under the same seed.
- MobileNetV1: timm initialises it the TensorFlow way (conv N(0, 2 / fan_out), a scaled uniform
  classifier), while mdistiller's MobileNetV1 keeps every layer's PyTorch default. ``init="pytorch"``
  re-runs each layer's own ``reset_parameters()`` in module order from the random state the model
  was built with, which gives exactly the weights of a PyTorch-default network of the same layout.

No machine here reaches the Hugging Face hub: ``pretrained=True`` is for users with access;
``pretrained_file=`` loads the same weights from a local file through timm's own pretrained path
(its key filters apply, and a classifier of another size is dropped, as timm does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

TIMM_PREFIX = "timm:"


def create_timm_model(
    name: str,
    num_classes: int | None = None,
    *,
    pretrained: bool = False,
    pretrained_file: str | Path | None = None,
    init: Literal["timm", "pytorch"] = "timm",
    **kwargs: Any,
) -> nn.Module:
    """Build timm model ``name`` (``"resnet34.tv_in1k"``; without the ``timm:`` prefix).

    Args:
        num_classes: classifier size; ``None`` keeps timm's default (1000 for ImageNet models).
        pretrained: fetch timm's weights for the tag (needs the hub).
        pretrained_file: a local file with those weights (``.pth``/``.bin``/``.safetensors``); implies
            ``pretrained``.
        init: ``"timm"`` keeps timm's initialisation; ``"pytorch"`` gives every layer PyTorch's default
            (mdistiller's MobileNetV1). Only for a model trained from scratch (not with pretrained weights).
        **kwargs: passed to :func:`timm.create_model` (``drop_path_rate``, ``img_size``,
            ``zero_init_last`` ...).
    """
    import timm  # imported here so that the CIFAR zoo does not pay for it

    if not timm.is_model(name):
        raise ValueError(f"timm has no model {name!r}; see timm.list_models(), e.g. 'resnet18', 'mobilenetv1_100'")
    if init not in ("timm", "pytorch"):
        raise ValueError(f"init must be 'timm' or 'pytorch', got {init!r}")
    if init == "pytorch" and (pretrained or pretrained_file is not None):
        raise ValueError(
            f"init='pytorch' re-initialises every layer, which would discard timm:{name}'s pretrained weights"
        )
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if init == "pytorch":
        rng = torch.get_rng_state()
        model = timm.create_model(name, **kwargs)
        torch.set_rng_state(rng)  # the draws a PyTorch-default network of this layout makes from the same state
        return reset_to_pytorch_defaults(model)
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


def reset_to_pytorch_defaults(model: nn.Module) -> nn.Module:
    """Call every submodule's own ``reset_parameters()`` in module order (PyTorch's default initialisation)."""
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return model
