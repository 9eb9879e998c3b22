"""The knowledge-distillation methods: one class each, registered in :data:`KD_METHODS` in the paper's column order.

``s``/``t`` are the student's and the teacher's logits, ``y`` the labels; every loss comes from dkl-core.

- ``ce``:  ``CE(s, y)`` -- trains a teacher, or a student alone.
- ``kd``:  ``label_ce_weight * CE + ramp * kd_weight * T^2 KL(t || s)`` (Hinton; mdistiller: 0.1 / 0.9, T = 4).
- ``dkd``: ``label_ce_weight * CE + ramp * DKD(tckd_weight, nckd_weight, T)`` (Zhao et al. 2022).
- ``reviewkd``: ``label_ce_weight * CE + ramp * reviewkd_weight * HCL(ABF(student features), teacher
  pre-ReLU features)`` (Chen et al. 2021): the ABF modules train with the student, are checkpointed with
  it and are not part of the exported ``model.pth``. Its settings after ``reviewkd_student_preact`` select what
  the original ReviewKD code does unlike mdistiller's (post-ReLU teacher taps, the ABF width, a teacher left in
  train mode, a ramp counted from epoch 0: the ``*_reviewkd_original.yaml`` configs).
- ``ikl``: ``label_ce_weight * CE + ramp * (mse_weight * wMSE + ce_weight * sCE(T))`` with class weights
  ``prior[y]`` (``use_prior``, the paper's GI) or ``softmax(t / weight_temperature)``.
- ``gkl``: as ``ikl`` with ``prior[y] ** gamma`` and wMSE normalised by the weight mass (TPAMI).

``ramp = min(epoch / warmup_epochs, 1)`` with 1-based epochs, as in the released code (per epoch).
The teacher runs in eval mode under ``no_grad``. The class prior (``ikl``/``gkl`` with ``use_prior``)
accumulates ``softmax(t / weight_temperature)`` of every training sample, is all-reduced over processes
at the end of each epoch, used during the next one and saved in every checkpoint.

A method's life in ``train.py``: built from its settings; :meth:`KDMethod.check_inputs` before any work;
:meth:`KDMethod.build` (the module the optimiser trains: the student, plus e.g. ReviewKD's ABFs);
:meth:`KDMethod.attach` (device, autocast); :meth:`KDMethod.state` registered for checkpointing;
per epoch :meth:`KDMethod.start_epoch`, :meth:`KDMethod.loss` per micro-batch, :meth:`KDMethod.end_epoch`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dkl_core import ClassPrior, dkd_loss, gkl_loss, hcl_loss, ikl_loss, kl_loss
from dkl_train.config import ConfigError
from dkl_train.errors import UserError
from dkl_train.methods import Method, Registry
from dkl_train.models import forward_features
from dkl_train.models.reviewkd import ReviewKDStudent, teacher_levels
from dkl_train.specs import DatasetSpec

TEACHER_TARBALL = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"
Batch = dict[str, Tensor]
Autocast = Callable[[], AbstractContextManager]  # the accelerator's autocast context factory
Place = Callable[[nn.Module], nn.Module] | None  # moves a module that is not prepared (the teacher) to the device


class TeacherError(UserError, RuntimeError):
    """The teacher cannot be used: missing checkpoint, or it does not fit the dataset (the message says why)."""


class KDMethod(Method):
    """How a KD student learns. Subclass it (and register it, or pass ``method=file.py:Class``) for a new method."""

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.epoch = 0
        self.autocast: Autocast = contextlib.nullcontext

    @property
    def term_name(self) -> str:
        """The name of this method's loss term in logs and ``results.json``."""
        return type(self).name or type(self).__name__.lower()

    def check_inputs(self) -> None:
        """Fail before any work when a file the method needs is missing (each error says what to do)."""

    def build(self, student: nn.Module, spec: DatasetSpec, *, teacher: nn.Module | None = None) -> nn.Module:
        """The module the optimiser trains (the student, or the student with the method's own modules)."""
        return student

    def attach(self, device: torch.device, autocast: Autocast = contextlib.nullcontext, place: Place = None) -> None:
        """Move what the method keeps beside the trained module (teacher, class prior) to ``device``."""
        self.autocast = autocast

    def state(self) -> list[Any]:
        """Objects with ``state_dict``/``load_state_dict`` saved in every checkpoint (e.g. the class prior)."""
        return []

    def student(self, trained: nn.Module) -> nn.Module:
        """The student inside the (unwrapped) trained module: what is evaluated and exported as ``model.pth``."""
        return trained

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def end_epoch(self) -> None:
        """After the epoch's last step (every process)."""

    def results(self, evaluate: Callable[[nn.Module], dict[str, float]], log: Callable[[str], None]) -> dict[str, Any]:
        """Entries for ``results.json`` known before training (e.g. the teacher's accuracy)."""
        return {}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss of one micro-batch and its detached terms (for logging)."""
        raise NotImplementedError


KD_METHODS: Registry[KDMethod] = Registry(KDMethod)


@KD_METHODS.register
class CrossEntropy(KDMethod):
    """``CE(s, y)``: trains a teacher, or a student without one."""

    name = "ce"

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        ce = F.cross_entropy(model(batch["image"]), batch["label"])
        return ce, {"ce": ce.detach()}


@dataclass
class TeacherSettings:
    """What every distillation method reads: the teacher, the label CE and the ramp of the distillation term."""

    teacher: str = "resnet32x4"  # the teacher's model name
    teacher_kwargs: dict[str, Any] = field(default_factory=dict)  # architecture options of the teacher
    teacher_checkpoint: str | None = None  # mdistiller format {"model": state_dict}, or our model.pth
    teacher_pretrained: bool = False  # timm:<name> teachers: timm's pretrained weights
    evaluate_teacher: bool = True  # report the teacher's test accuracy before training
    label_ce_weight: float = 1.0  # weight of CE(student, labels)
    warmup_epochs: int = 20  # ramp of the distillation term (0 = none)


class Distiller(KDMethod):
    """A method with a frozen teacher: ``label_ce_weight * CE(s, y) + ramp * weight * term(s, t, y)``.

    Subclasses give :meth:`distill` (the term and its weight), or override :meth:`loss` entirely.
    """

    Settings = TeacherSettings

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.teacher: nn.Module | None = None

    @classmethod
    def check(cls, config: Any) -> None:
        method = config.method
        if not config.teacher:
            raise ConfigError(f"method={method} needs a teacher (teacher=<model name>)")
        if not config.teacher_checkpoint and not config.teacher_pretrained:
            raise ConfigError(
                f"method={method} needs teacher weights: teacher_checkpoint=PATH (mdistiller format) "
                "or teacher_pretrained=true for a timm:<name> teacher"
            )
        if config.teacher_checkpoint and config.teacher_pretrained:
            raise ConfigError(
                "teacher_checkpoint and teacher_pretrained=true both give the teacher's weights; keep one "
                "(e.g. teacher_pretrained=false teacher_checkpoint=PATH for a local copy of the timm teacher)"
            )

    def check_inputs(self) -> None:
        check_teacher_file(self.settings.teacher_checkpoint)

    def build(self, student: nn.Module, spec: DatasetSpec, *, teacher: nn.Module | None = None) -> nn.Module:
        self.teacher = build_teacher(self.settings, spec) if teacher is None else teacher
        check_class_counts(self.teacher, student, spec.image_size, spec.num_classes)
        return student

    def attach(self, device: torch.device, autocast: Autocast = contextlib.nullcontext, place: Place = None) -> None:
        super().attach(device, autocast, place)
        # Not prepared by Accelerate: frozen, no gradients to synchronise.
        self.teacher = place(self.teacher) if place is not None else self.teacher.to(device)

    def results(self, evaluate: Callable[[nn.Module], dict[str, float]], log: Callable[[str], None]) -> dict[str, Any]:
        if not self.settings.evaluate_teacher:
            return {}
        metrics = evaluate(self.teacher)
        log(f"teacher {self.settings.teacher}: top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}%")
        return {"teacher": metrics}

    @property
    def ramp(self) -> float:
        """``min(epoch / warmup, 1)`` with mdistiller's 1-based epoch (``self.epoch`` is 0-based)."""
        warmup = self.settings.warmup_epochs
        return min((self.epoch + 1) / warmup, 1.0) if warmup > 0 else 1.0

    def teacher_logits(self, images: Tensor) -> Tensor:
        with torch.no_grad(), self.autocast():
            return self.teacher(images).float()

    def observe(self, teacher_logits: Tensor, labels: Tensor) -> None:
        """See the batch's teacher logits before the student's forward (the class prior's update)."""

    def distill(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> tuple[Tensor, float]:
        """The distillation term and its weight."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images, labels = batch["image"], batch["label"]
        teacher_logits = self.teacher_logits(images)
        self.observe(teacher_logits, labels)
        student_logits = model(images)
        ce = F.cross_entropy(student_logits, labels)
        term, weight = self.distill(student_logits, teacher_logits, labels)
        loss = self.settings.label_ce_weight * ce + self.ramp * weight * term
        return loss, {"ce": ce.detach(), self.term_name: term.detach()}


@dataclass
class KDSettings(TeacherSettings):
    temperature: float = 4.0  # T of the KD / DKD / sCE terms
    kd_weight: float = 0.9  # weight of T^2 KL


@KD_METHODS.register
class KD(Distiller):
    """Hinton's KD: ``kd_weight * T^2 KL(softmax(t/T) || softmax(s/T))``."""

    name = "kd"
    Settings = KDSettings

    def distill(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> tuple[Tensor, float]:
        kd = kl_loss(student_logits, teacher_logits, temperature=self.settings.temperature)
        return kd, self.settings.kd_weight


@dataclass
class DKDSettings(TeacherSettings):
    temperature: float = 4.0  # T of the KD / DKD / sCE terms
    tckd_weight: float = 1.0  # weight of the target-class term (DKD's alpha)
    nckd_weight: float = 8.0  # weight of the non-target-class term (DKD's beta)


@KD_METHODS.register
class DKD(Distiller):
    """Decoupled KD (Zhao et al. 2022): ``tckd_weight * TCKD + nckd_weight * NCKD`` at temperature T."""

    name = "dkd"
    Settings = DKDSettings

    def distill(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> tuple[Tensor, float]:
        s = self.settings
        term = dkd_loss(
            student_logits,
            teacher_logits,
            labels,
            tckd_weight=s.tckd_weight,
            nckd_weight=s.nckd_weight,
            temperature=s.temperature,
        )
        return term, 1.0


@dataclass
class ReviewKDSettings(TeacherSettings):
    reviewkd_weight: float = 1.0  # weight of the HCL term (released REVIEWKD_WEIGHT)
    reviewkd_in_channels: list[int] = field(default_factory=list)  # student channels per level (IN_CHANNELS)
    reviewkd_out_channels: list[int] = field(default_factory=list)  # teacher channels per level
    reviewkd_shapes: list[int] = field(default_factory=list)  # student sizes, deepest level first (SHAPES)
    reviewkd_out_shapes: list[int] | None = None  # teacher sizes, deepest first (null: as reviewkd_shapes)
    reviewkd_student_preact: bool = False  # student features before their stage's final ReLU (STU_PREACT)
    # What the original ReviewKD code (github.com/dvlab-research/ReviewKD) does unlike mdistiller's:
    reviewkd_teacher_preact: bool = True  # teacher features before their final ReLU (false: after it)
    reviewkd_mid_channels: int | None = None  # ABF width (null: min(512, last reviewkd_in_channels))
    reviewkd_teacher_train_mode: bool = False  # teacher batch norm on batch statistics (train mode)
    reviewkd_ramp_zero_based: bool = False  # ramp epoch / warmup_epochs with 0-based epochs (0 at first)


@KD_METHODS.register
class ReviewKD(Distiller):
    """ReviewKD (Chen et al. 2021): ABF fusion of the student's features, HCL against the teacher's levels."""

    name = "reviewkd"
    Settings = ReviewKDSettings

    @classmethod
    def check(cls, config: Any) -> None:
        super().check(config)
        lists = {
            "reviewkd_in_channels": config.reviewkd_in_channels,
            "reviewkd_out_channels": config.reviewkd_out_channels,
            "reviewkd_shapes": config.reviewkd_shapes,
        }
        if config.reviewkd_out_shapes is not None:
            lists["reviewkd_out_shapes"] = config.reviewkd_out_shapes
        if not config.reviewkd_in_channels or len({len(values) for values in lists.values()}) != 1:
            described = ", ".join(f"{name}={values}" for name, values in lists.items())
            raise ConfigError(
                f"method=reviewkd needs one entry per feature level in each of {', '.join(lists)}; got {described} "
                "(see recipes/kd/configs/*_reviewkd.yaml for each pair's settings)"
            )
        if config.reviewkd_mid_channels is not None and config.reviewkd_mid_channels < 1:
            raise ConfigError(
                f"reviewkd_mid_channels={config.reviewkd_mid_channels}: the ABF width must be a positive channel "
                "count, or null for the released min(512, last reviewkd_in_channels)"
            )

    @property
    def ramp(self) -> float:
        """As every distiller's, or from 0 at the first epoch (``reviewkd_ramp_zero_based``, the original CIFAR code)."""
        if not self.settings.reviewkd_ramp_zero_based:
            return super().ramp
        warmup = self.settings.warmup_epochs
        return min(self.epoch / warmup, 1.0) if warmup > 0 else 1.0

    def build(self, student: nn.Module, spec: DatasetSpec, *, teacher: nn.Module | None = None) -> nn.Module:
        super().build(student, spec, teacher=teacher)
        return build_reviewkd(self.settings, student, self.teacher, spec.image_size)

    def student(self, trained: nn.Module) -> nn.Module:
        return trained.student

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        images, labels = batch["image"], batch["label"]
        with torch.no_grad(), self.autocast():
            features = forward_features(self.teacher, images)[1]
            targets = teacher_levels(features, preact=self.settings.reviewkd_teacher_preact)
        logits, fused = model(images)
        ce = F.cross_entropy(logits, labels)
        hcl = hcl_loss(fused, targets)
        loss = self.settings.label_ce_weight * ce + self.ramp * self.settings.reviewkd_weight * hcl
        return loss, {"ce": ce.detach(), self.term_name: hcl.detach()}


@dataclass
class IKLSettings(TeacherSettings):
    temperature: float = 4.0  # T of the sCE term
    mse_weight: float = 1.0  # wMSE weight (released code: beta)
    ce_weight: float = 1.0  # soft cross-entropy weight (released code: alpha)
    use_prior: bool = False  # class-wise prior weights (GI)
    weight_temperature: float = 100.0  # T2: temperature of the weights / of the prior's softmax
    compile_loss: bool = False  # the loss through torch.compile (fewer kernels on a GPU; compiles on the first step)


@KD_METHODS.register
class IKL(Distiller):
    """Improved KL (NeurIPS 2024): ``mse_weight * wMSE + ce_weight * sCE(T)``, weights from the prior or the teacher."""

    name = "ikl"
    Settings = IKLSettings

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.prior: ClassPrior | None = None

    def attach(self, device: torch.device, autocast: Autocast = contextlib.nullcontext, place: Place = None) -> None:
        super().attach(device, autocast, place)
        if self.settings.use_prior:
            self.prior = ClassPrior(self.num_classes, temperature=self.settings.weight_temperature, device=device)

    def build(self, student: nn.Module, spec: DatasetSpec, *, teacher: nn.Module | None = None) -> nn.Module:
        self.num_classes = spec.num_classes
        return super().build(student, spec, teacher=teacher)

    def state(self) -> list[Any]:
        return [self.prior] if self.prior is not None else []

    def observe(self, teacher_logits: Tensor, labels: Tensor) -> None:
        if self.prior is not None:
            self.prior.update(teacher_logits, labels)

    def end_epoch(self) -> None:
        if self.prior is not None:
            self.prior.end_epoch()  # all-reduced over processes; the prior of the next epoch

    def loss_options(self, labels: Tensor) -> dict[str, Any]:
        s = self.settings
        return dict(
            mse_weight=s.mse_weight,
            ce_weight=s.ce_weight,
            temperature=s.temperature,
            weights=self.prior.weights(labels) if self.prior is not None else None,
            weight_temperature=s.weight_temperature,
            compiled=s.compile_loss,
        )

    def distill(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> tuple[Tensor, float]:
        return ikl_loss(student_logits, teacher_logits, **self.loss_options(labels)), 1.0


@dataclass
class GKLSettings(IKLSettings):
    gamma: float = 1.0  # prior ** gamma (TPAMI)


@KD_METHODS.register
class GKL(IKL):
    """Generalized KL (TPAMI 2026): IKL with ``prior[y] ** gamma`` and wMSE normalised by the weight mass."""

    name = "gkl"
    Settings = GKLSettings

    def distill(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> tuple[Tensor, float]:
        options = self.loss_options(labels)
        return gkl_loss(student_logits, teacher_logits, gamma=self.settings.gamma, **options), 1.0


# ----------------------------------------------------------------------------------------------
# The teacher and ReviewKD's fusion modules


def build_teacher(settings: TeacherSettings, spec: DatasetSpec) -> nn.Module:
    """The frozen teacher in eval mode, with its weights loaded strictly; clear errors when it cannot be used."""
    from dkl_train.models import CheckpointMismatchError, create_model

    check_teacher_file(settings.teacher_checkpoint)
    kwargs: dict[str, Any] = dict(settings.teacher_kwargs)
    if settings.teacher_pretrained:
        kwargs["pretrained"] = True
    try:
        teacher = create_model(settings.teacher, spec.num_classes, checkpoint=settings.teacher_checkpoint, **kwargs)
    except CheckpointMismatchError as err:
        raise TeacherError(
            f"the teacher checkpoint {settings.teacher_checkpoint} does not fit a {settings.teacher} with "
            f"{spec.num_classes} classes ({spec.name}). A teacher trained on a dataset with another number of "
            f"classes, or another architecture, cannot teach this student; check `teacher` and `dataset`.\n{err}"
        ) from err
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


def check_teacher_file(checkpoint: str | None) -> None:
    """Fail before any work when the teacher checkpoint is missing, saying where to get mdistiller's teachers."""
    if not checkpoint or Path(checkpoint).is_file():
        return
    raise TeacherError(
        f"teacher checkpoint {checkpoint} not found. The CIFAR-100 teachers are mdistiller's: "
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


def build_reviewkd(
    settings: ReviewKDSettings, student: nn.Module, teacher: nn.Module, image_size: int
) -> ReviewKDStudent:
    """The student with its ABF modules, checked against the teacher's levels with one dummy forward each."""
    model = ReviewKDStudent(
        student,
        settings.reviewkd_in_channels,
        settings.reviewkd_out_channels,
        settings.reviewkd_shapes,
        settings.reviewkd_out_shapes,
        student_preact=settings.reviewkd_student_preact,
        mid_channels=settings.reviewkd_mid_channels,
    )
    probe = torch.zeros(2, 3, image_size, image_size)
    with torch.no_grad():
        model.eval()
        try:
            fused = [tuple(f.shape[1:]) for f in model(probe)[1]]
        except RuntimeError as err:  # a channel count that does not fit the student's features
            raise ConfigError(
                f"reviewkd_in_channels {settings.reviewkd_in_channels} / reviewkd_shapes {settings.reviewkd_shapes} "
                f"do not fit the student's features at {image_size} px: {err}"
            ) from None
        model.train()
        teacher_features = forward_features(teacher, probe)[1]
        targets = [
            tuple(f.shape[1:]) for f in teacher_levels(teacher_features, preact=settings.reviewkd_teacher_preact)
        ]
    if fused != targets:
        raise ConfigError(
            f"ReviewKD's fused student features {fused} (channels, height, width; shallowest first) do not match "
            f"{settings.teacher}'s levels {targets} at {image_size} px; set reviewkd_out_channels/reviewkd_out_shapes "
            "to the teacher's channels and sizes"
        )
    # After the probes, which must not reach the running statistics: the original CIFAR trainer never calls
    # teacher.eval(), so its batch norm normalises with each batch's statistics (evaluation still uses eval mode).
    teacher.train(settings.reviewkd_teacher_train_mode)
    return model
