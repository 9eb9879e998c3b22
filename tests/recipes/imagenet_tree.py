"""A prepared ImageNet for recipe runs: the unit tests' 1,000-class tree, indexed as ``make data`` does,
with textured training JPEGs (a crop from another seed changes the batch) and a ResNet-34 teacher file."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.bench_imagenet_index import realistic_jpeg
from tests.unit.test_imagenet_index import Tree

CONFIG = "recipes/kd/configs/imagenet_resnet34_resnet18_ikl.yaml"


def prepare_imagenet_run(base: Path) -> list[str]:
    """Generate and index the tree under ``base``, save a random ResNet-34 teacher; returns the KD recipe's
    arguments for it (config, data, teacher, fp32)."""
    from dkl_train.data import prepare
    from dkl_train.models import create_model

    tree = Tree(base / "imagenet")
    textures = [realistic_jpeg(n, (64, 48 + 8 * n)) for n in range(3)]  # small, and different sizes
    for n, path in enumerate(sorted((base / "imagenet" / "train").rglob("*.JPEG"))):
        path.write_bytes(textures[n % 3])
    prepare("imagenet", base / "data", imagenet_dir=tree.roots["kaggle"])
    torch.manual_seed(0)
    teacher = base / "resnet34.pth"
    torch.save(create_model("timm:resnet34", 1000).state_dict(), teacher)
    return ["--config", CONFIG, f"data_dir={base / 'data'}", "teacher_pretrained=false",
            f"teacher_checkpoint={teacher}", "mixed_precision=no"]  # fmt: skip
