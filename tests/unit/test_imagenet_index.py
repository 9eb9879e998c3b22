"""dkl_train.imagenet: indexing ImageNet in place (three val/ layouts), its errors, class order, and reading samples.

The trees are generated: 1,000 classes of tiny JPEGs (three distinct files, written once per image),
made in about a second. Class ``c`` (in sorted order) is drawn in colour ``c % 3``, so a sample's
pixels tell whether its label and its file belong together.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dkl_train import data as D
from dkl_train import imagenet as I

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
SPECIAL = 500  # sorted position of the class whose val images are scattered and listed out of order


def jpeg_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


JPEGS = [jpeg_bytes(c) for c in COLOURS]


def make_wnids(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct WordNet-like ids, returned in a shuffled (not sorted) order."""
    numbers = random.Random(seed).sample(range(1_000_000, 16_000_000), count)
    return [f"n{n:08d}" for n in numbers]


def write_devkit_meta(path_or_buffer, id_to_wnid: dict[int, str]) -> None:
    """A devkit-style meta.mat: the leaf synsets plus one inner node (children), as the real file has."""
    from scipy.io import savemat

    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    rows = [(class_id, wnid, "a class", 0) for class_id, wnid in id_to_wnid.items()]
    rows.append((len(rows) + 1, "n00001740", "entity", 2))
    synsets = np.zeros((len(rows), 1), dtype=dtype)
    for i, (class_id, wnid, words, children) in enumerate(rows):
        synsets[i, 0] = (np.array([[class_id]], np.uint16), wnid, words, np.array([[children]], np.uint8))
    savemat(path_or_buffer, {"synsets": synsets})


class Tree:
    """A generated ImageNet: ``train/`` shared by four roots, one per val layout; ``truth`` maps val files to wnids."""

    def __init__(self, base: Path, num_classes: int = 1000) -> None:
        self.wnids = make_wnids(num_classes)
        self.sorted = sorted(self.wnids)
        colour = {w: JPEGS[i % 3] for i, w in enumerate(self.sorted)}
        special = self.sorted[SPECIAL]
        train = base / "train"
        for wnid in self.wnids:  # created in shuffled order: the index must sort them
            (train / wnid).mkdir(parents=True)
            for k in range(3 if wnid == special else 1):
                (train / wnid / f"{wnid}_{k}.JPEG").write_bytes(colour[wnid])
        # Validation: one image per class plus two more of the special class, numbered in a random class order,
        # the special class's three scattered over the whole range (first, middle, last).
        order = list(self.wnids)
        random.Random(1).shuffle(order)
        order.remove(special)
        order = [special, *order[: len(order) // 2], special, *order[len(order) // 2 :], special]
        self.truth = {f"ILSVRC2012_val_{n:08d}.JPEG": wnid for n, wnid in enumerate(order, start=1)}

        flat = base / "val_flat"
        flat.mkdir()
        for name, wnid in self.truth.items():
            (flat / name).write_bytes(colour[wnid])
        self.roots = {}
        for layout in ("folders", "kaggle", "devkit_tar", "devkit_dir"):
            root = base / layout
            root.mkdir()
            (root / "train").symlink_to(train, target_is_directory=True)
            if layout != "folders":
                (root / "val").symlink_to(flat, target_is_directory=True)
            self.roots[layout] = root
        for name, wnid in self.truth.items():
            (self.roots["folders"] / "val" / wnid).mkdir(parents=True, exist_ok=True)
            (self.roots["folders"] / "val" / wnid / name).write_bytes(colour[wnid])

        # Kaggle: rows in reverse file order (the special class's images listed last-first), boxes after the wnid.
        lines = ["ImageId,PredictionString"]
        for name, wnid in reversed(self.truth.items()):
            lines.append(f"{name[:-5]},{wnid} 10 20 30 40 {wnid} 1 2 3 4 ")
        (self.roots["kaggle"] / I.KAGGLE_SOLUTION).write_text("\n".join(lines) + "\n")

        # Devkit: IDs follow a shuffled class order, never the sorted one.
        devkit_order = list(self.wnids)
        self.devkit_id = {wnid: i for i, wnid in enumerate(devkit_order, start=1)}
        assert devkit_order != self.sorted
        ground_truth = "".join(f"{self.devkit_id[w]}\n" for w in self.truth.values()).encode()
        meta = io.BytesIO()
        write_devkit_meta(meta, {i: w for w, i in self.devkit_id.items()})
        data = self.roots["devkit_dir"] / "ILSVRC2012_devkit_t12" / "data"
        data.mkdir(parents=True)
        (data / I.DEVKIT_GROUND_TRUTH).write_bytes(ground_truth)
        (data / I.DEVKIT_META).write_bytes(meta.getvalue())
        with tarfile.open(self.roots["devkit_tar"] / I.DEVKIT_ARCHIVE, "w:gz") as tar:
            for name, payload in ((I.DEVKIT_GROUND_TRUTH, ground_truth), (I.DEVKIT_META, meta.getvalue())):
                info = tarfile.TarInfo(f"ILSVRC2012_devkit_t12/data/{name}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Tree:
    return Tree(tmp_path_factory.mktemp("imagenet"))


def index_of(root: Path, **options) -> I.ImageNetIndex:
    return I.build_index(root, val_images=1002, **options)


@pytest.mark.parametrize("layout", ["folders", "kaggle", "devkit_tar", "devkit_dir"])
def test_every_val_layout_gives_the_true_labels_in_imagefolder_order(tree, layout):
    index = index_of(tree.roots[layout])
    assert index.classes == tree.sorted
    train, val = index.splits["train"], index.splits["test"]
    assert len(train.paths) == 1002 and train.paths[0].startswith("train/")
    assert [tree.sorted[c] for c in train.labels] == [Path(p).parent.name for p in train.paths]
    assert len(val.paths) == 1002
    assert [tree.sorted[c] for c in val.labels] == [tree.truth[Path(p).name] for p in val.paths]
    assert list(val.labels) == sorted(val.labels)  # class, then file name: ImageFolder's order
    special = [Path(p).name for p, c in zip(val.paths, val.labels) if c == SPECIAL]
    assert special == sorted(k for k, w in tree.truth.items() if w == tree.sorted[SPECIAL]) and len(special) == 3
    expected_layout = {"folders": "class folders", "kaggle": "flat + LOC_val_solution.csv"}
    assert val.layout == expected_layout.get(layout, "flat + ILSVRC2012 devkit")


def test_class_order_and_samples_match_torchvision_imagefolder(tree):
    from torchvision.datasets import ImageFolder

    root = tree.roots["folders"]
    index = index_of(root)
    for split, folder in (("train", "train"), ("test", "val")):
        reference = ImageFolder(str(root / folder))
        assert reference.classes == index.classes
        ours = index.splits[split]
        assert [(str(Path(p).relative_to(root / folder)), t) for p, t in reference.samples] == [
            (str(Path(p).relative_to(folder)), int(c)) for p, c in zip(ours.paths, ours.labels)
        ]


def test_prepare_writes_a_small_index_and_samples_decode_from_the_original_files(tree, tmp_path, capsys):
    root = tree.roots["kaggle"]
    out = D.prepare("imagenet", tmp_path / "data", imagenet_dir=root)
    warning = "val/ has 1002 images; ImageNet-1k's validation set has 50000"
    assert f"warning: {warning}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "test.parquet", "train.parquet"]
    meta = json.loads((out / "index.json").read_text())
    assert meta["root"] == str(root.resolve()) and meta["classes"] == tree.sorted and meta["warnings"] == [warning]
    assert meta["splits"]["test"]["images"] == 1002 and meta["splits"]["test"]["labels_from"].endswith(".csv")
    assert sum(p.stat().st_size for p in out.iterdir()) < 100_000  # paths and labels only

    splits = D.load_prepared("imagenet", tmp_path / "data")
    assert set(splits) == {"train", "test"} and (len(splits["train"]), len(splits["test"])) == (1002, 1002)
    for split in splits.values():
        for i in (0, 1, 600, len(split) - 1):
            row = split[i]
            wnid = split.path(i).parent.name if split is splits["train"] else tree.truth[split.path(i).name]
            assert row["label"] == tree.sorted.index(wnid)
            assert row["image"].mode == "RGB" and row["image"].size == (12, 10)
            pixel = np.asarray(row["image"]).reshape(-1, 3).mean(0)
            assert np.abs(pixel - COLOURS[row["label"] % 3]).max() < 16  # the file of this label's class

    spec = D.get_spec("imagenet")
    test = D.TransformedDataset(splits["test"].select(range(600, 610)), D.build_transform(spec, train=False))
    sample = test[3]
    assert sample["image"].shape == (3, 224, 224) and sample["label"] == splits["test"][603]["label"]
    train = D.TransformedDataset(splits["train"], D.build_transform(spec, train=True), seed=0)
    assert train[(1, 7)]["image"].shape == (3, 224, 224) and train[(1, 7)]["label"] == splits["train"]["label"][7]


def test_odd_but_valid_files_are_accepted_and_read_as_rgb(tmp_path):
    png = io.BytesIO()
    Image.new("RGB", (6, 6), (1, 2, 3)).save(png, "PNG")
    cmyk = io.BytesIO()
    Image.new("CMYK", (6, 6), (0, 50, 100, 0)).save(cmyk, "JPEG")
    grey = io.BytesIO()
    Image.new("L", (6, 6), 128).save(grey, "JPEG")
    files = {
        "png.JPEG": png.getvalue(),
        "cmyk.JPEG": cmyk.getvalue(),
        "grey.JPEG": grey.getvalue(),
        "trailing.JPEG": JPEGS[0] + b"\0" * 200,  # bytes after the end marker: decoded once, then accepted
    }
    for name, payload in files.items():
        (tmp_path / name).write_bytes(payload)
        assert I.file_problem(tmp_path / name) is None, name
        assert I.load_rgb(tmp_path / name).mode == "RGB"


# ----------------------------------------------------------------------------------------------
# Errors (three classes stand in for 1,000 through num_classes, except where the count is the point)


def small_tree(root: Path, train: tuple[str, ...] = ("n01", "n02", "n03"), val: list[str] | None = None) -> Path:
    for wnid in train:
        (root / "train" / wnid).mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_1.JPEG").write_bytes(JPEGS[0])
    for wnid in train if val is None else val:
        (root / "val" / wnid).mkdir(parents=True)
        (root / "val" / wnid / f"{wnid}_v.JPEG").write_bytes(JPEGS[1])
    return root


def test_not_1000_classes(tmp_path, tree):
    with pytest.raises(I.ImageNetLayoutError, match=r"has 3 class folders; expected 1000 .*n01, n02, n03"):
        I.build_index(small_tree(tmp_path))
    with pytest.raises(I.ImageNetLayoutError, match="has 1000 class folders; expected 1001"):
        I.build_index(tree.roots["folders"], num_classes=1001)
    (tmp_path / "train" / "extracted_by_mistake").mkdir()
    with pytest.raises(I.ImageNetLayoutError, match="has 4 class folders.*not named like a WordNet id: extracted_by"):
        I.build_index(tmp_path)


def test_train_and_val_must_name_the_same_classes(tmp_path):
    root = small_tree(tmp_path, val=["n01", "n02", "n09"])
    with pytest.raises(I.ImageNetLayoutError) as err:
        I.build_index(root, num_classes=3, val_images=3)
    assert "1 class(es) of train/ have no validation image (n03)" in str(err.value)
    assert "1 validation class(es) are not folders of train/ (n09)" in str(err.value)


def test_flat_val_from_a_label_file_of_other_classes(tmp_path):
    root = small_tree(tmp_path, val=[])
    (root / "val").mkdir()
    (root / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(JPEGS[0])
    (root / I.KAGGLE_SOLUTION).write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n07 1 2 3 4\n")
    with pytest.raises(I.ImageNetLayoutError, match=r"have no validation image \(n01, n02, n03\).*\(n07\)"):
        I.build_index(root, num_classes=3, val_images=1)


def test_flat_val_without_a_label_file(tmp_path):
    root = small_tree(tmp_path, val=[])
    (root / "val").mkdir()
    (root / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(JPEGS[0])
    with pytest.raises(I.ImageNetLayoutError) as err:
        I.build_index(root, num_classes=3)
    message = str(err.value)
    assert "is flat (images, no class folders) and no label file was found" in message
    assert I.KAGGLE_SOLUTION in message and I.DEVKIT_ARCHIVE in message and "valprep" in message


def test_flat_val_with_images_the_label_file_does_not_list(tmp_path):
    root = small_tree(tmp_path, val=[])
    (root / "val").mkdir()
    for n in (1, 2):
        (root / "val" / f"ILSVRC2012_val_0000000{n}.JPEG").write_bytes(JPEGS[0])
    (root / I.KAGGLE_SOLUTION).write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01 1 2 3 4\n")
    with pytest.raises(I.ImageNetLayoutError, match=r"1 image\(s\) of .* have no label in .*: ILSVRC2012_val_00000002"):
        I.build_index(root, num_classes=3)


def test_devkit_ids_that_meta_mat_does_not_define(tmp_path):
    root = small_tree(tmp_path, val=[])
    (root / "val").mkdir()
    (root / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(JPEGS[0])
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    write_devkit_meta(str(data / I.DEVKIT_META), {1: "n02", 2: "n03", 3: "n01"})
    (data / I.DEVKIT_GROUND_TRUTH).write_text("7\n")
    with pytest.raises(I.ImageNetLayoutError, match="line 1 of .* has class ID 7, which meta.mat does not define"):
        I.build_index(root, num_classes=3)


def test_missing_train_or_val_and_mixed_val(tmp_path):
    with pytest.raises(I.ImageNetLayoutError, match="does not exist"):
        I.build_index(tmp_path / "nowhere")
    (tmp_path / "val").mkdir()
    with pytest.raises(I.ImageNetLayoutError, match=r"has no train/ folder \(it holds: val\)"):
        I.build_index(tmp_path)
    root = small_tree(tmp_path / "mixed")
    (root / "val" / "stray.JPEG").write_bytes(JPEGS[0])
    with pytest.raises(I.ImageNetLayoutError, match="mixes 3 sub-folders with 1 images"):
        I.build_index(root, num_classes=3)


def test_empty_class_folder(tmp_path):
    root = small_tree(tmp_path)
    (root / "train" / "n02" / "n02_1.JPEG").unlink()
    with pytest.raises(I.ImageNetLayoutError, match=r"1 class folder\(s\) of .*train hold no image.*: train/n02"):
        I.build_index(root, num_classes=3, val_images=3)


def test_unreadable_and_truncated_files_are_counted_and_named(tmp_path):
    root = small_tree(tmp_path)
    big = jpeg_bytes((10, 200, 30), size=(64, 64))
    bad = {
        "train/n01/cut.JPEG": big[: len(big) // 2],
        "train/n02/empty.JPEG": b"",
        "val/n03/noise.JPEG": bytes(range(256)) * 4,
    }
    for rel, payload in bad.items():
        (root / rel).write_bytes(payload)
    with pytest.raises(I.ImageNetLayoutError) as err:
        I.build_index(root, num_classes=3, val_images=4)
    message = str(err.value)
    assert message.startswith("3 unreadable or truncated file(s) under")
    assert "train/n01/cut.JPEG (truncated or corrupt" in message and "train/n02/empty.JPEG (empty file)" in message
    assert "val/n03/noise.JPEG (not a readable image" in message
    index = I.build_index(root, num_classes=3, val_images=4, check_files=False)  # the check can be skipped
    assert len(index.splits["train"].paths) == 5


def test_val_count_warning(tmp_path):
    root = small_tree(tmp_path)
    with pytest.warns(I.ImageNetWarning, match="val/ has 3 images; ImageNet-1k's validation set has 50000"):
        index = I.build_index(root, num_classes=3)
    assert index.warnings == ["val/ has 3 images; ImageNet-1k's validation set has 50000"]


def test_loading_errors_name_the_command(tmp_path, tree):
    with pytest.raises(D.DatasetNotPreparedError, match="make data DATASET=imagenet DATA_DIR=.* IMAGENET_DIR="):
        D.load_prepared("imagenet", tmp_path / "data")
    root = small_tree(tmp_path / "imagenet")
    I.write_index(I.build_index(root, num_classes=3, val_images=3), tmp_path / "data" / "imagenet")
    assert len(D.load_prepared("imagenet", tmp_path / "data")["test"]) == 3
    root.rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="is gone or moved; index it where it is now"):
        D.load_prepared("imagenet", tmp_path / "data")
