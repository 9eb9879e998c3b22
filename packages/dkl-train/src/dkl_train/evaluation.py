"""Top-1/top-5 evaluation of a model over a prepared loader, the same for any number of processes."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from accelerate import Accelerator
from torch import nn

from .progress import progress_bar


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    accelerator: Accelerator,
    *,
    input_key: str = "image",
    progress: str | None = None,
) -> dict[str, float]:
    """Top-1, top-5 (%) and mean cross-entropy of ``model`` over a loader prepared by ``accelerator``.

    Per-sample results go through ``gather_for_metrics``, which drops the samples Accelerate repeats
    to give every process an equal share, so the numbers do not depend on the number of processes.
    Works for models that were not prepared (a KD teacher): the forward runs under the accelerator's
    autocast. ``progress``: the label of a progress bar (on a terminal, main process only).
    """
    was_training = model.training
    model.eval()
    correct1, correct5, losses = [], [], []
    batches = progress_bar(loader, desc=progress, show=progress is not None and accelerator.is_main_process)
    for batch in batches:
        images, labels = batch[input_key], batch["label"]
        with accelerator.autocast():
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(labels[:, None])
        loss = nn.functional.cross_entropy(logits, labels, reduction="none")
        c1, c5, lo = accelerator.gather_for_metrics((hits[:, 0], hits.any(dim=1), loss))
        correct1.append(c1.cpu())
        correct5.append(c5.cpu())
        losses.append(lo.cpu())
    model.train(was_training)
    if not correct1:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"), "samples": 0}
    c1, c5, lo = torch.cat(correct1), torch.cat(correct5), torch.cat(losses)
    return {
        "top1": 100.0 * c1.float().mean().item(),
        "top5": 100.0 * c5.float().mean().item(),
        "loss": lo.mean().item(),
        "samples": int(c1.numel()),
    }
