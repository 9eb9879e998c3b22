"""LBGAT, learnable boundary guided adversarial training (Cui et al., ICCV 2021), as ``dvlab-research/LBGAT`` runs it.

A robust model and a natural model are trained together by one optimiser. With ``s = f_rob(x_adv)``,
``t = f_rob(x)`` and ``n = f_nat(x)`` the loss of a step is

    MSE(s, n) + CE(n, y) + beta * KL(t || s)

(``lbgat.py`` of the released code: ``MSELoss`` averages over batch and classes, the KL is summed over classes
and averaged over the batch, and gradients reach both models through every term). The attack is TRADES' KL
inner maximisation on the robust model alone (:mod:`dkl_recipe_adv.attack`, ``attack_loss: kl``); the
natural model only ever sees natural images and never leaves train mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import Tensor, nn

from dkl_train.evaluation import evaluate
from dkl_train.optim import learning_rate

if TYPE_CHECKING:
    from dkl_recipe_adv.methods import LBGATSettings
    from dkl_recipe_adv.train import AdvConfig

    from dkl_train.training import Run

NATURAL_FILE = "model_natural.pth"  # the natural model, saved beside the robust model.pth


class LBGATPair(nn.Module):
    """The robust and the natural model as one module: one optimiser, one DDP wrapper, one checkpoint.

    Called on images alone it is the robust model (what evaluation and the attacks see). Called with the
    adversarial images too it returns the logits of a training step in the released order,
    ``f_rob(x_adv), f_rob(x), f_nat(x)``: in train mode the robust model's BN statistics end the step on
    the natural batch.
    """

    def __init__(self, robust: nn.Module, natural: nn.Module) -> None:
        super().__init__()
        self.robust = robust
        self.natural = natural

    def forward(self, x: Tensor, x_adv: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        if x_adv is None:
            return self.robust(x)
        return self.robust(x_adv), self.robust(x), self.natural(x)


def with_natural_model(config: LBGATSettings, robust: nn.Module, num_classes: int) -> LBGATPair:
    """``robust`` paired with a fresh ``config.natural_model`` (LBGAT's ``resnet18_lbgat`` by default)."""
    from dkl_train.models import create_model

    return LBGATPair(robust, create_model(config.natural_model, num_classes, **config.natural_model_kwargs))


def boundary_guidance(adversarial: Tensor, natural: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """``MSE(f_rob(x_adv), f_nat(x)) + CE(f_nat(x), y)`` and its detached terms ``mse``, ``ce_natural``."""
    mse = F.mse_loss(adversarial.float(), natural.float())
    ce = F.cross_entropy(natural.float(), labels)
    return mse + ce, {"mse": mse.detach(), "ce_natural": ce.detach()}


def epoch_learning_rate(config: AdvConfig) -> Callable[[int], float] | None:
    """The rate per epoch with ``lr_first_epoch`` (LBGAT: 0.02 where ``lr`` is 0.1) in the first epoch, the
    schedule's rate after it; ``None`` without it (the schedule alone). The run's scheduler applies it, so the
    logged ``lr`` is the rate used and any per-group scale survives."""
    first = config.lr_first_epoch
    if first is None:
        return None
    return lambda epoch: first if epoch == 0 else learning_rate(config, epoch)


def finish_natural(config: LBGATSettings, run: Run, natural: nn.Module, test_loader: Any, num_classes: int) -> dict:
    """Save the natural model beside the robust one and report its clean test accuracy."""
    run.save_model(
        natural, NATURAL_FILE, weights="natural", arch=config.natural_model, num_classes=num_classes,
        model_kwargs=config.natural_model_kwargs,
    )  # fmt: skip
    metrics = {f"test_{k}": v for k, v in evaluate(natural, test_loader, run.accelerator).items()}
    run.print("natural model: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return {"file": NATURAL_FILE, "arch": config.natural_model, **metrics}
