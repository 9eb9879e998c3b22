"""ReviewKD as the original code trains it, in float64: one step of the ``*_reviewkd_original.yaml`` configs through
the recipe against a straightforward re-statement of that code (github.com/dvlab-research/ReviewKD, commit cede6ea).

The re-statement is written from the original code, not from ours:

- CIFAR-100 (``CIFAR-100/train.py``, ``model/resnet_cifar.py``): the teacher is never put in eval mode, so its batch
  norm normalises with the batch's statistics and updates its running statistics; its targets are
  ``teacher(x, is_feat=True, preact=True)[0][1:]``: each stage's last residual sum before the ReLU, then the pooled
  feature; the student's levels are taken after the ReLU; loss ``CE + weight * min(1, epoch / 20) * hcl`` with the
  0-based epoch.
- ImageNet (``ImageNet/imagenet_amp.py``, ``models/resnet.py``, ``models/mobilenet.py``, ``models/reviewkd.py``): the
  ResNets' last block of each stage stops before its final ReLU; the stage output is returned as the feature and
  then passed through an in-place ReLU, which overwrites it, so teacher and ResNet student features are post-ReLU.
  MobileNet's features are its stages' last pointwise BN outputs before the ReLU. The ABFs are ``mid_channel`` wide
  (512 for ResNet18, 256 for MobileNet); loss ``CE + weight * hcl``, no ramp; the teacher in eval mode.

The models are run at small sizes (CIFAR 32 px, ImageNet 32 px: ABF sizes [1, 1, 2, 4, 8]) with stand-in teachers
that have the released teachers' levels (resnet8x4 for resnet32x4, resnet18 for resnet34, resnet26 for resnet50):
the teacher only supplies target tensors. The ABFs are the released ones as functions of a state dict
(``released_abf`` of ``test_reviewkd.py``), loaded with ours.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from dkl_recipe_kd.train import KDConfig, build_method
from torch import nn

from dkl_train.config import load_config
from dkl_train.models import create_model
from dkl_train.specs import DatasetSpec
from tests.unit import loss_reference as ref
from tests.unit.test_reviewkd import released_abf

CONFIGS = "recipes/kd/configs"
NUM_CLASSES = 10


def residual_sum(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A residual block up to its final ReLU (BasicBlock or Bottleneck; CIFAR and torchvision layouts alike)."""
    out = F.relu(block.bn1(block.conv1(x)))
    if hasattr(block, "conv3"):
        out = block.bn3(block.conv3(F.relu(block.bn2(block.conv2(out)))))
    else:
        out = block.bn2(block.conv2(out))
    return out + (x if block.downsample is None else block.downsample(x))


def original_cifar_resnet(net: nn.Module, x: torch.Tensor, preact: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``resnet_cifar.ResNet.forward(x, is_feat=True, preact=preact)``: ([f0, f1, f2, f3, pooled], logits)."""
    x = F.relu(net.bn1(net.conv1(x)))
    feats = [x]
    for stage in (net.layer1, net.layer2, net.layer3):
        for block in stage:
            pre = residual_sum(block, x)
            x = F.relu(pre)
        feats.append(pre if preact else x)
    pooled = F.avg_pool2d(x, x.shape[-1])  # nn.AvgPool2d(8) on the 8x8 map
    return [*feats, pooled], net.fc(pooled.flatten(1))


def original_imagenet_resnet(net: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``models/resnet.py`` ``_forward_impl(x, is_feat=True)`` on a timm ResNet's modules: ([x1..x4, x5], logits)."""
    x = net.maxpool(F.relu(net.bn1(net.conv1(x))))
    feats = []
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for index, block in enumerate(stage):
            x = residual_sum(block, x)
            if index < len(stage) - 1:  # is_last: the last block of a stage skips its ReLU
                x = F.relu(x)
        feats.append(x)
        x = torch.relu_(x)  # self.relu is in place: it also rewrites the feature just appended
    pooled = F.adaptive_avg_pool2d(x, 1)
    return [*feats, pooled], net.fc(pooled.flatten(1))


def original_mobilenet(net: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``models/mobilenet.py`` ``extract_feature(x, preReLU=True)`` on timm's MobileNetV1 modules."""

    def batch_norm_only(bn: nn.Module, t: torch.Tensor) -> torch.Tensor:  # timm's BatchNormAct2d without its ReLU
        return F.batch_norm(t, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.training, bn.momentum, bn.eps)

    x = F.relu(batch_norm_only(net.bn1, net.conv_stem(x)))
    feats = []
    for number, stage in enumerate(net.blocks):
        for block in stage:
            pre = batch_norm_only(block.bn2, block.conv_pw(F.relu(batch_norm_only(block.bn1, block.conv_dw(x)))))
            x = F.relu(pre)
        if number > 0:  # feat1..feat4: the ends of model[3], [5], [11], [13]
            feats.append(pre)
    pooled = F.adaptive_avg_pool2d(x, 1)  # AvgPool2d(7) of relu(feat4) at 224 px
    return [*feats, pooled], net.classifier(pooled.flatten(1))


def original_loss(abf_params, student_levels, teacher_levels, logits, labels, shapes, ramp, weight):
    """ReviewKD.forward (both trainers): the levels deepest first through the ABFs, then CE + ramp * weight * hcl."""
    x = student_levels[::-1]
    out, residual = released_abf(abf_params, "abfs.0", x[0], out_shape=shapes[0])
    results = [out]
    for index, (features, shape) in enumerate(zip(x[1:], shapes[1:]), start=1):
        out, residual = released_abf(abf_params, f"abfs.{index}", features, residual, shape, shape)
        results.insert(0, out)
    return F.cross_entropy(logits, labels) + ramp * weight * ref.hcl(results, teacher_levels)


# config, stand-in teacher, image size, ABF sizes at that size (null: the config's), original forwards, ABF width,
# dtype. MobileNet runs in float32: a float64 depthwise convolution takes seconds on a CPU (its 13 take a minute).
CASES = {
    "cifar100_resnet32x4_resnet8x4": ("resnet8x4", 32, None, "cifar", 256, torch.float64),
    "imagenet_resnet34_resnet18": ("timm:resnet18", 32, [1, 1, 2, 4, 8], "resnet", 512, torch.float64),
    "imagenet_resnet50_mobilenetv1_100": ("timm:resnet26", 64, [1, 2, 4, 8, 16], "mobilenet", 256, torch.float32),
}
# (loss, gradients and running statistics) tolerances. float64 gradients: rounding of differently ordered sums,
# amplified by batch norm over 2 images, stays below 1e-7.
TOLERANCES = {
    torch.float64: ({"rtol": 1e-12, "atol": 1e-14}, {"rtol": 1e-7, "atol": 1e-10}),
    torch.float32: ({"rtol": 1e-5, "atol": 1e-6}, {"rtol": 1e-3, "atol": 1e-5}),
}


def spec(size: int) -> DatasetSpec:
    """A dataset of NUM_CLASSES classes at ``size`` pixels (what the method checks its modules against)."""
    return DatasetSpec("test", NUM_CLASSES, size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def run_both(case: str, epoch: int):
    """One training step's loss and gradients, ours (the recipe on the config) and the original's re-statement."""
    teacher_name, size, shapes, student_kind, width, dtype = CASES[case]
    overrides = [f"reviewkd_shapes={shapes}", f"reviewkd_out_shapes={shapes}"] if shapes else []
    config = load_config(KDConfig, f"{CONFIGS}/{case}_reviewkd_original.yaml", overrides)
    torch.manual_seed(0)
    teacher = create_model(teacher_name, NUM_CLASSES, **config.teacher_kwargs).eval()
    student = create_model(config.student, NUM_CLASSES, **config.student_kwargs)
    method = build_method(config)
    ours = method.build(student, spec(size), teacher=teacher).to(dtype)
    teacher.to(dtype)
    # The original's own modes: the CIFAR teacher is built in train mode and never switched; ImageNet's is eval'd.
    teacher_ref = copy.deepcopy(teacher).train(student_kind == "cifar")
    student_ref = copy.deepcopy(student)
    abf_params = {k: v.detach().clone() for k, v in ours.state_dict().items() if k.startswith("abfs.")}
    abf_leaves = {
        k: p.detach().clone().requires_grad_(True) for k, p in ours.named_parameters() if k.startswith("abfs")
    }
    abf_params.update(abf_leaves)
    # build_review_kd's mid_channel: every ABF's first convolution is that wide.
    assert {abf_params[f"abfs.{i}.conv1.0.weight"].shape[0] for i in range(len(ours.abfs))} == {width}

    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, size, size, dtype=dtype, generator=g)[: 2 if dtype == torch.float64 else 4]
    labels = torch.tensor([3, 7, 0, 9])[: len(images)]
    method.start_epoch(epoch)
    loss, _ = method.loss(ours, {"image": images, "label": labels})
    loss.backward()

    with torch.no_grad():
        if student_kind == "cifar":
            targets = original_cifar_resnet(teacher_ref, images, preact=True)[0][1:]
        else:
            targets = original_imagenet_resnet(teacher_ref, images)[0]
    if student_kind == "cifar":
        levels, logits = original_cifar_resnet(student_ref, images, preact=False)
        ramp = min(1.0, epoch / 20)  # train.py: the 0-based epoch over kd_warm_up
    else:
        forward = original_imagenet_resnet if student_kind == "resnet" else original_mobilenet
        levels, logits = forward(student_ref, images)
        ramp = 1.0  # imagenet_amp.py: no ramp
    levels = levels[-len(ours.abfs) :]  # the CIFAR stem is not an ABF level
    shapes = shapes or config.reviewkd_shapes
    expected = original_loss(abf_params, levels, targets, logits, labels, shapes, ramp, config.reviewkd_weight)
    expected.backward()
    return loss, expected, (ours, abf_leaves, teacher), (student_ref, teacher_ref)


@pytest.mark.parametrize(
    ("case", "epoch"),
    # epoch 5: the original ramp is 5 / 20 (mdistiller's 1-based epoch would give 6 / 20)
    [("cifar100_resnet32x4_resnet8x4", 5), ("imagenet_resnet34_resnet18", 3), ("imagenet_resnet50_mobilenetv1_100", 3)],
)  # fmt: skip
def test_original_configs_train_as_the_original_code(case, epoch):
    loss, expected, (ours, abf_leaves, teacher), (student_ref, teacher_ref) = run_both(case, epoch)
    value_tol, grad_tol = TOLERANCES[loss.dtype]
    torch.testing.assert_close(loss, expected, **value_tol)
    for name, param in ours.student.named_parameters():
        torch.testing.assert_close(param.grad, dict(student_ref.named_parameters())[name].grad, **grad_tol)
    for name, leaf in abf_leaves.items():
        torch.testing.assert_close(dict(ours.named_parameters())[name].grad, leaf.grad, **grad_tol)
    # The state a step changes: batch-norm running statistics, the CIFAR teacher's included (it runs in train mode).
    for module, reference in ((ours.student, student_ref), (teacher, teacher_ref)):
        for (name, buffer), (_, expected_buffer) in zip(module.named_buffers(), reference.named_buffers(), strict=True):
            if not name.endswith("num_batches_tracked"):  # a counter only read without a momentum (ours has 0.1)
                torch.testing.assert_close(buffer, expected_buffer, **value_tol, msg=name)
    assert teacher.training == case.startswith("cifar100")
