"""A small classifier of sklearn's bundled digits (8x8 images in [0, 1]) trained in about a second, for the attack tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One torch thread inside the block: the models are tiny, and on a shared 2-core machine several
    threads per process oversubscribe the cores (measured here: up to 10x slower, e.g. training
    went from about 1 s to about 30 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train/test split of the 1,797 digits: images ``[N, 1, 8, 8]`` scaled to [0, 1], labels ``[N]``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    images, labels = images[order], labels[order]
    return images[:1400], labels[:1400], images[1400:], labels[1400:]


def make_model(batch_norm: bool = True) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(64, 64)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(64))
    layers += [nn.ReLU(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


def train_digits_model(seed: int = 0, steps: int = 300, batch_norm: bool = True) -> nn.Module:
    """Full-batch Adam on the training split; about 95% test accuracy. Returned in eval mode."""
    with single_thread():
        torch.manual_seed(seed)
        x_train, y_train, _, _ = digits_tensors()
        model = make_model(batch_norm)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(steps):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x_train), y_train).backward()
            optimizer.step()
        model.zero_grad(set_to_none=True)
    return model.eval()


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(images).argmax(dim=1) == labels).float().mean().item()
