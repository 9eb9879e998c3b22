"""ImageNet loading through the recipes' own datasets and loaders: both data backends per worker core, and the KD recipe end to end.

A generated ImageNet-format tree (``train/<wnid>/*.JPEG``, a flat ``val/`` with Kaggle's
``LOC_val_solution.csv``; 500x375 and 375x500 JPEGs at quality 90, about 100 KB, a few distinct ones
hard-linked to reach the file count, so every read hits the page cache) is indexed with
``make data``'s code and read back as the recipes read it (``build_datasets`` with ``data_backend`` pil
or gpu). On this CPU, with one torch thread (one DataLoader worker's share of a core), it reports the
seconds per sample of: reading a file's bytes; PIL's decode alone; a pil-backend worker sample
(decode + RandomResizedCrop(224) + flip, or Resize(256) + CenterCrop(224), handed over as ``uint8``);
the same train sample handed over as float32 normalised in the worker, and as the recipes read it before
the index in place (the JPEG's bytes from an Arrow copy, ``torch.manual_seed`` per sample, float32
normalised in the worker: the baseline of the pil backend's speed-up); a gpu-backend worker sample (the
file's bytes, its header, the crop drawn; collated into one block); and the gpu backend's batched
decode + crop + flip run on CPU tensors (on a GPU it runs on the device). It also times one real
DataLoader worker per backend (batches of ``--batch-size``, inter-process transfer included).

With ``--device cuda`` (or ``--end-to-end`` on any device): ``recipes/kd/train.py`` itself (ResNet34 ->
ResNet18 IKL, the ImageNet config, bf16, channels_last, cudnn.benchmark, ``num_workers=auto``) trained
over its real loader for each backend, and over one synthetic batch already on the device, in the same
process; images/s are steady-state rates between the timestamps at which the step receives its batches
(the first ``--warmup-steps`` left out: worker start, cuDNN autotuning). Compare end-to-end figures
only with end-to-end figures. ``--end-to-end`` on a CPU is a dry run of that path (tiny sizes), not a
figure to quote.

Usage: ``python -m benchmarks --only imagenet_loader [--device cuda] [--samples 48] [--repeats 5]
[--batch-size 64] [--dir PATH] [--results-dir PATH]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import warnings
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import device_name, time_side_by_side, write_results
from benchmarks.bench_imagenet_index import generate_tree
from benchmarks.bench_kd import OneBatchLoader
from dkl_train import imagenet
from dkl_train.config import BaseConfig
from dkl_train.data import TransformedDataset, build_datasets, build_transform, get_spec, make_loader, sample_seed
from dkl_train.gpu_decode import collate_encoded

END_TO_END_TARGET = 3000.0  # images/s, R34 -> R18 IKL-KD, bf16, gpu backend, one H200
SYNTHETIC_FRACTION_TARGET = 0.9
WORKER_COST_TARGET = 10.0  # PIL decode / gpu-backend worker sample


BEFORE_ROW = "pil worker: train sample as read before (Arrow row, torch.manual_seed, float32 normalised in the worker)"
SPEEDUP_TARGET = 1.3  # the pil worker's train sample against BEFORE_ROW, per core


class BeforeIndexInPlace:
    """The per-sample path of the recipes before the index in place, kept here as the baseline.

    ``make data`` copied every JPEG into an Arrow dataset (``datasets``' ``Image`` feature, read back with
    ``load_from_disk``); a worker decoded the row's bytes with PIL, reseeded with ``torch.manual_seed``
    (which also queues the seeding of every accelerator backend), cropped and resized the PIL image and
    handed over float32 normalised in the worker. The same JPEGs and the same random draws as the pil
    backend.
    """

    def __init__(self, paths: list[Path], spec: Any, arrow_dir: Path) -> None:
        import datasets
        from torchvision.transforms import v2

        rows = {"image": [{"bytes": p.read_bytes(), "path": None} for p in paths], "label": [0] * len(paths)}
        features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
        datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(arrow_dir))
        self.data = datasets.load_from_disk(str(arrow_dir))
        self.transform = v2.Compose(
            [
                v2.RandomResizedCrop(spec.image_size, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=list(spec.mean), std=list(spec.std)),
            ]
        )

    def samples(self) -> list[torch.Tensor]:
        out = []
        for index in range(len(self.data)):
            image = self.data[index]["image"]
            if image.mode != "RGB":
                image = image.convert("RGB")
            torch.manual_seed(sample_seed(0, 0, index))
            out.append(self.transform(image))
        return out


def library_versions() -> str:
    import PIL
    import torchvision

    return f"torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__}"


def prepare_tree(base: Path, classes: int, train_per_class: int, val_per_class: int, distinct: int) -> Path:
    """Generate the tree under ``base`` and index it as ``make data`` does; returns the data folder."""
    root = generate_tree(base, classes, train_per_class, val_per_class, distinct)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", imagenet.ImageNetWarning)  # a generated val/ is smaller than 50,000
        imagenet.prepare_imagenet(root, base / "data" / "imagenet", num_classes=classes, log=lambda line: None)
    return base / "data"


def data_config(data_dir: Path, backend: str) -> BaseConfig:
    return BaseConfig(dataset="imagenet", data_dir=str(data_dir), data_backend=backend, report_to=[])


def per_core_costs(data_dir: Path, args) -> dict[str, float]:
    """Median seconds per sample of each worker-side stage and of the batched decode, one torch thread."""
    pil_train, pil_test, spec = build_datasets(data_config(data_dir, "pil"))
    gpu_train, gpu_test, _ = build_datasets(data_config(data_dir, "gpu"))
    float_train = TransformedDataset(pil_train.data, build_transform(spec, train=True), seed=0)
    rng = np.random.default_rng(0)
    train_keys = [
        (0, int(i)) for i in rng.choice(len(pil_train), size=min(args.samples, len(pil_train)), replace=False)
    ]
    test_keys = [(0, int(i)) for i in rng.choice(len(pil_test), size=min(args.samples, len(pil_test)), replace=False)]
    paths = [pil_train.data.path(i) for _, i in train_keys]
    # The baseline needs `datasets` (the old Arrow copy), which a lent GPU machine may lack.
    before = BeforeIndexInPlace(paths, spec, data_dir / "arrow_before") if find_spec("datasets") else None
    encoded = collate_encoded(gpu_train.__getitems__(train_keys))
    decoder = gpu_train.batch_transform
    candidates = {
        "read the file's bytes": lambda: [p.read_bytes() for p in paths],
        "PIL decode alone (load_rgb)": lambda: [imagenet.load_rgb(p) for p in paths],
        "pil worker: train sample (decode + RandomResizedCrop + flip, uint8)": lambda: pil_train.__getitems__(
            train_keys
        ),
        "pil worker: train sample as float32 normalised in the worker": lambda: float_train.__getitems__(train_keys),
        **({BEFORE_ROW: before.samples} if before else {}),
        "pil worker: eval sample (decode + Resize + CenterCrop, uint8)": lambda: pil_test.__getitems__(test_keys),
        "gpu worker: train sample (bytes + header + crop draw, collated)": lambda: collate_encoded(
            gpu_train.__getitems__(train_keys)
        ),
        "gpu worker: eval sample (bytes + header + eval box, collated)": lambda: collate_encoded(
            gpu_test.__getitems__(test_keys)
        ),
        "gpu backend on this CPU: batched decode + crop + flip": lambda: decoder.decode(encoded),
    }
    seconds = time_side_by_side(candidates, torch.device("cpu"), repeats=args.repeats, warmup=1)
    return {name: value / len(train_keys) for name, value in seconds.items()}


def one_worker_rates(data_dir: Path, args) -> dict[str, float]:
    """Images/s of a real DataLoader with one worker process per backend (batches as the workers hand them over)."""
    rates = {}
    for backend in ("pil", "gpu"):
        train_set, _, _ = build_datasets(data_config(data_dir, backend))
        loader = make_loader(train_set, args.batch_size, train=True, num_workers=1)
        iterator = iter(loader)
        next(iterator)  # worker start-up and the first batch are left out
        start, images = time.perf_counter(), 0
        for _, batch in zip(range(args.loader_batches), iterator):
            images += len(batch["label"])
        rates[backend] = images / (time.perf_counter() - start)
        del iterator
    return rates


def cpu_benchmark(args, data_dir: Path) -> tuple[dict[str, Any], list[list[str]]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one worker's share: DataLoader workers run one torch thread each
    try:
        per_sample = per_core_costs(data_dir, args)
        loader_rates = one_worker_rates(data_dir, args)
    finally:
        torch.set_num_threads(threads)
    decode = per_sample["PIL decode alone (load_rgb)"]
    gpu_worker = per_sample["gpu worker: train sample (bytes + header + crop draw, collated)"]
    pil_worker = per_sample["pil worker: train sample (decode + RandomResizedCrop + flip, uint8)"]
    speedup = per_sample[BEFORE_ROW] / pil_worker if BEFORE_ROW in per_sample else None
    payload = {
        "seconds_per_sample_one_thread": per_sample,
        "images_per_second_per_core": {name: 1.0 / value for name, value in per_sample.items()},
        "one_worker_dataloader_images_per_second": loader_rates,
        "pil_worker_speedup_over_before": speedup,
        "target_pil_worker_speedup_over_before": SPEEDUP_TARGET,
        "gpu_worker_cost_below_pil_decode": decode / gpu_worker,
        "gpu_worker_cost_below_pil_worker": pil_worker / gpu_worker,
        "target_gpu_worker_cost_below_pil_decode": WORKER_COST_TARGET,
    }
    rows = [[name, f"{v * 1e3:.3f} ms", f"{1.0 / v:,.0f} images/s per core"] for name, v in per_sample.items()]
    rows += [
        [f"one DataLoader worker, {backend} backend (batch {args.batch_size})", "", f"{rate:,.0f} images/s"]
        for backend, rate in loader_rates.items()
    ]
    rows.append(
        [
            "pil worker train sample vs as read before",
            "",
            f"{speedup:.2f}x faster (target >= {SPEEDUP_TARGET}x)" if speedup else "not measured: no `datasets`",
        ]
    )
    rows.append(
        [
            "gpu worker sample vs PIL decode alone / vs pil worker sample",
            "",
            f"{decode / gpu_worker:.1f}x / {pil_worker / gpu_worker:.1f}x less work (target >= {WORKER_COST_TARGET:.0f}x)",
        ]
    )
    return payload, rows


# ----------------------------------------------------------------------------------------------
# --end-to-end (on with --device cuda): the KD recipe end to end


class TimedLoader:
    """Passes a loader through, noting when each batch is handed to the training step."""

    def __init__(self, loader: Any, stamps: list[float]) -> None:
        self.loader = loader
        self.stamps = stamps

    def __iter__(self):
        for batch in self.loader:
            self.stamps.append(time.perf_counter())
            yield batch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)


@contextmanager
def instrumented_train_loader(stamps: list[float], synthetic: bool):
    """``Run.train_loader`` of the recipe, timed; with ``synthetic``, replaced by one device batch shaped as the
    real loader's (normalised float32, the run's memory format), repeated for as many steps."""
    from dkl_train.training import Run

    original = Run.train_loader

    def train_loader(self: Run, dataset: Any) -> Any:
        loader = original(self, dataset)
        if synthetic:
            size = get_spec("imagenet").image_size
            image = torch.randn(self.micro_batch_size, 3, size, size, device=self.device)
            if self.config.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            labels = torch.randint(0, 1000, (self.micro_batch_size,), device=self.device)
            loader = OneBatchLoader({"image": image, "label": labels}, len(loader))
        return TimedLoader(loader, stamps)

    Run.train_loader = train_loader
    try:
        yield
    finally:
        Run.train_loader = original


def recipe_rate(args, data_dir: Path, teacher_file: Path, out: Path, backend: str, synthetic: bool) -> float:
    """Steady-state images/s of recipes/kd/train.py's ImageNet IKL config over ``backend`` (or synthetic data)."""
    from dkl_recipe_kd.train import KDConfig, train

    from dkl_train.config import load_config

    config_file = Path(__file__).resolve().parents[1] / "recipes/kd/configs/imagenet_resnet34_resnet18_ikl.yaml"
    config = load_config(
        KDConfig,
        config_file,
        [
            f"output_dir={out}",
            f"data_dir={data_dir}",
            f"data_backend={backend}",
            f"mixed_precision={args.precision}",
            f"batch_size={args.e2e_batch_size}",
            f"eval_batch_size={args.e2e_batch_size}",
            "epochs=1",
            f"max_steps_per_epoch={args.e2e_steps}",
            f"eval_subset={args.e2e_batch_size}",
            "evaluate_teacher=false",
            "teacher_pretrained=false",
            f"teacher_checkpoint={teacher_file}",
            "num_workers=auto",
            "report_to=[]",
            "log_every=1000000",
        ],
    )
    stamps: list[float] = []
    with instrumented_train_loader(stamps, synthetic):
        train(config)
    steady = stamps[args.warmup_steps :]
    if len(steady) < 2:
        raise RuntimeError(f"only {len(stamps)} steps ran; raise --e2e-steps above --warmup-steps")
    return args.e2e_batch_size * (len(steady) - 1) / (steady[-1] - steady[0])


def device_decode_rate(data_dir: Path, args, device: torch.device) -> float:
    """Images/s of the gpu backend's batched decode + crop + flip alone on ``device`` (one batch, repeated)."""
    train_set, _, _ = build_datasets(data_config(data_dir, "gpu"))
    batch = collate_encoded(train_set.__getitems__([(0, i) for i in range(args.e2e_batch_size)]))
    batch["label"] = batch["label"].to(device)
    seconds = time_side_by_side(
        {"decode": lambda: train_set.batch_transform(batch)}, device, repeats=args.repeats, warmup=2
    )
    return args.e2e_batch_size / seconds["decode"]


def end_to_end_benchmark(args, data_dir: Path, base: Path) -> tuple[dict[str, Any], list[list[str]]]:
    from dkl_train.models import create_model

    device = torch.device(args.device)

    teacher_file = base / "teacher_resnet34.pth"  # random weights: the step's cost does not depend on them
    torch.save({"model": create_model("timm:resnet34.tv_in1k", 1000).state_dict()}, teacher_file)
    rates = {"device decode + crop alone (gpu backend)": device_decode_rate(data_dir, args, device)}
    for name, backend, synthetic in (
        ("synthetic batch on the device", "pil", True),
        ("pil backend, real loader", "pil", False),
        ("gpu backend, real loader", "gpu", False),
    ):
        rates[name] = recipe_rate(args, data_dir, teacher_file, base / f"run_{backend}_{synthetic}", backend, synthetic)
    synthetic_rate = rates["synthetic batch on the device"]
    payload = {
        "device": device_name(device),
        "host_cores": len(os.sched_getaffinity(0)),
        "precision": args.precision,
        "batch_size": args.e2e_batch_size,
        "steps": args.e2e_steps,
        "warmup_steps_left_out": args.warmup_steps,
        "images_per_s": rates,
        "fraction_of_synthetic": {k: v / synthetic_rate for k, v in rates.items() if "real loader" in k},
        "targets": {"gpu_backend_images_per_s": END_TO_END_TARGET, "fraction_of_synthetic": SYNTHETIC_FRACTION_TARGET},
    }
    rows = []
    for name, rate in rates.items():
        label = name if "alone" in name else f"R34 -> R18 IKL-KD, recipes/kd/train.py, {name}"
        share = f" ({rate / synthetic_rate:.2f} of synthetic)" if "real loader" in name else ""
        rows.append([label, "", f"{rate:,.0f} images/s{share}"])
    return payload, rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_imagenet_loader", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--classes", type=int, default=None, help="default: 20 on CPU, 100 with cuda")
    parser.add_argument("--train-per-class", type=int, default=None, help="default: 20 on CPU, 300 with cuda")
    parser.add_argument("--val-per-class", type=int, default=10)
    parser.add_argument("--distinct", type=int, default=16, help="distinct JPEGs encoded (the rest are hard links)")
    parser.add_argument("--samples", type=int, default=48, help="samples per timed call (and per decoded batch)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="batch of the one-worker DataLoader")
    parser.add_argument("--loader-batches", type=int, default=4, help="batches timed per one-worker DataLoader")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "no"])
    parser.add_argument(
        "--end-to-end", action="store_true", help="also train recipes/kd/train.py over the real loader (on with cuda)"
    )
    parser.add_argument("--e2e-batch-size", type=int, default=256, help="global batch of the end-to-end runs")
    parser.add_argument("--e2e-steps", type=int, default=80, help="optimiser steps of each end-to-end run")
    parser.add_argument("--warmup-steps", type=int, default=15, help="first steps left out of the rate")
    parser.add_argument("--dir", default=None, help="where to generate the tree (kept); default: a temporary folder")
    args, _ = parser.parse_known_args(argv)
    cuda = args.device == "cuda"
    end_to_end = args.end_to_end or cuda
    classes = args.classes or (100 if cuda else 20)
    train_per_class = args.train_per_class or (300 if cuda else 20)
    os.environ.setdefault("TQDM_DISABLE", "1")

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.dir) if args.dir else Path(tmp)
        data_dir = prepare_tree(base, classes, train_per_class, args.val_per_class, args.distinct)
        sizes = [p.stat().st_size for p in (base / "pool").iterdir()]
        payload, rows = cpu_benchmark(args, data_dir)
        payload = {
            "device": f"CPU ({platform.processor() or platform.machine()}), {os.cpu_count()} cores visible",
            "versions": library_versions(),
            "tree": {
                "classes": classes,
                "train_per_class": train_per_class,
                "val_per_class": args.val_per_class,
                "distinct_jpegs": args.distinct,
                "mean_jpeg_bytes": int(np.mean(sizes)),
            },
            "cpu": payload,
        }
        name = "imagenet_loader"
        if end_to_end:
            payload["end_to_end"], e2e_rows = end_to_end_benchmark(args, data_dir, base)
            rows += e2e_rows
            name = f"imagenet_loader_{args.device}" if cuda else "imagenet_loader_end_to_end_cpu"
    notes = (
        "\n\n".join(__doc__.split("\n\n")[1:3])
        + f"\n\nMeasured on {payload['device']} ({payload['versions']}): {classes} classes x ({train_per_class} train + {args.val_per_class} "
        f"val) images, {args.distinct} distinct JPEGs of {payload['tree']['mean_jpeg_bytes'] / 1000:.0f} KB on "
        f"average; per-sample times are medians of {args.repeats} interleaved rounds over {args.samples} samples."
    )
    write_results(name, payload, rows, ["measured", "time per sample", "rate"], notes=notes)
