"""Knowledge distillation with the DKL loss family: ce, kd, dkd, reviewkd, ikl, gkl (CIFAR-100, ImageNet, digits).

    accelerate launch recipes/kd/train.py --config recipes/kd/configs/cifar100_resnet32x4_resnet8x4_ikl.yaml

Methods (every loss from dkl-core; ``s``/``t`` student/teacher logits, ``y`` labels):

- ``ce``:  ``CE(s, y)`` -- trains a teacher, or a student alone.
- ``kd``:  ``label_ce_weight * CE + kd_weight * T^2 KL(t || s)`` (Hinton; mdistiller: 0.1 / 0.9, T = 4).
- ``dkd``: ``label_ce_weight * CE + ramp * DKD(tckd_weight, nckd_weight, T)`` (Zhao et al. 2022).
- ``reviewkd``: ``label_ce_weight * CE + ramp * reviewkd_weight * HCL(ABF(student features), teacher
  pre-ReLU features)`` (Chen et al. 2021): the ABF modules train with the student, are checkpointed with
  it and are not part of the exported ``model.pth``.
- ``ikl``: ``label_ce_weight * CE + ramp * (mse_weight * wMSE + ce_weight * sCE(T))`` with class weights
  ``prior[y]`` (``use_prior``, the paper's GI) or ``softmax(t / weight_temperature)``.
- ``gkl``: as ``ikl`` with ``prior[y] ** gamma`` and wMSE normalised by the weight mass (TPAMI).

``ramp = min(epoch / warmup_epochs, 1)`` with 1-based epochs, as in the released code (per epoch).
The teacher runs in eval mode under ``no_grad``; its test accuracy is reported before training. The
class prior accumulates ``softmax(t / weight_temperature)`` of every training sample, is all-reduced
over processes at the end of each epoch, used during the next one and saved in every checkpoint.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from torch import nn

from dkl_core import ClassPrior, dkd_loss, gkl_loss, hcl_loss, ikl_loss, kl_loss
from dkl_train.config import ConfigError, EpochConfig, parse_config
from dkl_train.data import build_datasets, load_prepared
from dkl_train.errors import UserError, report_user_errors
from dkl_train.evaluation import evaluate
from dkl_train.models import forward_features
from dkl_train.models.reviewkd import ReviewKDStudent, teacher_levels
from dkl_train.optim import build_optimizer
from dkl_train.training import Run

METHODS = ("ce", "kd", "dkd", "reviewkd", "ikl", "gkl")
TEACHER_TARBALL = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"


class TeacherError(UserError, RuntimeError):
    """The teacher cannot be used: missing checkpoint, or it does not fit the dataset (the message says why)."""


@dataclass
class KDConfig(EpochConfig):
    """Settings of one distillation run (``mse_weight``/``ce_weight`` are the released code's beta/alpha)."""

    recipe: ClassVar[str] = "kd"

    method: Literal["ce", "kd", "dkd", "reviewkd", "ikl", "gkl"] = "ikl"  # the training loss (see the module docstring)
    student: str = "resnet8x4"  # the model trained (with method=ce: the teacher being trained)
    student_kwargs: dict[str, Any] = field(default_factory=dict)  # architecture options for create_model
    teacher: str | None = "resnet32x4"  # the teacher's model name (not needed with method=ce)
    teacher_kwargs: dict[str, Any] = field(default_factory=dict)  # architecture options of the teacher
    teacher_checkpoint: str | None = None  # mdistiller format {"model": state_dict}, or our model.pth
    teacher_pretrained: bool = False  # timm:<name> teachers: timm's pretrained weights
    temperature: float = 4.0  # T of the KD / DKD / sCE terms
    label_ce_weight: float = 1.0  # weight of CE(student, labels)
    kd_weight: float = 0.9  # kd: weight of T^2 KL
    tckd_weight: float = 1.0  # dkd
    nckd_weight: float = 8.0  # dkd
    reviewkd_weight: float = 1.0  # reviewkd: weight of the HCL term (released REVIEWKD_WEIGHT)
    reviewkd_in_channels: list[int] = field(default_factory=list)  # reviewkd: student channels per level (IN_CHANNELS)
    reviewkd_out_channels: list[int] = field(default_factory=list)  # reviewkd: teacher channels per level
    reviewkd_shapes: list[int] = field(default_factory=list)  # reviewkd: student sizes, deepest level first (SHAPES)
    reviewkd_out_shapes: list[int] | None = None  # reviewkd: teacher sizes, deepest first (null: as reviewkd_shapes)
    reviewkd_student_preact: bool = False  # reviewkd: student features before their stage's final ReLU (STU_PREACT)
    mse_weight: float = 1.0  # ikl/gkl: wMSE weight (released code: beta)
    ce_weight: float = 1.0  # ikl/gkl: soft cross-entropy weight (released code: alpha)
    gamma: float = 1.0  # gkl: prior ** gamma
    compile_loss: bool = False  # ikl/gkl through torch.compile (fewer kernels on a GPU; compiles on the first step)
    use_prior: bool = False  # ikl/gkl: class-wise prior weights (GI); ignored by the other methods
    weight_temperature: float = 100.0  # T2: temperature of the weights / of the prior's softmax
    warmup_epochs: int = 20  # ramp of the distillation term (0 = none)
    evaluate_teacher: bool = True  # report the teacher's test accuracy before training
    paper_top1: float | None = None  # the paper's number this config should reproduce

    def validate(self) -> None:
        if self.method != "ce" and not self.teacher:
            raise ConfigError(f"method={self.method} needs a teacher (teacher=<model name>)")
        if self.method != "ce" and not self.teacher_checkpoint and not self.teacher_pretrained:
            raise ConfigError(
                f"method={self.method} needs teacher weights: teacher_checkpoint=PATH (mdistiller format) "
                "or teacher_pretrained=true for a timm:<name> teacher"
            )
        if self.teacher_checkpoint and self.teacher_pretrained:
            raise ConfigError(
                "teacher_checkpoint and teacher_pretrained=true both give the teacher's weights; keep one "
                "(e.g. teacher_pretrained=false teacher_checkpoint=PATH for a local copy of the timm teacher)"
            )
        if self.method == "reviewkd":
            self._validate_reviewkd()

    def _validate_reviewkd(self) -> None:
        lists = {
            "reviewkd_in_channels": self.reviewkd_in_channels,
            "reviewkd_out_channels": self.reviewkd_out_channels,
            "reviewkd_shapes": self.reviewkd_shapes,
        }
        if self.reviewkd_out_shapes is not None:
            lists["reviewkd_out_shapes"] = self.reviewkd_out_shapes
        if not self.reviewkd_in_channels or len({len(values) for values in lists.values()}) != 1:
            described = ", ".join(f"{name}={values}" for name, values in lists.items())
            raise ConfigError(
                f"method=reviewkd needs one entry per feature level in each of {', '.join(lists)}; got {described} "
                "(see recipes/kd/configs/*_reviewkd.yaml for each pair's settings)"
            )


# ----------------------------------------------------------------------------------------------
# Loss


def warmup_factor(config: KDConfig, epoch: int) -> float:
    """``min(epoch / warmup, 1)`` with mdistiller's 1-based epoch (``epoch`` here is 0-based)."""
    return min((epoch + 1) / config.warmup_epochs, 1.0) if config.warmup_epochs > 0 else 1.0


def distillation_loss(
    config: KDConfig,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    prior: ClassPrior,
    epoch: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss of ``config.method`` and its detached terms (for logging)."""
    ce = F.cross_entropy(student_logits, labels)
    if config.method == "ce":
        return ce, {"ce": ce.detach()}
    ramp = warmup_factor(config, epoch)
    if config.method == "kd":
        kd = kl_loss(student_logits, teacher_logits, temperature=config.temperature)
        term, weight = kd, config.kd_weight
    elif config.method == "dkd":
        term = dkd_loss(
            student_logits,
            teacher_logits,
            labels,
            tckd_weight=config.tckd_weight,
            nckd_weight=config.nckd_weight,
            temperature=config.temperature,
        )
        weight = 1.0
    else:
        weights = prior.weights(labels) if config.use_prior else None
        common = dict(
            mse_weight=config.mse_weight,
            ce_weight=config.ce_weight,
            temperature=config.temperature,
            weights=weights,
            weight_temperature=config.weight_temperature,
            compiled=config.compile_loss,
        )
        if config.method == "ikl":
            term = ikl_loss(student_logits, teacher_logits, **common)
        else:
            term = gkl_loss(student_logits, teacher_logits, gamma=config.gamma, **common)
        weight = 1.0
    loss = config.label_ce_weight * ce + ramp * weight * term
    return loss, {"ce": ce.detach(), config.method: term.detach()}


# ----------------------------------------------------------------------------------------------
# Models


def build_teacher(config: KDConfig, num_classes: int) -> nn.Module:
    """The frozen teacher in eval mode, with its weights loaded strictly; clear errors when it cannot be used."""
    from dkl_train.models import CheckpointMismatchError, create_model

    check_teacher_file(config)
    kwargs: dict[str, Any] = dict(config.teacher_kwargs)
    if config.teacher_pretrained:
        kwargs["pretrained"] = True
    try:
        teacher = create_model(config.teacher, num_classes, checkpoint=config.teacher_checkpoint, **kwargs)
    except CheckpointMismatchError as err:
        raise TeacherError(
            f"the teacher checkpoint {config.teacher_checkpoint} does not fit a {config.teacher} with "
            f"{num_classes} classes ({config.dataset}). A teacher trained on a dataset with another number of "
            f"classes, or another architecture, cannot teach this student; check `teacher` and `dataset`.\n{err}"
        ) from err
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


def check_teacher_file(config: KDConfig) -> None:
    """Fail before any work when the teacher checkpoint is missing, saying where to get mdistiller's teachers."""
    if config.method == "ce" or not config.teacher_checkpoint or Path(config.teacher_checkpoint).is_file():
        return
    raise TeacherError(
        f"teacher checkpoint {config.teacher_checkpoint} not found. The CIFAR-100 teachers are mdistiller's: "
        f"download {TEACHER_TARBALL} and unpack it with `mkdir -p data/teachers && tar xf cifar_teachers.tar "
        f"-C data/teachers` (gives data/teachers/cifar_teachers/<name>_vanilla/ckpt_epoch_240.pth). A digits "
        f"teacher comes from recipes/kd/configs/digits_teacher_resnet14_ce.yaml (its model.pth)."
    )


def check_class_counts(teacher: nn.Module, student: nn.Module, image_size: int, num_classes: int) -> None:
    """Teacher and student must predict the same ``num_classes`` classes (one dummy forward each)."""
    probe = torch.zeros(2, 3, image_size, image_size)
    with torch.no_grad():
        was_training = student.training
        student.eval()
        sizes = {"teacher": teacher(probe).shape[-1], "student": student(probe).shape[-1]}
        student.train(was_training)
    if len(set(sizes.values()) | {num_classes}) != 1:
        raise TeacherError(
            f"class-count mismatch: teacher predicts {sizes['teacher']} classes, student {sizes['student']}, "
            f"dataset {num_classes}. Use a teacher trained on the same dataset as the student."
        )


# ----------------------------------------------------------------------------------------------
# ReviewKD


def build_reviewkd(config: KDConfig, student: nn.Module, teacher: nn.Module, image_size: int) -> ReviewKDStudent:
    """The student with its ABF modules, checked against the teacher's levels with one dummy forward each."""
    model = ReviewKDStudent(
        student,
        config.reviewkd_in_channels,
        config.reviewkd_out_channels,
        config.reviewkd_shapes,
        config.reviewkd_out_shapes,
        student_preact=config.reviewkd_student_preact,
    )
    probe = torch.zeros(2, 3, image_size, image_size)
    with torch.no_grad():
        model.eval()
        try:
            fused = [tuple(f.shape[1:]) for f in model(probe)[1]]
        except RuntimeError as err:  # a channel count that does not fit the student's features
            raise ConfigError(
                f"reviewkd_in_channels {config.reviewkd_in_channels} / reviewkd_shapes {config.reviewkd_shapes} do "
                f"not fit {config.student}'s features at {image_size} px: {err}"
            ) from None
        model.train()
        targets = [tuple(f.shape[1:]) for f in teacher_levels(forward_features(teacher, probe)[1])]
    if fused != targets:
        raise ConfigError(
            f"ReviewKD's fused student features {fused} (channels, height, width; shallowest first) do not match "
            f"{config.teacher}'s levels {targets} at {image_size} px; set reviewkd_out_channels/reviewkd_out_shapes "
            "to the teacher's channels and sizes"
        )
    return model


def reviewkd_loss(
    config: KDConfig,
    model: nn.Module,
    targets: list[torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    epoch: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``label_ce_weight * CE + ramp * reviewkd_weight * HCL(ABF(student levels), targets)`` and its detached terms."""
    logits, fused = model(images)
    ce = F.cross_entropy(logits, labels)
    hcl = hcl_loss(fused, targets)
    loss = config.label_ce_weight * ce + warmup_factor(config, epoch) * config.reviewkd_weight * hcl
    return loss, {"ce": ce.detach(), "reviewkd": hcl.detach()}


# ----------------------------------------------------------------------------------------------
# One step's loss


def step_loss(
    config: KDConfig,
    trained: nn.Module,
    teacher: nn.Module | None,
    prior: ClassPrior,
    batch: dict[str, torch.Tensor],
    epoch: int,
    autocast: Callable[[], AbstractContextManager],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one batch, teacher forward included (what the training loop and the speed benchmark run).

    ``trained`` is the student, or for ``reviewkd`` the student with its ABFs; ``autocast`` the
    accelerator's autocast context factory.
    """
    images, labels = batch["image"], batch["label"]
    if config.method == "reviewkd":
        with torch.no_grad(), autocast():
            levels = teacher_levels(forward_features(teacher, images)[1])
        return reviewkd_loss(config, trained, levels, images, labels, epoch)
    teacher_logits = None
    if teacher is not None:
        with torch.no_grad(), autocast():
            teacher_logits = teacher(images).float()
        if config.use_prior and config.method in ("ikl", "gkl"):
            prior.update(teacher_logits, labels)
    return distillation_loss(config, trained(images), teacher_logits, labels, prior, epoch)


# ----------------------------------------------------------------------------------------------
# Training


def train(config: KDConfig) -> dict[str, Any]:
    """Run the whole recipe; returns the ``results.json`` payload."""
    from dkl_train.models import create_model

    # Everything that can fail on the user's input fails here, before a run folder is created.
    check_teacher_file(config)
    train_set, test_set, spec = build_datasets(config)
    set_seed(config.seed)  # the student's initial weights
    student = create_model(config.student, spec.num_classes, **config.student_kwargs)
    teacher = None
    if config.method != "ce":
        teacher = build_teacher(config, spec.num_classes)
        check_class_counts(teacher, student, spec.image_size, spec.num_classes)
    # What the optimiser trains: the student, plus ReviewKD's fusion modules (checkpointed with it, not exported).
    trained = build_reviewkd(config, student, teacher, spec.image_size) if config.method == "reviewkd" else student

    run = Run(config)
    if teacher is not None:
        run.place_model(teacher)  # not prepared: frozen, no gradients to synchronise

    optimizer = build_optimizer(config, trained.parameters())
    trained, optimizer = run.prepare(trained, optimizer)
    student = run.accelerator.unwrap_model(trained).student if config.method == "reviewkd" else trained
    train_loader, test_loader = run.train_loader(train_set), run.eval_loader(test_set)
    prior = ClassPrior(spec.num_classes, temperature=config.weight_temperature, device=run.device)
    run.register_for_checkpointing(prior)
    run.build_scheduler(optimizer, train_loader)  # registered last: the objects before keep their checkpoint files
    run.resume()

    extra: dict[str, Any] = {"method": config.method, "paper_top1": config.paper_top1}
    if teacher is not None and config.evaluate_teacher:
        extra["teacher"] = evaluate(teacher, test_loader, run.accelerator, progress="teacher")
        run.print(
            f"teacher {config.teacher}: top-1 {extra['teacher']['top1']:.2f}%, top-5 {extra['teacher']['top5']:.2f}%"
        )

    for epoch in run.periods():

        def compute_loss(batch: dict[str, torch.Tensor], epoch: int = epoch) -> tuple[torch.Tensor, dict]:
            return step_loss(config, trained, teacher, prior, batch, epoch, run.accelerator.autocast)

        metrics = run.train_epoch(trained, optimizer, train_loader, compute_loss, epoch)
        prior.end_epoch()  # all-reduced over processes; the prior of the next epoch
        evaluated = evaluate(student, test_loader, run.accelerator) if run.should_evaluate(epoch) else None
        run.end_epoch(epoch, metrics, evaluated)

    run.save_model(student, "model.pth", arch=config.student, num_classes=spec.num_classes)
    return run.finish(extra=extra)


def check_inputs(config: KDConfig) -> None:
    """The files a run needs exist: the teacher checkpoint and the prepared dataset (each error says what to do)."""
    check_teacher_file(config)
    load_prepared(config.dataset, config.data_dir)


def main(argv: list[str] | None = None) -> None:
    """``train.py --config FILE [key=value ...]``; with ``--check``, only verify the inputs (no training).

    ``make reproduce-kd`` runs ``--check`` first, without ``accelerate launch``, so that a missing
    teacher or dataset is reported as one clear message rather than under the launcher's traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    check_only = "--check" in argv
    config = parse_config(KDConfig, [a for a in argv if a != "--check"], description=__doc__.splitlines()[0])
    with report_user_errors():
        if check_only:
            check_inputs(config)
            teacher = f"teacher {config.teacher_checkpoint} and " if config.teacher_checkpoint else ""
            print(f"inputs in place: {teacher}dataset {config.dataset} in {config.data_dir}")
        else:
            train(config)


if __name__ == "__main__":
    main()
