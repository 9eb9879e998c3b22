"""ReviewKD (ABF + HCL) against the released layout, in float64: same weights and batch, same loss and gradients.

The reference below follows mdistiller's ``distillers/ReviewKD.py`` (commit a08d46f, as in the DKL
repository's fork): the student's levels reversed (deepest first), the first ABF without fusion, every
other one fusing with the nearest-upsampled residual of the level below through a two-channel sigmoid
attention, the outputs inserted at the front, the teacher's ``preact_feats[1:]`` plus its pooled feature as
targets, and ``ce_weight * CE + weight * min(epoch / warmup, 1) * hcl``. Its ABFs are written as functions of
a state dict with the released parameter names, so ours must load into that layout unchanged.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dkl_core import hcl_loss
from dkl_train.models import create_model, forward_features
from dkl_train.models.reviewkd import ReviewKDStudent, student_levels, teacher_levels
from tests.unit import loss_reference as ref


def released_abf(params, prefix, x, residual=None, shape=None, out_shape=None):
    """One released ABF on a float64 state dict (train-mode batch norm, like the trainer)."""

    def conv_bn(name, tensor, padding):
        out = F.conv2d(tensor, params[f"{prefix}.{name}.0.weight"], padding=padding)
        running_mean = params[f"{prefix}.{name}.1.running_mean"].clone()
        running_var = params[f"{prefix}.{name}.1.running_var"].clone()
        weight, bias = params[f"{prefix}.{name}.1.weight"], params[f"{prefix}.{name}.1.bias"]
        return F.batch_norm(out, running_mean, running_var, weight, bias, training=True)

    n, _, h, w = x.shape
    x = conv_bn("conv1", x, 0)
    if f"{prefix}.att_conv.0.weight" in params:
        residual = F.interpolate(residual, (shape, shape), mode="nearest")
        z = torch.cat([x, residual], dim=1)
        z = torch.sigmoid(F.conv2d(z, params[f"{prefix}.att_conv.0.weight"], params[f"{prefix}.att_conv.0.bias"]))
        x = x * z[:, 0].view(n, 1, h, w) + residual * z[:, 1].view(n, 1, h, w)
    if x.shape[-1] != out_shape:
        x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
    return conv_bn("conv2", x, 1), x


def released_loss(params, student_feats, teacher_feats, logits, labels, shapes, out_shapes, weights):
    """mdistiller's ReviewKD.forward_train from the features on (ce weight, loss weight, epoch, warm-up)."""
    ce_weight, loss_weight, epoch, warmup = weights
    x = student_feats[::-1]
    results = []
    out, residual = released_abf(params, "abfs.0", x[0], out_shape=out_shapes[0])
    results.append(out)
    for index, (features, shape, out_shape) in enumerate(zip(x[1:], shapes[1:], out_shapes[1:]), start=1):
        out, residual = released_abf(params, f"abfs.{index}", features, residual, shape, out_shape)
        results.insert(0, out)
    return ce_weight * F.cross_entropy(logits, labels) + loss_weight * min(epoch / warmup, 1.0) * ref.hcl(
        results, teacher_feats
    )


# (teacher, student, student kwargs, image size, in/out channels, shapes, out shapes, preact, loss weight):
# the released CIFAR-100 resnet32x4 -> resnet8x4 setting, a CIFAR pair whose ABFs resize to the teacher's
# sizes (ShuffleV2: out_shapes differ), and ImageNet ResNet34 -> ResNet18 (pre-ReLU student) at 224 px. The
# teachers are the cheapest nets with the released teachers' levels (resnet8x4 has resnet32x4's channels and
# sizes, resnet18 resnet34's): float64 on a CPU is slow, and the teacher only supplies target tensors.
CASES = {
    "resnet32x4_resnet8x4": ("resnet8x4", "resnet8x4", {}, 32, [64, 128, 256, 256], [64, 128, 256, 256],
                             [1, 8, 16, 32], None, False, 5.0),
    "resnet32x4_ShuffleV2": ("resnet8x4", "ShuffleV2", {}, 32, [116, 232, 464, 1024], [64, 128, 256, 256],
                             [1, 4, 8, 16], [1, 8, 16, 32], False, 8.0),
    "resnet34_resnet18": ("timm:resnet18", "timm:resnet18", {"zero_init_last": False}, 224,
                          [64, 128, 256, 512, 512], [64, 128, 256, 512, 512], [1, 7, 14, 28, 56], None, True, 1.0),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_equal_to_the_released_reviewkd_in_float64(case):
    teacher_name, student_name, kwargs, size, c_in, c_out, shapes, out_shapes, preact, weight = CASES[case]
    num_classes = 10
    torch.manual_seed(0)
    teacher = create_model(teacher_name, num_classes).double().eval()
    student = create_model(student_name, num_classes, **kwargs)
    ours = ReviewKDStudent(student, c_in, c_out, shapes, out_shapes, student_preact=preact).double().train()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, size, size, dtype=torch.float64, generator=g)
    labels = torch.tensor([3, 7])
    with torch.no_grad():
        targets = teacher_levels(forward_features(teacher, images)[1])

    # Released layout: a copy of our ABF parameters under the same names, used as plain tensors.
    params = {k: v.detach().clone() for k, v in ours.state_dict().items() if k.startswith("abfs.")}
    abf_params = {
        k: p.detach().clone().requires_grad_(True) for k, p in ours.named_parameters() if k.startswith("abfs.")
    }
    params.update(abf_params)
    logits_ref, features = forward_features(student, images)
    expected = released_loss(
        params, student_levels(features, preact=preact)[-len(c_in) :], targets, logits_ref, labels,
        shapes, out_shapes or shapes, (1.0, weight, 5, 20),
    )  # fmt: skip
    student_params = [p for _, p in student.named_parameters()]
    expected_student_grads = torch.autograd.grad(expected, student_params, retain_graph=True)
    expected_abf_grads = torch.autograd.grad(expected, list(abf_params.values()))

    logits, fused = ours(images)
    value = F.cross_entropy(logits, labels) + weight * min(5 / 20, 1.0) * hcl_loss(fused, targets)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-14)
    got = torch.autograd.grad(value, student_params + [p for k, p in ours.named_parameters() if k.startswith("abfs.")])
    for a, b in zip(got, list(expected_student_grads) + list(expected_abf_grads), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_parameter_names_are_the_released_layout():
    model = ReviewKDStudent(create_model("resnet8x4", 10), [64, 128, 256, 256], [64, 128, 256, 256], [1, 8, 16, 32])
    keys = {k for k in model.state_dict() if k.startswith("abfs.")}
    # abfs.0 is the deepest level (no fusion); the others fuse with an attention convolution.
    assert "abfs.0.att_conv.0.weight" not in keys
    assert {f"abfs.{i}.att_conv.0.weight" for i in (1, 2, 3)} <= keys
    assert {"abfs.3.conv1.0.weight", "abfs.3.conv1.1.running_var", "abfs.3.conv2.0.weight"} <= keys
    assert model.state_dict()["abfs.3.conv1.0.weight"].shape == (256, 64, 1, 1)  # mid = min(512, 256) channels
    assert all(not k.startswith("abfs.") for k in model.student.state_dict())  # the exported student has none


def test_mismatched_level_lists_are_refused():
    with pytest.raises(ValueError, match="one entry per level"):
        ReviewKDStudent(create_model("resnet8", 10), [16, 32, 64], [16, 32, 64, 64], [1, 8, 16, 32])
