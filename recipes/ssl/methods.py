"""The semi-supervised methods and their consistency losses: one class each, in :data:`SSL_METHODS` and
:data:`CONSISTENCIES`.

The loss of an iteration is ``CE(f(x), y) + unsup_weight * ramp * mean_b(mask_b * consistency_b)``, the mean
over the *whole* unlabeled batch (masked samples count as zeros, as USB and the released DKL code do),
``mask_b = [max softmax(t_b) >= p_cutoff]``. A method (:class:`SSLMethod`) says where the target ``t`` and
the student ``s`` logits come from; a consistency (:class:`Consistency`) says how ``s`` is pulled to ``t``.

- ``fixmatch``: ``t`` = logits of the weak view, ``s`` = logits of the strong view, one forward pass over
  ``[labeled, weak, strong]`` (USB's ``use_cat``). Published with ``consistency=ce``.
- ``meanteacher``: ``t`` = logits of the EMA model (under ``no_grad``, in train mode as USB) on one weak
  view, ``s`` = logits of the model on a second weak view (as USB: MeanTeacher's "strong" view is a weak
  one). Published with ``consistency=mse``. The mask is the DKL authors' addition (upstream USB has none).
- ``consistency=ce``: ``-sum_j q_j log softmax(s)_j`` with pseudo-label ``q`` chosen by ``pseudo_label``:
  ``soft`` (default) ``q = softmax(S(t))``, the weak view's probabilities unchanged, which is what the
  released FixMatch ran (its config names ``T: 0.5``, but it hands probabilities to a pseudo-label step
  that then skips the sharpening); ``sharpened`` ``q = softmax(S(t) / pseudo_temperature)``; ``hard`` the
  one-hot argmax (USB's stock FixMatch config).
- ``consistency=mse``: ``mean_j (softmax(s)_j - softmax(S(t))_j)^2``.
- ``consistency=ikl``: dkl-core's ``ikl_loss(s, t, reduction="none")`` per sample: ``mse_weight * wMSE +
  ce_weight * sCE(temperature)`` with weights ``softmax(t / weight_temperature)``. In FixMatch ``t`` is *not*
  detached (the weak and strong views share one forward pass, and the released code let the wMSE
  gradient reach both). ``detach_weights=false`` is what the released code ran (the gradient also flows
  through the weights) and what the paper numbers came from; ``true`` is the formula as the paper writes it.

``unsup_warmup`` is USB's linear ramp of the unsupervised weight over that fraction of the iterations;
it defaults to 0 (no ramp), as the released MeanTeacher ran: its loss leaves the ramp factor commented out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dkl_core import ikl_loss
from dkl_train.config import ConfigError
from dkl_train.methods import Method, Registry

Batch = dict[str, Tensor]


def confidence_mask(target_logits: Tensor, p_cutoff: float) -> Tensor:
    """``1.0`` where the target's top softmax probability reaches ``p_cutoff``, else ``0.0`` (no gradient)."""
    probs = torch.softmax(target_logits.detach().float(), dim=1)
    return (probs.max(dim=1).values >= p_cutoff).float()


# ----------------------------------------------------------------------------------------------
# Consistency losses


class Consistency(Method):
    """How the student's logits ``s`` are pulled to the targets ``t``, per unlabeled sample."""

    def per_sample(self, s: Tensor, t: Tensor) -> Tensor:
        """``[B]`` losses (``s``, ``t`` in float32)."""
        raise NotImplementedError

    def loss(self, student_logits: Tensor, target_logits: Tensor, mask: Tensor) -> Tensor:
        """``mean_b(mask_b * loss_b)`` over the whole unlabeled batch."""
        return (self.per_sample(student_logits.float(), target_logits.float()) * mask).mean()


CONSISTENCIES: Registry[Consistency] = Registry(Consistency, field="consistency")


@dataclass
class PseudoLabelSettings:
    # soft = softmax(t) (the released FixMatch), sharpened = softmax(t / pseudo_temperature), hard = one-hot argmax
    # (USB's stock config)
    pseudo_label: Literal["soft", "sharpened", "hard"] = "soft"
    pseudo_temperature: float = 0.5  # T of pseudo_label=sharpened (FixMatch's 0.5)


@CONSISTENCIES.register
class PseudoLabelCE(Consistency):
    """FixMatch's cross-entropy to pseudo-labels of the (detached) targets."""

    name = "ce"
    Settings = PseudoLabelSettings

    @classmethod
    def check(cls, config: Any) -> None:
        if config.pseudo_temperature <= 0:
            raise ConfigError(f"pseudo_temperature must be > 0, got {config.pseudo_temperature}")

    def per_sample(self, s: Tensor, t: Tensor) -> Tensor:
        kind = self.settings.pseudo_label
        if kind == "hard":
            targets = F.one_hot(t.detach().argmax(dim=1), s.shape[1]).float()
        elif kind == "sharpened":
            targets = torch.softmax(t.detach() / self.settings.pseudo_temperature, dim=1)
        else:  # soft: the probabilities that also set the mask, unchanged
            targets = torch.softmax(t.detach(), dim=1)
        return -(targets * F.log_softmax(s, dim=1)).sum(dim=1)


@CONSISTENCIES.register
class ProbabilityMSE(Consistency):
    """MeanTeacher's mean squared difference of the probabilities."""

    name = "mse"

    def per_sample(self, s: Tensor, t: Tensor) -> Tensor:
        return (torch.softmax(s, dim=1) - torch.softmax(t.detach(), dim=1)).pow(2).mean(dim=1)


@dataclass
class IKLConsistencySettings:
    # dkl-core's names; released code: alpha = ce_weight, beta = mse_weight
    mse_weight: float = 1.0  # wMSE weight (released code: beta)
    ce_weight: float = 1.0  # soft cross-entropy weight (released code: alpha)
    temperature: float = 1.0  # T of the sCE term
    weight_temperature: float = 1.0  # T2 of the weights softmax(t / T2)
    detach_weights: bool = False  # false: as the released code ran (paper numbers); true: the paper's formula


@CONSISTENCIES.register
class IKLConsistency(Consistency):
    """dkl-core's IKL per sample; the targets keep their gradient (the released code's)."""

    name = "ikl"
    Settings = IKLConsistencySettings

    def per_sample(self, s: Tensor, t: Tensor) -> Tensor:
        c = self.settings
        return ikl_loss(
            s,
            t,
            mse_weight=c.mse_weight,
            ce_weight=c.ce_weight,
            temperature=c.temperature,
            weight_temperature=c.weight_temperature,
            detach_weights=c.detach_weights,
            reduction="none",
        )


# ----------------------------------------------------------------------------------------------
# Methods


@dataclass
class SSLSettings:
    unsup_weight: float = 1.0  # USB's ulb_loss_ratio
    # Linear ramp of unsup_weight over this fraction of the iterations: USB's MeanTeacher option (its
    # configs: 0.4); 0 = off, as the released MeanTeacher ran.
    unsup_warmup: float = 0.0
    p_cutoff: float = 0.95  # confidence mask threshold on the target's softmax


class SSLMethod(Method):
    """Where an iteration's target and student logits come from; the loss around them is shared.

    Subclass it (and register it, or pass ``method=file.py:Class``) for a new method.
    """

    Settings = SSLSettings
    published_consistency: ClassVar[str] = "ikl"  # the consistency the method was published with
    second_view: ClassVar[Literal["weak", "strong"]] = "strong"  # the unlabeled images' second view

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.consistency: Consistency | None = None
        self.teacher: nn.Module | None = None
        self.iterations = 1

    @classmethod
    def check(cls, config: Any) -> None:
        allowed = (cls.published_consistency, "ikl")
        if config.consistency not in allowed:
            raise ConfigError(
                f"method={config.method} takes consistency={' or '.join(dict.fromkeys(allowed))}, not "
                f"{config.consistency!r} ({cls.published_consistency} is its published loss)"
            )

    def attach(self, consistency: Consistency, teacher: nn.Module | None, iterations: int) -> None:
        """The consistency loss, the EMA model (MeanTeacher's teacher) and the run's length (the ramp)."""
        self.consistency, self.teacher, self.iterations = consistency, teacher, iterations

    def ramp(self, iteration: int) -> float:
        """USB MeanTeacher's ramp ``clip(iteration / (unsup_warmup * iterations), 0, 1)``; 1 when ``unsup_warmup`` is 0."""
        warmup = self.settings.unsup_warmup
        if warmup <= 0:
            return 1.0
        return min(max(iteration / (warmup * self.iterations), 0.0), 1.0)

    def logits(self, model: nn.Module, labeled: Batch, unlabeled: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """``(labeled logits, student logits, target logits)``, float32."""
        raise NotImplementedError

    def loss(self, model: nn.Module, labeled: Batch, unlabeled: Batch, iteration: int) -> tuple[Tensor, Batch]:
        """The loss of one iteration and its detached terms (``sup_loss``, ``unsup_loss``, ``mask_ratio``).

        Call it under the accelerator's autocast.
        """
        logits_lb, student, target = self.logits(model, labeled, unlabeled)
        sup = F.cross_entropy(logits_lb, labeled["label"])
        mask = confidence_mask(target, self.settings.p_cutoff)
        unsup = self.consistency.loss(student, target, mask)
        loss = sup + self.settings.unsup_weight * self.ramp(iteration) * unsup
        return loss, {"sup_loss": sup.detach(), "unsup_loss": unsup.detach(), "mask_ratio": mask.mean()}


SSL_METHODS: Registry[SSLMethod] = Registry(SSLMethod)


@SSL_METHODS.register
class FixMatch(SSLMethod):
    """FixMatch: the weak view's logits are the target of the strong view's, in one forward pass."""

    name = "fixmatch"
    published_consistency = "ce"

    def logits(self, model: nn.Module, labeled: Batch, unlabeled: Batch) -> tuple[Tensor, Tensor, Tensor]:
        num_lb = labeled["image"].shape[0]
        logits = model(torch.cat([labeled["image"], unlabeled["weak"], unlabeled["strong"]])).float()
        target, student = logits[num_lb:].chunk(2)
        return logits[:num_lb], student, target


@SSL_METHODS.register
class MeanTeacher(SSLMethod):
    """MeanTeacher: the EMA model's logits on one weak view are the target of the model's on another."""

    name = "meanteacher"
    published_consistency = "mse"
    second_view = "weak"

    def attach(self, consistency: Consistency, teacher: nn.Module | None, iterations: int) -> None:
        super().attach(consistency, teacher, iterations)
        teacher.train()  # USB's teacher forward runs in train mode (stochastic depth on), without gradients

    def logits(self, model: nn.Module, labeled: Batch, unlabeled: Batch) -> tuple[Tensor, Tensor, Tensor]:
        num_lb = labeled["image"].shape[0]
        logits = model(torch.cat([labeled["image"], unlabeled["strong"]])).float()
        with torch.no_grad():
            target = self.teacher(unlabeled["weak"]).float()
        return logits[:num_lb], logits[num_lb:], target
