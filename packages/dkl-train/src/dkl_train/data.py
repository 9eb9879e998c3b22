"""Datasets: prepared once with Hugging Face ``datasets`` under ``data/<name>``, then only read from disk.

``python -m dkl_train.data prepare --dataset NAME [--data-dir data] [--imagenet-dir DIR]`` (behind
``make data DATASET=...``) writes a ``DatasetDict`` with ``train`` and ``test`` splits, each with an
``image`` (PIL) and a ``label`` (int) column, using ``save_to_disk``. Training calls
:func:`load_prepared`, which never downloads anything and stops at once, with the exact command to
run, when the dataset is missing.

``digits`` is built offline from scikit-learn's bundled UCI digits (1,797 real 8x8 images), upsampled
to 32x32 RGB with a fixed stratified train/test split, so every CIFAR architecture and the whole
loading path run on it unchanged (the demo and the tests use it).

Augmentation is torchvision ``transforms.v2``, applied per sample in the DataLoader's worker
processes. Each sample's random draw is seeded from ``(seed, epoch, index)`` (see
:class:`TransformedDataset`), so the augmented batches do not depend on the number of processes or
workers, nor on whether the run was interrupted and resumed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
from torchvision.transforms import v2

SPLITS = ("train", "test")


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


class DatasetNotPreparedError(FileNotFoundError):
    """The dataset has not been prepared under ``data_dir``; the message holds the command that prepares it."""


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def dataset_path(name: str, data_dir: str | Path = "data") -> Path:
    return Path(data_dir) / name


def prepare_command(name: str, data_dir: str | Path = "data") -> str:
    """The exact ``make`` command that prepares ``name`` under ``data_dir``."""
    command = f"make data DATASET={name}"
    if name == "imagenet":
        command += " IMAGENET_DIR=/path/to/imagenet  # a folder with train/ and val/ (one sub-folder per class)"
    if Path(data_dir) != Path("data"):
        command = command.replace(f"DATASET={name}", f"DATASET={name} DATA_DIR={data_dir}", 1)
    return command


# ----------------------------------------------------------------------------------------------
# Preparing (once, behind `make data`)


def _save_atomically(dataset_dict: Any, out_dir: Path) -> Path:
    """``save_to_disk`` into a temporary folder, then rename, so a crash never leaves a half-written dataset."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    dataset_dict.save_to_disk(str(tmp))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def build_digits(seed: int = 0, test_fraction: float = 0.25) -> Any:
    """scikit-learn's digits as a ``DatasetDict`` of 32x32 RGB PIL images with a fixed stratified split."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixel values are 0..16; bilinear upsampling keeps the strokes smooth at CIFAR's resolution.
    pixels = np.round(digits.images / 16.0 * 255.0).astype(np.uint8)
    images = [PILImage.fromarray(p).resize((32, 32), PILImage.BILINEAR).convert("RGB") for p in pixels]
    labels = digits.target.astype(int).tolist()
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})

    def split(indices: np.ndarray) -> Any:
        indices = sorted(int(i) for i in indices)
        return Dataset.from_dict(
            {"image": [images[i] for i in indices], "label": [labels[i] for i in indices]}, features=features
        )

    return DatasetDict({"train": split(train_idx), "test": split(test_idx)})


def _standardise(dataset_dict: Any, spec: DatasetSpec) -> Any:
    """Rename the hub's columns to ``image``/``label`` and drop the rest (e.g. CIFAR-100's coarse labels)."""
    from datasets import DatasetDict

    out = {}
    for split, ds in dataset_dict.items():
        for old, new in spec.hub_columns:
            if old != new:
                ds = ds.rename_column(old, new)
        ds = ds.remove_columns([c for c in ds.column_names if c not in ("image", "label")])
        out[split] = ds
    return DatasetDict(out)


def build_cifar(name: str) -> Any:
    """CIFAR-10/100 from the Hugging Face Hub (the one step that needs the network)."""
    import datasets

    spec = get_spec(name)
    return _standardise(datasets.load_dataset(spec.hub_id), spec)


def build_imagenet(image_dir: str | Path) -> Any:
    """ImageNet from a local folder (``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG``) via ``imagefolder``."""
    import datasets

    image_dir = Path(image_dir)
    if not (image_dir / "train").is_dir():
        raise FileNotFoundError(f"{image_dir} has no train/ folder; expected train/<class>/ and val/<class>/")
    loaded = datasets.load_dataset("imagefolder", data_dir=str(image_dir))
    # imagefolder calls a val/ folder "validation"; the recipes evaluate on the split named "test".
    renamed = {("test" if split in ("validation", "val") else split): ds for split, ds in loaded.items()}
    return datasets.DatasetDict(renamed)


def prepare(name: str, data_dir: str | Path = "data", imagenet_dir: str | Path | None = None) -> Path:
    """Build dataset ``name`` and save it under ``data_dir/name`` (replacing an older copy)."""
    get_spec(name)
    if name == "digits":
        built = build_digits()
    elif name in ("cifar10", "cifar100"):
        built = build_cifar(name)
    else:
        if imagenet_dir is None:
            raise ValueError(f"ImageNet is prepared from a local folder: {prepare_command('imagenet', data_dir)}")
        built = build_imagenet(imagenet_dir)
    missing = [s for s in SPLITS if s not in built]
    if missing:
        raise ValueError(f"{name}: the source has no {', '.join(missing)} split (found {', '.join(built)})")
    return _save_atomically(built, dataset_path(name, data_dir))


def load_prepared(name: str, data_dir: str | Path = "data") -> Any:
    """The prepared ``DatasetDict`` (memory-mapped from disk); fails at once, saying how to prepare it."""
    from datasets import load_from_disk

    get_spec(name)
    path = dataset_path(name, data_dir)
    if not (path / "dataset_dict.json").is_file():
        raise DatasetNotPreparedError(
            f"dataset {name!r} is not prepared at {path}. Prepare it once with:\n    {prepare_command(name, data_dir)}"
        )
    return load_from_disk(str(path))


# ----------------------------------------------------------------------------------------------
# Transforms and loaders


def build_transform(spec: DatasetSpec, train: bool, augment: bool = True, normalize: bool = True) -> v2.Compose:
    """The standard transforms of the KD literature for ``spec`` (PIL image in, float tensor out).

    CIFAR-sized data: RandomCrop(32, padding=4) + horizontal flip for training; ImageNet:
    RandomResizedCrop(224) + flip, and Resize(256) + CenterCrop(224) for evaluation. ``normalize=False``
    keeps inputs in [0, 1] (adversarial training defines its threat model there).
    """
    steps: list[Any] = []
    large = spec.image_size > 64
    if train and augment:
        if large:
            steps += [v2.RandomResizedCrop(spec.image_size, antialias=True)]
        else:
            steps += [v2.RandomCrop(spec.image_size, padding=4)]
        steps += [v2.RandomHorizontalFlip()]
    elif large:
        steps += [v2.Resize(int(spec.image_size * 256 / 224), antialias=True), v2.CenterCrop(spec.image_size)]
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if normalize:
        steps += [v2.Normalize(mean=list(spec.mean), std=list(spec.std))]
    return v2.Compose(steps)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A distinct 63-bit seed for each (run seed, epoch, sample index)."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63 - 1)


class TransformedDataset(Dataset):
    """A prepared Hugging Face split with a per-sample transform whose randomness is seeded per sample.

    Keys are ``(epoch, index)`` pairs (what :class:`EpochSampler` yields) or plain indices (epoch 0).
    The transform's random draws come from ``torch``'s global generator, reseeded from
    :func:`sample_seed` before each sample: inside a worker process that generator belongs to the
    worker; in the main process (``num_workers=0``) its state is saved and restored around each
    batch so the training RNG is untouched.
    The transform returns a tensor (stored as ``image``) or a dict of tensors (e.g. weak and strong
    views for semi-supervised learning); the sample's ``label`` is added to it.
    """

    def __init__(self, hf_dataset: Any, transform: Callable[[Any], Any], seed: int = 0) -> None:
        self.data = hf_dataset
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> list[dict[str, Any]]:
        """Batched fetch (the DataLoader uses it when present): one RNG save/restore per batch, not per sample."""
        in_worker = get_worker_info() is not None
        saved = None if in_worker else torch.get_rng_state()
        try:
            return [self._sample(key) for key in keys]
        finally:
            if saved is not None:
                torch.set_rng_state(saved)

    def _sample(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        index = int(index)
        row = self.data[index]
        image = row["image"]
        if image.mode != "RGB":  # ImageNet has greyscale and CMYK files
            image = image.convert("RGB")
        torch.manual_seed(sample_seed(self.seed, epoch, index))
        out = self.transform(image)
        sample = dict(out) if isinstance(out, dict) else {"image": out}
        sample["label"] = int(row["label"])
        sample["index"] = index
        return sample


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` keys, shuffled from ``(seed, epoch)`` alone when ``shuffle``.

    The order of epoch ``e`` is a pure function of the seed and ``e``, so a run resumed at an epoch
    boundary sees exactly the batches an uninterrupted run sees. Accelerate calls :meth:`set_epoch`
    through the prepared loader's ``set_epoch``.
    """

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True, num_samples: int | None = None) -> None:
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.num_samples = num_samples  # truncate each epoch (smoke tests: `max_steps_per_epoch`)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length if self.num_samples is None else min(self.length, self.num_samples)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, 0))
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = range(self.length)
        for index in order[: len(self)]:
            yield (self.epoch, index)


def make_loader(
    dataset: TransformedDataset,
    batch_size: int,
    *,
    train: bool,
    num_workers: int = 0,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader over ``dataset``: shuffled per epoch and ``drop_last`` for training, in order for evaluation.

    Training drops the last incomplete batch (a batch of one breaks BatchNorm, and equal batches keep
    processes in lockstep). Workers stay alive across epochs; memory is pinned when CUDA is present.
    Pass the result to ``accelerator.prepare``, which shards its batches over processes.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), seed=seed, shuffle=train),
        drop_last=train,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def load_splits(config: Any) -> tuple[Any, Any, DatasetSpec]:
    """The prepared train and test splits of ``config.dataset`` (cut to ``train_subset``/``eval_subset``)."""
    spec = get_spec(config.dataset)
    splits = load_prepared(config.dataset, config.data_dir)
    train, test = splits["train"], splits["test"]
    if config.train_subset:
        train = train.select(range(min(config.train_subset, len(train))))
    if config.eval_subset:
        test = test.select(range(min(config.eval_subset, len(test))))
    return train, test, spec


def build_datasets(
    config: Any,
    *,
    train_transform: Callable[[Any], Any] | None = None,
    test_transform: Callable[[Any], Any] | None = None,
    normalize: bool = True,
) -> tuple[TransformedDataset, TransformedDataset, DatasetSpec]:
    """Train and test :class:`TransformedDataset` of ``config.dataset`` with the standard transforms.

    Reads ``dataset``, ``data_dir``, ``seed``, ``augment``, ``train_subset`` and ``eval_subset`` from the
    config (a :class:`~dkl_train.config.BaseConfig`). Pass your own transforms to replace the defaults.
    """
    train, test, spec = load_splits(config)
    train_tf = train_transform or build_transform(spec, train=True, augment=config.augment, normalize=normalize)
    test_tf = test_transform or build_transform(spec, train=False, normalize=normalize)
    return TransformedDataset(train, train_tf, seed=config.seed), TransformedDataset(test, test_tf), spec


def labeled_subset_indices(labels: Sequence[int], per_class: int, seed: int = 0) -> list[int]:
    """A seeded draw of ``per_class`` indices of each class (sorted), e.g. the 2-labels-per-class SSL split."""
    labels_np = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for cls in np.unique(labels_np):
        members = np.flatnonzero(labels_np == cls)
        if len(members) < per_class:
            raise ValueError(f"class {cls} has {len(members)} samples, fewer than per_class={per_class}")
        chosen.extend(int(i) for i in rng.choice(members, size=per_class, replace=False))
    return sorted(chosen)


# ----------------------------------------------------------------------------------------------
# Command line: python -m dkl_train.data prepare --dataset NAME


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dkl_train.data", description="Prepare a dataset once.")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="build a dataset and save it under DATA_DIR/NAME")
    prep.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    prep.add_argument("--data-dir", default="data")
    prep.add_argument("--imagenet-dir", default=None, help="ImageNet folder with train/ and val/ (imagenet only)")
    args = parser.parse_args(argv)
    try:
        path = prepare(args.dataset, args.data_dir, args.imagenet_dir)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    sizes = ", ".join(f"{split}: {len(ds)}" for split, ds in load_prepared(args.dataset, args.data_dir).items())
    print(f"prepared {args.dataset} at {path} ({sizes})")


if __name__ == "__main__":
    main()
