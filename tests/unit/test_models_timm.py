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
