"""Adversarial weight perturbation (Wu, Xia and Wang, "Adversarial Weight Perturbation Helps Robust Generalization", NeurIPS 2020)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn


class AdversarialWeightPerturbation:
    r"""Perturb the weights towards higher loss before the training step and take the perturbation back after.

    :meth:`compute` copies the model into a proxy, takes one SGD *ascent* step on
    ``loss_fn(proxy)`` (the proxy in train mode), and rescales the difference per layer,

    .. math:: v_l = \lVert w_l \rVert \, \frac{w^{proxy}_l - w_l}{\lVert w^{proxy}_l - w_l \rVert},

    for every parameter with more than one dimension (biases and BN affine parameters are left
    alone). :meth:`perturb` adds ``gamma * v``; :meth:`restore` takes it back out. In the released
    AWP/DKL code the step is taken from epoch 10 on with ``gamma = 0.005`` and the proxy learning
    rate equal to the base learning rate; ``loss_fn`` is the training loss (``CE + robust loss``),
    which :meth:`compute` ascends.

    Typical use::

        awp = AdversarialWeightPerturbation(model, gamma=0.005, lr=0.2)
        diff = awp.compute(lambda proxy: F.cross_entropy(proxy(x_nat), y) + robust_loss(proxy))
        awp.perturb(diff)
        loss = ...; loss.backward(); optimizer.step()
        awp.restore()

    ``restore()`` keeps the optimiser's update and removes exactly the perturbation that was added:
    the weights become ``w + (w_now - w_perturbed)``, computed from a saved copy of ``w``. Without
    a step in between this returns ``w`` bit-for-bit (subtracting ``gamma * v`` again, as the
    released code does, is only equal up to rounding).

    Args:
        model: the model being trained (unwrap DDP/Accelerate wrappers first).
        gamma: size of the perturbation relative to each layer's norm.
        lr: learning rate of the proxy's ascent step.
        proxy: a model of the same architecture to use as scratch space (default: a deep copy).
    """

    def __init__(self, model: nn.Module, *, gamma: float = 0.005, lr: float = 0.01, proxy: nn.Module | None = None):
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.model = model
        self.gamma = gamma
        self.lr = lr
        self.proxy = proxy if proxy is not None else copy.deepcopy(model)
        self._backup: dict[str, torch.Tensor] | None = None
        self._added: dict[str, torch.Tensor] | None = None

    def _weights(self, module: nn.Module) -> dict[str, nn.Parameter]:
        return {name: p for name, p in module.named_parameters() if p.dim() > 1}

    def compute(self, loss_fn: Callable[[nn.Module], torch.Tensor]) -> dict[str, torch.Tensor]:
        """The per-layer rescaled direction ``v`` (not yet multiplied by ``gamma``) for the current weights.

        ``loss_fn(proxy)`` must return the scalar loss to *increase*, computed with the proxy.
        The model itself is not touched and gets no gradients.
        """
        if self._backup is not None:
            raise RuntimeError("compute() called while the weights are perturbed; call restore() first")
        self.proxy.load_state_dict(self.model.state_dict())
        self.proxy.train()
        for param in self.proxy.parameters():
            param.requires_grad_(True)
            param.grad = None
        loss = loss_fn(self.proxy)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError("loss_fn(proxy) must return a scalar tensor")
        (-loss).backward()
        with torch.no_grad():
            for param in self.proxy.parameters():
                if param.grad is not None:
                    param.add_(param.grad, alpha=-self.lr)
                    param.grad = None
        model_weights = self._weights(self.model)
        proxy_weights = self._weights(self.proxy)
        direction = {}
        with torch.no_grad():
            for name, weight in model_weights.items():
                diff = proxy_weights[name].detach() - weight.detach()
                direction[name] = weight.norm() * diff / (diff.norm() + 1e-20)
        return direction

    @torch.no_grad()
    def perturb(self, direction: dict[str, torch.Tensor]) -> None:
        """Add ``gamma * direction`` to the weights, saving a copy to :meth:`restore` from."""
        if self._backup is not None:
            raise RuntimeError("the weights are already perturbed; call restore() before perturbing again")
        weights = self._weights(self.model)
        unknown = set(direction) - set(weights)
        if unknown:
            raise ValueError(f"direction names parameters the model does not have: {sorted(unknown)[:5]}")
        self._backup, self._added = {}, {}
        for name, delta in direction.items():
            weight = weights[name]
            self._backup[name] = weight.detach().clone()
            added = (self.gamma * delta).to(weight.dtype)
            weight.add_(added)
            self._added[name] = added

    @torch.no_grad()
    def restore(self) -> None:
        """Take the perturbation back out, keeping whatever update the optimiser made in between."""
        if self._backup is None or self._added is None:
            raise RuntimeError("restore() called without a matching perturb()")
        weights = self._weights(self.model)
        for name, original in self._backup.items():
            weight = weights[name]
            perturbed = original + self._added[name]  # the same rounding as in perturb()
            # where nothing moved, copy the original bits (also keeps a -0.0 a -0.0)
            weight.copy_(torch.where(weight == perturbed, original, original + (weight - perturbed)))
        self._backup, self._added = None, None

    @property
    def perturbed(self) -> bool:
        """Whether :meth:`perturb` has been applied and not yet restored."""
        return self._backup is not None
