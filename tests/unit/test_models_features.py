"""forward_features: mdistiller's per-stage features (feats, preact_feats, pooled_feat) of every KD architecture.

The expected maps are recomputed here by walking each model's submodules step by step the way
mdistiller's ``forward`` does (``mdistiller/models/cifar/*.py``, ``mdistiller/models/imagenet/{resnet,
mobilenetv1}.py``), without the models' own ``forward_stages``/``preact`` helpers. Batch-norm parameters and
statistics are randomised first, so that pre-activations have negative entries and the comparisons mean
something (a fresh BN is close to the identity, and timm zero-initialises each residual branch's last BN).
"""

from __future__ import annotations

import copy
import functools
import hashlib

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dkl_train.models import Features, create_model, forward_features

CIFAR_TEACHERS = ["resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13", "ResNet50"]
CIFAR_STUDENTS = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet8x4", "wrn_16_2", "wrn_40_1", "vgg8"]
CIFAR_STUDENTS += ["ShuffleV1", "ShuffleV2", "MobileNetV2"]
CIFAR = CIFAR_TEACHERS + CIFAR_STUDENTS
TIMM = {"timm:resnet18": {}, "timm:resnet34": {}, "timm:resnet50": {}, "timm:mobilenetv1_100": {"act_layer": "relu"}}
TIMM_SIDE = 64

# (channels, side) of feats == preact_feats, and the pooled width: CIFAR at 32 px, timm at 64 px.
_SLIM = [(16, 32), (16, 32), (32, 16), (64, 8)]
_WIDE = [(32, 32), (64, 32), (128, 16), (256, 8)]
_VGG = [(64, 32), (128, 16), (256, 8), (512, 4), (512, 4)]
EXPECTED_SHAPES: dict[str, tuple[list[tuple[int, int]], int]] = {
    "resnet56": (_SLIM, 64), "resnet110": (_SLIM, 64), "resnet8": (_SLIM, 64), "resnet14": (_SLIM, 64),
    "resnet20": (_SLIM, 64), "resnet32": (_SLIM, 64), "resnet32x4": (_WIDE, 256), "resnet8x4": (_WIDE, 256),
    "wrn_40_2": ([(16, 32), (32, 32), (64, 16), (128, 8)], 128),
    "wrn_16_2": ([(16, 32), (32, 32), (64, 16), (128, 8)], 128),
    "wrn_40_1": ([(16, 32), (16, 32), (32, 16), (64, 8)], 64),
    "vgg13": (_VGG, 512), "vgg8": (_VGG, 512),
    "ResNet50": ([(64, 32), (256, 32), (512, 16), (1024, 8), (2048, 4)], 2048),
    "ShuffleV1": ([(24, 32), (240, 16), (480, 8), (960, 4)], 960),
    "ShuffleV2": ([(24, 32), (116, 16), (232, 8), (464, 4)], 1024),
    "MobileNetV2": ([(16, 16), (12, 16), (16, 8), (48, 4), (160, 2)], 1280),
    "timm:resnet18": ([(64, 32), (64, 16), (128, 8), (256, 4), (512, 2)], 512),
    "timm:resnet34": ([(64, 32), (64, 16), (128, 8), (256, 4), (512, 2)], 512),
    "timm:resnet50": ([(64, 32), (256, 16), (512, 8), (1024, 4), (2048, 2)], 2048),
    "timm:mobilenetv1_100": ([(128, 16), (256, 8), (512, 4), (1024, 2)], 1024),
}  # fmt: skip

# (number of keys, sha256 prefix of "key:shape;..." in state-dict order) at 10 classes, recorded before
# forward_stages was added: the refactor of the blocks must not move a parameter or buffer.
STATE_DICT_LAYOUT = {
    "resnet8": (56, "b78a42b7d318bdce"), "resnet14": (92, "3d6bb706d4909eed"), "resnet20": (128, "71ddaa04ffd66630"),
    "resnet32": (200, "814d9f6ca64d5f01"), "resnet56": (344, "2fc3a12eda806354"),
    "resnet110": (668, "f3ebda1c49b80ecf"), "resnet8x4": (62, "9211c27c9a6fb9a4"),
    "resnet32x4": (206, "151a2bfd37119fd6"), "wrn_16_2": (83, "a4638334aa2ed052"),
    "wrn_40_1": (226, "33407e647b617d96"), "wrn_40_2": (227, "2ad5d2725c2ddfa6"), "vgg8": (37, "a7fb7a67bc328bd4"),
    "vgg13": (72, "0633c6b81f0bfbc8"), "MobileNetV2": (320, "9ae3cfb8ef0069ab"),
    "ShuffleV1": (296, "af9a398e2179c984"), "ShuffleV2": (338, "660ad13bfc54c947"),
    "ResNet50": (320, "85def2ceb8593a66"),
}  # fmt: skip


def randomise_bn_(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1 + 0.3 * torch.randn(c, generator=gen))
                m.bias.copy_(0.3 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
    return model


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return randomise_bn_(create_model(name, num_classes=10, **TIMM.get(name, {}))).eval()


def inputs(name: str) -> Tensor:
    side = TIMM_SIDE if name in TIMM else 32
    return torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))


@functools.cache
def eval_run(name: str) -> tuple[nn.Module, Tensor, Tensor, Features]:
    """One eval-mode model, its input and forward_features' answer, shared by the read-only tests."""
    model, x = build(name), inputs(name)
    with torch.no_grad():
        logits, features = forward_features(model, x)
    return model, x, logits, features


# ------------------------------------------------------------------------------------------------
# References written after mdistiller's forward passes, from the submodules


def shuffle(x: Tensor, groups: int) -> Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


def pool(x: Tensor) -> Tensor:
    return x.mean(dim=(2, 3))


def ref_resnet_block(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    out = F.relu(block.bn1(block.conv1(x)))
    if hasattr(block, "conv3"):  # bottleneck
        out = F.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
    else:
        out = block.bn2(block.conv2(out))
    shortcut = getattr(block, "downsample", None) or getattr(block, "shortcut", None)
    preact = out + (x if shortcut is None else shortcut(x))
    return F.relu(preact), preact


def ref_cifar_resnet(model: nn.Module, x: Tensor) -> Features:
    x = F.relu(model.bn1(model.conv1(x)))
    feats, preacts = [x], [x]
    for k in range(1, 5):
        stage = getattr(model, f"layer{k}", None)
        if stage is None:
            break
        for block in stage:
            x, preact = ref_resnet_block(block, x)
        feats.append(x)
        preacts.append(preact)
    return Features(feats, preacts, pool(x))


def ref_wrn_block(block: nn.Module, x: Tensor) -> Tensor:
    if not block.equal_in_out:
        x = F.relu(block.bn1(x))
        out = x
    else:
        out = F.relu(block.bn1(x))
    out = block.conv2(F.relu(block.bn2(block.conv1(out))))
    return (x if block.equal_in_out else block.convShortcut(x)) + out


def ref_wrn(model: nn.Module, x: Tensor) -> Features:
    f0 = model.conv1(x)
    fs = [f0]
    for stage in (model.block1, model.block2, model.block3):
        out = fs[-1]
        for block in stage.layer:
            out = ref_wrn_block(block, out)
        fs.append(out)
    pre = [f0, model.block2.layer[0].bn1(fs[1]), model.block3.layer[0].bn1(fs[2]), model.bn1(fs[3])]
    return Features(fs, pre, pool(F.relu(model.bn1(fs[3]))))


def ref_vgg(model: nn.Module, x: Tensor) -> Features:
    x = F.relu(model.block0(x))
    feats, preacts = [x], [x]
    for k in range(1, 5):
        if k < 4:  # 32 px: no pool before block4
            x = F.max_pool2d(x, 2)
        preact = getattr(model, f"block{k}")(x)
        x = F.relu(preact)
        feats.append(x)
        preacts.append(preact)
    return Features(feats, preacts, pool(x))


def ref_mobilenetv2(model: nn.Module, x: Tensor) -> Features:
    x = model.conv1(x)
    feats = [x]
    for i, stage in enumerate(model.blocks):
        for block in stage:
            x = x + block.conv(x) if block.use_residual else block.conv(x)
        if i in (1, 2, 4, 6):
            feats.append(x)
    return Features(feats, feats, pool(model.conv2(x)))


def ref_shufflev1(model: nn.Module, x: Tensor) -> Features:
    x = F.relu(model.bn1(model.conv1(x)))
    feats, preacts = [x], [x]
    for stage in (model.layer1, model.layer2, model.layer3):
        for b in stage:
            out = shuffle(F.relu(b.bn1(b.conv1(x))), b.conv1.groups)
            out = b.bn3(b.conv3(F.relu(b.bn2(b.conv2(out)))))
            preact = torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1) if b.stride == 2 else out + x
            x = F.relu(preact)
        feats.append(x)
        preacts.append(preact)
    return Features(feats, preacts, pool(x))


def ref_shufflev2(model: nn.Module, x: Tensor) -> Features:
    x = F.relu(model.bn1(model.conv1(x)))
    feats, preacts = [x], [x]
    for stage in (model.layer1, model.layer2, model.layer3):
        x = stage[0](x)  # the down-sampling unit (no feature of its own)
        for b in stage[1:]:
            c = x.shape[1] // 2
            x1, x2 = x[:, :c], x[:, c:]
            branch = b.bn3(b.conv3(b.bn2(b.conv2(F.relu(b.bn1(b.conv1(x2)))))))
            preact = torch.cat([x1, branch], 1)
            x = shuffle(torch.cat([x1, F.relu(branch)], 1), 2)
        feats.append(x)
        preacts.append(preact)
    return Features(feats, preacts, pool(F.relu(model.bn2(model.conv2(x)))))


def ref_timm_resnet(model: nn.Module, x: Tensor) -> Features:
    stem = model.bn1(model.conv1(x))
    x = model.maxpool(F.relu(stem))
    preacts = [stem]
    for k in range(1, 5):
        for block in getattr(model, f"layer{k}"):
            x, preact = ref_resnet_block(block, x)
        preacts.append(preact)
    return Features([F.relu(p) for p in preacts], preacts, pool(x))


def bn_eval(bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def ref_timm_mobilenetv1(model: nn.Module, x: Tensor) -> Features:
    x = F.relu(bn_eval(model.bn1, model.conv_stem(x)))
    preacts = []
    for i, stage in enumerate(model.blocks):
        for block in stage:
            x = F.relu(bn_eval(block.bn1, block.conv_dw(x)))
            preact = bn_eval(block.bn2, block.conv_pw(x))
            x = F.relu(preact)
        if i >= 1:
            preacts.append(preact)
    return Features([F.relu(p) for p in preacts], preacts, pool(x))


def reference(name: str, model: nn.Module, x: Tensor) -> Features:
    if name.startswith("timm:resnet"):
        return ref_timm_resnet(model, x)
    if name.startswith("timm:mobilenetv1"):
        return ref_timm_mobilenetv1(model, x)
    if name.startswith(("resnet", "ResNet")):
        return ref_cifar_resnet(model, x)
    family = {"wrn": ref_wrn, "vgg": ref_vgg, "Mob": ref_mobilenetv2, "ShuffleV1": ref_shufflev1}
    family["ShuffleV2"] = ref_shufflev2
    return next(fn for prefix, fn in family.items() if name.startswith(prefix))(model, x)


# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CIFAR + list(TIMM))
def test_features_match_mdistiller_forward(name):
    model, x, logits, features = eval_run(name)
    with torch.no_grad():
        expected_logits = model(x)
        expected = reference(name, model, x)
    assert torch.equal(logits, expected_logits)

    stages, pooled_width = EXPECTED_SHAPES[name]
    for maps in (features.feats, features.preact_feats):
        assert [(t.shape[1], t.shape[2]) for t in maps] == stages
        assert all(t.shape[0] == 2 and t.shape[2] == t.shape[3] for t in maps)
    assert features.pooled.shape == (2, pooled_width)

    for got, want in zip(features.feats, expected.feats, strict=True):
        torch.testing.assert_close(got, want)
    for got, want in zip(features.preact_feats, expected.preact_feats, strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(features.pooled, expected.pooled)
    # The classifier reads the pooled feature.
    classifier = (
        model.get_classifier() if name in TIMM else [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    )
    torch.testing.assert_close(classifier(features.pooled), logits)


@pytest.mark.parametrize("name", CIFAR + list(TIMM))
def test_preact_and_feats_relation(name):
    features = eval_run(name)[3]
    first_pre = 0 if name in TIMM else 1  # CIFAR lists start with a post-ReLU stem/group 0 in both
    if not name.startswith("timm:"):
        assert features.preact_feats[0] is features.feats[0]
    if name == "MobileNetV2":  # linear bottlenecks: no final ReLU, the lists are the same
        assert all(p is f for p, f in zip(features.preact_feats, features.feats, strict=True))
        return
    for pre, feat in zip(features.preact_feats[first_pre:], features.feats[first_pre:], strict=True):
        assert (pre < 0).any(), "pre-activation lost its negative part"
        if name.startswith(("wrn", "ShuffleV2")):
            assert not torch.equal(F.relu(pre), feat)  # mdistiller: BN(stage) / pre-shuffle concatenation
        else:
            assert torch.equal(F.relu(pre), feat)


def test_shufflev2_preact_is_the_unshuffled_feature():
    features = eval_run("ShuffleV2")[3]
    for pre, feat in zip(features.preact_feats[1:], features.feats[1:], strict=True):
        c = pre.shape[1] // 2
        activated = torch.cat([pre[:, :c], F.relu(pre[:, c:])], 1)
        assert torch.equal(shuffle(activated, 2), feat)


def test_wrn_last_preact_is_the_head_bn():
    model, _, _, features = eval_run("wrn_16_2")
    with torch.no_grad():
        assert torch.equal(features.preact_feats[-1], model.bn1(features.feats[-1]))
        torch.testing.assert_close(features.pooled, pool(F.relu(features.preact_feats[-1])))


@pytest.mark.parametrize("name", list(TIMM))
def test_timm_hooks_are_removed_and_relus_in_place_again(name):
    model, x = build(name), inputs(name)
    inplace_before = {n: m.inplace for n, m in model.named_modules() if hasattr(m, "inplace")}
    assert any(inplace_before.values())
    forward_features(model, x)
    with pytest.raises(RuntimeError):  # a failing forward restores them too
        forward_features(model, torch.randn(2, 4, TIMM_SIDE, TIMM_SIDE))
    assert {n: m.inplace for n, m in model.named_modules() if hasattr(m, "inplace")} == inplace_before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_timm_mobilenetv1_default_relu6_gives_its_input_and_output():
    torch.manual_seed(0)
    model = randomise_bn_(create_model("timm:mobilenetv1_100", num_classes=10)).eval()
    with torch.no_grad():
        features = forward_features(model, inputs("timm:mobilenetv1_100"))[1]
    assert isinstance(model.blocks[-1][-1].bn2.act, nn.ReLU6)
    for pre, feat in zip(features.preact_feats, features.feats, strict=True):
        assert (pre < 0).any()
        assert torch.equal(F.relu6(pre), feat)


@pytest.mark.parametrize("name", CIFAR + list(TIMM))
def test_state_dict_layout_unchanged(name):
    model = eval_run(name)[0]  # after a forward_features call: it adds nothing to a model either
    state = model.state_dict()
    if name in STATE_DICT_LAYOUT:
        layout = ";".join(f"{k}:{tuple(v.shape)}" for k, v in state.items())
        assert (len(state), hashlib.sha256(layout.encode()).hexdigest()[:16]) == STATE_DICT_LAYOUT[name]
    else:  # timm: the layout of a model that never went through forward_features
        fresh = create_model(name, num_classes=10, **TIMM.get(name, {})).state_dict()
        assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in fresh.items()}


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_2", "vgg8", "ShuffleV1", "ShuffleV2", "MobileNetV2"])
def test_training_mode_matches_forward_and_updates_bn_once(name):
    # Same logits and the same running statistics as a plain training forward (mdistiller's WRN would
    # apply three BNs twice; ours computes each once).
    model, x = build(name).train(), inputs(name)
    twin = copy.deepcopy(model)
    logits, _ = forward_features(model, x)
    assert torch.equal(logits, twin(x))
    for (key, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_timm_training_mode_matches_forward():
    model, x = build("timm:resnet18").train(), inputs("timm:resnet18")
    twin = copy.deepcopy(model)
    logits, _ = forward_features(model, x)
    assert torch.equal(logits, twin(x))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))


@pytest.mark.parametrize("name", CIFAR_STUDENTS + ["wrn_40_2", "ResNet50", *TIMM])
def test_gradients_flow_through_features(name):
    model, x = build(name).train(), inputs(name)
    _, features = forward_features(model, x)
    total = sum(t.sum() for t in [*features.feats, *features.preact_feats, features.pooled])
    total.backward()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.grad is not None for m in convs)
    assert all(torch.isfinite(m.weight.grad).all() for m in convs)
    assert convs[0].weight.grad.abs().sum() > 0


def test_unsupported_models_fail_clearly():
    with pytest.raises(TypeError, match=r"does not support Linear.*CifarResNet.*mobilenetv1_100"):
        forward_features(nn.Linear(3, 3), torch.randn(2, 3))
    timm_v2 = create_model("timm:mobilenetv2_035", num_classes=10)
    with pytest.raises(TypeError, match="EfficientNet other than a MobileNetV1"):
        forward_features(timm_v2, torch.randn(2, 3, 32, 32))
