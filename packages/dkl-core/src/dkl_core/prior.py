"""The class-wise prior ("global information", GI) of IKL and GKL."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .losses._checks import check_positive, check_targets


class ClassPrior:
    r"""Per-class mean predicted distribution, accumulated over an epoch and used during the next.

    For every training sample with label ``y``, :meth:`update` adds ``softmax(logits / T)`` to row
    ``y`` of a ``[C, C]`` sum. :meth:`compute` row-normalises the sums (all-reduced over processes
    when ``torch.distributed`` is initialised); :meth:`end_epoch` makes that the prior of the next
    epoch and starts a new sum. Before the first :meth:`end_epoch` the prior is uniform, and a class
    that was never seen in an epoch gets a uniform row, never NaN.

    IKL/GKL use ``weights(targets) = prior[targets]`` as the per-sample class weights.

    Temperature: ``temperature`` (``T``) divides the logits of the accumulated softmax; there is no loss,
    so no ``T^2`` factor (4 in the released adversarial-training runs).

    Two things the released code got wrong are handled here: the sums are all-reduced so that N
    processes give the prior one process would give over the same data, and the prior and the
    running sums are part of :meth:`state_dict`, so a resumed run continues with the right prior.

    Args:
        num_classes: ``C >= 2``.
        temperature: ``T > 0`` of the softmax that is accumulated.
        device: where the matrices live (moved to the logits' device on the first update).

    Example:
        >>> prior = ClassPrior(10, temperature=4.0)
        >>> prior.update(torch.randn(32, 10), torch.randint(0, 10, (32,)))
        >>> prior.weights(torch.tensor([3, 1])).shape   # still uniform: the epoch is not over
        torch.Size([2, 10])
        >>> _ = prior.end_epoch()                       # the next epoch uses the accumulated prior
    """

    def __init__(self, num_classes: int, temperature: float = 1.0, device: torch.device | str | None = None) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        check_positive("temperature", temperature)
        self.num_classes = num_classes
        self.temperature = temperature
        uniform = torch.full((num_classes, num_classes), 1.0 / num_classes, dtype=torch.float64, device=device)
        self.prior = uniform
        # float64 sums: many processes summing in different orders still agree to ~1e-15.
        self.sums = torch.zeros_like(uniform)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add ``softmax(logits / T)`` of each sample to the row of its label (no gradient)."""
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() != 2:
            raise ValueError("logits must be a floating-point tensor of shape [B, C]")
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[1]} classes, the prior was built for {self.num_classes}")
        check_targets(targets, logits.shape[0], self.num_classes)
        self.to(logits.device)
        probs = F.softmax(logits.detach().double() / self.temperature, dim=1)
        self.sums.index_add_(0, targets.long(), probs)

    def compute(self, sync: bool = True) -> torch.Tensor:
        """The row-normalised ``[C, C]`` matrix of this epoch's sums; uniform rows where nothing was seen.

        With ``sync`` (default) and an initialised process group the sums of all processes are
        added first, so every process must call it (it is a collective).
        """
        sums = self.sums.clone()
        if sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        row_mass = sums.sum(dim=1, keepdim=True)
        seen = row_mass > 0
        return torch.where(seen, sums / row_mass.clamp_min(torch.finfo(sums.dtype).tiny), 1.0 / self.num_classes)

    def end_epoch(self, sync: bool = True) -> torch.Tensor:
        """Adopt :meth:`compute` as the prior for the next epoch, reset the sums, return the new prior."""
        self.prior = self.compute(sync=sync)
        self.sums.zero_()
        return self.prior

    def weights(self, targets: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``prior[targets]``: the ``[B, C]`` class weights of a batch for IKL/GKL.

        Labels must lie in ``[0, num_classes)``; outside that range a ``ValueError`` names the range. The range
        is checked where reading the labels back is free (CPU labels); on an accelerator the indexing asserts.
        """
        if not isinstance(targets, torch.Tensor):
            raise ValueError(f"targets must be a tensor of class indices, got {type(targets).__name__}")
        if targets.numel() and targets.device.type == "cpu":
            low, high = torch.aminmax(targets.long())
            if int(low) < 0 or int(high) >= self.num_classes:
                raise ValueError(
                    f"labels must lie in [0, {self.num_classes}) for a prior over {self.num_classes} classes, "
                    f"got values in [{int(low)}, {int(high)}]"
                )
        return self.prior.to(device=targets.device, dtype=dtype)[targets.long()]

    def __repr__(self) -> str:
        return (
            f"ClassPrior(num_classes={self.num_classes}, temperature={self.temperature!r}, "
            f"device={str(self.prior.device)!r})"
        )

    def to(self, device: torch.device | str) -> ClassPrior:
        self.prior = self.prior.to(device)
        self.sums = self.sums.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "temperature": self.temperature,
            "prior": self.prior.clone(),
            "sums": self.sums.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_classes"] != self.num_classes:
            raise ValueError(f"the saved class prior has {state['num_classes']} classes, this one {self.num_classes}")
        device = self.prior.device
        self.temperature = float(state["temperature"])
        self.prior = state["prior"].to(device=device, dtype=torch.float64)
        self.sums = state["sums"].to(device=device, dtype=torch.float64)
