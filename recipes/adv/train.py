"""Adversarial training with the DKL loss family: ikl, gkl (the papers), trades and pgd_at (baselines).

    accelerate launch recipes/adv/train.py --config recipes/adv/configs/cifar10_wrn34_ikl.yaml

Threat model: L-inf ball of radius ``eps`` around images in [0, 1] (no normalisation in the data
pipeline; a model may normalise internally). Methods (``t``/``s`` = logits of the natural and the
adversarial images, both carrying gradients; ``y`` = labels; every loss from dkl-core):

- ``ikl``:    ``CE(t, y) + mse_weight * wMSE(s, t; prior[y]) + ce_weight * sCE(s, t)`` (NeurIPS code).
- ``gkl``:    as ``ikl`` with ``prior[y] ** gamma`` and wMSE normalised by the weight mass (TPAMI code).
- ``trades``: ``CE(t, y) + trades_beta * KL(t || s)`` (Zhang et al. 2019).
- ``pgd_at``: ``CE(s, y)`` (Madry et al. 2018).

Each step: the attack of the epoch (``eps_t = eps * epoch / epochs``; ``budget``: one of dkl-core's
released schedules, :func:`dkl_core.attacks.attack_schedule`, by default ``high_as_released``, what the
released checkpoints were trained with, or ``fixed``) runs with the model in eval mode on the attack
loss (``attack_loss``: ``auto`` = sCE/KL alone for CIFAR-10 and digits, sCE + wMSE with prior weights
for CIFAR-100, CE for pgd_at); from epoch ``awp_warmup_epochs`` the weights are perturbed by AWP
before the update and restored after the optimiser step; the class prior accumulates
``softmax(t / weight_temperature)`` over the epoch (all-reduced at its end, used during the next).

Augmentation: ``basic`` (crop + flip) or ``autoaug`` (a second view: crop, flip, then torchvision's
AutoAugment CIFAR-10 policy with grey fill; both views are attacked; natural CE over both views,
the augmented view's adversarial term weighted ``autoaug_weight``; class prior from the basic view).

Weights: ``model.pth``, and (:mod:`dkl_train.averaging`) ``model_avg.pth``, the released models'
average over per-epoch weights (``checkpoint_average``), and ``model_ema.pth``, an in-loop EMA
(``ema_decay > 0``). Per-epoch validation: clean top-1 on the test set, and (opt-in,
``robust_val_size > 0``) clean + PGD-20 accuracy on images held out of the *training* set, so robust
overfitting shows up while it happens. Robustness claims come from ``recipes/adv/eval.py`` (AutoAttack).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from accelerate import PartialState
from torch import Tensor, nn
from torchvision.transforms import v2

from dkl_core import ClassPrior, gkl_loss, ikl_loss, kl_loss
from dkl_core.attacks import (
    AdversarialWeightPerturbation,
    AttackSchedule,
    attack_schedule,
    ikl_attack_loss,
    pgd,
    ramped_epsilon,
    robust_accuracy,
)
from dkl_train.averaging import (
    CheckpointAverage,
    average_bn_buffers,
    ema_model,
    natural_batches,
    recompute_bn_statistics,
)
from dkl_train.config import ConfigError, EpochConfig, parse_config
from dkl_train.data import TwoViews, build_datasets, build_transform, split_validation, validation_tensors
from dkl_train.distributed import synchronised_proxy
from dkl_train.errors import report_user_errors
from dkl_train.evaluation import evaluate
from dkl_train.optim import build_optimizer
from dkl_train.progress import interactive, say
from dkl_train.training import Run

METHODS = ("pgd_at", "trades", "ikl", "gkl")
RELEASED_BUDGETS = ("high_as_released", "high", "low")  # dkl_core.attacks.attack_schedule's names
MODEL_FILES = {"raw": "model.pth", "checkpoint_average": "model_avg.pth", "ema": "model_ema.pth"}


@dataclass
class AdvConfig(EpochConfig):
    """Settings of one adversarial-training run (``mse_weight``/``ce_weight``: the released scripts' beta/alpha)."""

    recipe: ClassVar[str] = "adv"

    # --- defaults: CIFAR-10 WRN-34-10 IKL-AT ---
    dataset: str = "cifar10"
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.2
    weight_decay: float = 5e-4
    # cosine_shifted: lr/2 (1 + cos(pi e / (E + 1))), 1-based e, the released DKL scripts' formula; cosine:
    # lr/2 (1 + cos(pi (e - 1) / E)), the released TRADES script's (dkl_train.training.learning_rate)
    lr_schedule: Literal["multistep", "cosine", "cosine_shifted", "constant"] = "cosine"
    keep_checkpoints: int = 1
    method: Literal["ikl", "gkl", "trades", "pgd_at"] = "ikl"  # ikl / gkl, or the trades / pgd_at baselines
    model: str = "wrn_34_10"  # wrn_34_10 | wrn_28_10_silu | any dkl_train.models name (digits: resnet8)
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # architecture options for create_model
    # --- loss ---
    mse_weight: float = 20.0  # ikl/gkl wMSE weight (released code: beta)
    ce_weight: float = 3.0  # ikl/gkl soft cross-entropy weight (released code: alpha)
    weight_temperature: float = 4.0  # T of the class prior's softmax (the released scripts' --T)
    gamma: float = 1.0  # gkl: prior ** gamma
    compile_loss: bool = False  # the outer ikl/gkl loss through torch.compile (fewer kernels on a GPU)
    trades_beta: float = 6.0  # trades: KL weight
    # --- attack used for training ---
    eps: float = 8 / 255  # L-inf radius of the training attack
    eps_ramp: bool = True  # eps_t = eps * epoch / epochs (released code); false: eps from the first epoch
    budget: Literal["high_as_released", "high", "low", "fixed"] = "high_as_released"  # attack steps and step size
    attack_steps: int = 10  # budget=fixed only
    attack_step_size: float = 2 / 255  # budget=fixed only
    attack_loss: Literal["auto", "kl", "ikl", "ce"] = "auto"  # auto: see the module docstring
    random_start: Literal["normal", "uniform", "none"] = "normal"  # normal: x + 0.001 N(0, 1) (released code)
    project_start: bool = True  # false: first gradient at the unprojected normal start (released code)
    # --- adversarial weight perturbation ---
    awp: bool = True  # adversarial weight perturbation
    awp_gamma: float = 0.005  # AWP: size of the weight perturbation relative to the weights
    awp_warmup_epochs: int = 10  # AWP from this (1-based) epoch on
    awp_lr: float | None = None  # proxy ascent learning rate; None = lr (released code)
    # --- augmentation ---
    augmentation: Literal["basic", "autoaug"] = "basic"  # basic: crop + flip; autoaug: adds an AutoAugment view
    autoaug_weight: float = 0.3  # weight of the AutoAugment half of the loss
    # --- weight averaging ---
    checkpoint_average: bool = True  # the released models: exponential average over per-epoch weights
    average_new_weight: float = 0.1  # checkpoint_average: weight of each new epoch's weights
    average_start_epoch: int = 1  # first (1-based) epoch whose weights enter the average
    ema_decay: float = 0.0  # in-loop EMA after every optimiser step (0 = off; released code 0.9996)
    recompute_bn: bool = False  # re-estimate BN statistics of averaged weights on natural training images
    recompute_bn_batches: int = 0  # batches per process for that (0 = one epoch)
    # --- per-epoch robust validation on a held-out part of the training set ---
    robust_val_size: int = 0  # images held out of the training set (0 = off: train on all of it, as released)
    robust_val_every: int = 1  # epochs between validations (the last epoch always)
    robust_val_steps: int = 20  # PGD-20 (cross-entropy, step eps/4)
    # --- what the config should reproduce (copied into results.json; eval.py reports next to them) ---
    paper_clean: float | None = None  # the paper's clean accuracy for this config
    paper_autoattack: float | None = None  # the paper's AutoAttack accuracy for this config

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.attack_loss == "ikl" and self.method not in ("ikl", "gkl"):
            raise ConfigError("attack_loss=ikl uses the class prior, which only ikl/gkl keep")
        if self.awp and self.gradient_accumulation_steps != 1:
            # AWP's direction is computed from one batch before the update; with accumulation it would
            # see only the first micro-batch and perturb the attack of the others.
            raise ConfigError("awp=true needs gradient_accumulation_steps=1")
        if not 0 < self.average_new_weight <= 1:
            raise ConfigError(f"average_new_weight must be in (0, 1], got {self.average_new_weight}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


# ----------------------------------------------------------------------------------------------
# Data: inputs in [0, 1], the AutoAugment view


AUTOAUG_FILL = 128  # grey fill of the geometric AutoAugment ops (the released policy's fill colour)


def autoaugment_view(basic: v2.Compose) -> v2.Compose:
    """``basic``'s crop and flip, then the AutoAugment CIFAR-10 policy (fill 128), then the tensor conversion.

    The released pipeline's order: the policy sees the cropped, flipped image, so its rotations and
    translations fill with grey next to the crop's black padding.
    """
    steps = list(basic.transforms)
    at = next(i for i, step in enumerate(steps) if isinstance(step, v2.ToImage))
    policy = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10, fill=AUTOAUG_FILL)
    return v2.Compose([*steps[:at], policy, *steps[at:]])


def train_transform(config: AdvConfig, spec: Any) -> Callable[[Any], Any]:
    """Crop + flip; with ``autoaug`` also a crop + flip + AutoAugment(CIFAR-10 policy) view.

    The views are ``uint8``; the loader scales them to [0, 1] on the device (``build_datasets(normalize=False)``),
    where the attacks work (a model that wants normalised input normalises internally).
    """
    basic = build_transform(spec, train=True, augment=config.augment, normalize=False, output="uint8")
    if config.augmentation == "basic":
        return basic
    return TwoViews(basic, autoaugment_view(basic), keys=("image", "image_aug"))


# ----------------------------------------------------------------------------------------------
# The attack used for training


def resolved_attack_loss(config: AdvConfig) -> str:
    """``auto``: CE for pgd_at; sCE + wMSE (prior weights) for ikl/gkl on CIFAR-100; the KL/sCE term otherwise."""
    if config.attack_loss != "auto":
        return config.attack_loss
    if config.method == "pgd_at":
        return "ce"
    if config.method in ("ikl", "gkl") and config.dataset == "cifar100":
        return "ikl"
    return "kl"


def epoch_attack(config: AdvConfig, epoch: int) -> AttackSchedule:
    """The training attack of (0-based) ``epoch``: dkl-core's released schedules, or a fixed one."""
    if config.budget in RELEASED_BUDGETS:
        return attack_schedule(epoch + 1, config.epochs, eps=config.eps, budget=config.budget, ramp=config.eps_ramp)
    eps_t = ramped_epsilon(epoch + 1 if config.eps_ramp else config.epochs, config.epochs, config.eps)
    return AttackSchedule(eps_t, config.attack_step_size, config.attack_steps)


def adversarial_images(
    config: AdvConfig, model: nn.Module, images: Tensor, labels: Tensor, schedule: AttackSchedule, prior: ClassPrior
) -> Tensor:
    """The inner maximisation of one batch (eval mode; :func:`dkl_core.attacks.pgd` with the epoch's schedule).

    With the defaults this is exactly :func:`dkl_core.attacks.inner_maximization` (tested); calling
    :func:`pgd` directly adds what that function does not offer: the fixed budget, the CE loss of
    Madry's PGD-AT, eps without the ramp, and the uniform start.
    """
    kind = resolved_attack_loss(config)
    if schedule.eps == 0:
        return images.detach().clone()
    loss: Any = ikl_attack_loss(prior.prior) if kind == "ikl" else kind
    return pgd(
        model, images, labels, eps=schedule.eps, step_size=schedule.step_size, steps=schedule.steps,
        norm="linf", loss=loss, random_start=config.random_start, init_scale=0.001, eval_mode=True,
        check_inputs=False, project_start=config.project_start,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# The training loss


def robust_term(config: AdvConfig, t: Tensor | None, s: Tensor, y: Tensor, weights: Tensor | None) -> Tensor:
    """The adversarial term of ``config.method``: ``trades_beta * KL``, the weighted ikl/gkl loss, or ``CE(s, y)``."""
    if config.method == "pgd_at":
        return F.cross_entropy(s.float(), y)
    if config.method == "trades":
        return config.trades_beta * kl_loss(s, t)
    common = dict(mse_weight=config.mse_weight, ce_weight=config.ce_weight, temperature=1.0, weights=weights)
    if config.method == "ikl":
        return ikl_loss(s, t, **common, compiled=config.compile_loss)
    return gkl_loss(s, t, gamma=config.gamma, **common, compiled=config.compile_loss)


def robust_loss(
    config: AdvConfig, t: Tensor | None, s: Tensor, y: Tensor, weights: Tensor | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss of ``config.method`` on one view, ``CE(t, y) + term`` (pgd_at: the term), and its detached terms."""
    term = robust_term(config, t, s, y, weights)
    if config.method == "pgd_at":
        return term, {"ce_adv": term.detach()}
    ce = F.cross_entropy(t.float(), y)
    return ce + term, {"ce": ce.detach(), config.method: term.detach()}


def training_loss(
    config: AdvConfig, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, weights: Tensor | None, halves: int
) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
    """Forward passes and loss of natural images ``x``, adversarial ``x_adv``; returns ``(loss, terms, natural logits)``.

    The adversarial and the natural images go through separate forward passes, adversarial first as
    in the released code (BN batch statistics of each kind apart; in train mode the running
    statistics end each step on the natural batch). With ``halves == 2`` the batch holds the basic
    and the AutoAugment view, as released: the natural CE is the mean over the whole doubled batch,
    and only the adversarial term of the augmented half is weighted,
    ``CE(t, y) + term(basic) + autoaug_weight * term(augmented)`` (pgd_at: the weighted CE terms).
    """
    s = model(x_adv)
    t = None if config.method == "pgd_at" else model(x)
    if halves == 1:
        loss, terms = robust_loss(config, t, s, y, weights)
        return loss, terms, t
    terms: dict[str, Tensor] = {}
    total = None
    if t is not None:
        total = F.cross_entropy(t.float(), y)
        terms["ce"] = total.detach()
    name = "ce_adv" if config.method == "pgd_at" else config.method
    for half, weight in enumerate((1.0, config.autoaug_weight)):
        part = slice(half * y.shape[0] // 2, (half + 1) * y.shape[0] // 2)
        term = robust_term(
            config, None if t is None else t[part], s[part], y[part], None if weights is None else weights[part]
        )
        total = weight * term if total is None else total + weight * term
        terms[f"{name}{'_aug' if half else ''}"] = term.detach()
    return total, terms, t


def step_loss(
    config: AdvConfig,
    model: nn.Module,
    net: nn.Module,
    batch: dict[str, Tensor],
    schedule: AttackSchedule,
    prior: ClassPrior,
    awp: AdversarialWeightPerturbation | None,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Everything of one training step before ``backward``: attack, AWP perturbation, loss, class-prior update.

    ``model`` is what the optimiser trains (possibly DDP-wrapped), ``net`` the bare module sharing its
    parameters (attacks and AWP run on it); ``awp`` is ``None`` before the AWP warm-up. The caller
    runs backward and the optimiser step, then ``awp.restore()``.
    """
    x, y = batch["image"], batch["label"]
    halves = 1
    if "image_aug" in batch:  # AutoAugment: both views are attacked and trained on
        x, y, halves = torch.cat([x, batch["image_aug"]]), torch.cat([y, y]), 2
    uses_prior = config.method in ("ikl", "gkl")
    with autocast():
        x_adv = adversarial_images(config, net, x, y, schedule, prior)
    weights = prior.weights(y) if uses_prior else None
    if awp is not None:
        # The proxy ascends the loss of the whole (possibly doubled) batch as one, unweighted: the
        # released AWP step does not split the views.
        with autocast():
            direction = awp.compute(lambda proxy: training_loss(config, proxy, x, x_adv, y, weights, 1)[0])
        awp.perturb(direction)
    loss, terms, t = training_loss(config, model, x, x_adv, y, weights, halves)
    if uses_prior:
        basic = slice(0, y.shape[0] // halves)  # the class prior sees the basic view only (as released)
        prior.update(t[basic].detach().float(), y[basic])
    return loss, terms


# ----------------------------------------------------------------------------------------------
# Training


def train(config: AdvConfig) -> dict[str, Any]:
    """Run the whole recipe; returns the ``results.json`` payload."""
    from dkl_train.models import create_model

    run = Run(config)
    train_set, test_set, spec = build_datasets(config, normalize=False)
    train_set.transform = train_transform(config, spec)
    train_set, held_out = split_validation(train_set, config.robust_val_size)
    validation = validation_tensors(held_out, spec) if held_out is not None else None
    run.print(f"training on {len(train_set)} images, robust validation on {config.robust_val_size} held-out ones")

    model = create_model(config.model, spec.num_classes, **config.model_kwargs)
    optimizer = build_optimizer(config, model.parameters())
    model, optimizer = run.prepare(model, optimizer)
    net = run.accelerator.unwrap_model(model)  # shares the parameters; attacks and AWP work on it
    train_loader, test_loader = run.train_loader(train_set), run.eval_loader(test_set)

    prior = ClassPrior(spec.num_classes, temperature=config.weight_temperature, device=run.device)
    ema = ema_model(net, config.ema_decay) if config.ema_decay > 0 else None
    average = CheckpointAverage(config.average_new_weight) if config.checkpoint_average else None
    for state in (prior, ema, average):  # this order is the checkpoints' format
        if state is not None:
            run.register_for_checkpointing(state)
    awp = None
    if config.awp:
        proxy = synchronised_proxy(net)
        awp = AdversarialWeightPerturbation(net, gamma=config.awp_gamma, lr=config.awp_lr or config.lr, proxy=proxy)
    run.resume()

    for epoch in run.epochs():
        schedule = epoch_attack(config, epoch)
        awp_on = awp is not None and epoch + 1 >= config.awp_warmup_epochs

        def compute_loss(batch: dict[str, Tensor], schedule: AttackSchedule = schedule, awp_on: bool = awp_on):
            return step_loss(
                config, model, net, batch, schedule, prior, awp if awp_on else None, run.accelerator.autocast
            )

        def after_step() -> None:
            if awp is not None and awp.perturbed:
                awp.restore()  # keeps the optimiser's update, removes exactly the perturbation
            if ema is not None:
                ema.update_parameters(net)

        metrics = run.train_epoch(model, optimizer, train_loader, compute_loss, epoch, after_step=after_step)
        metrics.update(attack_eps=schedule.eps, attack_steps=schedule.steps, attack_step_size=schedule.step_size)
        if config.method in ("ikl", "gkl"):
            prior.end_epoch()  # all-reduced over processes; the prior of the next epoch
        if average is not None and epoch + 1 >= config.average_start_epoch:
            average.update(net)
        if validation is not None and should_validate(config, epoch):
            metrics.update(robust_validation(config, net, *validation))
        evaluated = evaluate(model, test_loader, run.accelerator) if run.should_evaluate(epoch) else None
        run.end_epoch(epoch, metrics, evaluated)

    averaged = {} if average is None or average.state is None else {"checkpoint_average": average.averaged_copy(net)}
    if ema is not None:
        averaged["ema"] = ema.module
    return run.finish(extra=finish_weights(config, run, net, averaged, train_loader, test_loader, validation, spec))


def should_validate(config: AdvConfig, epoch: int) -> bool:
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


def main(argv: list[str] | None = None) -> None:
    config = parse_config(AdvConfig, argv, description=__doc__.splitlines()[0])
    with report_user_errors():
        train(config)


if __name__ == "__main__":
    main()
