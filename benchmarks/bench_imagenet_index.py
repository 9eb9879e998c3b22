"""Indexing ImageNet in place on a generated tree of realistic JPEGs, up to ImageNet-1k's full file count.

The tree has ImageNet's folders: ``train/<wnid>/<wnid>_<k>.JPEG`` and a flat ``val/`` of
``ILSVRC2012_val_<n>.JPEG`` labelled by Kaggle's ``LOC_val_solution.csv``. Its images are 500x375 (and
375x500) JPEGs at quality 90, about 100 KB like ImageNet's average: a few distinct ones are encoded and
then hard-linked to reach the file count, so the tree costs little disk. Reported: the time of
``dkl_train.imagenet.build_index`` (listing in threads, file check included and left out) and its
files/s; below ImageNet-1k's 1,331,167 files, the time for that many extrapolated linearly (``--train-per-class
1281 --val-per-class 50`` generates the full count and measures it). The files are hard links to a few
inodes read again and again, so every read hits the page cache: a cold local disk or a network file
system adds its latency to the index time (per file, spread over the listing threads). The cost per
sample of reading the images is ``bench_imagenet_loader``'s.

Usage: ``python -m benchmarks --only imagenet_index [--classes 1000] [--train-per-class 20]
[--val-per-class 10] [--index-rounds 3] [--dir PATH]``.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks._common import write_results
from dkl_train import imagenet

IMAGENET_FILES = 1_281_167 + 50_000  # ImageNet-1k train + val
MAX_LINKS = 60_000  # hard links per distinct JPEG (ext4 stops at 65,000)


def realistic_jpeg(seed: int, size: tuple[int, int] = (500, 375), quality: int = 90) -> bytes:
    """A photo-like JPEG: smooth colour regions, mid-scale structure and grain (about 100 KB at 500x375, q90)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size

    def layer(cells: tuple[int, int], amplitude: float) -> np.ndarray:
        noise = (rng.random((cells[1], cells[0], 3)) * 255).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(noise).resize(size, Image.BICUBIC), dtype=np.float32)
        return (smooth - 127.5) * amplitude

    pixels = 127.5 + layer((8, 6), 0.9) + layer((width // 3, height // 3), 0.5)
    pixels += rng.normal(0.0, 10.0, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def generate_tree(base: Path, classes: int, train_per_class: int, val_per_class: int, distinct: int) -> Path:
    """An ImageNet-format tree under ``base/imagenet`` (hard links to ``distinct`` encoded JPEGs); returns its root."""
    pool = base / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    # ext4 allows 65,000 links to one file: ImageNet's full count needs at least 21 distinct JPEGs.
    distinct = max(distinct, math.ceil(classes * (train_per_class + val_per_class) / MAX_LINKS))
    sources = []
    for i in range(distinct):
        path = pool / f"{i}.JPEG"
        if not path.exists():
            path.write_bytes(realistic_jpeg(i, (500, 375) if i % 4 else (375, 500)))
        sources.append(path)
    root = base / "imagenet"
    wnids = [f"n{1_440_764 + 7919 * c:08d}" for c in range(classes)]
    for c, wnid in enumerate(wnids):
        folder = root / "train" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(train_per_class):
            target = folder / f"{wnid}_{k}.JPEG"
            if not target.exists():
                os.link(sources[(c + k) % distinct], target)
    (root / "val").mkdir(exist_ok=True)
    rows = ["ImageId,PredictionString"]
    order = np.random.default_rng(0).permutation(classes * val_per_class) % classes  # classes interleaved
    for n, c in enumerate(order, start=1):
        name = f"ILSVRC2012_val_{n:08d}"
        target = root / "val" / f"{name}.JPEG"
        if not target.exists():
            os.link(sources[n % distinct], target)
        rows.append(f"{name},{wnids[c]} 0 0 10 10")
    (root / imagenet.KAGGLE_SOLUTION).write_text("\n".join(rows) + "\n")
    return root


def time_index(root: Path, classes: int, check_files: bool, rounds: int) -> float:
    """Median seconds of ``build_index`` over ``rounds`` runs (the first run warms the page cache)."""
    seconds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", imagenet.ImageNetWarning)  # a generated val/ is smaller than 50,000
        for _ in range(rounds + 1):
            start = time.perf_counter()
            imagenet.build_index(root, num_classes=classes, check_files=check_files)
            seconds.append(time.perf_counter() - start)
    return float(np.median(seconds[1:]))


def full_scale(seconds: float, files: int) -> str:
    """ImageNet-1k's scale: the measured time when the tree has about its file count, else extrapolated."""
    if files >= 0.99 * IMAGENET_FILES:
        return f"{seconds / 60:.1f} min for {files:,} files (measured, ImageNet-1k's scale)"
    return f"{seconds * IMAGENET_FILES / files / 60:.1f} min for {IMAGENET_FILES:,} files (extrapolated)"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_imagenet_index", description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--train-per-class", type=int, default=20)
    parser.add_argument("--val-per-class", type=int, default=10)
    parser.add_argument("--distinct", type=int, default=16, help="distinct JPEGs encoded (the rest are hard links)")
    parser.add_argument("--index-rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to generate the tree (kept); default: a temporary folder")
    args, _ = parser.parse_known_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.dir) if args.dir else Path(tmp)
        start = time.perf_counter()
        root = generate_tree(base, args.classes, args.train_per_class, args.val_per_class, args.distinct)
        generated = time.perf_counter() - start
        files = args.classes * (args.train_per_class + args.val_per_class)
        sizes = [p.stat().st_size for p in (base / "pool").iterdir()]
        index_checked = time_index(root, args.classes, True, args.index_rounds)
        index_listed = time_index(root, args.classes, False, args.index_rounds)

    payload = {
        "device": f"CPU ({platform.processor() or platform.machine()}), {os.cpu_count()} cores visible",
        "tree": {
            "classes": args.classes,
            "train_per_class": args.train_per_class,
            "val_per_class": args.val_per_class,
            "files": files,
            "distinct_jpegs": len(sizes),
            "mean_jpeg_bytes": int(np.mean(sizes)),
            "generate_seconds": round(generated, 2),
        },
        "index_seconds": {"with_file_check": index_checked, "listing_only": index_listed},
        "index_files_per_second": {"with_file_check": files / index_checked, "listing_only": files / index_listed},
        "imagenet_1k_extrapolated_seconds": {
            "with_file_check": IMAGENET_FILES * index_checked / files,
            "listing_only": IMAGENET_FILES * index_listed / files,
        },
    }
    rows = []
    for kind, key in (("with the file check", "with_file_check"), ("listing only", "listing_only")):
        rows.append(
            [
                f"index {files:,} files, {kind}",
                f"{payload['index_seconds'][key]:.2f} s ({payload['index_files_per_second'][key]:,.0f} files/s)",
                full_scale(payload["index_seconds"][key], files),
            ]
        )
    tree = payload["tree"]
    notes = (
        __doc__.split("\n\n")[1]
        + f"\n\nMeasured on {payload['device']}: {tree['classes']} classes x ({tree['train_per_class']} train + "
        f"{tree['val_per_class']} val) images, {tree['distinct_jpegs']} distinct JPEGs of "
        f"{tree['mean_jpeg_bytes'] / 1000:.0f} KB on average; index times are medians of {args.index_rounds} "
        f"warm runs (after one that warms the page cache); the tree took {generated:.0f} s to generate."
    )
    write_results("imagenet_index", payload, rows, ["measured", "time", "rate"], notes=notes)
