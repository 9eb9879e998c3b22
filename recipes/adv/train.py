"""Adversarial training with the DKL loss family: ikl, gkl (the papers), trades, lbgat and pgd_at (baselines).

    accelerate launch recipes/adv/train.py --config recipes/adv/configs/cifar10_wrn34_ikl.yaml

Threat model: L-inf ball of radius ``eps`` around images in [0, 1] (no normalisation in the data
pipeline; a model may normalise internally). Methods (``t``/``s`` = logits of the natural and the
adversarial images, both carrying gradients; ``y`` = labels; every loss from dkl-core):

- ``ikl``:    ``CE(t, y) + mse_weight * wMSE(s, t; prior[y]) + ce_weight * sCE(s, t)`` (NeurIPS code).
- ``gkl``:    as ``ikl`` with ``prior[y] ** gamma`` and wMSE normalised by the weight mass (TPAMI code).
- ``trades``: ``CE(t, y) + trades_beta * KL(t || s)`` (Zhang et al. 2019).
- ``lbgat``:  ``MSE(s, n) + CE(n, y) + trades_beta * KL(t || s)``, ``n`` = logits of a natural model trained
  beside the robust one by the same optimiser (Cui et al. 2021; :mod:`dkl_recipe_adv.lbgat`).
- ``pgd_at``: ``CE(s, y)`` (Madry et al. 2018).

Each step: the attack of the epoch (``eps_t = eps * epoch / epochs``; ``budget``: one of dkl-core's
released schedules, :func:`dkl_core.attacks.attack_schedule`, by default ``high_as_released``, what the
released checkpoints were trained with, or ``fixed``) runs with the model in eval mode on the attack
loss (``attack_loss``: ``auto`` = sCE/KL alone for CIFAR-10 and digits, sCE + wMSE with prior weights
for CIFAR-100, CE for pgd_at); from epoch ``awp_warmup_epochs`` the weights are perturbed by AWP
before the update and restored after the optimiser step; the class prior accumulates
``softmax(t / weight_temperature)`` over the epoch (all-reduced at its end, used during the next).

Augmentation (:mod:`dkl_recipe_adv.views`): ``basic`` (crop + flip) or ``autoaug`` (a second view: crop,
flip, then torchvision's AutoAugment CIFAR-10 policy with grey fill; both views are attacked; natural CE
over both views, the augmented view's adversarial term weighted ``autoaug_weight``; class prior from the
basic view).

Weights: ``model.pth``, and (:mod:`dkl_train.averaging`) ``model_avg.pth``, the released models'
average over per-epoch weights (``checkpoint_average``), and ``model_ema.pth``, an in-loop EMA
(``ema_decay > 0``). Per-epoch validation: clean top-1 on the test set, and (opt-in,
``robust_val_size > 0``) clean + PGD-20 accuracy on images held out of the *training* set, so robust
overfitting shows up while it happens. Robustness claims come from ``recipes/adv/eval.py`` (AutoAttack).
lbgat also saves its natural model, ``model_natural.pth``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from dkl_recipe_adv.attack import adversarial_images, epoch_attack
from dkl_recipe_adv.lbgat import boundary_guidance, epoch_learning_rate, finish_natural, with_natural_model
from dkl_recipe_adv.views import train_transform
from dkl_recipe_adv.weights import finish_weights, robust_validation, should_validate
from torch import Tensor, nn

from dkl_core import ClassPrior, gkl_loss, ikl_loss, kl_loss
from dkl_core.attacks import AdversarialWeightPerturbation, AttackSchedule
from dkl_train.averaging import CheckpointAverage, ema_model
from dkl_train.config import ConfigError, EpochConfig, parse_config
from dkl_train.data import build_datasets, split_validation, validation_tensors
from dkl_train.distributed import synchronised_proxy
from dkl_train.errors import report_user_errors
from dkl_train.evaluation import evaluate
from dkl_train.optim import build_optimizer
from dkl_train.training import Run

METHODS = ("pgd_at", "trades", "lbgat", "ikl", "gkl")


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
    method: Literal["ikl", "gkl", "trades", "lbgat", "pgd_at"] = "ikl"  # ikl / gkl, or the baselines
    model: str = "wrn_34_10"  # wrn_34_10 | wrn_28_10_silu | any dkl_train.models name (digits: resnet8)
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # architecture options for create_model
    # --- loss ---
    mse_weight: float = 20.0  # ikl/gkl wMSE weight (released code: beta)
    ce_weight: float = 3.0  # ikl/gkl soft cross-entropy weight (released code: alpha)
    weight_temperature: float = 4.0  # T of the class prior's softmax (the released scripts' --T)
    gamma: float = 1.0  # gkl: prior ** gamma
    compile_loss: bool = False  # the outer ikl/gkl loss through torch.compile (fewer kernels on a GPU)
    trades_beta: float = 6.0  # trades and lbgat: weight of KL(f(x) || f(x_adv)) (LBGAT0: 0, LBGAT6: 6)
    natural_model: str = "resnet18_lbgat"  # lbgat: the natural model trained beside the robust one
    natural_model_kwargs: dict[str, Any] = field(default_factory=dict)  # lbgat: its architecture options
    lr_first_epoch: float | None = None  # the first epoch's learning rate (LBGAT as released: 0.02), then lr_schedule
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
        if self.method == "lbgat" and (self.awp or self.augmentation != "basic"):
            raise ConfigError("method=lbgat trains without AWP on the basic view: set awp=false augmentation=basic")
        if self.lr_first_epoch is not None and self.lr_first_epoch <= 0:
            raise ConfigError(f"lr_first_epoch must be positive (or null for none), got {self.lr_first_epoch}")
        if self.awp and self.gradient_accumulation_steps != 1:
            # AWP's direction is computed from one batch before the update; with accumulation it would
            # see only the first micro-batch and perturb the attack of the others.
            raise ConfigError("awp=true needs gradient_accumulation_steps=1")
        if not 0 < self.average_new_weight <= 1:
            raise ConfigError(f"average_new_weight must be in (0, 1], got {self.average_new_weight}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


# ----------------------------------------------------------------------------------------------
# The training loss


def robust_term(config: AdvConfig, t: Tensor | None, s: Tensor, y: Tensor, weights: Tensor | None) -> Tensor:
    """The adversarial term of ``config.method``: ``trades_beta * KL``, the weighted ikl/gkl loss, or ``CE(s, y)``."""
    if config.method == "pgd_at":
        return F.cross_entropy(s.float(), y)
    if config.method in ("trades", "lbgat"):
        return config.trades_beta * kl_loss(s, t)
    common = dict(mse_weight=config.mse_weight, ce_weight=config.ce_weight, temperature=1.0, weights=weights)
    if config.method == "ikl":
        return ikl_loss(s, t, **common, compiled=config.compile_loss)
    return gkl_loss(s, t, gamma=config.gamma, **common, compiled=config.compile_loss)


def robust_loss(
    config: AdvConfig, t: Tensor | None, s: Tensor, y: Tensor, weights: Tensor | None, natural: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss of ``config.method`` on one view, ``CE(t, y) + term`` (pgd_at: the term; lbgat: the natural
    model's guidance ``MSE(s, natural) + CE(natural, y)`` + term), and its detached terms."""
    term = robust_term(config, t, s, y, weights)
    if config.method == "pgd_at":
        return term, {"ce_adv": term.detach()}
    if config.method == "lbgat":
        guidance, terms = boundary_guidance(s, natural, y)
        return guidance + term, {**terms, "lbgat": term.detach()}
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
    ``CE(t, y) + term(basic) + autoaug_weight * term(augmented)`` (pgd_at: the weighted CE terms). For lbgat
    ``model`` is the :class:`~dkl_recipe_adv.lbgat.LBGATPair`, whose one forward gives all three logits.
    """
    if config.method == "lbgat":
        s, t, natural = model(x, x_adv)
        return *robust_loss(config, t, s, y, weights, natural), t
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
    if config.method == "lbgat":
        model = with_natural_model(config, model, spec.num_classes)  # both trained by the one optimiser
    optimizer = build_optimizer(config, model.parameters())
    model, optimizer = run.prepare(model, optimizer)
    pair = run.accelerator.unwrap_model(model)  # shares the parameters
    net = pair.robust if config.method == "lbgat" else pair  # the robust model: attacks, AWP, averages work on it
    train_loader, test_loader = run.train_loader(train_set), run.eval_loader(test_set)

    prior = ClassPrior(spec.num_classes, temperature=config.weight_temperature, device=run.device)
    ema = ema_model(net, config.ema_decay) if config.ema_decay > 0 else None
    average = CheckpointAverage(config.average_new_weight) if config.checkpoint_average else None
    for state in (prior, ema, average):  # this order is the checkpoints' format
        if state is not None:
            run.register_for_checkpointing(state)
    run.build_scheduler(optimizer, train_loader, epoch_rate=epoch_learning_rate(config))  # registered after them
    awp = None
    if config.awp:
        proxy = synchronised_proxy(net)
        awp = AdversarialWeightPerturbation(net, gamma=config.awp_gamma, lr=config.awp_lr or config.lr, proxy=proxy)
    run.resume()

    for epoch in run.periods():
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
    extra = finish_weights(config, run, net, averaged, train_loader, test_loader, validation, spec)
    if config.method == "lbgat":
        extra["natural_model"] = finish_natural(config, run, pair.natural, test_loader, spec.num_classes)
    return run.finish(extra=extra)


def main(argv: list[str] | None = None) -> None:
    config = parse_config(AdvConfig, argv, description=__doc__.splitlines()[0])
    with report_user_errors():
        train(config)


if __name__ == "__main__":
    main()
