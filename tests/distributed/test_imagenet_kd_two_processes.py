"""ImageNet read in place, pil backend: two processes give the loss curve and weights of one process.

The same plumbing as the digits test (tests/distributed/test_kd_two_processes.py), on a generated
ImageNet tree whose training JPEGs are textured, so a crop drawn from another seed would change the
batch: the per-sample seeds, the uint8 tensor crops and the device normalisation must not depend on
which process reads a sample.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tests.distributed._one_and_two import assert_same_trained_weights, run_one_and_two, step_losses
from tests.recipes.conftest import launch  # noqa: F401  (shared fixture)
from tests.unit.test_imagenet_index import Tree

CONFIG = "recipes/kd/configs/imagenet_resnet34_resnet18_ikl.yaml"


def textured_jpegs(count: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for n in range(count):
        pixels = rng.integers(0, 256, size=(48 + 8 * n, 64, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


@pytest.mark.distributed
def test_imagenet_pil_backend_two_processes_equal_one(tmp_path, launch):  # noqa: F811
    from dkl_train.data import prepare
    from dkl_train.models import create_model

    tree = Tree(tmp_path / "imagenet")
    textures = textured_jpegs(3)
    for n, path in enumerate(sorted((tmp_path / "imagenet" / "train").rglob("*.JPEG"))):
        path.write_bytes(textures[n % 3])
    prepare("imagenet", tmp_path / "data", imagenet_dir=tree.roots["kaggle"])
    torch.manual_seed(0)
    teacher = tmp_path / "resnet34.pth"
    torch.save(create_model("timm:resnet34", 1000).state_dict(), teacher)

    common = [
        "--config", CONFIG, f"data_dir={tmp_path / 'data'}", "teacher_pretrained=false",
        f"teacher_checkpoint={teacher}", "mixed_precision=no", "epochs=1", "warmup_epochs=0",
        "max_steps_per_epoch=2", "batch_size=8", "eval_subset=6", "eval_batch_size=4", "num_workers=0",
        "log_step_losses=true", "evaluate_teacher=false", "channels_last=false",
    ]  # fmt: skip
    # One process accumulating two micro-batches of 4 sees the halves the two processes see (see the digits test).
    one, two = run_one_and_two(
        launch, "recipes/kd/train.py", common, tmp_path, one=["gradient_accumulation_steps=2"], threads=1
    )
    assert len(step_losses(one)) == len(step_losses(two)) == 2
    assert step_losses(one) == pytest.approx(step_losses(two), rel=1e-6)
    assert one["final"]["samples"] == two["final"]["samples"] == 6
    assert_same_trained_weights(tmp_path)
