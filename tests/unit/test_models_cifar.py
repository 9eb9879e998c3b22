"""The CIFAR KD zoo: every name builds and gives logits, and mdistiller's checkpoints load strictly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dkl_train.models import CheckpointMismatchError, create_model, list_models, load_checkpoint

from .test_models_published import PUBLISHED_SAMPLES, mdistiller_resnet, random_state_dict, trades_wrn

CIFAR_NAMES = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
    "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
    "MobileNetV2", "ShuffleV1", "ShuffleV2", "ResNet18", "ResNet50",
]  # fmt: skip

# Parameter counts (millions) at 100 classes as the KD papers' tables report them (CRD, DKD, ...).
PARAMS_M = {"resnet8x4": 1.23, "wrn_40_2": 2.26, "resnet32x4": 7.43, "resnet56": 0.86, "resnet110": 1.74}
PARAMS_M |= {"wrn_16_2": 0.70, "wrn_40_1": 0.57, "vgg13": 9.46, "ShuffleV1": 0.95, "ShuffleV2": 1.36}
PARAMS_M |= {"MobileNetV2": 0.81, "ResNet50": 23.71, "resnet20": 0.28, "resnet32": 0.47, "vgg8": 3.97}


def test_all_names_are_registered():
    assert set(CIFAR_NAMES) <= set(list_models())
    assert {"wrn_34_10", "wrn_28_10_silu", "vit_small_patch2_32"} <= set(list_models())


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_forward_gives_logits(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=100).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 100)
    assert torch.isfinite(logits).all()
    if name in PARAMS_M:
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        assert n_params == pytest.approx(PARAMS_M[name], abs=0.01)


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="resnet8x4"):
        create_model("resnet9", 100)


def test_num_classes_is_required():
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet8")


def _mdistiller_checkpoint(shapes):
    # As mdistiller/CRD save teachers: weights under "model" next to training state.
    return {"model": random_state_dict(shapes), "epoch": 240, "best_acc": np.float64(76.3), "optimizer": {}}


@pytest.mark.parametrize(
    ("name", "shapes"),
    [
        ("resnet32x4", mdistiller_resnet(32, (32, 64, 128, 256), 100)),
        ("resnet8x4", mdistiller_resnet(8, (32, 64, 128, 256), 100)),
        ("resnet56", mdistiller_resnet(56, (16, 16, 32, 64), 100)),
        ("wrn_40_2", trades_wrn(40, 2, 100)),
        ("wrn_16_2", trades_wrn(16, 2, 100)),
    ],
)
def test_mdistiller_teacher_file_loads_strictly(tmp_path, name, shapes):
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save(_mdistiller_checkpoint(shapes), path)
    model = create_model(name, 100)
    report = load_checkpoint(model, path)
    assert report.container_key == "model" and report.loaded == len(shapes)
    assert not report.missing and not report.unexpected
    loaded = model.state_dict()
    expected = torch.load(path, weights_only=False)["model"]
    assert set(loaded) == set(shapes)
    assert all(torch.equal(loaded[k], expected[k]) for k in shapes)


@pytest.mark.parametrize("name", sorted(PUBLISHED_SAMPLES))
def test_published_names_and_counts(name):
    count, samples = PUBLISHED_SAMPLES[name]
    state = create_model(name, 100).state_dict()
    assert len(state) == count
    for key, shape in samples.items():
        assert tuple(state[key].shape) == shape, key


def test_missing_key_is_named():
    shapes = mdistiller_resnet(8, (32, 64, 128, 256), 100)
    state = random_state_dict(shapes)
    del state["layer2.0.downsample.1.running_var"]
    with pytest.raises(CheckpointMismatchError, match=r"missing key\(s\): layer2\.0\.downsample\.1\.running_var"):
        load_checkpoint(create_model("resnet8x4", 100), {"model": state})


def test_wrong_shape_names_key_and_both_shapes():
    state = random_state_dict(mdistiller_resnet(8, (32, 64, 128, 256), 100))
    model = create_model("resnet8x4", 10)  # a CIFAR-100 teacher into a 10-class net
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(model, {"model": state})
    message = str(info.value)
    assert "fc.weight: checkpoint (100, 256) vs model (10, 256)" in message
    assert "fc.bias: checkpoint (100,) vs model (10,)" in message


def test_unexpected_key_is_named_and_non_strict_warns():
    state = random_state_dict(trades_wrn(16, 2, 100))
    state["block1.layer.0.extra"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected key\(s\): block1\.layer\.0\.extra"):
        load_checkpoint(create_model("wrn_16_2", 100), state)
    with pytest.warns(UserWarning, match="block1.layer.0.extra"):
        report = load_checkpoint(create_model("wrn_16_2", 100), state, strict=False)
    assert report.unexpected == ["block1.layer.0.extra"]


def test_dataparallel_prefix_and_own_safetensors_roundtrip(tmp_path):
    from safetensors.torch import save_file

    source = create_model("resnet20", 100)
    wrapped = {f"module.{k}": v for k, v in source.state_dict().items()}
    target = create_model("resnet20", 100)
    report = load_checkpoint(target, {"state_dict": wrapped})
    assert "stripped prefix 'module.'" in report.notes
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "model.safetensors")
    again = create_model("resnet20", 100, checkpoint=tmp_path / "model.safetensors")
    x = torch.randn(2, 3, 32, 32)
    source.eval(), target.eval(), again.eval()
    with torch.no_grad():
        assert torch.equal(source(x), target(x)) and torch.equal(source(x), again(x))


def test_missing_file_and_container_key_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_checkpoint(create_model("resnet8", 10), tmp_path / "nothing.pth")
    with pytest.raises(CheckpointMismatchError, match="no key 'ema'"):
        load_checkpoint(create_model("resnet8", 10), {"model": {}}, key="ema")
