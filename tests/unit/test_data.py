"""dkl_train.data: digits/CIFAR/ImageNet preparation (no network), loading errors, seeded transforms and order."""

from __future__ import annotations

from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from dkl_train import data as D


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    D.prepare("digits", data_dir)
    return data_dir, D.load_prepared("digits", data_dir)


def test_digits_are_32px_rgb_with_a_fixed_stratified_split(digits):
    data_dir, splits = digits
    assert set(splits) == {"train", "test"} and (len(splits["train"]), len(splits["test"])) == (1347, 450)
    sample = splits["train"][0]
    assert sample["image"].size == (32, 32) and sample["image"].mode == "RGB"
    counts = np.bincount(splits["test"]["label"], minlength=10)
    assert counts.min() >= 43 and counts.max() <= 46  # stratified: every class ~25%
    again = D.build_digits()
    assert again["test"]["label"] == splits["test"]["label"]  # the split is fixed


def test_missing_dataset_names_the_command(tmp_path):
    with pytest.raises(D.DatasetNotPreparedError) as err:
        D.load_prepared("cifar100", tmp_path / "nowhere")
    assert f"make data DATASET=cifar100 DATA_DIR={tmp_path / 'nowhere'}" in str(err.value)
    assert D.prepare_command("digits") == "make data DATASET=digits"
    assert "IMAGENET_DIR=" in D.prepare_command("imagenet")


def test_cifar_prepare_renames_hub_columns(tmp_path, monkeypatch):
    image = Image.new("RGB", (32, 32), (10, 20, 30))
    tiny = datasets.Dataset.from_dict({"img": [image] * 3, "fine_label": [5, 7, 99], "coarse_label": [1, 2, 3]})
    calls = []

    def fake_load_dataset(name, *args, **kwargs):
        calls.append(name)
        return datasets.DatasetDict({"train": tiny, "test": tiny.select([0])})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    D.prepare("cifar100", tmp_path)
    loaded = D.load_prepared("cifar100", tmp_path)
    assert calls == ["uoft-cs/cifar100"]
    assert loaded["train"].column_names == ["image", "label"] and loaded["train"]["label"] == [5, 7, 99]
    assert not (tmp_path / "cifar100.tmp").exists()


def test_imagenet_prepare_from_a_local_folder(tmp_path):
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        for cls, colour in (("n01", 0), ("n02", 255)):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("L" if i else "RGB", (40, 30), colour).save(root / split / cls / f"{i}.png")
    D.prepare("imagenet", tmp_path / "data", imagenet_dir=root)
    loaded = D.load_prepared("imagenet", tmp_path / "data")
    assert set(loaded) == {"train", "test"} and sorted(loaded["test"]["label"]) == [0, 0, 1, 1]
    train = D.TransformedDataset(loaded["train"], D.build_transform(D.get_spec("imagenet"), train=True))
    assert train[0]["image"].shape == (3, 224, 224)  # greyscale files are converted to RGB
    with pytest.raises(ValueError, match="IMAGENET_DIR"):
        D.prepare("imagenet", tmp_path / "data")


def test_transforms_are_seeded_per_sample_and_leave_the_training_rng_alone(digits):
    _, splits = digits
    spec = D.get_spec("digits")
    ds = D.TransformedDataset(splits["train"], D.build_transform(spec, train=True), seed=3)
    state = torch.get_rng_state()
    a, b, c = ds[(1, 5)]["image"], ds[(1, 5)]["image"], ds[(2, 5)]["image"]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    plain = D.TransformedDataset(splits["train"], D.build_transform(spec, train=False, normalize=False))[0]["image"]
    assert plain.shape == (3, 32, 32) and plain.min() >= 0 and plain.max() <= 1


def test_epoch_order_depends_on_seed_and_epoch_only():
    sampler = D.EpochSampler(50, seed=1)
    sampler.set_epoch(4)
    first = list(sampler)
    sampler.set_epoch(0)
    list(sampler)
    sampler.set_epoch(4)
    assert list(sampler) == first and all(epoch == 4 for epoch, _ in first)
    assert sorted(i for _, i in first) == list(range(50))
    assert list(D.EpochSampler(50, shuffle=False, num_samples=3)) == [(0, 0), (0, 1), (0, 2)]


def test_batches_do_not_depend_on_worker_processes(digits):
    _, splits = digits
    ds = D.TransformedDataset(splits["train"].select(range(24)), D.build_transform(D.get_spec("digits"), True), seed=0)

    def batches(workers: int) -> list[torch.Tensor]:
        loader = D.make_loader(ds, 8, train=True, num_workers=workers, seed=0)
        loader.sampler.set_epoch(2)
        return [b["image"] for b in loader]

    assert all(torch.equal(x, y) for x, y in zip(batches(0), batches(2), strict=True))


def test_build_datasets_honours_subsets(digits):
    data_dir, _ = digits
    config = SimpleNamespace(dataset="digits", data_dir=data_dir, seed=0, augment=False, train_subset=10, eval_subset=5)
    train, test, spec = D.build_datasets(config)
    assert (len(train), len(test), spec.num_classes) == (10, 5, 10)


def test_labeled_subset_is_a_seeded_per_class_draw():
    labels = [i % 4 for i in range(40)]
    chosen = D.labeled_subset_indices(labels, per_class=2, seed=0)
    assert len(chosen) == 8 and sorted(np.bincount([labels[i] for i in chosen])) == [2, 2, 2, 2]
    assert (
        chosen == D.labeled_subset_indices(labels, per_class=2, seed=0) != D.labeled_subset_indices(labels, 2, seed=1)
    )
    with pytest.raises(ValueError, match="fewer than per_class"):
        D.labeled_subset_indices(labels, per_class=11)
