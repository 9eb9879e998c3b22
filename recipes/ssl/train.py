"""Semi-supervised learning with the DKL loss family: FixMatch and MeanTeacher, original or IKL consistency (USB protocol).

    accelerate launch recipes/ssl/train.py --config recipes/ssl/configs/cifar100_200_fixmatch_ikl.yaml

Per iteration: a labeled batch ``(x, y)`` of ``batch_size`` images and an unlabeled batch of
``uratio * batch_size`` images, each seen as two views. The loss is
``CE(f(x), y) + unsup_weight * ramp * mean_b(mask_b * consistency_b)`` where the mean runs over the
*whole* unlabeled batch (masked samples count as zeros, as USB and the released DKL code do) and
``mask_b = [max softmax(t_b) >= p_cutoff]``.

- ``fixmatch``: ``t`` = logits of the weak view, ``s`` = logits of the strong view, one forward pass
  over ``[labeled, weak, strong]`` (USB's ``use_cat``).
  ``consistency=ce``: ``-sum_j q_j log softmax(s)_j`` with pseudo-label ``q`` chosen by ``pseudo_label``:
  ``soft`` (default) ``q = softmax(S(t))``, the weak view's probabilities unchanged, which is what the
  released FixMatch ran (its config names ``T: 0.5``, but it hands probabilities to a pseudo-label
  step that then skips the sharpening); ``sharpened`` ``q = softmax(S(t) / pseudo_temperature)``;
  ``hard`` the one-hot argmax (USB's stock FixMatch config).
- ``meanteacher``: ``t`` = logits of the EMA model (``ema_decay`` 0.999, under ``no_grad``) on one weak
  view, ``s`` = logits of the model on a second weak view (as USB: MeanTeacher's "strong" view is a
  weak one). ``consistency=mse``: ``mean_j (softmax(s)_j - softmax(S(t))_j)^2``. The mask is the DKL
  authors' addition (upstream USB has none). ``unsup_warmup`` is USB's linear ramp of the
  unsupervised weight over that fraction of the iterations; it defaults to 0 (no ramp), as the
  released MeanTeacher ran: its loss leaves the ramp factor commented out.
- ``consistency=ikl``: dkl-core's ``ikl_loss(s, t, reduction="none")`` per sample: ``mse_weight * wMSE
  + ce_weight * sCE(ikl_temperature)`` with weights ``softmax(t / weight_temperature)``. In FixMatch
  ``t`` is *not* detached (the weak and strong views share one forward pass, and the released code let
  the wMSE gradient reach both). ``detach_weights=false`` is what the released code ran (the gradient
  also flows through the weights) and what the paper numbers came from; ``true`` is the formula as
  the paper writes it.

The rest is USB's protocol: a seeded ``labels_per_class`` draw from the training set (every training
image stays in the unlabeled set), weak view = RandomCrop(pad 1/8, reflect) + flip, strong view = weak
+ USB's RandAugment (``randaugment_ops`` ops, each magnitude drawn over the op's whole range) + Cutout
(:class:`dkl_train.randaugment.USBRandAugment`), AdamW with layer-wise lr decay from timm's
optimizer factory, linear warm-up then USB's cosine (``cos(7 pi/16 * progress)``) per iteration, an
EMA of the weights evaluated next to the model every ``eval_every_iters`` iterations (best and last
test accuracy of both). Two additions USB's users asked for: ``val_per_class`` holds out a labeled
validation split (removed from the unlabeled set) and reports the test accuracy at the iteration the
validation accuracy selects; and the batch sizes are *global*, so N processes split every batch N
ways and run the same experiment N times faster (``batch_size`` must divide by N).

Iterations are grouped into *periods* of ``eval_every_iters``; :class:`~dkl_train.training.Run` sees
each period as one of its "epochs" (``epochs`` is derived), so its history, best metrics, checkpoints
(``checkpoints/epoch_XXXX`` = after period XXXX) and ``resume=true`` work unchanged. The data stream
is a pure function of ``(seed, iteration)``, so a resumed run continues exactly.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler
from torchvision.transforms import v2

from dkl_core import ikl_loss
from dkl_train.averaging import ema_model
from dkl_train.config import BaseConfig, ConfigError, parse_config
from dkl_train.data import (
    DatasetSpec,
    DeviceLoader,
    DeviceNormalize,
    ImageOutput,
    TransformedDataset,
    build_transform,
    ignore_stop_signals,
    labeled_subset_indices,
    load_splits,
    resolve_num_workers,
    sample_seed,
    tensor_steps,
)
from dkl_train.randaugment import USBRandAugment
from dkl_train.training import Run, evaluate

METHODS = ("fixmatch", "meanteacher")
# The consistency loss each method was published with, and the IKL replacement.
ORIGINAL_CONSISTENCY = {"fixmatch": "ce", "meanteacher": "mse"}
USB_CHECKPOINT_URL = "https://github.com/microsoft/Semi-supervised-learning/releases/download/v.0.0.0/vit_small_patch2_32_mlp_im_1k_32.pth"
# Seed offset of the unlabeled stream, so its augmentations never replay the labeled ones.
UNLABELED_SEED_OFFSET = 1_000_003


class PretrainedError(RuntimeError):
    """The pretrained backbone cannot be used: missing file, or weights that do not fit (the message says which)."""


@dataclass
class SSLConfig(BaseConfig):
    """One semi-supervised run, in iterations. Batch sizes are global; Run's ``epochs`` are derived (periods)."""

    recipe: ClassVar[str] = "ssl"

    method: Literal["fixmatch", "meanteacher"] = "fixmatch"  # the SSL algorithm
    consistency: Literal["ce", "mse", "ikl"] = "ce"  # ce: FixMatch's, mse: MeanTeacher's, ikl: dkl-core's
    model: str = "vit_small_patch2_32"  # the backbone (a dkl_train.models name)
    model_kwargs: dict[str, Any] = field(default_factory=lambda: {"drop_path_rate": 0.2})  # create_model options
    pretrained: str | None = None  # USB's vit_small_patch2_32_mlp_im_1k_32.pth (weights under "model")
    # --- data split ---
    labels_per_class: int = 2  # labeled training images per class
    val_per_class: int = 0  # held-out labeled validation images per class (0 = none, USB's protocol)
    uratio: int = 1  # unlabeled batch = uratio * batch_size
    # --- schedule (iterations, as USB) ---
    iterations: int = 204_800  # optimiser steps of the whole run
    eval_every_iters: int = 2_048  # iterations per period (evaluation and checkpoint)
    warmup_iters: int = 5_120  # linear learning-rate warm-up, in iterations
    lr_cycles: float = 7 / 16  # USB's cosine: lr * max(0, cos(pi * lr_cycles * progress))
    layer_decay: float | None = 0.5  # timm's layer-wise lr decay (null: one lr for every layer)
    stop_after_iters: int = 0  # stop (after a checkpoint) here without finishing: tests of resume
    # --- SSL losses ---
    unsup_weight: float = 1.0  # USB's ulb_loss_ratio
    # Linear ramp of unsup_weight over this fraction of the iterations: USB's MeanTeacher option (its
    # configs: 0.4); 0 = off, as the released MeanTeacher ran.
    unsup_warmup: float = 0.0
    p_cutoff: float = 0.95  # confidence mask threshold on the target's softmax
    # FixMatch ce targets: soft = softmax(t) (the released code), sharpened = softmax(t / pseudo_temperature),
    # hard = one-hot argmax (USB's stock config).
    pseudo_label: Literal["soft", "sharpened", "hard"] = "soft"
    pseudo_temperature: float = 0.5  # T of pseudo_label=sharpened (FixMatch's 0.5)
    ema_decay: float = 0.999  # EMA model (MeanTeacher's teacher; evaluated next to the model)
    # --- IKL consistency (dkl-core's names; released code: alpha = ce_weight, beta = mse_weight) ---
    mse_weight: float = 1.0  # ikl: wMSE weight (released code: beta)
    ce_weight: float = 1.0  # ikl: soft cross-entropy weight (released code: alpha)
    ikl_temperature: float = 1.0  # T of the sCE term
    weight_temperature: float = 1.0  # T2 of the weights softmax(t / T2)
    detach_weights: bool = False  # false: as the released code ran (paper numbers); true: the paper's formula
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
    checkpoint_every: int = 1  # evaluation periods between checkpoints (the last one is always saved)

    # Run's schedule, derived: its "epochs" are this recipe's evaluation periods of eval_every_iters iterations.
    @property
    def epochs(self) -> int:
        return math.ceil(self.iterations / self.eval_every_iters)

    @property
    def eval_every(self) -> int:
        return 1

    @property
    def stop_after_epochs(self) -> int:
        return self.stop_after_iters // self.eval_every_iters

    def validate(self) -> None:
        allowed = (ORIGINAL_CONSISTENCY[self.method], "ikl")
        if self.consistency not in allowed:
            raise ConfigError(
                f"method={self.method} takes consistency={' or '.join(allowed)}, not {self.consistency!r} "
                f"({ORIGINAL_CONSISTENCY[self.method]} is its published loss)"
            )
        if self.gradient_accumulation_steps != 1:
            raise ConfigError("the SSL recipe takes one optimiser step per iteration: gradient_accumulation_steps=1")
        for name in ("iterations", "eval_every_iters", "labels_per_class", "uratio", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.pseudo_temperature <= 0:
            raise ConfigError(f"pseudo_temperature must be > 0, got {self.pseudo_temperature}")
        if not 0.0 <= self.cutout <= 1.0:
            raise ConfigError(f"cutout is a fraction of the image width in [0, 1] (USB: 0.5), got {self.cutout}")
        if self.randaugment_ops < 0:
            raise ConfigError(f"randaugment_ops must be >= 0 (USB: 3), got {self.randaugment_ops}")
        if self.stop_after_iters and self.stop_after_iters % self.eval_every_iters:
            raise ConfigError(
                f"stop_after_iters={self.stop_after_iters} must be a multiple of eval_every_iters="
                f"{self.eval_every_iters} (checkpoints are written at the end of each period)"
            )


# ----------------------------------------------------------------------------------------------
# Data: the labeled/validation/unlabeled split, the views, an iteration-indexed sampler


@dataclass(frozen=True)
class Split:
    """Indices into the training split: labeled, held-out validation, unlabeled (USB keeps the labeled ones)."""

    labeled: list[int]
    validation: list[int]
    unlabeled: list[int]


def split_indices(labels: list[int], labels_per_class: int, val_per_class: int = 0, seed: int = 0) -> Split:
    """The seeded, class-balanced labeled draw, an optional validation draw from the rest, and the unlabeled set.

    Validation images are removed from the unlabeled set, so model selection never looks at an image
    the model trained on; the labeled images stay in it (USB's ``include_lb_to_ulb``).
    """
    labeled = labeled_subset_indices(labels, labels_per_class, seed=seed)
    validation: list[int] = []
    if val_per_class:
        taken = set(labeled)
        rest = [i for i in range(len(labels)) if i not in taken]
        picked = labeled_subset_indices([labels[i] for i in rest], val_per_class, seed=seed + 1)
        validation = [rest[i] for i in picked]
    held_out = set(validation)
    unlabeled = [i for i in range(len(labels)) if i not in held_out]
    return Split(labeled, validation, unlabeled)


def weak_transform(spec: DatasetSpec, *, output: ImageOutput = "float") -> v2.Compose:
    """USB's weak view: RandomCrop with reflect padding of 1/8 of the side (4 px at 32), horizontal flip.

    ``output="uint8"`` (training) leaves scaling and normalisation to the device (``DeviceNormalize``).
    """
    size = spec.image_size
    return v2.Compose(
        [
            v2.RandomCrop(size, padding=size // 8, padding_mode="reflect"),
            v2.RandomHorizontalFlip(),
            *tensor_steps(spec, output=output),
        ]
    )


def strong_transform(spec: DatasetSpec, config: SSLConfig, *, output: ImageOutput = "float") -> v2.Compose:
    """USB's strong view: the weak view's crop and flip, then USB's RandAugment and Cutout on the PIL image."""
    size = spec.image_size
    return v2.Compose(
        [
            v2.RandomCrop(size, padding=size // 8, padding_mode="reflect"),
            v2.RandomHorizontalFlip(),
            USBRandAugment(num_ops=config.randaugment_ops, cutout=config.cutout),
            *tensor_steps(spec, output=output),
        ]
    )


class TwoViews:
    """The transform of the unlabeled set: ``{"weak": ..., "strong": ...}`` drawn one after the other.

    MeanTeacher passes the weak transform twice (USB's MeanTeacher consistency compares two weak views).
    """

    def __init__(self, weak: Callable[[Any], torch.Tensor], strong: Callable[[Any], torch.Tensor]) -> None:
        self.weak = weak
        self.strong = strong

    def __call__(self, image: Any) -> dict[str, torch.Tensor]:
        return {"weak": self.weak(image), "strong": self.strong(image)}


class IterationSampler(Sampler):
    """This process's share of the keys of iterations ``[start, stop)`` of an endless shuffled stream.

    Position ``p`` of the stream (``global_batch`` positions per iteration) is sample
    ``perm_e[p % n]`` of pass ``e = p // n``, ``perm_e`` a permutation seeded by ``(seed, e)``; the key
    ``(e, index)`` seeds that sample's augmentation. Process ``r`` of ``R`` takes the ``r``-th slice of
    each iteration's global batch, so the union over processes is the one-process batch, for any ``R``
    and from any ``start`` (resume).
    """

    def __init__(
        self, length: int, global_batch: int, *, seed: int, start: int, stop: int, rank: int = 0, num_processes: int = 1
    ) -> None:
        if global_batch % num_processes:
            raise ValueError(f"global batch {global_batch} is not divisible by {num_processes} processes")
        self.length, self.global_batch, self.seed = length, global_batch, seed
        self.start, self.stop, self.rank = start, stop, rank
        self.local_batch = global_batch // num_processes
        self._pass, self._order = -1, None

    def __len__(self) -> int:
        return max(self.stop - self.start, 0) * self.local_batch

    def _key(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.length)
        if epoch != self._pass:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, 0))
            self._pass, self._order = epoch, torch.randperm(self.length, generator=generator).tolist()
        return epoch, self._order[offset]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for iteration in range(self.start, self.stop):
            first = iteration * self.global_batch + self.rank * self.local_batch
            for position in range(first, first + self.local_batch):
                yield self._key(position)


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
        second = weak if config.method == "meanteacher" else strong_transform(spec, config, output="uint8")
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


def iteration_loader(
    dataset: TransformedDataset, global_batch: int, run: Run, *, seed: int, start: int, stop: int
) -> DeviceLoader:
    """A loader that yields this process's part of the batches of iterations ``[start, stop)``, in order,
    copied to the device without blocking and normalised there."""
    accelerator = run.accelerator
    sampler = IterationSampler(
        len(dataset), global_batch, seed=seed, start=start, stop=stop,
        rank=accelerator.process_index, num_processes=accelerator.num_processes,
    )  # fmt: skip
    workers = resolve_num_workers(run.config.num_workers)
    loader = DataLoader(
        dataset,
        batch_size=sampler.local_batch,
        sampler=sampler,
        # A private generator: creating the iterator must not draw from the global RNG, whose state a
        # checkpoint restores (the model's stochastic depth reads it), or a resumed run would drift.
        generator=torch.Generator().manual_seed(seed),
        num_workers=workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers else None,
        worker_init_fn=ignore_stop_signals,  # pre-emption signals are the training process's to handle
    )
    return run.device_loader(loader, dataset, copy=True)


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

    Layer scales land in each group's ``lr_scale``, which :func:`~dkl_train.training.set_learning_rate` honours.
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


def learning_rate(config: SSLConfig, iteration: int) -> float:
    """USB's schedule at (0-based) ``iteration``: linear warm-up from 0, then ``max(0, cos(pi * cycles * progress))``."""
    if iteration < config.warmup_iters:
        return config.lr * iteration / max(1, config.warmup_iters)
    progress = (iteration - config.warmup_iters) / max(1, config.iterations - config.warmup_iters)
    return config.lr * max(0.0, math.cos(math.pi * config.lr_cycles * progress))


# ----------------------------------------------------------------------------------------------
# Losses


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
            temperature=config.ikl_temperature,
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


# ----------------------------------------------------------------------------------------------
# Training


def evaluate_both(model: nn.Module, ema: nn.Module, loader: Any, run: Run) -> dict[str, float]:
    """Top-1/top-5/loss of the model and, prefixed ``ema_``, of its EMA, on one prepared loader."""
    metrics = {k: v for k, v in evaluate(model, loader, run.accelerator).items() if k != "samples"}
    ema_metrics = evaluate(ema, loader, run.accelerator)
    metrics |= {f"ema_{k}": v for k, v in ema_metrics.items() if k != "samples"}
    return metrics


def selected_by_validation(history: list[dict[str, Any]], key: str = "val_ema_top1") -> dict[str, Any] | None:
    """The test metrics of the evaluation with the best validation ``key`` (first one on ties)."""
    scored = [h for h in history if key in h]
    if not scored:
        return None
    best = max(scored, key=lambda h: h[key])  # max keeps the first of equal values
    picked = {k: v for k, v in best.items() if k.startswith("test_")}
    return {"selected_on": key, key: best[key], "iteration": best["global_step"], **picked}


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
    teacher = ema.module if config.method == "meanteacher" else None
    if teacher is not None:
        teacher.train()  # USB's teacher forward runs in train mode (stochastic depth on), without gradients

    for period in run.epochs():
        begin, end = period * config.eval_every_iters, min((period + 1) * config.eval_every_iters, config.iterations)
        metrics = _train_period(config, run, model, ema, teacher, optimizer, streams, begin, end)
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


def _train_period(
    config: SSLConfig,
    run: Run,
    model: nn.Module,
    ema: nn.Module,
    teacher: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    streams: Iterator[tuple[dict[str, Any], dict[str, Any]]],
    begin: int,
    end: int,
) -> dict[str, Any]:
    """Iterations ``[begin, end)`` through Run's loop, with USB's lr per iteration and an EMA update per step."""
    accelerator = run.accelerator
    unwrapped = accelerator.unwrap_model(model)

    def batches(done: int) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        # The streams are positioned at the run's global step (``iteration_loader(start=...)``), so the next
        # ``end - begin - done`` pairs are this period's remaining iterations, resumed or not.
        return itertools.islice(streams, end - begin - done)

    def compute_loss(pair: tuple[dict[str, Any], dict[str, Any]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labeled, unlabeled = pair  # on the device, normalised (iteration_loader)
        with accelerator.autocast():
            return ssl_loss(config, model, teacher, labeled, unlabeled, run.state.global_step)

    metrics = run.train_steps(
        model, optimizer, batches, compute_loss, begin // config.eval_every_iters,
        total=end - begin,
        lr_at_step=lambda iteration: learning_rate(config, iteration),
        after_step=lambda: ema.update_parameters(unwrapped),
        images_in=lambda pair: pair[0]["label"].shape[0] + pair[1]["label"].shape[0],
    )  # fmt: skip
    images_per_iteration = config.batch_size * (1 + config.uratio)  # labeled + unlabeled, over all processes
    metrics["iterations_per_s"] = metrics["images_per_s"] / images_per_iteration
    return metrics


def main(argv: list[str] | None = None) -> None:
    config = parse_config(SSLConfig, argv, description=__doc__.splitlines()[0])
    try:
        train(config)
    except (PretrainedError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
