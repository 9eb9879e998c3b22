"""The adversarial-training methods: one class each, registered in :data:`ADV_METHODS` in the paper's column order.

``t``/``s`` are the logits of the natural and the adversarial images (both carrying gradients), ``y`` the
labels; every loss comes from dkl-core.

- ``pgd_at``: ``CE(s, y)`` (Madry et al. 2018).
- ``trades``: ``CE(t, y) + trades_beta * KL(t || s)`` (Zhang et al. 2019).
- ``lbgat``:  ``MSE(s, n) + CE(n, y) + trades_beta * KL(t || s)``, ``n`` = logits of a natural model trained
  beside the robust one by the same optimiser (Cui et al. 2021; :mod:`dkl_recipe_adv.lbgat`).
- ``ikl``:    ``CE(t, y) + mse_weight * wMSE(s, t; prior[y]) + ce_weight * sCE(s, t)`` (NeurIPS code).
- ``gkl``:    as ``ikl`` with ``prior[y] ** gamma`` and wMSE normalised by the weight mass (TPAMI code).

A method gives the recipe's step (``train.py``: attack, AWP, loss, prior update) its pieces: the module the
optimiser trains (:meth:`AdvMethod.build`), the class weights and their prior, the loss of a view
(:meth:`AdvMethod.view_loss`) and of a step (:meth:`AdvMethod.training_loss`), the attack loss ``auto``
stands for, and what it saves at the end (:meth:`AdvMethod.finish`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dkl_core import ClassPrior, gkl_loss, ikl_loss, kl_loss
from dkl_train.config import ConfigError
from dkl_train.methods import Method, Registry

Terms = dict[str, Tensor]


class AdvMethod(Method):
    """How the robust model learns. Subclass it (and register it, or pass ``method=file.py:Class``) for a new one."""

    natural_ce: ClassVar[bool] = True  # the loss has CE(t, y) on the natural images (needs their forward pass)
    has_prior: ClassVar[bool] = False  # keeps a class prior (what attack_loss=ikl weighs with)

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.prior: ClassPrior | None = None

    @classmethod
    def check(cls, config: Any) -> None:
        if config.attack_loss == "ikl" and not cls.has_prior:
            raise ConfigError(f"attack_loss=ikl uses the class prior, which method={config.method} does not keep")

    @classmethod
    def auto_attack_loss(cls, dataset: str) -> str:
        """What ``attack_loss: auto`` means for this method (dkl-core's attack loss names)."""
        return "kl"

    @property
    def term_name(self) -> str:
        """The name of the adversarial term in logs."""
        return type(self).name or type(self).__name__.lower()

    def build(self, model: nn.Module, num_classes: int) -> nn.Module:
        """The module the optimiser trains: the robust model, or the robust model with the method's own."""
        return model

    def robust(self, trained: nn.Module) -> nn.Module:
        """The robust model inside the (unwrapped) trained module: attacks, AWP, averages and evaluation use it."""
        return trained

    def attach(self, device: torch.device, num_classes: int) -> None:
        """Create what the method keeps beside the trained module on ``device`` (the class prior)."""

    def state(self) -> list[Any]:
        """Objects saved in every checkpoint (the class prior)."""
        return [self.prior] if self.prior is not None else []

    def weights(self, labels: Tensor) -> Tensor | None:
        """The class weights of the batch (``prior[y]``), or ``None`` for a method without them."""
        return self.prior.weights(labels) if self.prior is not None else None

    def observe(self, natural_logits: Tensor, labels: Tensor) -> None:
        """See the natural logits of the basic view after the step's loss (the class prior's update)."""
        if self.prior is not None:
            self.prior.update(natural_logits, labels)

    def end_epoch(self) -> None:
        if self.prior is not None:
            self.prior.end_epoch()  # all-reduced over processes; the prior of the next epoch

    def term(self, t: Tensor | None, s: Tensor, y: Tensor, weights: Tensor | None) -> Tensor:
        """The adversarial term of one view."""
        raise NotImplementedError

    def view_loss(self, t: Tensor | None, s: Tensor, y: Tensor, weights: Tensor | None) -> tuple[Tensor, Terms]:
        """The loss of one view, ``CE(t, y) + term``, and its detached terms."""
        term = self.term(t, s, y, weights)
        ce = F.cross_entropy(t.float(), y)
        return ce + term, {"ce": ce.detach(), self.term_name: term.detach()}

    def training_loss(
        self,
        model: nn.Module,
        x: Tensor,
        x_adv: Tensor,
        y: Tensor,
        weights: Tensor | None,
        view_weights: tuple[float, ...] = (1.0,),
    ) -> tuple[Tensor, Terms, Tensor | None]:
        """Forward passes and loss of natural images ``x``, adversarial ``x_adv``; returns ``(loss, terms, t)``.

        The adversarial and the natural images go through separate forward passes, adversarial first as
        in the released code (BN batch statistics of each kind apart; in train mode the running
        statistics end each step on the natural batch). With two ``view_weights`` ``(1, autoaug_weight)``
        the batch holds the basic and the AutoAugment view, as released: the natural CE is the mean over
        the whole doubled batch, and only the adversarial term of the augmented half is weighted,
        ``CE(t, y) + term(basic) + autoaug_weight * term(augmented)`` (pgd_at: the weighted CE terms).
        """
        s = model(x_adv)
        t = model(x) if self.natural_ce else None
        if len(view_weights) == 1:
            loss, terms = self.view_loss(t, s, y, weights)
            return loss, terms, t
        terms: Terms = {}
        total = None
        if t is not None:
            total = F.cross_entropy(t.float(), y)
            terms["ce"] = total.detach()
        for half, weight in enumerate(view_weights):
            part = slice(half * y.shape[0] // 2, (half + 1) * y.shape[0] // 2)
            term = self.term(
                None if t is None else t[part], s[part], y[part], None if weights is None else weights[part]
            )
            total = weight * term if total is None else total + weight * term
            terms[f"{self.term_name}{'_aug' if half else ''}"] = term.detach()
        return total, terms, t

    def finish(self, trained: nn.Module, run: Any, test_loader: Any, num_classes: int) -> dict[str, Any]:
        """Save what the method trained beside the robust model (``run.save_model``); entries for ``results.json``."""
        return {}


ADV_METHODS: Registry[AdvMethod] = Registry(AdvMethod)


@ADV_METHODS.register
class PGDAT(AdvMethod):
    """Madry's PGD-AT: ``CE(s, y)`` on the adversarial images alone."""

    name = "pgd_at"
    natural_ce = False

    @classmethod
    def auto_attack_loss(cls, dataset: str) -> str:
        return "ce"

    @property
    def term_name(self) -> str:
        return "ce_adv"

    def term(self, t: Tensor | None, s: Tensor, y: Tensor, weights: Tensor | None) -> Tensor:
        return F.cross_entropy(s.float(), y)

    def view_loss(self, t: Tensor | None, s: Tensor, y: Tensor, weights: Tensor | None) -> tuple[Tensor, Terms]:
        term = self.term(t, s, y, weights)
        return term, {"ce_adv": term.detach()}


@dataclass
class TradesSettings:
    trades_beta: float = 6.0  # weight of KL(f(x) || f(x_adv)) (LBGAT0: 0, LBGAT6: 6)


@ADV_METHODS.register
class TRADES(AdvMethod):
    """TRADES: ``CE(t, y) + trades_beta * KL(t || s)``."""

    name = "trades"
    Settings = TradesSettings

    def term(self, t: Tensor | None, s: Tensor, y: Tensor, weights: Tensor | None) -> Tensor:
        return self.settings.trades_beta * kl_loss(s, t)


@dataclass
class LBGATSettings(TradesSettings):
    natural_model: str = "resnet18_lbgat"  # the natural model trained beside the robust one
    natural_model_kwargs: dict[str, Any] = field(default_factory=dict)  # its architecture options


@ADV_METHODS.register
class LBGAT(TRADES):
    """LBGAT: a natural model trained beside the robust one guides its boundary (:mod:`dkl_recipe_adv.lbgat`)."""

    name = "lbgat"
    Settings = LBGATSettings

    @classmethod
    def check(cls, config: Any) -> None:
        super().check(config)
        if config.awp or config.augmentation != "basic":
            raise ConfigError("method=lbgat trains without AWP on the basic view: set awp=false augmentation=basic")

    def build(self, model: nn.Module, num_classes: int) -> nn.Module:
        from dkl_recipe_adv.lbgat import with_natural_model

        return with_natural_model(self.settings, model, num_classes)  # both trained by the one optimiser

    def robust(self, trained: nn.Module) -> nn.Module:
        return trained.robust

    def training_loss(
        self,
        model: nn.Module,
        x: Tensor,
        x_adv: Tensor,
        y: Tensor,
        weights: Tensor | None,
        view_weights: tuple[float, ...] = (1.0,),
    ) -> tuple[Tensor, Terms, Tensor | None]:
        from dkl_recipe_adv.lbgat import boundary_guidance

        s, t, natural = model(x, x_adv)  # the pair's one forward gives all three logits
        guidance, terms = boundary_guidance(s, natural, y)
        term = self.term(t, s, y, weights)
        return guidance + term, {**terms, "lbgat": term.detach()}, t

    def finish(self, trained: nn.Module, run: Any, test_loader: Any, num_classes: int) -> dict[str, Any]:
        from dkl_recipe_adv.lbgat import finish_natural

        return {"natural_model": finish_natural(self.settings, run, trained.natural, test_loader, num_classes)}


@dataclass
class IKLSettings:
    mse_weight: float = 20.0  # wMSE weight (released code: beta)
    ce_weight: float = 3.0  # soft cross-entropy weight (released code: alpha)
    weight_temperature: float = 4.0  # T of the class prior's softmax (the released scripts' --T)
    compile_loss: bool = False  # the outer loss through torch.compile (fewer kernels on a GPU)


@ADV_METHODS.register
class IKLAT(AdvMethod):
    """IKL-AT (NeurIPS 2024): ``CE(t, y) + mse_weight * wMSE(s, t; prior[y]) + ce_weight * sCE(s, t)``."""

    name = "ikl"
    Settings = IKLSettings
    has_prior = True

    @classmethod
    def auto_attack_loss(cls, dataset: str) -> str:
        return "ikl" if dataset == "cifar100" else "kl"  # the released CIFAR-100 scripts attack sCE + wMSE

    def attach(self, device: torch.device, num_classes: int) -> None:
        self.prior = ClassPrior(num_classes, temperature=self.settings.weight_temperature, device=device)

    def options(self, weights: Tensor | None) -> dict[str, Any]:
        s = self.settings
        return dict(
            mse_weight=s.mse_weight, ce_weight=s.ce_weight, temperature=1.0, weights=weights, compiled=s.compile_loss
        )

    def term(self, t: Tensor | None, s: Tensor, y: Tensor, weights: Tensor | None) -> Tensor:
        return ikl_loss(s, t, **self.options(weights))


@dataclass
class GKLSettings(IKLSettings):
    gamma: float = 1.0  # prior ** gamma (TPAMI)


@ADV_METHODS.register
class GKLAT(IKLAT):
    """GKL-AT (TPAMI 2026): IKL-AT with ``prior[y] ** gamma`` and wMSE normalised by the weight mass."""

    name = "gkl"
    Settings = GKLSettings

    def term(self, t: Tensor | None, s: Tensor, y: Tensor, weights: Tensor | None) -> Tensor:
        return gkl_loss(s, t, gamma=self.settings.gamma, **self.options(weights))
