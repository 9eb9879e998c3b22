"""ImageNet models through timm (no downloads) and the ViT-S/2 with USB's pretrained-file format."""

from __future__ import annotations

import pytest
import torch

from dkl_train.models import CheckpointMismatchError, create_model, load_checkpoint

from .test_models_published import random_state_dict, usb_vit_small_patch2_32


@pytest.mark.parametrize(
    ("name", "params_m"),
    [
        ("timm:resnet18", 11.69),
        ("timm:resnet34.tv_in1k", 21.80),
        ("timm:resnet50.tv_in1k", 25.56),
        ("timm:mobilenetv1_100", 4.23),
    ],
)
def test_timm_models_build_without_download(name, params_m):
    model = create_model(name, num_classes=1000).eval()
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, abs=0.01)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


def test_mobilenetv1_with_relu_as_mdistiller():
    model = create_model("timm:mobilenetv1_100", 1000, act_layer="relu")
    assert not any(isinstance(m, torch.nn.ReLU6) for m in model.modules())
    assert any(isinstance(m, torch.nn.ReLU) for m in model.modules())


def test_timm_pretrained_file_is_used(tmp_path):
    source = create_model("timm:resnet18", num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "resnet18_tv.pth")
    model = create_model("timm:resnet18", pretrained_file=tmp_path / "resnet18_tv.pth")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        create_model("timm:resnet18", pretrained_file=tmp_path / "absent.pth")


def test_unknown_timm_name_fails_clearly():
    with pytest.raises(ValueError, match="timm has no model 'resnet9000'"):
        create_model("timm:resnet9000", 10)


@pytest.fixture(scope="module")
def vit():
    return create_model("vit_small_patch2_32", num_classes=100, drop_path=0.2)


def test_vit_matches_usb_layout_and_gives_logits(vit):
    published = usb_vit_small_patch2_32(num_classes=100)
    state = vit.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == published
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    vit.eval()
    with torch.no_grad():
        assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_usb_checkpoint_loads_with_head_dropped(tmp_path, vit):
    pretrained = random_state_dict(usb_vit_small_patch2_32(num_classes=1000))
    pretrained["mlp.0.weight"] = torch.zeros(384, 384)  # a pretraining projection head, also dropped
    torch.save({"model": pretrained}, tmp_path / "vit_small_patch2_32_mlp_im_1k_32.pth")
    head_before = vit.head.weight.detach().clone()
    report = load_checkpoint(vit, tmp_path / "vit_small_patch2_32_mlp_im_1k_32.pth", fmt="usb")
    assert report.container_key == "model" and not report.missing and not report.unexpected
    assert "head.weight" in report.notes[0] and "mlp.0.weight" in report.notes[0]
    assert torch.equal(vit.blocks[3].attn.qkv.weight, pretrained["blocks.3.attn.qkv.weight"])
    assert torch.equal(vit.head.weight, head_before)


def test_usb_pos_embed_is_resampled(vit):
    pretrained = random_state_dict(usb_vit_small_patch2_32(grid=8))
    report = load_checkpoint(vit, {"model": pretrained}, fmt="usb")
    assert "pos_embed resampled from 8x8 to 16x16 patches" in report.notes
    assert torch.equal(vit.pos_embed[:, :1], pretrained["pos_embed"][:, :1])  # class token untouched


def test_wrong_usb_checkpoint_fails_naming_keys(vit):
    pretrained = random_state_dict(usb_vit_small_patch2_32())
    del pretrained["blocks.5.norm2.bias"]
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.5\.norm2\.bias"):
        load_checkpoint(vit, {"model": pretrained}, fmt="usb")
    pretrained = random_state_dict(usb_vit_small_patch2_32())
    pretrained["blocks.0.mlp.fc1.weight"] = torch.zeros(768, 384)  # a ViT with another MLP ratio
    with pytest.raises(
        CheckpointMismatchError, match=r"blocks\.0\.mlp\.fc1\.weight: checkpoint \(768, 384\) vs model \(1536, 384\)"
    ):
        load_checkpoint(vit, {"model": pretrained}, fmt="usb")


# --- student initialisation of the ImageNet KD runs (mdistiller's / torchvision's) ----------------


def test_resnet18_without_zero_init_last_is_torchvision_resnet18():
    import torchvision  # a dependency of dkl-train

    torch.manual_seed(0)
    ours = create_model("timm:resnet18", 1000, zero_init_last=False).state_dict()
    torch.manual_seed(0)
    reference = torchvision.models.resnet18().state_dict()
    assert list(ours) == list(reference)
    assert all(torch.equal(ours[k], reference[k]) for k in ours)
    # timm's default zeroes the last BN of each of the 8 blocks: a different start than the released runs.
    torch.manual_seed(0)
    default = create_model("timm:resnet18", 1000).state_dict()
    assert [k for k, v in default.items() if k.endswith("bn2.weight") and not v.any()] == [
        k for k in default if k.endswith("bn2.weight")
    ]


def pytorch_default_mobilenetv1(num_classes: int = 1000) -> torch.nn.Module:
    """MobileNetV1 (ReLU, no skips) in plain torch layers with their default initialisation: the released student."""
    from torch import nn

    def unit(cin, cout, stride, groups=1, kernel=3):
        return [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        ]

    layers = unit(3, 32, 2)
    widths = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)]
    widths += [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]
    for cin, cout, stride in widths:
        layers += unit(cin, cin, stride, groups=cin) + unit(cin, cout, 1, kernel=1)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, num_classes))


def test_mobilenetv1_pytorch_init_equals_a_pytorch_default_network():
    torch.manual_seed(0)
    ours = create_model("timm:mobilenetv1_100", 1000, act_layer="relu", init="pytorch")
    torch.manual_seed(0)
    reference = pytorch_default_mobilenetv1()
    ours_params = [p for p in ours.state_dict().values() if p.dtype.is_floating_point]
    reference_params = [p for p in reference.state_dict().values() if p.dtype.is_floating_point]
    assert [p.shape for p in ours_params] == [p.shape for p in reference_params]
    assert all(torch.equal(a, b) for a, b in zip(ours_params, reference_params))
    ours.eval(), reference.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(images))
    # timm's own (TensorFlow-style) initialisation is another start.
    torch.manual_seed(0)
    timm_init = create_model("timm:mobilenetv1_100", 1000, act_layer="relu")
    assert not torch.equal(timm_init.conv_stem.weight, ours.conv_stem.weight)


def test_pytorch_init_refuses_pretrained_weights(tmp_path):
    with pytest.raises(ValueError, match="discard"):
        create_model("timm:resnet18", 1000, pretrained_file=tmp_path / "w.pth", init="pytorch")
    with pytest.raises(ValueError, match="init must be"):
        create_model("timm:resnet18", 1000, init="tf")
