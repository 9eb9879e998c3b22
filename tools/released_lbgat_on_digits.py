"""The released LBGAT step on the digits config's models and data: a check of the recipe, not a recipe.

``lbgat_loss`` of ``dvlab-research/LBGAT`` (``lbgat.py``), imported unmodified from a clone, trains the robust
and natural models of ``recipes/adv/configs/digits_lbgat.yaml`` on all of the digits training split, with that
config's optimiser, batch size, eps, attack step and beta, the first epoch at ``lr_first_epoch`` and the
config's schedule per epoch after it (as the released ``adjust_learning_rate`` sets it per epoch). After each
epoch it prints both models' clean test top-1. The released file draws its start noise with ``.cuda()``; on a
machine without CUDA that call leaves the tensor where it is.

Usage (from the repository root, after ``make data DATASET=digits``)::

    git clone https://github.com/dvlab-research/LBGAT /tmp/LBGAT
    .venv/bin/python -m tools.released_lbgat_on_digits /tmp/LBGAT --epochs 30 [--seed 0] [key=value ...]

``key=value`` overrides the config as on a training command line (``trades_beta=0``, ``lr=0.01``, ...).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

CONFIG = Path("recipes/adv/configs/digits_lbgat.yaml")


def released_module(clone: Path) -> ModuleType:
    """``lbgat.py`` of a clone of dvlab-research/LBGAT, imported as it is."""
    path = clone / "lbgat.py"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found: clone https://github.com/dvlab-research/LBGAT and pass its folder")
    spec = importlib.util.spec_from_file_location("released_lbgat", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tensors(dataset: str, data_dir: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a split in [0, 1] and their labels."""
    from dkl_recipe_adv.eval import load_pairs

    pairs = load_pairs(dataset, data_dir, split=split)
    images, labels = zip(*(pairs[i] for i in range(len(pairs))), strict=True)
    return torch.stack(images), torch.as_tensor(labels)


def top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item() * 100
    model.train()
    return accuracy


def train(config: Any, loss_fn: Callable[..., torch.Tensor], say: Callable[[str], None] = print) -> None:
    """Train the config's two models with ``loss_fn`` (the released ``lbgat_loss``), one line per epoch."""
    from dkl_train.models import create_model
    from dkl_train.optim import build_optimizer, learning_rate

    torch.manual_seed(config.seed)
    data_dir = config.data_dir or "data"
    x_train, y_train = tensors(config.dataset, data_dir, "train")
    x_test, y_test = tensors(config.dataset, data_dir, "test")
    classes = int(y_train.max()) + 1
    robust = create_model(config.model, classes, **config.model_kwargs)
    natural = create_model(config.natural_model, classes, **config.natural_model_kwargs)
    optimizer = build_optimizer(config, [*robust.parameters(), *natural.parameters()])
    steps = len(x_train) // config.batch_size
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    for epoch in range(config.epochs):
        rate = config.lr_first_epoch if epoch == 0 and config.lr_first_epoch else learning_rate(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = rate
        order, total = torch.randperm(len(x_train)), 0.0
        for step in range(steps):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(
                model=robust, model_teacher=natural, x_natural=x_train[batch], y=y_train[batch], optimizer=optimizer,
                step_size=config.attack_step_size, epsilon=config.eps, perturb_steps=config.attack_steps,
                beta=config.trades_beta,
            )  # fmt: skip
            loss.backward()
            optimizer.step()
            total += loss.item()
        say(
            f"epoch {epoch + 1}/{config.epochs}: lr={rate:.4g} loss={total / steps:.4f} "
            f"robust model clean top-1={top1(robust, x_test, y_test):.2f} natural model={top1(natural, x_test, y_test):.2f}"
        )


def main(argv: list[str] | None = None) -> None:
    from dkl_recipe_adv.train import AdvConfig

    from dkl_train.config import load_config
    from dkl_train.errors import report_user_errors

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clone", type=Path, help="a clone of https://github.com/dvlab-research/LBGAT")
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="key=value settings of the config")
    args = parser.parse_intermixed_args(argv)
    overrides = [*args.overrides, f"seed={args.seed}"] + ([f"epochs={args.epochs}"] if args.epochs else [])
    with report_user_errors():  # a bad setting or a missing dataset: one line, status 2
        config = load_config(AdvConfig, CONFIG, overrides)
        module = released_module(args.clone)
        if not torch.cuda.is_available():
            torch.Tensor.cuda = lambda self, *_args, **_kwargs: self  # the released start noise calls .cuda()
        train(config, module.lbgat_loss)


if __name__ == "__main__":
    main(sys.argv[1:])
