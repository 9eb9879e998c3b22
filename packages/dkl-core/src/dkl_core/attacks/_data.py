"""Evaluation inputs: tensors or a map-style dataset, read in contiguous chunks, split across processes."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.utils.data import Dataset


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised default process group, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(num_chunks: int, rank: int, world_size: int) -> range:
    """Contiguous block of chunk indices owned by ``rank`` (the first ranks get one extra when it does not divide)."""
    per_rank, extra = divmod(num_chunks, world_size)
    start = rank * per_rank + min(rank, extra)
    return range(start, start + per_rank + (1 if rank < extra else 0))


def gather_objects(obj: object) -> list[object]:
    """``obj`` of every process, in rank order (a one-element list without a process group)."""
    _, world_size = world()
    if world_size == 1:
        return [obj]
    gathered: list[object] = [None] * world_size
    dist.all_gather_object(gathered, obj)
    return gathered


class EvaluationData:
    """``images`` (``[N, ...]`` tensor) with ``labels`` (``[N]``), or a dataset of ``(image, label)`` pairs.

    Chunks are ``batch_size`` consecutive samples; chunk ``i`` is the same set of samples whatever
    the number of processes, which is what makes N processes agree with one.
    """

    def __init__(self, data: torch.Tensor | Dataset, labels: torch.Tensor | None, batch_size: int) -> None:
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        self.batch_size = int(batch_size)
        if isinstance(data, torch.Tensor):
            if labels is None:
                raise ValueError("labels are required when images are given as a tensor")
            if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
                raise ValueError("labels must be an integer tensor of shape [N]")
            if labels.shape[0] != data.shape[0]:
                raise ValueError(
                    f"images and labels must have the same length, got {data.shape[0]} images and {labels.shape[0]} labels"
                )
            self.length = data.shape[0]
        else:
            if labels is not None:
                raise ValueError("pass labels only with an image tensor; a dataset yields (image, label) pairs")
            if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
                raise ValueError("data must be an image tensor or a map-style dataset of (image, label) pairs")
            self.length = len(data)
        if self.length == 0:
            raise ValueError("nothing to evaluate: the data are empty")
        self.data, self.labels = data, labels

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.length / self.batch_size)

    def chunk(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = index * self.batch_size
        end = min(start + self.batch_size, self.length)
        if isinstance(self.data, torch.Tensor):
            return self.data[start:end], self.labels[start:end]
        items = [self.data[i] for i in range(start, end)]
        images = torch.stack([torch.as_tensor(item[0]) for item in items])
        labels = torch.as_tensor([int(item[1]) for item in items], dtype=torch.long)
        return images, labels
