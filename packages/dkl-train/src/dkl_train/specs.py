"""What every data backend shares: the datasets' specs and the per-sample seed of the random draws.

:mod:`dkl_train.data` (the ``pil`` backend and :func:`~dkl_train.data.build_datasets`) and
:mod:`dkl_train.gpu_decode` (the ``gpu`` backend) both import this module, which imports neither:
``data`` re-exports these names, so ``from dkl_train.data import get_spec`` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError


class UnknownDatasetError(UserError, ValueError):
    """A dataset name that has no spec (a typo in ``dataset=``): reported in one line, not as a bug."""


@dataclass(frozen=True)
class DatasetSpec:
    """What a recipe needs to know about a dataset: classes, image size, normalisation, where it comes from."""

    name: str
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    hub_id: str | None = None  # Hugging Face Hub dataset id (CIFAR)
    hub_columns: tuple[tuple[str, str], ...] = ()  # renames to (image, label)


DATASETS: dict[str, DatasetSpec] = {
    # mean/std of the upsampled digits over all 1,797 images (grey, so the same for each channel).
    "digits": DatasetSpec("digits", 10, 32, (0.3055, 0.3055, 0.3055), (0.3235, 0.3235, 0.3235)),
    "cifar10": DatasetSpec(
        "cifar10", 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        hub_id="uoft-cs/cifar10", hub_columns=(("img", "image"), ("label", "label")),
    ),
    # The normalisation mdistiller uses for CIFAR-100 (recipes.md section 1).
    "cifar100": DatasetSpec(
        "cifar100", 100, 32, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761),
        hub_id="uoft-cs/cifar100", hub_columns=(("img", "image"), ("fine_label", "label")),
    ),
    "imagenet": DatasetSpec("imagenet", 1000, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}  # fmt: skip


def get_spec(name: str) -> DatasetSpec:
    """The spec of dataset ``name``; :class:`UnknownDatasetError` naming the known ones otherwise."""
    if name not in DATASETS:
        raise UnknownDatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A distinct 63-bit seed for each (run seed, epoch, sample index)."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63 - 1)
