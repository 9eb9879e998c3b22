"""ImageNet read in place: a small index of paths and labels, and a split that decodes each JPEG where it lies.

``make data DATASET=imagenet IMAGENET_DIR=/path`` calls :func:`prepare_imagenet`, which lists
``train/<wnid>/*.JPEG`` and ``val/`` without copying or decoding an image, and writes under
``data/imagenet``:

- ``train.parquet`` and ``test.parquet``: one row per image, ``path`` (relative to the ImageNet folder)
  and ``label``; ``test`` is ImageNet's ``val/``, the split the recipes evaluate on;
- ``index.json``: the ImageNet folder, the 1,000 WordNet ids in label order, the image counts, where
  the validation labels came from, and any warnings.

``val/`` may come in any of the three layouts in use:

(a) class folders, ``val/<wnid>/*.JPEG`` (what the common ``valprep.sh`` produces);
(b) flat ``val/*.JPEG`` with Kaggle's ``LOC_val_solution.csv`` (the wnid is the first token of
    ``PredictionString``);
(c) flat ``val/*.JPEG`` with the ILSVRC2012 devkit: ``ILSVRC2012_devkit_t12.tar.gz``, or its
    ``data/ILSVRC2012_validation_ground_truth.txt`` and ``data/meta.mat``. The devkit numbers classes
    by its own ``ILSVRC2012_ID`` (WordNet-hierarchy order); ``meta.mat`` maps each ID to its wnid.

Labels are the position of the wnid in sorted order, the order of torchvision's ``ImageFolder``, which
the torchvision and timm ImageNet teachers were trained with. Within a split the rows follow
``ImageFolder``'s order too (class, then file name), whatever the layout of ``val/``.

Listing runs in threads (one task per class folder), and so does the integrity check of each file:
a cheap look at its first and last bytes, not a decode (see :func:`file_problem`).
:class:`ImageNetSplit` then serves ``{"image": PIL image, "label": int}`` rows, like a prepared Hugging
Face split, so the usual :class:`~dkl_train.data.TransformedDataset` and transforms apply unchanged.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tarfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import replace_folder

NUM_CLASSES = 1000
VAL_IMAGES = 50_000
INDEX_FILE = "index.json"
INDEX_FORMAT = 1
# The split names of the recipes and the ImageNet folder each one is read from.
SPLIT_FOLDERS = {"train": "train", "test": "val"}
# torchvision's ImageFolder extensions (compared lower-case), so the same files are found.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
KAGGLE_SOLUTION = "LOC_val_solution.csv"
DEVKIT_ARCHIVE = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = "meta.mat"
WNID = re.compile(r"^n\d{8}$")
SHOW = 5  # how many offending names an error message lists

_JPEG_START, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
PNG_SIGNATURE, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND"
_TAIL = 64  # bytes read from the end of each file


class ImageNetLayoutError(ValueError):
    """The ImageNet folder is not laid out as expected; the message says what was found and how to fix it."""


class ImageNetWarning(UserWarning):
    """Something unusual that does not stop indexing (e.g. a validation set without 50,000 images)."""


@dataclass
class SplitIndex:
    """One split: image paths relative to the ImageNet folder and their labels, in ``ImageFolder`` order."""

    folder: str
    paths: list[str]
    labels: np.ndarray
    layout: str = "class folders"
    labels_from: str | None = None  # the label file of a flat val/


@dataclass
class ImageNetIndex:
    root: Path
    classes: list[str]
    splits: dict[str, SplitIndex]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ----------------------------------------------------------------------------------------------
# Listing and checking files


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _list_images(folder: Path) -> tuple[list[str], list[str]]:
    """``(image file names, sub-folder names)`` of ``folder``, each sorted; one ``scandir``, no ``stat`` per file."""
    files, dirs = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir():
                dirs.append(entry.name)
            elif _is_image(entry.name) and entry.is_file():
                files.append(entry.name)
    return sorted(files), sorted(dirs)


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be used as an image, or ``None`` when it looks complete.

    The cheap test reads 8 bytes at the start and 64 at the end, never the whole file: a JPEG starts
    with the SOI marker ``FF D8 FF`` and ends with the EOI marker ``FF D9``; a download cut short ends
    inside the entropy-coded data, where ``FF D9`` cannot occur (a data byte ``FF`` is always followed
    by ``00``). A PNG (ImageNet has one, named ``.JPEG``) starts with its signature and ends with the
    ``IEND`` chunk. A file that fails the cheap test (another format, bytes appended after the EOI
    marker) is decoded once with PIL, and only a failed decode counts as a problem.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, 8, 0)
            tail = os.pread(fd, _TAIL, max(0, size - _TAIL))
        finally:
            os.close(fd)
    except OSError as err:
        return f"unreadable: {err.strerror or err}"
    if size == 0:
        return "empty file"
    if head.startswith(_JPEG_START) and _JPEG_END in tail:
        return None
    if head.startswith(PNG_SIGNATURE) and _PNG_END in tail:
        return None
    return _decode_problem(path)


def _decode_problem(path: str | Path) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
    except UnidentifiedImageError:
        return "not a readable image (PIL does not recognise its format)"
    except Exception as err:  # a broken file raises OSError, SyntaxError, ValueError... depending on the codec
        return f"truncated or corrupt ({type(err).__name__}: {err})"
    return None


def _check_files(root: Path, paths: Sequence[str], pool: ThreadPoolExecutor) -> list[tuple[str, str]]:
    """``(relative path, problem)`` of every bad file among ``paths``, checked in chunks over the thread pool."""
    chunks = [paths[i : i + 512] for i in range(0, len(paths), 512)]

    def check(chunk: Sequence[str]) -> list[tuple[str, str]]:
        bad = []
        for rel in chunk:
            problem = file_problem(root / rel)
            if problem is not None:
                bad.append((rel, problem))
        return bad

    return [item for found in pool.map(check, chunks) for item in found]


def _examples(items: Iterable[str]) -> str:
    items = list(items)
    shown = ", ".join(items[:SHOW])
    return shown + (f", ... ({len(items) - SHOW} more)" if len(items) > SHOW else "")


# ----------------------------------------------------------------------------------------------
# Class folders (train/, and val/ in layout (a))


def _index_class_folders(
    root: Path, folder: str, class_names: list[str], pool: ThreadPoolExecutor
) -> dict[str, list[str]]:
    """The image paths (relative to ``root``) of each class folder of ``root/folder``, listed in parallel."""
    listed = pool.map(lambda name: _list_images(root / folder / name)[0], class_names)
    found = {name: [f"{folder}/{name}/{file}" for file in files] for name, files in zip(class_names, listed)}
    empty = [f"{folder}/{name}" for name, files in found.items() if not files]
    if empty:
        raise ImageNetLayoutError(
            f"{len(empty)} class folder(s) of {root / folder} hold no image ({', '.join(IMAGE_EXTENSIONS)}): "
            f"{_examples(empty)}. Every class needs its images; restore them or re-extract the archive."
        )
    return found


def _check_classes(train_classes: list[str], num_classes: int, root: Path) -> None:
    if len(train_classes) != num_classes:
        odd = [name for name in train_classes if not WNID.match(name)]
        hint = f"; not named like a WordNet id: {_examples(odd)}" if odd else ""
        raise ImageNetLayoutError(
            f"{root / 'train'} has {len(train_classes)} class folders; expected {num_classes} "
            f"(one per WordNet id, e.g. train/n01440764/*.JPEG). Found: {_examples(train_classes)}{hint}"
        )


def _check_same_classes(train_classes: Sequence[str], val_classes: Iterable[str], source: str) -> None:
    train_set, val_set = set(train_classes), set(val_classes)
    if train_set == val_set:
        return
    only_train, only_val = sorted(train_set - val_set), sorted(val_set - train_set)
    parts = []
    if only_train:
        parts.append(f"{len(only_train)} class(es) of train/ have no validation image ({_examples(only_train)})")
    if only_val:
        parts.append(f"{len(only_val)} validation class(es) are not folders of train/ ({_examples(only_val)})")
    raise ImageNetLayoutError(
        f"train/ and the validation labels ({source}) do not name the same classes: {'; '.join(parts)}. "
        "Both must cover the same 1,000 ImageNet-1k WordNet ids."
    )


# ----------------------------------------------------------------------------------------------
# Labels of a flat val/ (layouts (b) and (c))


def _search_dirs(root: Path, levels: int) -> list[Path]:
    return [root, *list(root.resolve().parents)[:levels]]


def _find_kaggle_solution(root: Path) -> Path | None:
    # Kaggle's download puts the CSV three levels above ILSVRC/Data/CLS-LOC (the folder with train/ and val/).
    for folder in _search_dirs(root, 3):
        if (folder / KAGGLE_SOLUTION).is_file():
            return folder / KAGGLE_SOLUTION
    return None


def read_kaggle_solution(path: Path) -> dict[str, str]:
    """``{image id: wnid}`` from ``LOC_val_solution.csv``: the wnid is the first token of ``PredictionString``."""
    labels = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise ImageNetLayoutError(
                f"{path} has columns {reader.fieldnames}; expected ImageId,PredictionString (Kaggle's solution file)"
            )
        for row in reader:
            tokens = (row["PredictionString"] or "").split()
            if not tokens:
                raise ImageNetLayoutError(f"{path}: image {row['ImageId']} has an empty PredictionString")
            labels[row["ImageId"]] = tokens[0]
    return labels


def _find_devkit(root: Path) -> tuple[str, Callable[[str], bytes]] | None:
    """Where the devkit's two files are, and a reader for them (from the archive or from a folder)."""
    for folder in _search_dirs(root, 1):
        archive = folder / DEVKIT_ARCHIVE
        if archive.is_file():
            return str(archive), lambda name, archive=archive: _read_from_archive(archive, name)
        for data in (folder / "ILSVRC2012_devkit_t12" / "data", folder / "data"):
            if (data / DEVKIT_GROUND_TRUTH).is_file() and (data / DEVKIT_META).is_file():
                return str(data), lambda name, data=data: (data / name).read_bytes()
    return None


def _read_from_archive(archive: Path, name: str) -> bytes:
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(f"data/{name}"):
                handle = tar.extractfile(member)
                assert handle is not None
                return handle.read()
    raise ImageNetLayoutError(f"{archive} has no data/{name}; is it the ILSVRC2012 (t12) devkit?")


def devkit_wnids(meta_mat: bytes) -> dict[int, str]:
    """``{ILSVRC2012_ID: wnid}`` of the 1,000 leaf synsets in the devkit's ``meta.mat``."""
    from scipy.io import loadmat

    synsets = np.atleast_1d(loadmat(io.BytesIO(meta_mat), squeeze_me=True)["synsets"])
    # The file lists the WordNet hierarchy too; the classes are its leaves (no children).
    return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(np.asarray(s["num_children"]).item()) == 0}


def read_devkit(read: Callable[[str], bytes], source: str) -> dict[str, str]:
    """``{image id: wnid}``: line ``n`` of the ground truth is the devkit ID of ``ILSVRC2012_val_<n>``."""
    id_to_wnid = devkit_wnids(read(DEVKIT_META))
    labels = {}
    lines = read(DEVKIT_GROUND_TRUTH).decode().split()
    for number, text in enumerate(lines, start=1):
        class_id = int(text)
        if class_id not in id_to_wnid:
            raise ImageNetLayoutError(
                f"{source}: line {number} of {DEVKIT_GROUND_TRUTH} has class ID {class_id}, "
                f"which {DEVKIT_META} does not define (it defines {len(id_to_wnid)} leaf classes)"
            )
        labels[f"ILSVRC2012_val_{number:08d}"] = id_to_wnid[class_id]
    return labels


def _flat_val_labels(root: Path) -> tuple[dict[str, str], str, str]:
    """``({image id: wnid}, layout, label file)`` for a flat ``val/``, from Kaggle's CSV or the devkit."""
    solution = _find_kaggle_solution(root)
    if solution is not None:
        return read_kaggle_solution(solution), f"flat + {KAGGLE_SOLUTION}", str(solution)
    devkit = _find_devkit(root)
    if devkit is not None:
        source, read = devkit
        return read_devkit(read, source), "flat + ILSVRC2012 devkit", source
    looked = ", ".join(str(d) for d in _search_dirs(root, 3))
    raise ImageNetLayoutError(
        f"{root / 'val'} is flat (images, no class folders) and no label file was found. Provide one of: "
        f"{KAGGLE_SOLUTION} (Kaggle; looked in {looked}); {DEVKIT_ARCHIVE}, or its extracted "
        f"ILSVRC2012_devkit_t12/data/ with {DEVKIT_GROUND_TRUTH} and {DEVKIT_META} (looked in {root} and its "
        "parent); or sort val/ into val/<wnid>/ folders (e.g. with the common valprep.sh)."
    )


# ----------------------------------------------------------------------------------------------
# The index


def build_index(
    root: str | Path,
    *,
    num_classes: int = NUM_CLASSES,
    val_images: int = VAL_IMAGES,
    threads: int | None = None,
    check_files: bool = True,
    log: Callable[[str], None] | None = None,
) -> ImageNetIndex:
    """Index ``root`` (``train/`` and ``val/``) without copying or decoding; raises :class:`ImageNetLayoutError`.

    ``threads`` defaults to 32: listing and the file check wait on the file system, not the CPU.
    Warns (:class:`ImageNetWarning`) when ``val/`` does not hold ``val_images`` images.
    """
    start = time.perf_counter()
    root = Path(root).expanduser()
    say = log or (lambda message: None)
    if not root.is_dir():
        raise ImageNetLayoutError(f"the ImageNet folder {root} does not exist (IMAGENET_DIR=/path/to/imagenet)")
    for folder in SPLIT_FOLDERS.values():
        if not (root / folder).is_dir():
            found = sorted(p.name for p in root.iterdir())
            raise ImageNetLayoutError(
                f"{root} has no {folder}/ folder (it holds: {_examples(found) or 'nothing'}). Expected "
                "train/<wnid>/*.JPEG and val/; point IMAGENET_DIR at the folder that holds both "
                "(for Kaggle's download: ILSVRC/Data/CLS-LOC)."
            )
    notes: list[str] = []
    with ThreadPoolExecutor(max_workers=threads or 32) as pool:
        stray, classes = _list_images(root / "train")
        _check_classes(classes, num_classes, root)
        label_of = {wnid: i for i, wnid in enumerate(classes)}
        train_files = _index_class_folders(root, "train", classes, pool)
        train = SplitIndex(
            "train",
            [p for wnid in classes for p in train_files[wnid]],
            np.repeat(np.arange(len(classes)), [len(train_files[w]) for w in classes]),
        )
        if stray:
            notes.append(f"ignored {len(stray)} image(s) directly in train/ (outside the class folders)")
        say(f"train/: {len(train.paths)} images in {len(classes)} classes")

        val_files, val_dirs = _list_images(root / "val")
        if val_dirs and val_files:
            raise ImageNetLayoutError(
                f"{root / 'val'} mixes {len(val_dirs)} sub-folders with {len(val_files)} images; use either "
                "class folders val/<wnid>/ or a flat val/ with a label file, not both"
            )
        layout, source = "class folders", None
        if val_dirs:
            _check_same_classes(classes, val_dirs, "the class folders of val/")
            by_class = _index_class_folders(root, "val", val_dirs, pool)
            pairs = [(label_of[wnid], p) for wnid in classes for p in by_class[wnid]]
        elif val_files:
            ids, layout, source = _flat_val_labels(root)
            stems = [f.rsplit(".", 1)[0] for f in val_files]
            unlabeled = [f for f, stem in zip(val_files, stems) if stem not in ids]
            if unlabeled:
                raise ImageNetLayoutError(
                    f"{len(unlabeled)} image(s) of {root / 'val'} have no label in {source}: {_examples(unlabeled)}. "
                    "The label file must belong to this copy of the validation set."
                )
            wnids = [ids[stem] for stem in stems]
            _check_same_classes(classes, wnids, source)
            # ImageFolder's order (class, then name), the same as for class folders.
            pairs = sorted((label_of[w], f"val/{f}") for w, f in zip(wnids, val_files))
        else:
            raise ImageNetLayoutError(f"{root / 'val'} holds no images and no class folders")
        val = SplitIndex(
            "val", [p for _, p in pairs], np.array([c for c, _ in pairs], np.int64), layout=layout, labels_from=source
        )
        say(f"val/ ({val.layout}): {len(val.paths)} images")
        if len(val.paths) != val_images:
            message = f"val/ has {len(val.paths)} images; ImageNet-1k's validation set has {val_images}"
            notes.append(message)
            warnings.warn(message, ImageNetWarning, stacklevel=2)

        if check_files:
            bad = [f"{rel} ({why})" for split in (train, val) for rel, why in _check_files(root, split.paths, pool)]
            if bad:
                raise ImageNetLayoutError(
                    f"{len(bad)} unreadable or truncated file(s) under {root}: {_examples(bad)}. "
                    "Replace them from the original archive (or delete them) and prepare again."
                )
            say(f"checked {len(train.paths) + len(val.paths)} files (start and end markers)")
    return ImageNetIndex(root.resolve(), classes, {"train": train, "test": val}, notes, time.perf_counter() - start)


def write_index(index: ImageNetIndex, out_dir: str | Path) -> Path:
    """Write ``<split>.parquet`` and ``index.json`` into ``out_dir``, atomically (a temporary folder, then a rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    splits = {}
    for name, split in index.splits.items():
        table = pa.table({"path": pa.array(split.paths, pa.string()), "label": pa.array(split.labels, pa.int16())})
        pq.write_table(table, tmp / f"{name}.parquet")
        splits[name] = {
            "folder": split.folder,
            "images": len(split.paths),
            "layout": split.layout,
            "labels_from": split.labels_from,
            "file": f"{name}.parquet",
        }
    meta = {
        "format": INDEX_FORMAT,
        "root": str(index.root),
        "classes": index.classes,
        "splits": splits,
        "warnings": index.warnings,
        "index_seconds": round(index.seconds, 2),
    }
    (tmp / INDEX_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return replace_folder(tmp, out_dir)


def prepare_imagenet(image_dir: str | Path, out_dir: str | Path, **options: Any) -> Path:
    """Index ``image_dir`` (see :func:`build_index` for ``options``) and write the index to ``out_dir``.

    Progress and warnings go to ``log`` (default ``print``) as plain lines; the warnings are also kept
    in ``index.json``.
    """
    log = options.pop("log", print)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageNetWarning)
        index = build_index(image_dir, log=log, **options)
    for message in index.warnings:
        log(f"warning: {message}")
    return write_index(index, out_dir)


# ----------------------------------------------------------------------------------------------
# Reading


def load_rgb(path: str | Path) -> Any:
    """The image at ``path`` as an RGB PIL image (ImageNet has greyscale and CMYK JPEGs, and one PNG)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image if image.mode == "RGB" else image.convert("RGB")


class ImageNetSplit:
    """One indexed split; ``split[i]`` is ``{"image": RGB PIL image, "label": int}``, read from the original file.

    Mirrors what the recipes use of a Hugging Face split: ``len``, integer indexing, ``split["label"]``
    and ``select``. Paths are kept as one NumPy byte array, not a list of Python strings, so the
    DataLoader's forked workers do not copy them page by page as reference counts change.
    """

    column_names = ["image", "label"]

    def __init__(self, root: str | Path, paths: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> None:
        self.root = Path(root)
        self.paths = paths
        self.labels = labels
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> Path:
        return self.root / os.fsdecode(self.paths[index])

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            if key == "label":
                return self.labels.tolist()
            raise KeyError(f"{key!r}: an ImageNet split has the columns {self.column_names}")
        index = int(key)
        return {"image": load_rgb(self.path(index)), "label": int(self.labels[index])}

    def select(self, indices: Iterable[int]) -> ImageNetSplit:
        chosen = np.fromiter(indices, dtype=np.int64)
        return ImageNetSplit(self.root, self.paths[chosen], self.labels[chosen], self.classes)

    def __repr__(self) -> str:
        return f"ImageNetSplit({len(self)} images under {self.root})"


def load_index(index_dir: str | Path, rebuild_command: str) -> dict[str, ImageNetSplit]:
    """The ``train`` and ``test`` splits indexed in ``index_dir``; ``rebuild_command`` goes into every error."""
    import pyarrow.parquet as pq

    index_dir = Path(index_dir)
    meta = json.loads((index_dir / INDEX_FILE).read_text())
    if meta.get("format") != INDEX_FORMAT:
        raise ImageNetLayoutError(
            f"{index_dir / INDEX_FILE} has format {meta.get('format')}, this code reads {INDEX_FORMAT}; "
            f"index again with:\n    {rebuild_command}"
        )
    root = Path(meta["root"])
    if not (root / "train").is_dir():
        raise FileNotFoundError(
            f"the ImageNet folder {root} indexed in {index_dir} is gone or moved; index it where it is now:\n"
            f"    {rebuild_command}"
        )
    splits = {}
    for name, info in meta["splits"].items():
        table = pq.read_table(index_dir / info["file"])
        paths = np.array([os.fsencode(p) for p in table.column("path").to_pylist()], dtype=np.bytes_)
        labels = table.column("label").to_numpy().astype(np.int64)
        splits[name] = ImageNetSplit(root, paths, labels, meta["classes"])
    return splits
