"""Per-stage features of the KD architectures, as mdistiller's models return them (for ReviewKD).

mdistiller's models return ``(logits, feats)`` where ``feats["feats"]`` holds each stage's output after
its final ReLU, ``feats["preact_feats"]`` the same maps before that ReLU and ``feats["pooled_feat"]`` the
classifier's input. Our models return logits only; :func:`forward_features` gives the other three from
the same single forward pass, as :class:`Features`:

- the CIFAR zoo through each model's ``forward_stages`` (its ReLUs are functional, so hooks cannot see
  them; the blocks expose their pre-activation instead, and plain ``model(x)`` is unchanged);
- timm's ResNets and MobileNetV1 through forward hooks on the last activation module of each stage
  (the pre-activation is that module's input, the feature its output, ``pooled`` the classifier's
  input). timm builds those ReLUs in place, which would overwrite the captured input, so the hooked
  modules run with ``inplace=False`` for the call (restored afterwards, hooks removed).

What each architecture gives (channels@side at 32 px for CIFAR, 224 px for ImageNet; "=" means the
same tensor in both lists)::

    model                        feats                                  preact_feats                  pooled
    resnet8/14/20/32/56/110      stem 16@32, 16@32, 32@16, 64@8         = stem, then pre-ReLU sums    64
    resnet8x4, resnet32x4        stem 32@32, 64@32, 128@16, 256@8       = stem, then pre-ReLU sums    256
    ResNet18 (CIFAR)             stem 64@32, 64@32, 128@16, 256@8,      = stem, then pre-ReLU sums    512
                                 512@4
    ResNet50 (CIFAR)             stem 64@32, 256@32, 512@16, 1024@8,    = stem, then pre-ReLU sums    2048
                                 2048@4
    wrn_d_k                      stem conv 16@32, 16k@32, 32k@16,       = stem, then BN(stage) before 64k
                                 64k@8 (raw stage outputs, see below)   the next ReLU
    vgg8/11/13/16/19             64@32 (post-ReLU), 128@16, 256@8,      = f0, then each group before  512
                                 512@4, 512@4                           its final ReLU
    MobileNetV2 (half)           stem 16@16, 12@16, 16@8, 48@4, 160@2   = feats (no final ReLU)       1280
    ShuffleV1                    stem 24@32, 240@16, 480@8, 960@4       = stem, then pre-ReLU joins   960
    ShuffleV2                    stem 24@32, 116@16, 232@8, 464@4       = stem, then pre-shuffle cat  1024
    timm resnet18/34             64@112, 64@56, 128@28, 256@14, 512@7   stem BN output (before the    512
                                                                        max-pool), pre-ReLU sums
    timm resnet50                64@112, 256@56, 512@28, 1024@14,       as resnet18                   2048
                                 2048@7
    timm mobilenetv1_100         128@56, 256@28, 512@14, 1024@7         the pointwise BN outputs      1024

Definitions that are mdistiller's and easy to get wrong:

- CIFAR ResNets, ShuffleV1/V2, VGG: the first entry (stem, VGG's group 0) is *after* its ReLU in both
  lists; ``relu(preact) == feat`` for every later entry except ShuffleV2's.
- ShuffleV2: ``preact`` is ``cat([kept half, branch before its ReLU])`` before the channel shuffle, the
  feature the shuffled ``cat([kept half, relu(branch)])``.
- WRN (pre-activation): ``feats`` are the stem convolution and the raw stage outputs (no ReLU of their
  own); ``preact_feats[k]`` is stage k's output through the BN that precedes the next ReLU (stage k+1's
  first ``bn1``, the head's ``bn1`` for the last); ``pooled`` is the average of ``relu(bn1(last))``.
- MobileNetV2: mdistiller returns no ``preact_feats``; its stage outputs are linear bottlenecks, so
  ``preact_feats`` here is the ``feats`` list itself.
- ImageNet ResNet: the stem entry is ``bn1``'s output before the max-pool (``relu`` of it in ``feats``);
  MobileNetV1 has no stem entry (stages 1..4 only, as mdistiller's ``feat1..feat4``). mdistiller's
  MobileNetV1 uses ReLU (``create_model("timm:mobilenetv1_100", act_layer="relu")``); with timm's default
  ReLU6 the lists are the input and output of the ReLU6.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

SUPPORTED = (
    "the CIFAR zoo (CifarResNet: resnet8..110/8x4/32x4, CifarResNetV2: ResNet18/ResNet50, WideResNet: wrn_*, "
    "CifarVGG: vgg*, CifarMobileNetV2: MobileNetV2, CifarShuffleNetV1/V2: ShuffleV1/ShuffleV2), timm's ResNet "
    "(timm:resnet18/34/50 ...) and timm's MobileNetV1 (timm:mobilenetv1_100)"
)


class Features(NamedTuple):
    """One forward pass's features, in mdistiller's order (shallowest first)."""

    feats: list[Tensor]
    """each stage's output after its final ReLU (mdistiller ``feats``)"""
    preact_feats: list[Tensor]
    """the same before that ReLU (mdistiller ``preact_feats``)"""
    pooled: Tensor
    """``[N, C]``, the classifier's input (mdistiller ``pooled_feat``)"""


def forward_features(model: nn.Module, x: Tensor) -> tuple[Tensor, Features]:
    """(logits, Features) of one forward pass; the logits are those of ``model(x)``.

    Raises:
        TypeError: ``model`` is not one of the supported architectures (the message names them).
    """
    forward_stages = getattr(model, "forward_stages", None)
    if callable(forward_stages):
        return forward_stages(x)
    acts, classifier = _timm_hook_points(model)
    return _forward_hooked(model, x, acts, classifier)


def _unsupported(model: nn.Module, why: str = "") -> TypeError:
    return TypeError(f"forward_features does not support {type(model).__name__}{why}; it supports {SUPPORTED}")


def _timm_hook_points(model: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    """The activation modules whose input/output are the features, and the classifier, of a timm model."""
    if not type(model).__module__.startswith("timm."):
        raise _unsupported(model)
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv
    from timm.models.efficientnet import EfficientNet
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    if isinstance(model, ResNet):
        acts: list[nn.Module] = [model.act1]
        for k in range(1, 5):
            last = getattr(model, f"layer{k}")[-1]
            if isinstance(last, Bottleneck):
                acts.append(last.act3)
            elif isinstance(last, BasicBlock):
                acts.append(last.act2)
            else:
                raise _unsupported(model, f" with {type(last).__name__} blocks")
        return acts, model.get_classifier()
    if isinstance(model, EfficientNet):
        # MobileNetV1's layout: stem, then five stages of depthwise-separable blocks ending on an activation.
        stages = list(model.blocks)
        blocks = [block for stage in stages for block in stage]
        if len(stages) != 5 or not all(isinstance(block, DepthwiseSeparableConv) for block in blocks):
            raise _unsupported(model, " other than a MobileNetV1 (five stages of depthwise-separable blocks)")
        acts = [stage[-1].bn2.act for stage in stages[1:]]
        if any(isinstance(act, nn.Identity) for act in acts):
            raise _unsupported(model, " whose pointwise convolutions have no activation")
        return acts, model.get_classifier()
    raise _unsupported(model)


def _forward_hooked(
    model: nn.Module, x: Tensor, acts: list[nn.Module], classifier: nn.Module
) -> tuple[Tensor, Features]:
    """Run ``model(x)`` capturing each act's input and output and the classifier's input."""
    n = len(acts)
    inputs: list[Tensor | None] = [None] * n
    outputs: list[Tensor | None] = [None] * n
    pooled: list[Tensor] = []

    def capture(i: int) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(_module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            inputs[i], outputs[i] = args[0], output

        return hook

    def capture_pooled(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
        pooled.append(args[0])

    handles = []
    made_out_of_place = []
    try:
        for i, act in enumerate(acts):
            if getattr(act, "inplace", False):
                act.inplace = False
                made_out_of_place.append(act)
            handles.append(act.register_forward_hook(capture(i)))
        handles.append(classifier.register_forward_pre_hook(capture_pooled))
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
        for act in made_out_of_place:
            act.inplace = True
    if any(t is None for t in inputs) or len(pooled) != 1:
        raise RuntimeError(f"{type(model).__name__}'s forward did not pass every hooked stage once")
    feats = [t for t in outputs if t is not None]
    preacts = [t for t in inputs if t is not None]
    return logits, Features(feats, preacts, torch.flatten(pooled[0], 1))
