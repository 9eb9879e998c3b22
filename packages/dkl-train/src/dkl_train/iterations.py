"""Iteration-based training (the SSL recipe, USB's protocol): a seeded labeled split and an endless data stream.

An iteration-based run has no epochs: iteration ``i`` reads the ``i``-th global batch of an endless,
shuffled stream over the dataset. :class:`IterationSampler` makes that stream a pure function of
``(seed, position)``, so any process count sees the same global batches and a run resumed at iteration
``i`` continues with exactly the batches an uninterrupted run would have read;
:func:`iteration_loader` wraps it in a loader whose batches arrive on the device.
:func:`split_indices` draws the labeled (and held-out validation) images of a semi-supervised run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Sampler

from .data import (
    DeviceLoader,
    TransformedDataset,
    ignore_stop_signals,
    labeled_subset_indices,
    resolve_num_workers,
    sample_seed,
)

if TYPE_CHECKING:
    from .training import Run


@dataclass(frozen=True)
class Split:
    """Indices into the training split: labeled, held-out validation, unlabeled (USB keeps the labeled ones)."""

    labeled: list[int]
    validation: list[int]
    unlabeled: list[int]


def split_indices(labels: list[int], labels_per_class: int, val_per_class: int = 0, seed: int = 0) -> Split:
    """The seeded, class-balanced labeled draw, an optional validation draw from the rest, and the unlabeled set.

    Validation images are removed from the unlabeled set, so model selection never looks at an image
    the model trained on; the labeled images stay in it (USB's ``include_lb_to_ulb``).
    """
    labeled = labeled_subset_indices(labels, labels_per_class, seed=seed)
    validation: list[int] = []
    if val_per_class:
        taken = set(labeled)
        rest = [i for i in range(len(labels)) if i not in taken]
        picked = labeled_subset_indices([labels[i] for i in rest], val_per_class, seed=seed + 1)
        validation = [rest[i] for i in picked]
    held_out = set(validation)
    unlabeled = [i for i in range(len(labels)) if i not in held_out]
    return Split(labeled, validation, unlabeled)


class IterationSampler(Sampler):
    """This process's share of the keys of iterations ``[start, stop)`` of an endless shuffled stream.

    Position ``p`` of the stream (``global_batch`` positions per iteration) is sample
    ``perm_e[p % n]`` of pass ``e = p // n``, ``perm_e`` a permutation seeded by ``(seed, e)``; the key
    ``(e, index)`` seeds that sample's augmentation. Process ``r`` of ``R`` takes the ``r``-th slice of
    each iteration's global batch, so the union over processes is the one-process batch, for any ``R``
    and from any ``start`` (resume).
    """

    def __init__(
        self, length: int, global_batch: int, *, seed: int, start: int, stop: int, rank: int = 0, num_processes: int = 1
    ) -> None:
        if global_batch % num_processes:
            raise ValueError(f"global batch {global_batch} is not divisible by {num_processes} processes")
        self.length, self.global_batch, self.seed = length, global_batch, seed
        self.start, self.stop, self.rank = start, stop, rank
        self.local_batch = global_batch // num_processes
        self._pass, self._order = -1, None

    def __len__(self) -> int:
        return max(self.stop - self.start, 0) * self.local_batch

    def _key(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.length)
        if epoch != self._pass:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, 0))
            self._pass, self._order = epoch, torch.randperm(self.length, generator=generator).tolist()
        return epoch, self._order[offset]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for iteration in range(self.start, self.stop):
            first = iteration * self.global_batch + self.rank * self.local_batch
            for position in range(first, first + self.local_batch):
                yield self._key(position)


def iteration_loader(
    dataset: TransformedDataset, global_batch: int, run: Run, *, seed: int, start: int, stop: int
) -> DeviceLoader:
    """A loader that yields this process's part of the batches of iterations ``[start, stop)``, in order,
    copied to the device without blocking and normalised there."""
    accelerator = run.accelerator
    sampler = IterationSampler(
        len(dataset), global_batch, seed=seed, start=start, stop=stop,
        rank=accelerator.process_index, num_processes=accelerator.num_processes,
    )  # fmt: skip
    workers = resolve_num_workers(run.config.num_workers)
    loader = DataLoader(
        dataset,
        batch_size=sampler.local_batch,
        sampler=sampler,
        # A private generator: creating the iterator must not draw from the global RNG, whose state a
        # checkpoint restores (the model's stochastic depth reads it), or a resumed run would drift.
        generator=torch.Generator().manual_seed(seed),
        num_workers=workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers else None,
        worker_init_fn=ignore_stop_signals,  # pre-emption signals are the training process's to handle
    )
    return run.device_loader(loader, dataset, copy=True)
