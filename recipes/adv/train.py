"""Adversarial training with the DKL loss family: ikl, gkl (the papers), trades, lbgat and pgd_at (baselines).

    accelerate launch recipes/adv/train.py --config recipes/adv/configs/cifar10_wrn34_ikl.yaml

Threat model: L-inf ball of radius ``eps`` around images in [0, 1] (no normalisation in the data
pipeline; a model may normalise internally). Each method (ikl, gkl, trades, lbgat, pgd_at) is a class in
:mod:`dkl_recipe_adv.methods` (its formula, its settings); your own: ``method=my_methods.py:MyMethod``
(a subclass of :class:`dkl_recipe_adv.methods.AdvMethod`; CONTRIBUTING.md).

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
from dkl_recipe_adv.attack import adversarial_images, epoch_attack
from dkl_recipe_adv.lbgat import epoch_learning_rate
from dkl_recipe_adv.methods import ADV_METHODS, AdvMethod
from dkl_recipe_adv.views import train_transform
from dkl_recipe_adv.weights import finish_weights, robust_validation, should_validate
from torch import Tensor, nn

from dkl_core.attacks import AdversarialWeightPerturbation, AttackSchedule
from dkl_train.averaging import CheckpointAverage, ema_model
from dkl_train.config import ConfigError, EpochConfig, chosen_methods, parse_config
from dkl_train.data import build_datasets, split_validation, validation_tensors
from dkl_train.distributed import synchronised_proxy
from dkl_train.errors import report_user_errors
from dkl_train.evaluation import evaluate
from dkl_train.optim import build_optimizer
from dkl_train.training import Run

METHODS = ADV_METHODS.names()  # the paper's column order


@dataclass
class AdvConfig(EpochConfig):
    """Settings of one adversarial-training run (``mse_weight``/``ce_weight``: the released scripts' beta/alpha)."""

    recipe: ClassVar[str] = "adv"
    components: ClassVar[dict] = {"method": ADV_METHODS}

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
    method: str = "ikl"  # ikl | gkl, or the baselines pgd_at | trades | lbgat, or your own file.py:Class
    model: str = "wrn_34_10"  # wrn_34_10 | wrn_28_10_silu | any dkl_train.models name (digits: resnet8)
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # architecture options for create_model
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
# One step


def build_method(config: AdvConfig) -> AdvMethod:
    """The config's method, built from its own settings."""
    return chosen_methods(config)["method"].from_config(config)


def step_loss(
    config: AdvConfig,
    method: AdvMethod,
    model: nn.Module,
    net: nn.Module,
    batch: dict[str, Tensor],
    schedule: AttackSchedule,
    awp: AdversarialWeightPerturbation | None,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Everything of one training step before ``backward``: attack, AWP perturbation, loss, class-prior update.

    ``model`` is what the optimiser trains (possibly DDP-wrapped), ``net`` the bare robust module sharing
    its parameters (attacks and AWP run on it); ``awp`` is ``None`` before the AWP warm-up. The caller
    runs backward and the optimiser step, then ``awp.restore()``.
    """
    x, y = batch["image"], batch["label"]
    view_weights: tuple[float, ...] = (1.0,)
    if "image_aug" in batch:  # AutoAugment: both views are attacked and trained on
        x, y, view_weights = torch.cat([x, batch["image_aug"]]), torch.cat([y, y]), (1.0, config.autoaug_weight)
    with autocast():
        x_adv = adversarial_images(config, net, x, y, schedule, method.prior)
    weights = method.weights(y)
    if awp is not None:
        # The proxy ascends the loss of the whole (possibly doubled) batch as one, unweighted: the
        # released AWP step does not split the views.
        with autocast():
            direction = awp.compute(lambda proxy: method.training_loss(proxy, x, x_adv, y, weights)[0])
        awp.perturb(direction)
    loss, terms, t = method.training_loss(model, x, x_adv, y, weights, view_weights)
    if t is not None:
        basic = slice(0, y.shape[0] // len(view_weights))  # the class prior sees the basic view only (as released)
        method.observe(t[basic].detach().float(), y[basic])
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

    method = build_method(config)
    model = method.build(create_model(config.model, spec.num_classes, **config.model_kwargs), spec.num_classes)
    optimizer = build_optimizer(config, model.parameters())
    model, optimizer = run.prepare(model, optimizer)
    trained = run.accelerator.unwrap_model(model)  # shares the parameters
    net = method.robust(trained)  # the robust model: attacks, AWP, averages work on it
    train_loader, test_loader = run.train_loader(train_set), run.eval_loader(test_set)

    method.attach(run.device, spec.num_classes)
    ema = ema_model(net, config.ema_decay) if config.ema_decay > 0 else None
    average = CheckpointAverage(config.average_new_weight) if config.checkpoint_average else None
    for state in (*method.state(), ema, average):  # this order is the checkpoints' format
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
                config, method, model, net, batch, schedule, awp if awp_on else None, run.accelerator.autocast
            )

        def after_step() -> None:
            if awp is not None and awp.perturbed:
                awp.restore()  # keeps the optimiser's update, removes exactly the perturbation
            if ema is not None:
                ema.update_parameters(net)

        metrics = run.train_epoch(model, optimizer, train_loader, compute_loss, epoch, after_step=after_step)
        metrics.update(attack_eps=schedule.eps, attack_steps=schedule.steps, attack_step_size=schedule.step_size)
        method.end_epoch()
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
    extra |= method.finish(trained, run, test_loader, spec.num_classes)
    return run.finish(extra=extra)


def main(argv: list[str] | None = None) -> None:
    config = parse_config(AdvConfig, argv, description=__doc__.splitlines()[0])
    with report_user_errors():
        train(config)


if __name__ == "__main__":
    main()
