"""Fast robust accuracy for per-epoch validation: PGD-20 and CW-20 (the TRADES/AWP validation attacks)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from ._checks import check_budget, check_images_labels, check_norm, warn_if_probabilities
from ._data import EvaluationData, gather_objects, shard, world
from ._evaluation import float32_eval, model_device
from .pgd import pgd


@dataclass(frozen=True)
class RobustAccuracy:
    """Accuracy on clean and on attacked images over ``num_samples`` samples (fractions in [0, 1])."""

    clean_accuracy: float
    robust_accuracy: float
    num_samples: int


def robust_accuracy(
    model: nn.Module,
    data: torch.Tensor | Dataset,
    labels: torch.Tensor | None = None,
    *,
    eps: float,
    attack: str = "pgd",
    steps: int = 20,
    step_size: float | None = None,
    norm: str = "linf",
    batch_size: int = 256,
    random_start: str = "uniform",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> RobustAccuracy:
    """Clean and PGD-``steps`` (``attack="pgd"``, cross-entropy) or CW-``steps`` (``attack="cw"``) robust accuracy.

    Meant for validation during training, not for robustness claims (use
    :func:`autoattack_evaluation` for those). The model is evaluated in eval mode and float32
    (its modes and flags are restored afterwards). With ``torch.distributed`` initialised, the
    data are split into contiguous chunks of ``batch_size`` across the processes, and the counts
    are gathered, so every process gets the result one process would get: the random start of
    chunk ``i`` is drawn from a generator seeded with ``seed + i``.

    Args:
        model: returns logits for inputs in ``[0, 1]``.
        data: images ``[N, ...]`` in ``[0, 1]`` (with ``labels``) or a dataset of ``(image, label)``.
        labels: ``[N]`` class indices when ``data`` is a tensor.
        eps: radius of the ball, e.g. ``8/255``.
        attack: ``"pgd"`` or ``"cw"``.
        steps: number of steps (20 as in the released validation).
        step_size: default ``eps / 4`` (``2/255`` at ``8/255``).
        norm: ``"linf"`` or ``"l2"``.
        batch_size: images per attack batch (and per chunk of the split).
        random_start: ``"uniform"`` (default; uniform in the ball), ``"normal"`` or ``"none"``.
        seed: base seed of the random starts.
        progress: called with one line after each batch of this process (e.g. ``print``, or a
            progress bar's update); ``None``: silent.
    """
    if attack not in ("pgd", "cw"):
        raise ValueError(f"attack must be 'pgd' or 'cw', got {attack!r}")
    norm = check_norm(norm)
    step_size = eps / 4 if step_size is None else step_size
    check_budget(eps, step_size, steps)
    source = EvaluationData(data, labels, batch_size)
    rank, world_size = world()
    device = model_device(model)
    loss = "ce" if attack == "pgd" else "cw"
    counts = torch.zeros(3, dtype=torch.long)  # clean correct, robust correct, samples
    mine = shard(source.num_chunks, rank, world_size)
    with float32_eval(model) as net:
        for done, index in enumerate(mine, start=1):
            images, targets = source.chunk(index)
            images, targets = images.to(device=device, dtype=torch.float32), targets.to(device).long()
            check_images_labels(images, targets)
            with torch.no_grad():
                clean_logits = net(images)
            warn_if_probabilities(clean_logits)
            generator = torch.Generator(device=device).manual_seed(seed + index)
            x_adv = pgd(
                net, images, targets, eps=eps, step_size=step_size, steps=steps, norm=norm, loss=loss,
                random_start=random_start, generator=generator, check_inputs=False,
            )  # fmt: skip
            with torch.no_grad():
                adv_pred = net(x_adv).argmax(dim=1)
            counts[0] += int((clean_logits.argmax(dim=1) == targets).sum())
            counts[1] += int((adv_pred == targets).sum())
            counts[2] += targets.shape[0]
            if progress is not None:
                progress(
                    f"{attack.upper()}-{steps}: batch {done}/{len(mine)}, robust {int(counts[1])}/{int(counts[2])} so far"
                )
    total = torch.stack([torch.as_tensor(c) for c in gather_objects(counts)]).sum(dim=0)
    return RobustAccuracy(
        clean_accuracy=int(total[0]) / int(total[2]),
        robust_accuracy=int(total[1]) / int(total[2]),
        num_samples=int(total[2]),
    )
