"""Adversarial training with the DKL loss family: ikl, gkl (the papers), trades and pgd_at (baselines).

    accelerate launch recipes/adv/train.py --config recipes/adv/configs/cifar10_wrn34_ikl.yaml

Threat model: L-inf ball of radius ``eps`` around images in [0, 1] (no normalisation in the data
pipeline; a model may normalise internally). Methods (``t``/``s`` = logits of the natural and the
adversarial images, both carrying gradients; ``y`` = labels; every loss from dkl-core):

- ``ikl``:    ``CE(t, y) + mse_weight * wMSE(s, t; prior[y]) + ce_weight * sCE(s, t)`` (NeurIPS code).
- ``gkl``:    as ``ikl`` with ``prior[y] ** gamma`` and wMSE normalised by the weight mass (TPAMI code).
- ``trades``: ``CE(t, y) + trades_beta * KL(t || s)`` (Zhang et al. 2019).
- ``pgd_at``: ``CE(s, y)`` (Madry et al. 2018).

Each step: the attack of the epoch (``eps_t = eps * epoch / epochs`` with
the step budget ``budget``) runs with the model in eval mode on the attack loss (``attack_loss``:
``auto`` = sCE/KL alone for CIFAR-10 and digits, sCE + wMSE with prior weights for CIFAR-100, CE
for pgd_at); from epoch ``awp_warmup_epochs`` the weights are perturbed by AWP before the update
and restored after the optimiser step; the class prior accumulates ``softmax(t / prior_temperature)``
over the epoch (all-reduced at its end, used during the next, saved in every checkpoint).

Budgets (``budget``): ``high_as_released`` (default, *faithful*: what the released checkpoints were
trained with, 5 steps of ``eps_t / 2`` for the whole run, because a chain of ``if`` statements in
the released script makes its last branch win), ``high`` (what that script *intended*: 2/3/4/5
steps over the four quarters), ``low`` (2 steps of ``eps_t``), ``fixed`` (``attack_steps`` steps of
``attack_step_size``; the TRADES/Madry baselines, usually with ``eps_ramp: false``).

Augmentation: ``basic`` (crop + flip) or ``autoaug`` (a second view: crop, flip, then torchvision's
AutoAugment CIFAR-10 policy with grey fill; both views are attacked; natural CE over both views,
the augmented view's adversarial term weighted ``autoaug_weight``; class prior from the basic view).

Weight averaging: ``checkpoint_average`` reproduces how the released models were made, the
exponential average over per-epoch weights ``avg_i = 0.1 * theta_i + 0.9 * avg_{i-1}`` (BN buffers
included), kept as a running average so it needs no per-epoch checkpoints on disk; ``ema_decay > 0``
adds an in-loop EMA (the released scripts keep one with 0.9996 from 3/4 of the run; only the
TRADES script saves it). Both are saved
in checkpoints and written as ``model_avg.pth`` / ``model_ema.pth`` next to ``model.pth``;
``recompute_bn`` re-estimates their BN statistics on the natural training images.

Per-epoch validation: clean top-1 on the test set, and (opt-in, ``robust_val_size > 0``) clean +
PGD-20 accuracy on ``robust_val_size`` images held out of the *training* set (never the test set),
so robust overfitting shows up while it happens; the released runs train on all 50,000 images. Robustness claims come from ``recipes/adv/eval.py``
(AutoAttack).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
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
from dkl_train.averaging import ema_model, exponential_checkpoint_average, recompute_bn_statistics
from dkl_train.config import ConfigError, EpochConfig, parse_config
from dkl_train.data import TransformedDataset, build_datasets, build_transform
from dkl_train.training import Run, build_optimizer, evaluate

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
    prior_temperature: float = 4.0  # T of the class prior's softmax (the released scripts' --T)
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
# Data: inputs in [0, 1], the AutoAugment view, the held-out validation images


class TwoViews:
    """``{"image": basic view, "image_aug": AutoAugment view}`` of one PIL image (independent random draws)."""

    def __init__(self, basic: Callable[[Any], torch.Tensor], augmented: Callable[[Any], torch.Tensor]) -> None:
        self.basic, self.augmented = basic, augmented

    def __call__(self, image: Any) -> dict[str, torch.Tensor]:
        return {"image": self.basic(image), "image_aug": self.augmented(image)}


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
    return TwoViews(basic, autoaugment_view(basic))


def split_validation(train_set: TransformedDataset, size: int, seed: int = 0) -> tuple[TransformedDataset, Any]:
    """Hold ``size`` training images out (a fixed draw, independent of the run's seed) for robust validation.

    Returns the reduced training set and the held-out Hugging Face split.
    """
    if size <= 0:
        return train_set, None
    if size >= len(train_set):
        raise ConfigError(f"robust_val_size={size} leaves no training images (the training set has {len(train_set)})")
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed)).tolist()
    keep, held = sorted(order[size:]), sorted(order[:size])
    return train_set.select(keep), train_set.data.select(held)


def validation_tensors(held_out: Any, spec: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out images as one ``[N, 3, H, W]`` tensor in [0, 1] (test-time transform) and their labels."""
    dataset = TransformedDataset(held_out, build_transform(spec, train=False, normalize=False))
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([item["image"] for item in items]), torch.tensor([item["label"] for item in items])


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
    config: AdvConfig,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    schedule: AttackSchedule,
    prior: ClassPrior,
) -> torch.Tensor:
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


def robust_term(
    config: AdvConfig,
    natural_logits: torch.Tensor | None,
    adversarial_logits: torch.Tensor,
    labels: torch.Tensor,
    prior_weights: torch.Tensor | None,
) -> torch.Tensor:
    """The adversarial term of ``config.method``: ``trades_beta * KL``, the weighted ikl/gkl loss, or ``CE(s, y)``."""
    if config.method == "pgd_at":
        return F.cross_entropy(adversarial_logits.float(), labels)
    if config.method == "trades":
        return config.trades_beta * kl_loss(adversarial_logits, natural_logits)
    common = dict(
        mse_weight=config.mse_weight,
        ce_weight=config.ce_weight,
        temperature=1.0,
        weights=prior_weights,
        compiled=config.compile_loss,
    )
    if config.method == "ikl":
        return ikl_loss(adversarial_logits, natural_logits, **common)
    return gkl_loss(adversarial_logits, natural_logits, gamma=config.gamma, **common)


def robust_loss(
    config: AdvConfig,
    natural_logits: torch.Tensor | None,
    adversarial_logits: torch.Tensor,
    labels: torch.Tensor,
    prior_weights: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of ``config.method`` on one view, ``CE(t, y) + term`` (pgd_at: the term), and its detached terms."""
    term = robust_term(config, natural_logits, adversarial_logits, labels, prior_weights)
    if config.method == "pgd_at":
        return term, {"ce_adv": term.detach()}
    ce = F.cross_entropy(natural_logits.float(), labels)
    return ce + term, {"ce": ce.detach(), config.method: term.detach()}


def training_loss(
    config: AdvConfig,
    model: nn.Module,
    natural: torch.Tensor,
    adversarial: torch.Tensor,
    labels: torch.Tensor,
    prior_weights: torch.Tensor | None,
    halves: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
    """Forward passes and loss; returns ``(loss, terms, natural logits)``.

    The adversarial and the natural images go through separate forward passes, adversarial first as
    in the released code (BN batch statistics of each kind apart; in train mode the running
    statistics end each step on the natural batch). With ``halves == 2`` the batch holds the basic
    and the AutoAugment view, as released: the natural CE is the mean over the whole doubled batch,
    and only the adversarial term of the augmented half is weighted,
    ``CE(t, y) + term(basic) + autoaug_weight * term(augmented)`` (pgd_at: the weighted CE terms).
    """
    adversarial_logits = model(adversarial)
    natural_logits = None if config.method == "pgd_at" else model(natural)
    if halves == 1:
        loss, terms = robust_loss(config, natural_logits, adversarial_logits, labels, prior_weights)
        return loss, terms, natural_logits
    terms: dict[str, torch.Tensor] = {}
    total = None
    if natural_logits is not None:
        total = F.cross_entropy(natural_logits.float(), labels)
        terms["ce"] = total.detach()
    name = "ce_adv" if config.method == "pgd_at" else config.method
    for half, weight in enumerate((1.0, config.autoaug_weight)):
        part = slice(half * labels.shape[0] // 2, (half + 1) * labels.shape[0] // 2)
        term = robust_term(
            config,
            None if natural_logits is None else natural_logits[part],
            adversarial_logits[part],
            labels[part],
            None if prior_weights is None else prior_weights[part],
        )
        total = weight * term if total is None else total + weight * term
        terms[f"{name}{'_aug' if half else ''}"] = term.detach()
    return total, terms, natural_logits


def step_loss(
    config: AdvConfig,
    model: nn.Module,
    net: nn.Module,
    batch: dict[str, torch.Tensor],
    schedule: AttackSchedule,
    prior: ClassPrior,
    awp: AdversarialWeightPerturbation | None,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Everything of one training step before ``backward``: attack, AWP perturbation, loss, class-prior update.

    ``model`` is what the optimiser trains (possibly DDP-wrapped), ``net`` the bare module sharing its
    parameters (attacks and AWP run on it); ``awp`` is ``None`` before the AWP warm-up. The caller
    runs backward and the optimiser step, then ``awp.restore()``.
    """
    images, labels = batch["image"], batch["label"]
    halves = 1
    if "image_aug" in batch:  # AutoAugment: both views are attacked and trained on
        images, labels, halves = torch.cat([images, batch["image_aug"]]), torch.cat([labels, labels]), 2
    uses_prior = config.method in ("ikl", "gkl")
    with autocast():
        adversarial = adversarial_images(config, net, images, labels, schedule, prior)
    weights = prior.weights(labels) if uses_prior else None
    if awp is not None:
        # The proxy ascends the loss of the whole (possibly doubled) batch as one, unweighted: the
        # released AWP step does not split the views.
        with autocast():
            direction = awp.compute(
                lambda proxy: training_loss(config, proxy, images, adversarial, labels, weights, 1)[0]
            )
        awp.perturb(direction)
    loss, terms, natural_logits = training_loss(config, model, images, adversarial, labels, weights, halves)
    if uses_prior:
        basic = slice(0, labels.shape[0] // halves)  # the class prior sees the basic view only (as released)
        prior.update(natural_logits[basic].detach().float(), labels[basic])
    return loss, terms


# ----------------------------------------------------------------------------------------------
# Weight averaging and AWP helpers


class CheckpointAverage:
    """The released models' exponential average of per-epoch weights, kept as a running average.

    ``update`` after each epoch gives exactly :func:`dkl_train.averaging.exponential_checkpoint_average`
    over the per-epoch checkpoints (it is that function, applied one epoch at a time), without
    keeping every checkpoint on disk. Registered for checkpointing, so resuming continues it.
    """

    def __init__(self, new_weight: float = 0.1) -> None:
        self.new_weight = new_weight
        self.state: dict[str, torch.Tensor] | None = None
        self.epochs = 0

    def update(self, model: nn.Module) -> None:
        current = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        sources = [current] if self.state is None else [self.state, current]
        self.state = exponential_checkpoint_average(sources, new_weight=self.new_weight)
        self.epochs += 1

    def state_dict(self) -> dict[str, Any]:
        return {"new_weight": self.new_weight, "epochs": self.epochs, "state": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.new_weight, self.epochs, self.state = state["new_weight"], state["epochs"], state["state"]


def synchronised_proxy(model: nn.Module) -> nn.Module:
    """A scratch copy of ``model`` for AWP whose gradients are averaged over processes.

    TODO(dkl-core): ``AdversarialWeightPerturbation`` computes its direction from the local batch
    only; under several processes each would perturb differently. Averaging the proxy's gradients
    (as DDP does for the model) makes N processes perturb as one process does on the whole batch.
    """
    proxy = copy.deepcopy(model)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world = dist.get_world_size()

        def average(grad: torch.Tensor) -> torch.Tensor:
            grad = grad.clone()
            dist.all_reduce(grad)
            return grad / world

        for param in proxy.parameters():
            param.register_hook(average)
    return proxy


@torch.no_grad()
def average_bn_buffers(model: nn.Module, run: Run) -> None:
    """Make BN running statistics equal on every process (their mean) after a per-process re-estimate."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.copy_(run.accelerator.reduce(module.running_mean.clone(), reduction="mean"))
            module.running_var.copy_(run.accelerator.reduce(module.running_var.clone(), reduction="mean"))


# ----------------------------------------------------------------------------------------------
# Training


def train(config: AdvConfig) -> dict[str, Any]:
    """Run the whole recipe; returns the ``results.json`` payload."""
    from dkl_train.models import create_model

    run = Run(config)
    train_set, test_set, spec = build_datasets(config, normalize=False)
    train_set.transform = train_transform(config, spec)
    train_set, held_out = split_validation(train_set, config.robust_val_size)
    val_images, val_labels = validation_tensors(held_out, spec) if held_out is not None else (None, None)
    run.print(f"training on {len(train_set)} images, robust validation on {config.robust_val_size} held-out ones")

    model = create_model(config.model, spec.num_classes, **config.model_kwargs)
    optimizer = build_optimizer(config, model.parameters())
    model, optimizer = run.prepare(model, optimizer)
    net = run.accelerator.unwrap_model(model)  # shares the parameters; attacks and AWP work on it
    train_loader, test_loader = run.train_loader(train_set), run.eval_loader(test_set)

    prior = ClassPrior(spec.num_classes, temperature=config.prior_temperature, device=run.device)
    run.register_for_checkpointing(prior)
    ema = ema_model(net, config.ema_decay) if config.ema_decay > 0 else None
    if ema is not None:
        run.register_for_checkpointing(ema)
    average = CheckpointAverage(config.average_new_weight) if config.checkpoint_average else None
    if average is not None:
        run.register_for_checkpointing(average)
    awp = None
    if config.awp:
        awp = AdversarialWeightPerturbation(
            net, gamma=config.awp_gamma, lr=config.awp_lr or config.lr, proxy=synchronised_proxy(net)
        )
    run.resume()
    uses_prior = config.method in ("ikl", "gkl")

    for epoch in run.epochs():
        schedule = epoch_attack(config, epoch)
        awp_on = awp is not None and epoch + 1 >= config.awp_warmup_epochs

        def compute_loss(batch: dict[str, torch.Tensor], schedule: AttackSchedule = schedule, awp_on: bool = awp_on):
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
        if uses_prior:
            prior.end_epoch()  # all-reduced over processes; the prior of the next epoch
        if average is not None and epoch + 1 >= config.average_start_epoch:
            average.update(net)
        if val_images is not None and should_validate(config, epoch):
            metrics.update(robust_validation(config, net, val_images, val_labels))
        evaluated = evaluate(model, test_loader, run.accelerator) if run.should_evaluate(epoch) else None
        run.end_epoch(epoch, metrics, evaluated)

    extra = finish_weights(config, run, net, ema, average, train_loader, test_loader, val_images, val_labels, spec)
    return run.finish(extra=extra)


def should_validate(config: AdvConfig, epoch: int) -> bool:
    return epoch + 1 == config.epochs or (epoch + 1) % max(config.robust_val_every, 1) == 0


def robust_validation(
    config: AdvConfig, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """Clean and PGD-20 accuracy (%) on the held-out training images (every process calls it: a collective)."""
    result = robust_accuracy(
        model, images, labels, eps=config.eps, steps=config.robust_val_steps, batch_size=config.eval_batch_size
    )
    return {
        "val_clean_top1": 100.0 * result.clean_accuracy,
        f"val_pgd{config.robust_val_steps}_top1": 100.0 * result.robust_accuracy,
    }


def finish_weights(
    config: AdvConfig,
    run: Run,
    net: nn.Module,
    ema: nn.Module | None,
    average: CheckpointAverage | None,
    train_loader: Any,
    test_loader: Any,
    val_images: torch.Tensor | None,
    val_labels: torch.Tensor | None,
    spec: Any,
) -> dict[str, Any]:
    """Save the raw and averaged weights, evaluate the averaged ones (clean test, robust validation)."""
    meta = dict(arch=config.model, num_classes=spec.num_classes, model_kwargs=config.model_kwargs)
    run.save_model(net, MODEL_FILES["raw"], weights="raw", **meta)
    averaged: dict[str, nn.Module] = {}
    if average is not None and average.state is not None:
        model = copy.deepcopy(net)
        model.load_state_dict({k: v.to(dtype=model.state_dict()[k].dtype) for k, v in average.state.items()})
        averaged["checkpoint_average"] = model
    if ema is not None:
        averaged["ema"] = ema.module
    summary: dict[str, Any] = {}
    for label, model in averaged.items():
        if config.recompute_bn:
            recompute_bn_statistics(model, natural_batches(train_loader, config.recompute_bn_batches), run.device)
            average_bn_buffers(model, run)
        run.save_model(model, MODEL_FILES[label], weights=label, recompute_bn=config.recompute_bn, **meta)
        summary[label] = {f"test_{k}": v for k, v in evaluate(model, test_loader, run.accelerator).items()}
        if val_images is not None:
            summary[label].update(robust_validation(config, model, val_images, val_labels))
        run.print(f"{label}: " + ", ".join(f"{k}={v:.4g}" for k, v in summary[label].items()))
    robust_key = f"val_pgd{config.robust_val_steps}_top1"
    best = max(
        (h for h in run.state.history if robust_key in h), key=lambda h: h[robust_key], default=None
    )  # robust overfitting: the epoch with the best held-out PGD accuracy
    return {
        "method": config.method,
        "paper_clean": config.paper_clean,
        "paper_autoattack": config.paper_autoattack,
        "attack_loss": resolved_attack_loss(config),
        "weights": {"raw": MODEL_FILES["raw"], **{label: MODEL_FILES[label] for label in averaged}},
        "averaged": summary,
        "best_robust_validation": None if best is None else {"value": best[robust_key], "epoch": best["epoch"]},
    }


def natural_batches(loader: Any, limit: int) -> Any:
    """Natural (basic-view) training images, for re-estimating BN statistics."""
    for step, batch in enumerate(loader):
        if limit and step >= limit:
            return
        yield batch["image"]


def main(argv: list[str] | None = None) -> None:
    config = parse_config(AdvConfig, argv, description=__doc__.splitlines()[0])
    try:
        train(config)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
