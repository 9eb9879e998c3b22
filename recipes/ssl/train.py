"""Semi-supervised learning with the DKL loss family: FixMatch and MeanTeacher, original or IKL consistency (USB protocol).

    accelerate launch recipes/ssl/train.py --config recipes/ssl/configs/cifar100_200_fixmatch_ikl.yaml

Per iteration: a labeled batch ``(x, y)`` of ``batch_size`` images and an unlabeled batch of
``uratio * batch_size`` images, each seen as two views. The methods (``fixmatch``, ``meanteacher``) and
their consistency losses (``ce``, ``mse``, ``ikl``) are classes in :mod:`dkl_recipe_ssl.methods` (the loss,
the targets, the settings of each); your own: ``method=my_methods.py:MyMethod`` (a subclass of
:class:`dkl_recipe_ssl.methods.SSLMethod`) or ``consistency=...:MyLoss`` (of ``Consistency``).

The rest is USB's protocol (README.md has each setting against the released code): a seeded
``labels_per_class`` draw (every training image stays unlabeled too; ``val_per_class`` holds out a
labeled validation split), weak view = RandomCrop(pad 1/8, reflect) + flip, strong view = weak + USB's
RandAugment + Cutout, AdamW with timm's layer-wise lr decay, warm-up then USB's cosine per iteration,
an EMA of the weights evaluated next to the model every ``eval_every_iters`` iterations. Batch sizes are
global. Training runs in :meth:`~dkl_train.training.Run.train_steps`, the loop of every recipe, one
evaluation period (``run.plan``) at a time; the data stream is a pure function of ``(seed, iteration)``
(:mod:`dkl_train.iterations`), so 2 processes equal 1 and a resumed run continues exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from dkl_recipe_ssl.methods import CONSISTENCIES, SSL_METHODS, SSLMethod
from torch import nn

from dkl_train.averaging import ema_model
from dkl_train.config import ConfigError, IterationConfig, chosen_methods, parse_config
from dkl_train.data import (
    DatasetSpec,
    DeviceNormalize,
    TransformedDataset,
    TwoViews,
    build_transform,
    load_splits,
)
from dkl_train.errors import UserError, report_user_errors
from dkl_train.evaluation import evaluate
from dkl_train.iterations import Split, iteration_loader, split_indices
from dkl_train.randaugment import strong_transform, weak_transform
from dkl_train.results import selected_by_validation
from dkl_train.training import Run

METHODS = SSL_METHODS.names()  # the paper's column order
USB_CHECKPOINT_URL = "https://github.com/microsoft/Semi-supervised-learning/releases/download/v.0.0.0/vit_small_patch2_32_mlp_im_1k_32.pth"
# Seed offset of the unlabeled stream, so its augmentations never replay the labeled ones.
UNLABELED_SEED_OFFSET = 1_000_003


class PretrainedError(UserError, RuntimeError):
    """The pretrained backbone cannot be used: missing file, or weights that do not fit (the message says which)."""


@dataclass
class SSLConfig(IterationConfig):
    """One semi-supervised run, in iterations. Batch sizes are global; Run counts periods of ``eval_every_iters``."""

    recipe: ClassVar[str] = "ssl"
    components: ClassVar[dict] = {"method": SSL_METHODS, "consistency": CONSISTENCIES}

    method: str = "fixmatch"  # the SSL algorithm: fixmatch | meanteacher, or your own file.py:Class
    consistency: str = "ce"  # ce: FixMatch's, mse: MeanTeacher's, ikl: dkl-core's, or your own file.py:Class
    model: str = "vit_small_patch2_32"  # the backbone (a dkl_train.models name)
    model_kwargs: dict[str, Any] = field(default_factory=lambda: {"drop_path_rate": 0.2})  # create_model options
    pretrained: str | None = None  # USB's vit_small_patch2_32_mlp_im_1k_32.pth (weights under "model")
    # --- data split ---
    labels_per_class: int = 2  # labeled training images per class
    val_per_class: int = 0  # held-out labeled validation images per class (0 = none, USB's protocol)
    uratio: int = 1  # unlabeled batch = uratio * batch_size
    layer_decay: float | None = 0.5  # timm's layer-wise lr decay (null: one lr for every layer)
    ema_decay: float = 0.999  # EMA model (MeanTeacher's teacher; evaluated next to the model)
    # --- strong augmentation: USB's RandAugment (each op's magnitude drawn over its whole range) + Cutout ---
    randaugment_ops: int = 3  # ops per image, drawn with replacement (USB: 3)
    cutout: float = 0.5  # Cutout side U(0, cutout) x the image width, always applied (USB: 0.5; 0: none)
    paper_top1: float | None = None  # the paper's number this config should reproduce
    # --- BaseConfig defaults for this recipe ---
    dataset: str = "cifar100"
    batch_size: int = 8  # labeled images per iteration (global)
    eval_batch_size: int = 256
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 5e-4
    weight_decay: float = 5e-4
    log_every: int = 256

    def validate(self) -> None:
        super().validate()
        for name in ("labels_per_class", "uratio"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.cutout <= 1.0:
            raise ConfigError(f"cutout is a fraction of the image width in [0, 1] (USB: 0.5), got {self.cutout}")
        if self.randaugment_ops < 0:
            raise ConfigError(f"randaugment_ops must be >= 0 (USB: 3), got {self.randaugment_ops}")


# ----------------------------------------------------------------------------------------------
# Data: the labeled/validation/unlabeled split, the views, an iteration-indexed sampler


@dataclass
class SSLData:
    """Everything the loop reads: the three training sets, the evaluation sets, the split and the dataset spec."""

    labeled: TransformedDataset
    unlabeled: TransformedDataset
    validation: TransformedDataset | None
    test: TransformedDataset
    split: Split
    spec: DatasetSpec


def build_data(config: SSLConfig) -> SSLData:
    """Load the prepared dataset and build the labeled, unlabeled, validation and test sets with their views.

    Every view ends in ``uint8``; the loaders normalise the batches on the device.
    """
    train, test, spec = load_splits(config)
    split = split_indices(list(train["label"]), config.labels_per_class, config.val_per_class, config.seed)
    evaluation = build_transform(spec, train=False, output="uint8")
    if config.augment:
        weak = weak_transform(spec, output="uint8")
        second = (
            weak
            if chosen_methods(config)["method"].second_view == "weak"
            else strong_transform(spec, num_ops=config.randaugment_ops, cutout=config.cutout, output="uint8")
        )
    else:  # exactness tests: no randomness in the data at all
        weak = second = evaluation
    normalise = DeviceNormalize.for_spec(spec)
    return SSLData(
        labeled=TransformedDataset(train.select(split.labeled), weak, seed=config.seed, batch_transform=normalise),
        unlabeled=TransformedDataset(
            train.select(split.unlabeled),
            TwoViews(weak, second),
            seed=config.seed + UNLABELED_SEED_OFFSET,
            batch_transform=normalise,
        ),
        validation=(
            TransformedDataset(train.select(split.validation), evaluation, batch_transform=normalise)
            if split.validation
            else None
        ),
        test=TransformedDataset(test, evaluation, batch_transform=normalise),
        split=split,
        spec=spec,
    )


# ----------------------------------------------------------------------------------------------
# Model and optimiser


def build_model(config: SSLConfig, num_classes: int, log: Callable[[str], None] = print) -> nn.Module:
    """The backbone, with USB's pretrained weights when ``pretrained`` is set (head dropped, pos-embed resized).

    Raises :class:`PretrainedError` when the file is missing or does not fit (every mismatching key named).
    """
    from pathlib import Path

    from dkl_train.models import CheckpointMismatchError, create_model, load_checkpoint

    if config.pretrained and not Path(config.pretrained).is_file():
        raise PretrainedError(
            f"pretrained file {config.pretrained} not found. USB's ImageNet-pretrained ViT-S/2 is "
            f"{USB_CHECKPOINT_URL}; download it once (e.g. into data/pretrained/) and pass pretrained=PATH."
        )
    model = create_model(config.model, num_classes, **config.model_kwargs)
    if config.pretrained:
        try:
            report = load_checkpoint(model, config.pretrained, fmt="usb")
        except CheckpointMismatchError as err:
            raise PretrainedError(
                f"{config.pretrained} does not fit {config.model} (expected USB's vit_small_patch2_32 layout: "
                f"weights under 'model', timm VisionTransformer names): {err}"
            ) from err
        log(f"pretrained backbone: {report.summary()}")
    return model


def build_optimizer(config: SSLConfig, model: nn.Module) -> torch.optim.Optimizer:
    """timm's factory: no weight decay on biases/norms/``no_weight_decay()`` names, optional layer-wise lr decay.

    Layer scales land in each group's ``lr_scale``, which the run's scheduler (:class:`~dkl_train.optim.StepScheduler`) honours.
    """
    from timm.optim import create_optimizer_v2

    kwargs: dict[str, Any] = (
        {"momentum": config.momentum, "nesterov": config.nesterov} if config.optimizer == "sgd" else {}
    )
    return create_optimizer_v2(
        model,
        config.optimizer,
        lr=config.lr,
        weight_decay=config.weight_decay,
        layer_decay=config.layer_decay,
        **kwargs,
    )


# ----------------------------------------------------------------------------------------------
# Training


def build_method(config: SSLConfig, teacher: nn.Module | None = None) -> SSLMethod:
    """The config's method with its consistency loss, each built from its own settings; ``teacher``: the EMA model."""
    chosen = chosen_methods(config)
    method = chosen["method"].from_config(config)
    method.attach(chosen["consistency"].from_config(config), teacher, config.iterations)
    return method


def evaluate_both(model: nn.Module, ema: nn.Module, loader: Any, run: Run) -> dict[str, float]:
    """Top-1/top-5/loss of the model and, prefixed ``ema_``, of its EMA, on one prepared loader."""
    metrics = {k: v for k, v in evaluate(model, loader, run.accelerator).items() if k != "samples"}
    ema_metrics = evaluate(ema, loader, run.accelerator)
    metrics |= {f"ema_{k}": v for k, v in ema_metrics.items() if k != "samples"}
    return metrics


def train(config: SSLConfig) -> dict[str, Any]:
    """Run the whole recipe; returns the ``results.json`` payload (``{}`` when stopped by ``stop_after_iters``)."""
    run = Run(config)
    accelerator = run.accelerator
    data = build_data(config)
    model = build_model(config, data.spec.num_classes, log=run.print)
    optimizer = build_optimizer(config, model)
    model, optimizer = run.prepare(model, optimizer)
    ema = ema_model(accelerator.unwrap_model(model), config.ema_decay)
    run.register_for_checkpointing(ema)
    run.build_scheduler(optimizer)  # USB's warm-up + cosine per iteration, over timm's layer-wise scales
    run.resume()
    test_loader = run.eval_loader(data.test)
    val_loader = run.eval_loader(data.validation) if data.validation is not None else None

    start = run.state.global_step
    stop = min(config.stop_after_iters or config.iterations, config.iterations)
    unlabeled_batch = config.uratio * config.batch_size
    streams = zip(
        iteration_loader(data.labeled, config.batch_size, run, seed=config.seed, start=start, stop=stop),
        iteration_loader(data.unlabeled, unlabeled_batch, run, seed=config.seed + 1, start=start, stop=stop),
    )
    run.print(
        f"{config.method}/{config.consistency}: {len(data.split.labeled)} labeled, {len(data.split.unlabeled)} "
        f"unlabeled, {len(data.split.validation)} validation images; iterations {start}..{stop} of "
        f"{config.iterations}, {accelerator.num_processes} process(es) x {config.batch_size // accelerator.num_processes}"
        f"+{unlabeled_batch // accelerator.num_processes} images"
    )
    method = build_method(config, teacher=ema.module)

    def compute_loss(pair: tuple[dict[str, Any], dict[str, Any]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labeled, unlabeled = pair  # on the device, normalised (iteration_loader)
        with accelerator.autocast():
            return method.loss(model, labeled, unlabeled, run.state.global_step)

    unwrapped = accelerator.unwrap_model(model)
    # Periods of eval_every_iters iterations, an EMA update per step.
    for period in run.periods():
        steps = len(run.plan.step_range(period))
        # The streams stand at the run's global step, so the next steps - done pairs finish the period.
        metrics = run.train_steps(
            model, optimizer, lambda done, n=steps: itertools.islice(streams, n - done), compute_loss, period,
            total=steps,
            after_step=lambda: ema.update_parameters(unwrapped),
            images_in=lambda pair: pair[0]["label"].shape[0] + pair[1]["label"].shape[0],
        )  # fmt: skip
        metrics["iterations_per_s"] = metrics["images_per_s"] / (config.batch_size * (1 + config.uratio))
        evaluated = evaluate_both(model, ema.module, test_loader, run)
        if val_loader is not None:
            metrics |= {f"val_{k}": v for k, v in evaluate_both(model, ema.module, val_loader, run).items()}
        run.end_epoch(period, metrics, evaluated)

    if run.state.global_step < config.iterations:
        run.print(f"stopped after iteration {run.state.global_step} (stop_after_iters); continue with resume=true")
        accelerator.end_training()
        return {}
    num_classes = data.spec.num_classes
    run.save_model(model, "model.pth", arch=config.model, num_classes=num_classes)
    run.save_model(ema.module, "model_ema.pth", arch=config.model, num_classes=num_classes)
    state = run.state
    extra = {
        "method": config.method,
        "consistency": config.consistency,
        "paper_top1": config.paper_top1,
        "iterations": state.global_step,
        "iterations_per_s": state.global_step / state.train_seconds if state.train_seconds else None,
        "split": {
            "labeled": len(data.split.labeled),
            "validation": len(data.split.validation),
            "unlabeled": len(data.split.unlabeled),
            "labeled_indices": data.split.labeled,
        },
        "selected": selected_by_validation(state.history),
    }
    return run.finish(extra=extra)


def main(argv: list[str] | None = None) -> None:
    config = parse_config(SSLConfig, argv, description=__doc__.splitlines()[0])
    with report_user_errors():
        train(config)


if __name__ == "__main__":
    main()
