"""dkl_train.data: digits/CIFAR/ImageNet preparation (no network), loading errors, seeded transforms and order."""

from __future__ import annotations

from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

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


@pytest.mark.parametrize("offline", [False, True], ids=["no-network", "HF_HUB_OFFLINE"])
def test_unreachable_hub_ends_in_one_message_saying_what_to_do(tmp_path, monkeypatch, capsys, offline):
    from huggingface_hub.utils import OfflineModeIsEnabled

    def unreachable(name, *args, **kwargs):
        if offline:  # what datasets raises with HF_HUB_OFFLINE=1 and nothing cached
            raise OfflineModeIsEnabled("Cannot reach the Hub: offline mode is enabled.")
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(SystemExit) as exit_info:
        D.main(["prepare", "--dataset", "cifar100", "--data-dir", str(tmp_path)])
    message = str(exit_info.value.code)
    assert message.startswith("error: could not reach the Hugging Face Hub for dataset 'uoft-cs/cifar100'")
    for hint in (
        "make data DATASET=cifar100",
        "copy its data/cifar100/ folder",
        "HF_DATASETS_CACHE",
        "HF_HUB_OFFLINE=1",
    ):
        assert hint in message
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "cifar100").exists() and not (tmp_path / "cifar100.tmp").exists()


def test_imagenet_prepare_needs_the_local_folder(tmp_path):
    # Indexing itself (layouts, errors, class order) is tested in test_imagenet_index.py.
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


# --- uint8 batches, normalised on the device ----------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False], ids=["normalised", "adv-0-1"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "test"])
def test_device_normalisation_equals_the_worker_float_path_bit_for_bit(digits, normalize, train):
    _, splits = digits
    spec = D.get_spec("digits")
    rows = splits["train"].select(range(16))
    float_ds = D.TransformedDataset(rows, D.build_transform(spec, train, normalize=normalize), seed=4)
    uint8_ds = D.TransformedDataset(rows, D.build_transform(spec, train, normalize=normalize, output="uint8"), seed=4)
    keys = [(3, i) for i in range(16)]
    reference = torch.stack([float_ds[k]["image"] for k in keys])
    raw = torch.stack([uint8_ds[k]["image"] for k in keys])
    assert raw.dtype == torch.uint8 and reference.dtype == torch.float32
    batch = D.DeviceNormalize.for_spec(spec, normalize)({"image": raw, "label": torch.arange(16)})
    assert batch["image"].dtype == torch.float32 and torch.equal(batch["label"], torch.arange(16))
    assert torch.equal(batch["image"], reference)  # the same float operations: identical bits, not just close


def test_device_normalisation_of_cifar_statistics_is_exact_for_every_pixel_value():
    # All 256 values in every channel, with CIFAR-100's mean/std: the device path equals torchvision's per sample.
    spec = D.get_spec("cifar100")
    values = torch.arange(256, dtype=torch.uint8).view(1, 16, 16).expand(3, 16, 16).contiguous()
    reference = v2.Compose(D.tensor_steps(spec)[1:])(values)
    normalise = D.DeviceNormalize.for_spec(spec)
    assert torch.equal(normalise(values[None])[0], reference)
    assert torch.equal(normalise(reference[None])[0], reference)  # float input passes through
    with pytest.raises(ValueError, match="both mean and std"):
        D.DeviceNormalize(mean=(0.5,) * 3)


def test_build_datasets_give_uint8_samples_and_loaders_give_the_float_batches(digits):
    data_dir, splits = digits
    config = SimpleNamespace(dataset="digits", data_dir=data_dir, seed=0, augment=True, train_subset=24, eval_subset=8)
    train, test, spec = D.build_datasets(config)
    assert train[0]["image"].dtype == torch.uint8 and isinstance(train.batch_transform, D.DeviceNormalize)
    reference = D.TransformedDataset(splits["train"].select(range(24)), D.build_transform(spec, True), seed=0)
    loader = D.DeviceLoader(
        D.make_loader(train, 8, train=True, num_workers=0, seed=0), train.batch_transform, device="cpu",
        channels_last=True,
    )  # fmt: skip
    loader.sampler.set_epoch(1)  # the wrapped loader's attributes
    batches = list(loader)
    assert len(batches) == len(loader) == 3 and loader.sampler.epoch == 1
    assert batches[0]["image"].is_contiguous(memory_format=torch.channels_last)
    expected = torch.stack([reference[(1, int(i))]["image"] for i in batches[0]["index"]])
    assert torch.equal(batches[0]["image"], expected)
    assert (
        D.TransformedDataset(splits["train"], train.transform).select([1, 2]).data["label"]
        == splits["train"][1:3]["label"]
    )


def test_num_workers_auto_is_this_process_share_of_the_cores(monkeypatch):
    import os

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert D.resolve_num_workers("auto") == D.available_workers() == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores * 2))
    assert D.available_workers() == 1  # at least one worker each
    assert D.resolve_num_workers(0) == 0 and D.resolve_num_workers(3) == 3
    with pytest.raises(ValueError, match="'auto'"):
        D.resolve_num_workers(-1)


@pytest.mark.parametrize("train", [True, False], ids=["RandomResizedCrop", "Resize256-CenterCrop224"])
def test_imagenet_transforms_give_uint8_224_crops_equal_to_the_float_path(train):
    spec = D.get_spec("imagenet")
    pixels = np.random.default_rng(0).integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
    rows = [{"image": Image.fromarray(pixels), "label": 3}]
    as_uint8 = D.TransformedDataset(rows, D.build_transform(spec, train, output="uint8"), seed=1)[(2, 0)]["image"]
    as_float = D.TransformedDataset(rows, D.build_transform(spec, train), seed=1)[(2, 0)]["image"]
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == (3, 224, 224)
    assert torch.equal(D.DeviceNormalize.for_spec(spec).images(as_uint8[None])[0], as_float)


@pytest.mark.parametrize("train", [True, False], ids=["RandomResizedCrop", "Resize256-CenterCrop224"])
def test_imagenet_tensor_crops_match_torchvision_pil_crops_within_one_grey_level(train):
    # ImageNet samples are cropped and resized as uint8 tensors (faster than PIL's resize): the same
    # random draws, so the same region, and antialiased bilinear both ways.
    from torchvision.transforms import v2

    spec = D.get_spec("imagenet")
    pixels = np.random.default_rng(0).integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if train:
        on_pil = [v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()]
    else:
        on_pil = [v2.Resize(256, antialias=True), v2.CenterCrop(224)]
    reference = v2.Compose([*on_pil, v2.PILToTensor()])
    ours = D.build_transform(spec, train, output="uint8")
    for seed in range(8):
        torch.manual_seed(seed)
        expected = reference(image).int()
        torch.manual_seed(seed)
        got = ours(image).as_subclass(torch.Tensor).int()
        assert got.shape == expected.shape == (3, 224, 224)
        assert (got - expected).abs().max() <= 1, seed
