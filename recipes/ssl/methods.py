"""The SSL recipe's loss: supervised CE plus the masked consistency of FixMatch or MeanTeacher (original or IKL).

``train.py``'s docstring states each method's targets and views; this module computes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from dkl_core import ikl_loss

if TYPE_CHECKING:
    from dkl_recipe_ssl.train import SSLConfig


def confidence_mask(target_logits: torch.Tensor, p_cutoff: float) -> torch.Tensor:
    """``1.0`` where the target's top softmax probability reaches ``p_cutoff``, else ``0.0`` (no gradient)."""
    probs = torch.softmax(target_logits.detach().float(), dim=1)
    return (probs.max(dim=1).values >= p_cutoff).float()


def consistency_loss(
    config: SSLConfig, student_logits: torch.Tensor, target_logits: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``mean_b(mask_b * loss_b)`` over the whole unlabeled batch, ``loss_b`` chosen by ``config.consistency``."""
    s, t = student_logits.float(), target_logits.float()
    if config.consistency == "ce":
        if config.pseudo_label == "hard":
            targets = F.one_hot(t.detach().argmax(dim=1), s.shape[1]).float()
        elif config.pseudo_label == "sharpened":
            targets = torch.softmax(t.detach() / config.pseudo_temperature, dim=1)
        else:  # soft: the probabilities that also set the mask, unchanged
            targets = torch.softmax(t.detach(), dim=1)
        per_sample = -(targets * F.log_softmax(s, dim=1)).sum(dim=1)
    elif config.consistency == "mse":
        per_sample = (torch.softmax(s, dim=1) - torch.softmax(t.detach(), dim=1)).pow(2).mean(dim=1)
    else:
        per_sample = ikl_loss(
            s,
            t,
            mse_weight=config.mse_weight,
            ce_weight=config.ce_weight,
            temperature=config.temperature,
            weight_temperature=config.weight_temperature,
            detach_weights=config.detach_weights,
            reduction="none",
        )
    return (per_sample * mask).mean()


def unsup_ramp(config: SSLConfig, iteration: int) -> float:
    """USB MeanTeacher's ramp ``clip(iteration / (unsup_warmup * iterations), 0, 1)``; 1 when ``unsup_warmup`` is 0."""
    if config.unsup_warmup <= 0:
        return 1.0
    return min(max(iteration / (config.unsup_warmup * config.iterations), 0.0), 1.0)


def ssl_loss(
    config: SSLConfig,
    model: nn.Module,
    teacher: nn.Module | None,
    labeled: dict[str, torch.Tensor],
    unlabeled: dict[str, torch.Tensor],
    iteration: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one iteration and its detached terms (``sup_loss``, ``unsup_loss``, ``mask_ratio``).

    ``teacher`` is the EMA network (MeanTeacher only). Call it under the accelerator's autocast.
    """
    x_lb, y_lb = labeled["image"], labeled["label"]
    x_w, x_s = unlabeled["weak"], unlabeled["strong"]
    num_lb = x_lb.shape[0]
    if config.method == "fixmatch":
        logits = model(torch.cat([x_lb, x_w, x_s])).float()
        logits_lb = logits[:num_lb]
        target, student = logits[num_lb:].chunk(2)
    else:
        logits = model(torch.cat([x_lb, x_s])).float()
        logits_lb, student = logits[:num_lb], logits[num_lb:]
        with torch.no_grad():
            target = teacher(x_w).float()
    sup = F.cross_entropy(logits_lb, y_lb)
    mask = confidence_mask(target, config.p_cutoff)
    unsup = consistency_loss(config, student, target, mask)
    loss = sup + config.unsup_weight * unsup_ramp(config, iteration) * unsup
    return loss, {"sup_loss": sup.detach(), "unsup_loss": unsup.detach(), "mask_ratio": mask.mean()}
