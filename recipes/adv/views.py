"""The training views of the adversarial recipe: crop + flip, and the released AutoAugment view.

Images stay in [0, 1] (no normalisation in the data pipeline): the attacks work there, and a model
that wants normalised input normalises internally.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torchvision.transforms import v2

from dkl_train.data import TwoViews, build_transform

if TYPE_CHECKING:
    from dkl_recipe_adv.train import AdvConfig

AUTOAUG_FILL = 128  # grey fill of the geometric AutoAugment ops (the released policy's fill colour)


def autoaugment_view(basic: v2.Compose) -> v2.Compose:
    """``basic``'s crop and flip, then the AutoAugment CIFAR-10 policy (fill 128), then the tensor conversion.

    The released pipeline's order: the policy sees the cropped, flipped image, so its rotations and
    translations fill with grey next to the crop's black padding.
    """
    steps = list(basic.transforms)
    at = next(i for i, step in enumerate(steps) if isinstance(step, v2.ToImage))
    policy = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10, fill=AUTOAUG_FILL)
    return v2.Compose([*steps[:at], policy, *steps[at:]])


def train_transform(config: AdvConfig, spec: Any) -> Callable[[Any], Any]:
    """Crop + flip; with ``autoaug`` also a crop + flip + AutoAugment(CIFAR-10 policy) view.

    The views are ``uint8``; the loader scales them to [0, 1] on the device (``build_datasets(normalize=False)``).
    """
    basic = build_transform(spec, train=True, augment=config.augment, normalize=False, output="uint8")
    if config.augmentation == "basic":
        return basic
    return TwoViews(basic, autoaugment_view(basic), keys=("image", "image_aug"))
