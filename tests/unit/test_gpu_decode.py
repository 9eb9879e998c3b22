"""The gpu data backend run on CPU tensors: worker samples, batched decode, crop geometry, odd files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from dkl_train import gpu_decode
from dkl_train.config import BaseConfig, ConfigError, EpochConfig
from dkl_train.data import TransformedDataset, build_transform, get_spec
from dkl_train.gpu_decode import (
    BatchDecoder,
    EncodedDataset,
    collate_encoded,
    decode_batch,
    eval_box,
    header_info,
    pack,
    random_resized_crop_params,
)
from dkl_train.imagenet import load_rgb

SPEC = get_spec("imagenet")
# Landscape, portrait, small (upscaled by every crop), and one too elongated for any 3/4..4/3 crop.
SIZES = [(375, 500), (500, 375), (120, 90), (20, 1000)]


def smooth_image(height: int, width: int, phase: float = 0.0) -> np.ndarray:
    """Slow colour gradients: resampling kernels agree on it, so differences measure geometry, not sharpness."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [
        127 + 100 * np.sin(xx / 60.0 + phase),
        127 + 100 * np.cos(yy / 50.0 + phase),
        (xx / max(width - 1, 1) + yy / max(height - 1, 1)) * 127,
    ]
    return np.stack(channels, axis=-1).clip(0, 255).astype(np.uint8)


class FileSplit:
    """What EncodedDataset and the pil backend read of an indexed ImageNet split: paths, labels, rows."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.labels = np.arange(len(paths)) % 7

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, index: int) -> Path:
        return self.paths[index]

    def __getitem__(self, index: int) -> dict:
        return {"image": load_rgb(self.paths[index]), "label": int(self.labels[index])}


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> FileSplit:
    folder = tmp_path_factory.mktemp("jpegs")
    paths = []
    for n, (height, width) in enumerate(SIZES * 2):
        path = folder / f"img_{n}.JPEG"
        Image.fromarray(smooth_image(height, width, phase=n)).save(path, quality=95)
        paths.append(path)
    return FileSplit(paths)


def batch_of(split: FileSplit, *, random: bool, seed: int = 0, epoch: int = 0) -> dict:
    dataset = EncodedDataset(split, SPEC, random=random, seed=seed)
    return collate_encoded(dataset.__getitems__([(epoch, i) for i in range(len(split))]))


def pil_batch(split: FileSplit, *, train: bool, seed: int = 0, epoch: int = 0) -> torch.Tensor:
    """The pil backend's images of the same samples, as 0..255 floats."""
    dataset = TransformedDataset(split, build_transform(SPEC, train=train, normalize=False), seed=seed)
    return (torch.stack([dataset[(epoch, i)]["image"] for i in range(len(split))]) * 255).round()


# ----------------------------------------------------------------------------------------------
# Batches


@pytest.mark.parametrize("random", [True, False])
def test_batch_shape_dtype_labels(split: FileSplit, random: bool) -> None:
    batch = batch_of(split, random=random)
    assert list(batch) == ["label", "index", "encoded"]  # Accelerate takes the batch size from the first entry
    out = BatchDecoder(SPEC)(batch)
    assert out["image"].shape == (len(split), 3, 224, 224)
    assert out["image"].dtype == torch.uint8
    assert out["image"].is_contiguous()
    assert out["label"].tolist() == split.labels.tolist()
    assert out["index"].tolist() == list(range(len(split)))
    assert "encoded" not in out


def test_workers_send_bytes_not_pixels(split: FileSplit) -> None:
    encoded = batch_of(split, random=True)["encoded"]
    for item, path in zip(encoded.items, split.paths):
        assert item.dim() == 1 and item.dtype == torch.uint8
        assert item.numpy().tobytes() == path.read_bytes()


@pytest.mark.parametrize("train", [True, False])
def test_close_to_pil_backend_on_smooth_images(split: FileSplit, train: bool) -> None:
    """Same boxes and flips as the pil backend; pixels within rounding of the two resampling kernels.

    Both decode with libjpeg-turbo here, and the images are smooth, so what is left is PIL's triangle
    filter vs roi_align's averaged bilinear samples: measured at most 1 grey level, mean about 0.1.
    Tolerances: mean 0.5 and max 2 levels; a box off by one pixel already gives a mean above 1.
    """
    ours = BatchDecoder(SPEC)(batch_of(split, random=train, seed=3, epoch=1))["image"].float()
    reference = pil_batch(split, train=train, seed=3, epoch=1)
    diff = (ours - reference).abs()
    assert diff.mean(dim=(1, 2, 3)).max() < 0.5
    assert diff.max() <= 2


def test_same_seed_same_batch_new_epoch_new_crops(split: FileSplit) -> None:
    decoder = BatchDecoder(SPEC)
    first = decoder(batch_of(split, random=True, seed=5, epoch=2))["image"]
    again = decoder(batch_of(split, random=True, seed=5, epoch=2))["image"]
    assert torch.equal(first, again)
    other_epoch = batch_of(split, random=True, seed=5, epoch=3)["encoded"]
    same_epoch = batch_of(split, random=True, seed=5, epoch=2)["encoded"]
    assert not torch.equal(other_epoch.boxes, same_epoch.boxes)
    assert not torch.equal(decoder(batch_of(split, random=True, seed=6, epoch=2))["image"], first)


def test_eval_batches_do_not_depend_on_seed_or_epoch(split: FileSplit) -> None:
    a = batch_of(split, random=False, seed=1, epoch=0)["encoded"]
    b = batch_of(split, random=False, seed=9, epoch=4)["encoded"]
    assert torch.equal(a.boxes, b.boxes) and not a.flips.any() and not b.flips.any()


# ----------------------------------------------------------------------------------------------
# Geometry


@pytest.mark.parametrize("height,width", SIZES)
def test_crop_params_are_torchvisions(height: int, width: int) -> None:
    """Same draws as v2.RandomResizedCrop for the same seed, fallback included (the 20x1000 image)."""
    transform = v2.RandomResizedCrop(224, antialias=True)
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    generator = torch.Generator()
    for seed in range(200):
        torch.random.default_generator.manual_seed(seed)
        expected = transform.make_params([image])
        generator.manual_seed(seed)
        top, left, h, w = random_resized_crop_params(height, width, generator)
        assert (top, left, h, w) == (expected["top"], expected["left"], expected["height"], expected["width"])


@pytest.mark.parametrize("height,width", SIZES)
def test_crop_boxes_within_scale_ratio_and_image(height: int, width: int) -> None:
    generator = torch.Generator()
    fallbacks = 0
    for seed in range(500):
        generator.manual_seed(seed)
        top, left, h, w = random_resized_crop_params(height, width, generator)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        area, ratio = h * w / (height * width), w / h
        # Rounding w and h to whole pixels moves area and ratio by up to about one pixel's worth.
        slack = 1.0 / min(h, w) * 2 + 1e-9
        if 0.08 * (1 - slack) <= area <= 1.0 and 0.75 * (1 - slack) <= ratio <= 4 / 3 * (1 + slack):
            continue
        fallbacks += 1  # torchvision's fallback: a centre crop of the whole short side at the extreme ratio
        assert (h, w) == (height, round(height * 4 / 3)) and left == (width - w) // 2
    assert fallbacks == (500 if (height, width) == (20, 1000) else 0)


def test_flip_rate_is_one_half() -> None:
    dataset_geometry = [
        gpu_decode.sample_geometry(375, 500, seed, random=True, spec=SPEC, generator=torch.Generator())[1]
        for seed in range(2000)
    ]
    rate = sum(dataset_geometry) / len(dataset_geometry)
    assert 0.46 < rate < 0.54  # 2000 draws: standard deviation 0.011


def test_eval_box_is_resize_256_center_crop_224() -> None:
    # 500x375 -> Resize(256) -> 341x256 (long side truncated); CenterCrop(224): left round(58.5) = 58, top 16.
    x1, y1, x2, y2 = eval_box(375, 500, 256, 224)
    assert x1 == pytest.approx(58 * 500 / 341) and x2 == pytest.approx(282 * 500 / 341)
    assert y1 == pytest.approx(16 * 375 / 256) and y2 == pytest.approx(240 * 375 / 256)
    # Portrait: the same box transposed.
    assert eval_box(500, 375, 256, 224) == pytest.approx((y1, x1, y2, x2))


def test_pack_places_images_without_overlap_and_bounds_the_canvas() -> None:
    sizes = [(377, 502)] * 30 + [(3002, 4002)]  # one very large image in a batch of ordinary ones
    positions, height, width = pack(sizes)
    occupied = np.zeros((height, width), dtype=np.int32)
    for (y, x), (h, w) in zip(positions, sizes):
        occupied[y : y + h, x : x + w] += 1
    assert occupied.max() == 1
    assert height * width < 2.5 * sum(h * w for h, w in sizes)  # a padded stack would be 31x the large one


# ----------------------------------------------------------------------------------------------
# Odd files


def write_odd_files(folder: Path) -> list[Path]:
    pixels = smooth_image(300, 400)
    files = {
        "png.JPEG": lambda p: Image.fromarray(pixels).save(p, format="PNG"),
        "cmyk.JPEG": lambda p: Image.fromarray(pixels).convert("CMYK").save(p, format="JPEG", quality=95),
        "grey.JPEG": lambda p: Image.fromarray(pixels).convert("L").save(p, format="JPEG", quality=95),
        "progressive.JPEG": lambda p: Image.fromarray(pixels).save(p, format="JPEG", quality=95, progressive=True),
    }
    paths = []
    for name, write in files.items():
        write(folder / name)
        paths.append(folder / name)
    return paths


def test_header_info(tmp_path: Path) -> None:
    png, cmyk, grey, progressive = (p.read_bytes() for p in write_odd_files(tmp_path))
    assert header_info(png) == (300, 400, False)
    assert header_info(cmyk) == (300, 400, False)
    assert header_info(grey) == (300, 400, True)
    assert header_info(progressive) == (300, 400, True)
    assert header_info(b"not an image at all") is None
    assert header_info(b"\xff\xd8\xff") is None  # cut short before any frame header


def test_png_and_cmyk_named_jpeg_come_out_rgb(tmp_path: Path) -> None:
    split = FileSplit(write_odd_files(tmp_path))
    batch = batch_of(split, random=False)
    kinds = [item.dim() for item in batch["encoded"].items]
    assert kinds == [3, 3, 1, 1]  # PNG and CMYK decoded by the worker on the host, the others left as bytes
    ours = BatchDecoder(SPEC)(batch)["image"].float()
    reference = pil_batch(split, train=False)
    assert ours.shape == (4, 3, 224, 224)
    assert (ours - reference).abs().mean() < 1.0
    assert torch.equal(ours[2, 0], ours[2, 1]) and torch.equal(ours[2, 1], ours[2, 2])  # grey: 3 equal channels


def test_batched_decode_failure_falls_back_per_file(split: FileSplit, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the batched call fails, each file is decoded alone; one that fails alone too is decoded on the host."""
    import torchvision.io

    real = torchvision.io.decode_jpeg
    calls = []

    def flaky(data, **kwargs):
        calls.append(type(data).__name__)
        if isinstance(data, list) or (data.numel() == len(split.paths[1].read_bytes())):
            raise RuntimeError("simulated nvJPEG failure")
        return real(data, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", flaky)
    items = batch_of(split, random=False)["encoded"].items[:3]
    images = decode_batch(items, torch.device("cpu"))
    assert calls == ["list", "Tensor", "Tensor", "Tensor"]
    for image, item in zip(images, items):
        assert torch.equal(image, real(item, mode=torchvision.io.ImageReadMode.RGB))


def test_undecodable_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.JPEG"
    path.write_bytes(b"this is not an image")
    with pytest.raises(RuntimeError, match="broken.JPEG"):
        EncodedDataset(FileSplit([path]), SPEC, random=True)[0]


# ----------------------------------------------------------------------------------------------
# Configuration


def test_gpu_backend_needs_a_file_backed_dataset() -> None:
    with pytest.raises(ConfigError, match="data_backend=gpu.*'cifar100'.*data_backend=pil"):
        BaseConfig(dataset="cifar100", data_backend="gpu")
    assert BaseConfig(dataset="imagenet", data_backend="gpu").data_backend == "gpu"


def test_encoded_dataset_rejects_a_split_without_files() -> None:
    with pytest.raises(TypeError, match="no file paths"):
        EncodedDataset([{"image": None, "label": 0}], SPEC, random=True)


# ----------------------------------------------------------------------------------------------
# Through the run's real loader


def test_run_loader_gives_normalised_batches_like_the_pil_backend(tmp_path: Path) -> None:
    """Index a tiny ImageNet tree, then one batch of each backend through Run.train_loader (Accelerate, one worker)."""
    from dkl_train.data import build_datasets
    from dkl_train.imagenet import prepare_imagenet
    from dkl_train.training import Run

    root = tmp_path / "imagenet"
    for c, wnid in enumerate(["n01440764", "n01443537"]):
        for split, count in (("train", 4), ("val", 2)):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for k in range(count):
                height, width = SIZES[(c + k) % 3]
                Image.fromarray(smooth_image(height, width, phase=c + k)).save(folder / f"{wnid}_{k}.JPEG", quality=95)
    prepare_imagenet(root, tmp_path / "data" / "imagenet", num_classes=2, log=lambda line: None)

    def config(backend: str) -> EpochConfig:  # a Run needs a schedule of periods: epochs here
        return EpochConfig(
            dataset="imagenet",
            data_dir=str(tmp_path / "data"),
            data_backend=backend,
            output_dir=str(tmp_path / "run"),
            report_to=[],
            batch_size=4,
            num_workers=1,
            seed=7,
        )

    run = Run(config("gpu"))
    batches = {}
    for backend in ("gpu", "pil"):
        train_set, _, _ = build_datasets(config(backend))
        loader = run.train_loader(train_set)
        loader.set_epoch(1)
        batches[backend] = next(iter(loader))
    run.accelerator.end_training()
    gpu, pil = batches["gpu"], batches["pil"]
    assert type(batches["gpu"]["image"]) is torch.Tensor and gpu["image"].dtype == torch.float32
    assert gpu["image"].shape == pil["image"].shape == (4, 3, 224, 224)
    assert torch.equal(gpu["label"], pil["label"]) and torch.equal(gpu["index"], pil["index"])
    # Same crops, normalised the same way: within 2 grey levels, in units of the normalised input.
    std = torch.tensor(SPEC.std).view(1, 3, 1, 1)
    assert ((gpu["image"] - pil["image"]).abs() * std * 255).max() < 2 + 1e-3
    mean_pixel = (gpu["image"] * std + torch.tensor(SPEC.mean).view(1, 3, 1, 1)).mean()
    assert 0.2 < mean_pixel < 0.8  # normalised, not left in 0..255


def test_custom_transforms_need_the_pil_backend(tmp_path: Path) -> None:
    from dkl_train.data import build_datasets

    config = BaseConfig(dataset="imagenet", data_backend="gpu", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="custom transforms need data_backend=pil"):
        build_datasets(config, train_transform=lambda image: image)
