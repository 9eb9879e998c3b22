"""Datasets: prepared once with Hugging Face ``datasets`` under ``data/<name>``, then only read from disk.

``python -m dkl_train.data prepare --dataset NAME [--data-dir data] [--imagenet-dir DIR]`` (behind
``make data DATASET=...``) writes a ``DatasetDict`` with ``train`` and ``test`` splits, each with an
``image`` (PIL) and a ``label`` (int) column, using ``save_to_disk``. Training calls
:func:`load_prepared`, which never downloads anything and stops at once, with the exact command to
run, when the dataset is missing. ImageNet is the exception: it is indexed in place (paths and labels,
no image bytes copied) and each JPEG is decoded from its original file (:mod:`dkl_train.imagenet`).

``digits`` is built offline from scikit-learn's bundled UCI digits (1,797 real 8x8 images), upsampled
to 32x32 RGB with a fixed stratified train/test split, so every CIFAR architecture and the whole
loading path run on it unchanged (the demo and the tests use it).

Augmentation is torchvision ``transforms.v2``, applied per sample in the DataLoader's worker
processes. Each sample's random draw is seeded from ``(seed, epoch, index)`` (see
:class:`TransformedDataset`), so the augmented batches do not depend on the number of processes or
workers, nor on whether the run was interrupted and resumed.

The workers hand over ``uint8`` images (a quarter of float32's bytes through shared and pinned memory
and over the bus); each batch becomes the model's float input on the device, after the copy:
:class:`DeviceNormalize` (``x / 255``, then ``(x - mean) / std``, the very operations the float
transforms run) applied by a :class:`DeviceLoader`. :func:`build_datasets` sets this up, so a recipe's
loaders yield normalised float batches on the device as before, bit for bit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
from torchvision.transforms import v2

from .atomic import replace_folder
from .config import ConfigError
from .preemption import STOP_SIGNALS
from .progress import interactive
from .specs import DATASETS, DatasetSpec, get_spec, sample_seed

SPLITS = ("train", "test")


class DatasetNotPreparedError(FileNotFoundError):
    """The dataset has not been prepared under ``data_dir``; the message holds the command that prepares it."""


def dataset_path(name: str, data_dir: str | Path = "data") -> Path:
    return Path(data_dir) / name


def prepare_command(name: str, data_dir: str | Path = "data") -> str:
    """The exact ``make`` command that prepares ``name`` under ``data_dir``."""
    command = f"make data DATASET={name}"
    if name == "imagenet":
        command += (
            " IMAGENET_DIR=/path/to/imagenet  # train/<wnid>/*.JPEG and val/ (class folders, or flat with"
            " LOC_val_solution.csv or the ILSVRC2012 devkit); indexed in place, nothing is copied"
        )
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
    from datasets.utils.logging import disable_progress_bar

    if not interactive():  # no carriage-return bars in logs
        disable_progress_bar()
    dataset_dict.save_to_disk(str(tmp))
    return replace_folder(tmp, out_dir)


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


class HubUnreachableError(ConnectionError):
    """A hub dataset could not be fetched (no network, offline mode, a proxy); the message says what to do instead."""


def _network_errors() -> tuple[type[BaseException], ...]:
    """What ``datasets``/``huggingface_hub`` raise when the Hub cannot be reached (before or during download)."""
    # The HTTP client datasets itself catches (huggingface_hub re-exports whichever it uses).
    from huggingface_hub.utils import LocalEntryNotFoundError, OfflineModeIsEnabled, httpx

    # datasets wraps most of them in ConnectionError; a failure mid-download surfaces as the client's own errors.
    return (ConnectionError, TimeoutError, httpx.TransportError, LocalEntryNotFoundError, OfflineModeIsEnabled)


def hub_unreachable_message(name: str, hub_id: str, cause: BaseException) -> str:
    """How to get ``name`` onto a machine that cannot reach the Hub: copy data/ over, or use a local hub cache."""
    return (
        f"could not reach the Hugging Face Hub for dataset {hub_id!r} ({type(cause).__name__}: {cause}).\n"
        f"{name} is downloaded once from the Hub; without network access, either:\n"
        f"  - run `{prepare_command(name)}` on a machine that has it, then copy its data/{name}/ folder into\n"
        "    this machine's data/ (or the folder you pass as DATA_DIR=...); training reads only that folder; or\n"
        f"  - if a Hugging Face cache here already holds {hub_id!r}, point HF_DATASETS_CACHE (or HF_HOME) at it,\n"
        f"    set HF_HUB_OFFLINE=1 and rerun `{prepare_command(name)}`."
    )


def build_cifar(name: str) -> Any:
    """CIFAR-10/100 from the Hugging Face Hub (the one step that needs the network).

    Raises :class:`HubUnreachableError` when the Hub cannot be reached, instead of a deep traceback.
    """
    import datasets

    spec = get_spec(name)
    try:
        loaded = datasets.load_dataset(spec.hub_id)
    except _network_errors() as err:
        raise HubUnreachableError(hub_unreachable_message(name, spec.hub_id, err)) from err
    return _standardise(loaded, spec)


def prepare(name: str, data_dir: str | Path = "data", imagenet_dir: str | Path | None = None) -> Path:
    """Build dataset ``name`` and save it under ``data_dir/name`` (replacing an older copy).

    ImageNet is only indexed (paths and labels, see :mod:`dkl_train.imagenet`): its JPEGs stay where they are.
    """
    get_spec(name)
    if name == "digits":
        built = build_digits()
    elif name in ("cifar10", "cifar100"):
        built = build_cifar(name)
    else:
        if imagenet_dir is None:
            raise ValueError(f"ImageNet is prepared from a local folder: {prepare_command('imagenet', data_dir)}")
        from .imagenet import prepare_imagenet

        return prepare_imagenet(imagenet_dir, dataset_path(name, data_dir), num_classes=get_spec(name).num_classes)
    missing = [s for s in SPLITS if s not in built]
    if missing:
        raise ValueError(f"{name}: the source has no {', '.join(missing)} split (found {', '.join(built)})")
    return _save_atomically(built, dataset_path(name, data_dir))


def load_prepared(name: str, data_dir: str | Path = "data") -> Any:
    """The prepared ``DatasetDict`` (memory-mapped from disk); fails at once, saying how to prepare it.

    For ImageNet, a dict of :class:`~dkl_train.imagenet.ImageNetSplit` read from the index, whose rows
    decode each JPEG from its original file.
    """
    from datasets import load_from_disk

    get_spec(name)
    path = dataset_path(name, data_dir)
    marker = "index.json" if name == "imagenet" else "dataset_dict.json"
    if not (path / marker).is_file():
        raise DatasetNotPreparedError(
            f"dataset {name!r} is not prepared at {path}. Prepare it once with:\n    {prepare_command(name, data_dir)}"
        )
    if name == "imagenet":
        from .imagenet import load_index

        return load_index(path, prepare_command(name, data_dir))
    return load_from_disk(str(path))


# ----------------------------------------------------------------------------------------------
# Transforms and loaders


ImageOutput = Literal["float", "uint8"]


def tensor_steps(spec: DatasetSpec, *, normalize: bool = True, output: ImageOutput = "float") -> list[Any]:
    """The last steps of every image transform: to a ``uint8`` tensor, then, for ``output="float"``, to
    float32 in [0, 1] and (``normalize``) ``(x - mean) / std`` in the worker.

    ``output="uint8"`` stops at the ``uint8`` tensor: :class:`DeviceNormalize` does the rest per batch on
    the device (same operations, same values).
    """
    steps: list[Any] = [v2.ToImage()]
    if output == "uint8":
        return steps
    if output != "float":
        raise ValueError(f"output must be 'float' or 'uint8', got {output!r}")
    steps += [v2.ToDtype(torch.float32, scale=True)]
    if normalize:
        steps += [v2.Normalize(mean=list(spec.mean), std=list(spec.std))]
    return steps


def build_transform(
    spec: DatasetSpec, train: bool, augment: bool = True, normalize: bool = True, *, output: ImageOutput = "float"
) -> v2.Compose:
    """The standard transforms of the KD literature for ``spec`` (PIL image in, tensor out).

    CIFAR-sized data: RandomCrop(32, padding=4) + horizontal flip for training; ImageNet:
    RandomResizedCrop(224) + flip, and Resize(256) + CenterCrop(224) for evaluation. ImageNet images go
    to a ``uint8`` tensor straight after the decode and are cropped and resized as tensors (torchvision's
    reference scripts' ``--backend tensor``): the same random draws as on the PIL image, cheaper than
    PIL's resize, and within one grey level of it (antialiased bilinear both). ``normalize=False``
    keeps inputs in [0, 1] (adversarial training defines its threat model there). ``output="uint8"``
    ends at the ``uint8`` image and leaves scaling and normalisation to :class:`DeviceNormalize`
    (what :func:`build_datasets` does).
    """
    large = spec.image_size > 64
    steps: list[Any] = [v2.PILToTensor()] if large else []
    if train and augment:
        if large:
            steps += [v2.RandomResizedCrop(spec.image_size, antialias=True)]
        else:
            steps += [v2.RandomCrop(spec.image_size, padding=4)]
        steps += [v2.RandomHorizontalFlip()]
    elif large:
        steps += [v2.Resize(int(spec.image_size * 256 / 224), antialias=True), v2.CenterCrop(spec.image_size)]
    steps += tensor_steps(spec, normalize=normalize, output=output)
    return v2.Compose(steps)


class TwoViews:
    """Two views of one image, ``{keys[0]: basic(image), keys[1]: augmented(image)}``, drawn one after the other.

    Each view's random draws are independent; drawn in this order from the sample's seeded generator
    (:class:`TransformedDataset`), so both are reproducible. The default keys are semi-supervised
    learning's weak and strong views of an unlabeled image (MeanTeacher passes the weak transform twice:
    USB's MeanTeacher consistency compares two weak views); adversarial training's basic and
    AutoAugment views use ``keys=("image", "image_aug")``.
    """

    def __init__(
        self,
        basic: Callable[[Any], torch.Tensor],
        augmented: Callable[[Any], torch.Tensor],
        *,
        keys: tuple[str, str] = ("weak", "strong"),
    ) -> None:
        self.basic, self.augmented, self.keys = basic, augmented, tuple(keys)

    def __call__(self, image: Any) -> dict[str, torch.Tensor]:
        return {self.keys[0]: self.basic(image), self.keys[1]: self.augmented(image)}


class DeviceNormalize:
    """``uint8`` image batches to the model's float32 input, on the batch's device: ``x / 255``, then
    ``(x - mean) / std`` (only ``x / 255`` without ``mean``/``std``, e.g. adversarial training in [0, 1]).

    The operations are those of ``v2.ToDtype(float32, scale=True)`` and ``v2.Normalize`` (multiply by
    ``1 / 255``, subtract, divide), element by element, so a batch normalised here equals, bit for bit,
    the batch of samples normalised one by one in the workers. ``mean``/``std`` are kept on each device
    they were used on: building them from Python lists per batch would be a blocking copy per step.

    Called on a batch (a dict), it converts every 4-dimensional ``uint8`` tensor (``image``, or the
    views of a multi-view transform) and leaves the rest (labels, indices, float tensors) alone.
    """

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither (scale to [0, 1] only)")
        if std is not None and not all(std):
            raise ValueError(f"std must not contain zeros, got {tuple(std)}")
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def for_spec(cls, spec: DatasetSpec, normalize: bool = True) -> DeviceNormalize:
        """The normalisation of ``spec`` (``normalize=False``: scale to [0, 1] only)."""
        return cls(spec.mean, spec.std) if normalize else cls()

    def __repr__(self) -> str:
        return f"DeviceNormalize(mean={self.mean}, std={self.std})"

    def __getstate__(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std}  # device tensors are not pickled into workers

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["mean"], state["std"])

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """A ``uint8`` ``[..., C, H, W]`` tensor as normalised float32 (any other dtype is returned unchanged)."""
        if images.dtype != torch.uint8:
            return images
        out = images.to(torch.float32).mul_(1.0 / 255)  # = v2.ToDtype(torch.float32, scale=True)
        if self.mean is None:
            return out
        constants = self._constants.get(images.device)
        if constants is None:
            shape = (-1, 1, 1)
            constants = tuple(
                torch.tensor(v, dtype=torch.float32).view(shape).to(images.device) for v in (self.mean, self.std)
            )
            self._constants[images.device] = constants
        mean, std = constants
        return out.sub_(mean).div_(std)  # = v2.Normalize(mean, std)

    def __call__(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            return self.images(batch) if batch.ndim == 4 else batch
        if isinstance(batch, dict):
            return {key: self(value) for key, value in batch.items()}
        return batch


class TransformedDataset(Dataset):
    """A prepared Hugging Face split with a per-sample transform whose randomness is seeded per sample.

    Keys are ``(epoch, index)`` pairs (what :class:`EpochSampler` yields) or plain indices (epoch 0).
    The transform's random draws come from ``torch``'s global generator, reseeded from
    :func:`sample_seed` before each sample: inside a worker process that generator belongs to the
    worker; in the main process (``num_workers=0``) its state is saved and restored around each
    batch so the training RNG is untouched.
    The transform returns a tensor (stored as ``image``) or a dict of tensors (e.g. weak and strong
    views for semi-supervised learning); the sample's ``label`` is added to it.

    ``batch_transform`` finishes each *batch* on the device, after the copy (the loaders of
    :class:`~dkl_train.training.Run` and :class:`DeviceLoader` apply it): :class:`DeviceNormalize` for
    transforms that end in ``uint8`` (``output="uint8"``), ``None`` for transforms that return model input.
    """

    def __init__(
        self,
        hf_dataset: Any,
        transform: Callable[[Any], Any],
        seed: int = 0,
        batch_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.data = hf_dataset
        self.transform = transform
        self.seed = seed
        self.batch_transform = batch_transform

    def select(self, indices: Sequence[int]) -> TransformedDataset:
        """The same dataset (transforms, seed) on the rows ``indices`` of its split."""
        return TransformedDataset(self.data.select(indices), self.transform, self.seed, self.batch_transform)

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
        # The CPU generator only (what the transforms draw from): torch.manual_seed would also queue a lazy
        # seeding of every accelerator backend, with a stack trace each, a few ms per sample on a CPU.
        torch.random.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
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


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` of every loader: SIGTERM/SIGUSR1 sent to the whole process group (a scheduler's
    pre-emption), or SIGINT (Ctrl-C reaches the terminal's whole foreground group), must not kill the workers,
    which would crash the training process before it saves its checkpoint; the training process handles them
    (``Run.stop_requested``) and its workers end with it."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def available_workers() -> int:
    """The CPU cores this process may use (its affinity) shared among the training processes of this machine.

    ``accelerate launch``/``torchrun`` start ``LOCAL_WORLD_SIZE`` processes per machine; each gets an
    equal share of the cores for its DataLoader workers (at least 1).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    local = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return max(cores // local, 1)


def resolve_num_workers(num_workers: int | str) -> int:
    """``num_workers`` of a config: an integer >= 0, or ``"auto"`` (:func:`available_workers`)."""
    if num_workers == "auto":
        return available_workers()
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0 or 'auto', got {num_workers!r}")
    return num_workers


def make_loader(
    dataset: TransformedDataset,
    batch_size: int,
    *,
    train: bool,
    num_workers: int | str = 0,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader over ``dataset``: shuffled per epoch and ``drop_last`` for training, in order for evaluation.

    Training drops the last incomplete batch (a batch of one breaks BatchNorm, and equal batches keep
    processes in lockstep). Workers stay alive across epochs; memory is pinned when CUDA is present
    (pinned batches are what a non-blocking copy to the GPU needs). ``num_workers="auto"``: see
    :func:`available_workers`. Pass the result to ``accelerator.prepare``, which shards its batches
    over processes, then wrap it in a :class:`DeviceLoader` for ``dataset.batch_transform``
    (:meth:`~dkl_train.training.Run.train_loader` does both).
    """
    workers = resolve_num_workers(num_workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), seed=seed, shuffle=train),
        drop_last=train,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=ignore_stop_signals,
        collate_fn=getattr(dataset, "collate_fn", None),  # a dataset that batches its own way (gpu backend)
    )


def to_device(value: Any, device: torch.device) -> Any:
    """Every tensor in ``value`` (nested dicts, lists, tuples) on ``device``, copied without blocking.

    From pinned memory the copy overlaps the device's work; from ordinary memory it is as safe as a
    blocking copy.
    """
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_device(v, device) for v in value)
    return value


def _channels_last(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.contiguous(memory_format=torch.channels_last) if value.ndim == 4 else value
    if isinstance(value, dict):
        return {k: _channels_last(v) for k, v in value.items()}
    return value


class DeviceLoader:
    """Iterates a loader and finishes each batch on the device: ``batch_transform`` (e.g.
    :class:`DeviceNormalize`), then ``channels_last`` for 4-dimensional tensors.

    ``device``: move each batch there first with non-blocking copies (for a loader that does not; one
    prepared by Accelerate already has). Everything else (``len``, ``set_epoch``, ``sampler``,
    ``dataset``, ...) is the wrapped loader's; :meth:`skip_first` continues inside an epoch.
    """

    def __init__(
        self,
        loader: Any,
        batch_transform: Callable[[Any], Any] | None = None,
        *,
        device: torch.device | str | None = None,
        channels_last: bool = False,
    ) -> None:
        self.loader = loader
        self.batch_transform = batch_transform
        self.device = None if device is None else torch.device(device)
        self.channels_last = channels_last

    def finish(self, batch: Any) -> Any:
        """One batch as the model reads it (on the device, normalised, in the chosen memory format)."""
        if self.device is not None:
            batch = to_device(batch, self.device)
        if self.batch_transform is not None:
            batch = self.batch_transform(batch)
        if self.channels_last:
            batch = _channels_last(batch)
        return batch

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            yield self.finish(batch)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def skip_first(self, batches: int) -> DeviceLoader:
        """The same loader, starting after its first ``batches`` batches of the epoch (never loaded)."""
        from accelerate import skip_first_batches

        return DeviceLoader(
            skip_first_batches(self.loader, batches),
            self.batch_transform,
            device=self.device,
            channels_last=self.channels_last,
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
    config (a :class:`~dkl_train.config.BaseConfig`). The workers produce ``uint8`` images; each dataset's
    ``batch_transform`` is a :class:`DeviceNormalize` (``normalize=False``: scale to [0, 1] only) that the
    run's loaders apply on the device. Pass your own transforms to replace the defaults: ``uint8`` images
    are normalised on the device, float ones are passed through as they are. With ``data_backend=gpu``
    (ImageNet), the datasets of :mod:`dkl_train.gpu_decode`: the workers read file bytes and the
    ``batch_transform`` decodes, crops and normalises each batch on the device.
    """
    gpu = getattr(config, "data_backend", "pil") == "gpu"  # workers read bytes; the device decodes and crops
    if gpu and (train_transform is not None or test_transform is not None):
        raise ValueError("data_backend=gpu has its own fixed transforms; custom transforms need data_backend=pil")
    train, test, spec = load_splits(config)
    device_normalize = DeviceNormalize.for_spec(spec, normalize)
    if gpu:  # gpu_decode never imports this module: the dependency goes one way
        from .gpu_decode import build_encoded_datasets

        return (*build_encoded_datasets(config, spec, train, test, finish=device_normalize), spec)
    train_tf = train_transform or build_transform(
        spec, train=True, augment=config.augment, normalize=normalize, output="uint8"
    )
    test_tf = test_transform or build_transform(spec, train=False, normalize=normalize, output="uint8")
    return (
        TransformedDataset(train, train_tf, seed=config.seed, batch_transform=device_normalize),
        TransformedDataset(test, test_tf, batch_transform=device_normalize),
        spec,
    )


def split_validation(train_set: TransformedDataset, size: int, seed: int = 0) -> tuple[TransformedDataset, Any]:
    """Hold ``size`` training images out (a fixed draw, independent of the run's seed) for validation.

    Returns the reduced training set and the held-out Hugging Face split (``size <= 0``: the whole
    training set and ``None``). Validation on training images, never on the test set, is what lets a run
    watch e.g. robust overfitting while it happens without touching the test set.
    """
    if size <= 0:
        return train_set, None
    if size >= len(train_set):
        raise ConfigError(
            f"holding out {size} validation images leaves no training images (the training set has {len(train_set)})"
        )
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed)).tolist()
    keep, held = sorted(order[size:]), sorted(order[:size])
    return train_set.select(keep), train_set.data.select(held)


def validation_tensors(held_out: Any, spec: DatasetSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out images as one ``[N, 3, H, W]`` tensor in [0, 1] (test-time transform) and their labels."""
    dataset = TransformedDataset(held_out, build_transform(spec, train=False, normalize=False))
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([item["image"] for item in items]), torch.tensor([item["label"] for item in items])


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
    except (ValueError, FileNotFoundError, HubUnreachableError) as err:
        sys.exit(f"error: {err}")
    sizes = ", ".join(f"{split}: {len(ds)}" for split, ds in load_prepared(args.dataset, args.data_dir).items())
    print(f"prepared {args.dataset} at {path} ({sizes})")


if __name__ == "__main__":
    main()
