"""Parameter names and shapes of the peer projects' checkpoints, written down as data.

Read from the peers' model definitions (names, shapes, layer order), not from our code:
- mdistiller ``mdistiller/models/cifar/{resnet,resnetv2,wrn,vgg,mobilenetv2,ShuffleNetv1,ShuffleNetv2}.py``
  (the ``cifar_teachers.tar`` checkpoints keep the weights under ``"model"``);
- RobustBench ``robustbench/model_zoo/architectures/wide_resnet.py`` (TRADES WRN; ``Cui2023Decoupled_WRN-34-10``
  is ``WideResNet(depth=34, widen_factor=10, sub_block1=False)``) and ``dm_wide_resnet.py``
  (``Cui2023Decoupled_WRN-28-10`` is ``DMWideResNet(depth=28, width=10, activation_fn=nn.SiLU, mean, std)``);
  the LBGAT entries (``Cui2020Learnable_*``) are ``WideResNet(..., sub_block1=True)``;
- LBGAT ``models/resnetcifar.py`` (``ResNet18_cifar``, its natural model);
- USB ``semilearn/nets/vit/vit.py`` (``vit_small_patch2_32``: img 32, patch 2, dim 384, depth 12, heads 6).

The generators enumerate a full published state dict; the tests below pin a few entries and the key
counts so that a slip in a generator shows up here rather than as a false pass elsewhere.
"""

from __future__ import annotations

import torch

Shapes = dict[str, tuple[int, ...]]


def _conv(keys: Shapes, name: str, out: int, inp: int, k: int, bias: bool = False) -> None:
    keys[f"{name}.weight"] = (out, inp, k, k)
    if bias:
        keys[f"{name}.bias"] = (out,)


def _bn(keys: Shapes, name: str, c: int) -> None:
    for suffix in ("weight", "bias", "running_mean", "running_var"):
        keys[f"{name}.{suffix}"] = (c,)
    keys[f"{name}.num_batches_tracked"] = ()


def _resnet_stages(keys: Shapes, widths: tuple[int, ...], strides: tuple[int, ...], n: int, shortcut: str) -> None:
    """Stem conv1/bn1, then stages ``layer{s}.{i}.{conv1,bn1,conv2,bn2}`` with a projection ``<shortcut>.{0,1}``
    in the first block of a stage whose stride or width changes (mdistiller resnet.py, LBGAT resnetcifar.py)."""
    _conv(keys, "conv1", widths[0], 3, 3)
    _bn(keys, "bn1", widths[0])
    inp = widths[0]
    for stage, (width, stride) in enumerate(zip(widths[1:], strides), start=1):
        for i in range(n):
            p = f"layer{stage}.{i}"
            _conv(keys, f"{p}.conv1", width, inp, 3)
            _bn(keys, f"{p}.bn1", width)
            _conv(keys, f"{p}.conv2", width, width, 3)
            _bn(keys, f"{p}.bn2", width)
            if i == 0 and (stride != 1 or inp != width):
                _conv(keys, f"{p}.{shortcut}.0", width, inp, 1)
                _bn(keys, f"{p}.{shortcut}.1", width)
            inp = width


def mdistiller_resnet(depth: int, widths: tuple[int, int, int, int], num_classes: int) -> Shapes:
    """mdistiller resnet.py: conv1/bn1, layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2,downsample.{0,1}}, fc."""
    keys: Shapes = {}
    _resnet_stages(keys, widths, (1, 2, 2), (depth - 2) // 6, "downsample")
    keys["fc.weight"], keys["fc.bias"] = (num_classes, widths[3]), (num_classes,)
    return keys


def trades_wrn(depth: int, k: int, num_classes: int, sub_block1: bool = False) -> Shapes:
    """mdistiller wrn.py == RobustBench wide_resnet.py; ``sub_block1=True``: the LBGAT files' extra copy of block1,
    between block1 and block2 (RobustBench ``Cui2020Learnable_*``, LBGAT ``models/wideresnet.py``)."""
    keys: Shapes = {}
    widths = [16, 16 * k, 32 * k, 64 * k]
    _conv(keys, "conv1", 16, 3, 3)
    n = (depth - 4) // 6
    stages = [("block1", 1), ("sub_block1", 1), ("block2", 2), ("block3", 3)] if sub_block1 else None
    for name, b in stages or [(f"block{b}", b) for b in (1, 2, 3)]:
        for i in range(n):
            inp, out = (widths[b - 1] if i == 0 else widths[b]), widths[b]
            p = f"{name}.layer.{i}"
            _bn(keys, f"{p}.bn1", inp)
            _conv(keys, f"{p}.conv1", out, inp, 3)
            _bn(keys, f"{p}.bn2", out)
            _conv(keys, f"{p}.conv2", out, out, 3)
            if inp != out:
                _conv(keys, f"{p}.convShortcut", out, inp, 1)
    _bn(keys, "bn1", widths[3])
    keys["fc.weight"], keys["fc.bias"] = (num_classes, widths[3]), (num_classes,)
    return keys


def lbgat_resnet18(num_classes: int) -> Shapes:
    """LBGAT models/resnetcifar.py ResNet18_cifar: conv1/bn1, layer{1..4}.{0,1}.{conv1,bn1,conv2,bn2,shortcut.{0,1}},
    linear; strides 1/1/2/2, so layer2's first block projects 64 -> 128 channels without striding."""
    keys: Shapes = {}
    _resnet_stages(keys, (64, 64, 128, 256, 512), (1, 1, 2, 2), 2, "shortcut")
    keys["linear.weight"], keys["linear.bias"] = (num_classes, 512), (num_classes,)
    return keys


def dm_wrn(depth: int, width: int, num_classes: int) -> Shapes:
    """RobustBench dm_wide_resnet.py DMWideResNet (mean/std are not state-dict entries there)."""
    keys: Shapes = {}
    widths = [16, 16 * width, 32 * width, 64 * width]
    _conv(keys, "init_conv", 16, 3, 3)
    n = (depth - 4) // 6
    for g in range(3):
        for i in range(n):
            inp, out = (widths[g] if i == 0 else widths[g + 1]), widths[g + 1]
            p = f"layer.{g}.block.{i}"
            _bn(keys, f"{p}.batchnorm_0", inp)
            _conv(keys, f"{p}.conv_0", out, inp, 3)
            _bn(keys, f"{p}.batchnorm_1", out)
            _conv(keys, f"{p}.conv_1", out, out, 3)
            if inp != out:
                _conv(keys, f"{p}.shortcut", out, inp, 1)
    _bn(keys, "batchnorm", widths[3])
    keys["logits.weight"], keys["logits.bias"] = (num_classes, widths[3]), (num_classes,)
    return keys


def usb_vit_small_patch2_32(num_classes: int = 1000, grid: int = 16) -> Shapes:
    """USB VisionTransformer with img 32 / patch 2 / dim 384 / depth 12 / mlp 4x / qkv bias."""
    keys: Shapes = {"patch_embed.proj.weight": (384, 3, 2, 2), "patch_embed.proj.bias": (384,)}
    keys["cls_token"], keys["pos_embed"] = (1, 1, 384), (1, grid * grid + 1, 384)
    for i in range(12):
        p = f"blocks.{i}"
        keys |= {f"{p}.norm1.weight": (384,), f"{p}.norm1.bias": (384,)}
        keys |= {f"{p}.attn.qkv.weight": (1152, 384), f"{p}.attn.qkv.bias": (1152,)}
        keys |= {f"{p}.attn.proj.weight": (384, 384), f"{p}.attn.proj.bias": (384,)}
        keys |= {f"{p}.norm2.weight": (384,), f"{p}.norm2.bias": (384,)}
        keys |= {f"{p}.mlp.fc1.weight": (1536, 384), f"{p}.mlp.fc1.bias": (1536,)}
        keys |= {f"{p}.mlp.fc2.weight": (384, 1536), f"{p}.mlp.fc2.bias": (384,)}
    keys |= {"norm.weight": (384,), "norm.bias": (384,), "head.weight": (num_classes, 384), "head.bias": (num_classes,)}
    return keys


# A handful of published entries and the total key count of the nets we do not enumerate fully
# (read off mdistiller's files for 100 classes).
PUBLISHED_SAMPLES: dict[str, tuple[int, Shapes]] = {
    "vgg13": (72, {
        "block0.0.weight": (64, 3, 3, 3), "block0.0.bias": (64,), "block0.1.running_var": (64,),
        "block0.3.weight": (64, 64, 3, 3), "block1.0.weight": (128, 64, 3, 3), "block4.4.weight": (512,),
        "classifier.weight": (100, 512),
    }),
    "vgg8": (37, {"block0.0.weight": (64, 3, 3, 3), "block4.1.weight": (512,), "classifier.bias": (100,)}),
    "ResNet50": (320, {
        "conv1.weight": (64, 3, 3, 3), "layer1.0.conv1.weight": (64, 64, 1, 1), "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer1.0.shortcut.0.weight": (256, 64, 1, 1), "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer4.2.bn3.weight": (2048,), "linear.weight": (100, 2048),
    }),
    "MobileNetV2": (320, {
        "conv1.0.weight": (16, 3, 3, 3), "blocks.0.0.conv.0.weight": (16, 16, 1, 1),
        "blocks.0.0.conv.3.weight": (16, 1, 3, 3), "blocks.0.0.conv.6.weight": (8, 16, 1, 1),
        "blocks.1.0.conv.0.weight": (48, 8, 1, 1), "blocks.6.0.conv.6.weight": (160, 480, 1, 1),
        "conv2.0.weight": (1280, 160, 1, 1), "classifier.0.weight": (100, 1280),
    }),
    "ShuffleV1": (296, {
        "conv1.weight": (24, 3, 1, 1), "layer1.0.conv1.weight": (54, 24, 1, 1), "layer1.0.conv3.weight": (216, 18, 1, 1),
        "layer1.1.conv1.weight": (60, 80, 1, 1), "layer3.0.conv3.weight": (480, 40, 1, 1), "linear.weight": (100, 960),
    }),
    "ShuffleV2": (338, {
        "conv1.weight": (24, 3, 1, 1), "layer1.0.conv1.weight": (24, 1, 3, 3), "layer1.0.conv2.weight": (58, 24, 1, 1),
        "layer1.0.conv4.weight": (58, 1, 3, 3), "layer1.1.conv1.weight": (58, 58, 1, 1),
        "layer3.3.conv3.weight": (232, 232, 1, 1), "conv2.weight": (1024, 464, 1, 1), "linear.weight": (100, 1024),
    }),
}  # fmt: skip


def random_state_dict(shapes: Shapes, seed: int = 0) -> dict[str, torch.Tensor]:
    """Tensors of the published shapes (BN counters as int64 scalars, positive variances), reproducible."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
    return state


def test_generators_match_published_counts():
    # Counts worked out by hand from the peer files (conv 1 key, BN 5 keys, linear 2 keys;
    # a basic or wide block is 2 convs + 2 BNs = 12 keys).
    assert len(mdistiller_resnet(8, (32, 64, 128, 256), 100)) == 62
    assert len(mdistiller_resnet(56, (16, 16, 32, 64), 100)) == 6 + 27 * 12 + 2 * 6 + 2
    assert len(trades_wrn(34, 10, 10)) == 1 + 15 * 12 + 3 + 5 + 2
    assert len(dm_wrn(28, 10, 100)) == 1 + 12 * 12 + 3 + 5 + 2
    assert len(trades_wrn(34, 10, 100, sub_block1=True)) == 1 + 20 * 12 + 4 + 5 + 2
    assert len(lbgat_resnet18(100)) == 1 + 5 + 8 * 12 + 3 * 6 + 2
    assert len(usb_vit_small_patch2_32()) == 4 + 12 * 12 + 4


def test_generators_pin_key_entries():
    wrn = trades_wrn(34, 10, 10)
    assert wrn["block1.layer.0.convShortcut.weight"] == (160, 16, 1, 1)
    assert wrn["block3.layer.4.conv2.weight"] == (640, 640, 3, 3)
    assert "block1.layer.1.convShortcut.weight" not in wrn and not any(k.startswith("sub_block1") for k in wrn)
    lbgat = trades_wrn(34, 20, 10, sub_block1=True)
    assert lbgat["sub_block1.layer.0.convShortcut.weight"] == (320, 16, 1, 1)
    natural = lbgat_resnet18(100)
    assert natural["layer2.0.shortcut.0.weight"] == (128, 64, 1, 1) and "layer1.0.shortcut.0.weight" not in natural
    dm = dm_wrn(28, 10, 100)
    assert dm["layer.2.block.0.shortcut.weight"] == (640, 320, 1, 1)
    assert dm["logits.weight"] == (100, 640)
    resnet = mdistiller_resnet(32, (32, 64, 128, 256), 100)
    assert resnet["layer1.0.downsample.0.weight"] == (64, 32, 1, 1)
    assert "layer1.1.downsample.0.weight" not in resnet
    assert usb_vit_small_patch2_32()["pos_embed"] == (1, 257, 384)
