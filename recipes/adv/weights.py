"""What a run leaves behind: the raw, checkpoint-averaged and EMA weights, saved and evaluated (clean test
top-1, and the held-out robust validation that also runs per epoch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from accelerate import PartialState
from dkl_recipe_adv.attack import resolved_attack_loss
from torch import Tensor, nn

from dkl_core.attacks import robust_accuracy
from dkl_train.averaging import average_bn_buffers, natural_batches, recompute_bn_statistics
from dkl_train.evaluation import evaluate
from dkl_train.progress import interactive, say
from dkl_train.training import Run

if TYPE_CHECKING:
    from dkl_recipe_adv.train import AdvConfig

MODEL_FILES = {"raw": "model.pth", "checkpoint_average": "model_avg.pth", "ema": "model_ema.pth"}


def should_validate(config: AdvConfig, epoch: int) -> bool:
    """Whether (0-based) ``epoch`` runs the held-out robust validation: every ``robust_val_every``, and the last."""
    return epoch + 1 == config.epochs or (epoch + 1) % max(config.robust_val_every, 1) == 0


def robust_validation(config: AdvConfig, model: nn.Module, images: Tensor, labels: Tensor) -> dict[str, float]:
    """Clean and PGD-20 accuracy (%) on the held-out training images (every process calls it: a collective)."""
    steps = config.robust_val_steps
    result = robust_accuracy(
        model, images, labels, eps=config.eps, steps=steps, batch_size=config.eval_batch_size,
        progress=say("validation") if interactive() and PartialState().is_main_process else None,
    )  # fmt: skip
    return {"val_clean_top1": 100.0 * result.clean_accuracy, f"val_pgd{steps}_top1": 100.0 * result.robust_accuracy}


def finish_weights(
    config: AdvConfig,
    run: Run,
    net: nn.Module,
    averaged: dict[str, nn.Module],
    train_loader: Any,
    test_loader: Any,
    validation: tuple[Tensor, Tensor] | None,
    spec: Any,
) -> dict[str, Any]:
    """Save the raw and the ``averaged`` weights, evaluate the averaged ones (clean test, robust validation)."""
    meta = dict(arch=config.model, num_classes=spec.num_classes, model_kwargs=config.model_kwargs)
    run.save_model(net, MODEL_FILES["raw"], weights="raw", **meta)
    summary: dict[str, Any] = {}
    for label, model in averaged.items():
        if config.recompute_bn:
            recompute_bn_statistics(model, natural_batches(train_loader, config.recompute_bn_batches), run.device)
            average_bn_buffers(model, run.accelerator)
        run.save_model(model, MODEL_FILES[label], weights=label, recompute_bn=config.recompute_bn, **meta)
        summary[label] = {f"test_{k}": v for k, v in evaluate(model, test_loader, run.accelerator).items()}
        if validation is not None:
            summary[label].update(robust_validation(config, model, *validation))
        run.print(f"{label}: " + ", ".join(f"{k}={v:.4g}" for k, v in summary[label].items()))
    robust_key = f"val_pgd{config.robust_val_steps}_top1"
    # robust overfitting: the epoch with the best held-out PGD accuracy
    best = max((h for h in run.state.history if robust_key in h), key=lambda h: h[robust_key], default=None)
    return {
        "method": config.method,
        "paper_clean": config.paper_clean,
        "paper_autoattack": config.paper_autoattack,
        "attack_loss": resolved_attack_loss(config),
        "weights": {"raw": MODEL_FILES["raw"], **{label: MODEL_FILES[label] for label in averaged}},
        "averaged": summary,
        "best_robust_validation": None if best is None else {"value": best[robust_key], "epoch": best["epoch"]},
    }
