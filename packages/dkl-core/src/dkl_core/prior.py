"""The class-wise prior ("global information", GI) of IKL and GKL."""

from __future__ import annotations

from typing import Any, NamedTuple

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
    def update(self, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None = None) -> None:
        """Add ``softmax(logits / T)`` of each sample to the row of its label (no gradient).

        ``logits`` are ``[B, C]`` with ``targets`` ``[B]``, or ``[..., C]`` with ``[...]`` (tokens); with
        ``ignore_index`` (e.g. -100) the positions labelled so are skipped.
        """
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() < 1:
            raise ValueError("logits must be a floating-point tensor of shape [B, C] (or [..., C])")
        if logits.shape[-1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[-1]} classes, the prior was built for {self.num_classes}")
        if logits.dim() != 2 or ignore_index is not None:
            if not isinstance(targets, torch.Tensor) or targets.shape != logits.shape[:-1]:
                raise ValueError(f"targets must have the logits' leading shape {tuple(logits.shape[:-1])}")
            flat_logits, flat_targets = logits.reshape(-1, self.num_classes), targets.reshape(-1)
            if ignore_index is not None:
                keep = (flat_targets != ignore_index).nonzero().squeeze(1)
                flat_logits, flat_targets = flat_logits.index_select(0, keep), flat_targets.index_select(0, keep)
            self.update(flat_logits, flat_targets)
            return
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


class TopKRows(NamedTuple):
    """Per-class rows kept as their ``k`` largest entries plus the mass of the rest: ``index`` ``[C, k]`` (int64),
    ``value`` ``[C, k]`` and ``residual`` ``[C]`` (float64). A row's other ``C - k`` classes share ``residual``
    equally."""

    index: torch.Tensor
    value: torch.Tensor
    residual: torch.Tensor


#: Rows of ``[rows, C]`` float64 scratch per step of an update or a merge (``2**24`` elements, 128 MB).
_SCRATCH_ELEMENTS = 2**24


class TopKClassPrior:
    r"""The class prior of :class:`ClassPrior` at vocabulary scale: each class keeps its ``top_k`` largest entries.

    :class:`ClassPrior` holds two ``[C, C]`` float64 matrices (the prior and this epoch's sums): 263 GB at
    C = 128,256. This one keeps, per class, the ``top_k`` largest accumulated probabilities (index and value)
    and the total mass of the others, which the prior spreads equally over those ``C - top_k`` classes:
    ``C * (32 * top_k + 16)`` bytes for both, 264 MB at C = 128,256 with ``top_k = 64`` (:meth:`nbytes`).
    With ``top_k = C`` nothing is dropped and it equals :class:`ClassPrior` (to float64 rounding).

    Accumulation is the one of :class:`ClassPrior`: :meth:`update` adds ``softmax(logits / T)`` of each sample to
    the row of its label, merging it into the row's kept entries (a class that falls out of the top ``k`` moves
    its mass to the residual); :meth:`end_epoch` normalises the rows (all-reduced over processes, by gathering
    and merging the kept entries of every process) and makes them the prior of the next epoch; unseen classes
    and the first epoch get uniform rows. :meth:`weights` returns the dense ``[n, C]`` rows of a chunk of
    labels, which is what the fused losses gather per chunk. :meth:`state_dict` holds the prior and the sums,
    so a resumed run continues exactly; it also loads a :class:`ClassPrior` state dict (keeping the ``top_k``
    largest entries of each row).

    Args:
        num_classes: ``C >= 2``.
        top_k: entries kept per class, ``1 <= top_k`` (capped at ``C``).
        temperature: ``T > 0`` of the softmax that is accumulated.
        device: where the tensors live (moved to the logits' device on the first update).

    Example:
        >>> prior = TopKClassPrior(1000, top_k=8, temperature=2.0)
        >>> prior.update(torch.randn(4, 16, 1000), torch.randint(0, 1000, (4, 16)))  # [..., C] with labels [...]
        >>> _ = prior.end_epoch()
        >>> prior.weights(torch.tensor([3, 1])).shape  # dense rows that sum to 1
        torch.Size([2, 1000])
    """

    def __init__(
        self, num_classes: int, top_k: int, temperature: float = 1.0, device: torch.device | str | None = None
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int (entries kept per class), got {top_k!r}")
        check_positive("temperature", temperature)
        self.num_classes = num_classes
        self.top_k = min(top_k, num_classes)
        self.temperature = temperature
        self.prior = self._uniform(device)
        zeros = torch.zeros(num_classes, self.top_k, dtype=torch.float64, device=device)
        self.sums = TopKRows(
            self.prior.index.clone(), zeros, torch.zeros(num_classes, dtype=torch.float64, device=device)
        )

    def _uniform(self, device: torch.device | str | None, rows: int | None = None) -> TopKRows:
        rows = self.num_classes if rows is None else rows
        c, k = self.num_classes, self.top_k
        index = torch.arange(k, device=device).expand(rows, k).clone()
        value = torch.full((rows, k), 1.0 / c, dtype=torch.float64, device=device)
        return TopKRows(index, value, torch.full((rows,), (c - k) / c, dtype=torch.float64, device=device))

    def _keep_top(self, dense: torch.Tensor, residual: torch.Tensor) -> TopKRows:
        """The ``top_k`` largest entries of ``[rows, C]`` sums, the rest added to ``residual``."""
        value, index = dense.topk(self.top_k, dim=1)
        if self.top_k < self.num_classes:
            residual = residual + dense.scatter_(1, index, 0.0).sum(dim=1)
        return TopKRows(index, value, residual)

    def _step_rows(self) -> int:
        return max(1, _SCRATCH_ELEMENTS // self.num_classes)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> None:
        """Add ``softmax(logits / T)`` of each position (``logits`` ``[..., C]``, ``targets`` ``[...]``) to the row of
        its label; positions labelled ``ignore_index`` are skipped. Works through the rows in steps of bounded
        memory (``2**24 / C`` rows of float64 scratch)."""
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() < 1:
            raise ValueError("logits must be a floating-point tensor of shape [..., C]")
        if logits.shape[-1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[-1]} classes, the prior was built for {self.num_classes}")
        if not isinstance(targets, torch.Tensor) or targets.shape != logits.shape[:-1]:
            raise ValueError(
                f"targets must be class indices of shape {tuple(logits.shape[:-1])} (the logits' leading dims)"
            )
        flat_logits, flat_targets = logits.detach().reshape(-1, self.num_classes), targets.reshape(-1)
        keep = (flat_targets != ignore_index).nonzero().squeeze(1)
        flat_targets = flat_targets.index_select(0, keep)
        check_targets(flat_targets, flat_targets.shape[0], self.num_classes)
        self.to(logits.device)
        step = self._step_rows()
        for start in range(0, keep.numel(), step):
            rows = flat_logits.index_select(0, keep[start : start + step])
            probs = F.softmax(rows.double() / self.temperature, dim=1)
            classes, inverse = flat_targets[start : start + step].long().unique(return_inverse=True)
            dense = torch.zeros(classes.numel(), self.num_classes, dtype=torch.float64, device=probs.device)
            dense.scatter_(1, self.sums.index[classes], self.sums.value[classes]).index_add_(0, inverse, probs)
            merged = self._keep_top(dense, self.sums.residual[classes])
            for kept, new in zip(self.sums, merged, strict=True):
                kept[classes] = new

    def _merge(self, parts: list[TopKRows]) -> TopKRows:
        """Sum several sets of kept rows (one per process) row by row, keeping the ``top_k`` of the total."""
        device = parts[0].value.device
        out = []
        step = self._step_rows()
        for start in range(0, self.num_classes, step):
            stop = min(start + step, self.num_classes)
            dense = torch.zeros(stop - start, self.num_classes, dtype=torch.float64, device=device)
            residual = torch.zeros(stop - start, dtype=torch.float64, device=device)
            for part in parts:
                dense.scatter_add_(1, part.index[start:stop], part.value[start:stop])
                residual += part.residual[start:stop]
            out.append(self._keep_top(dense, residual))
        return TopKRows(*(torch.cat(column) for column in zip(*out, strict=True)))

    def compute(self, sync: bool = True) -> TopKRows:
        """This epoch's sums as normalised rows (uniform where nothing was seen), all-reduced over processes
        when ``sync`` and a process group is initialised (a collective: every process must call it)."""
        sums = self.sums
        if sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered = []
            for tensor in sums:
                parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
                dist.all_gather(parts, tensor.contiguous())
                gathered.append(parts)
            sums = self._merge([TopKRows(*part) for part in zip(*gathered, strict=True)])
        mass = sums.value.sum(dim=1) + sums.residual
        seen = mass > 0
        scale = 1.0 / mass.clamp_min(torch.finfo(mass.dtype).tiny)
        uniform = self._uniform(mass.device)
        return TopKRows(
            torch.where(seen[:, None], sums.index, uniform.index),
            torch.where(seen[:, None], sums.value * scale[:, None], uniform.value),
            torch.where(seen, sums.residual * scale, uniform.residual),
        )

    def end_epoch(self, sync: bool = True) -> TopKRows:
        """Adopt :meth:`compute` as the prior for the next epoch, reset the sums, return the new prior."""
        self.prior = self.compute(sync=sync)
        self.sums.value.zero_()
        self.sums.residual.zero_()
        return self.prior

    def weights(self, targets: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense prior rows ``[..., C]`` of ``targets`` ``[...]`` (the class weights of IKL/GKL)."""
        if not isinstance(targets, torch.Tensor):
            raise ValueError(f"targets must be a tensor of class indices, got {type(targets).__name__}")
        flat = targets.reshape(-1).long()
        if flat.numel() and flat.device.type == "cpu":
            low, high = torch.aminmax(flat)
            if int(low) < 0 or int(high) >= self.num_classes:
                raise ValueError(
                    f"labels must lie in [0, {self.num_classes}) for a prior over {self.num_classes} classes, "
                    f"got values in [{int(low)}, {int(high)}]"
                )
        index, value, residual = (tensor.to(targets.device) for tensor in self.prior)
        spread = residual[flat] / max(self.num_classes - self.top_k, 1)
        rows = spread[:, None].expand(-1, self.num_classes).contiguous()
        rows.scatter_(1, index[flat], value[flat])
        return rows.to(dtype).reshape(*targets.shape, self.num_classes)

    def nbytes(self) -> int:
        """Bytes held by the prior and the sums."""
        return sum(t.numel() * t.element_size() for rows in (self.prior, self.sums) for t in rows)

    def __repr__(self) -> str:
        return (
            f"TopKClassPrior(num_classes={self.num_classes}, top_k={self.top_k}, temperature={self.temperature!r}, "
            f"device={str(self.prior.value.device)!r})"
        )

    def to(self, device: torch.device | str) -> TopKClassPrior:
        self.prior = TopKRows(*(t.to(device) for t in self.prior))
        self.sums = TopKRows(*(t.to(device) for t in self.sums))
        return self

    def state_dict(self) -> dict[str, Any]:
        state = {"num_classes": self.num_classes, "temperature": self.temperature, "top_k": self.top_k}
        for name, rows in (("prior", self.prior), ("sums", self.sums)):
            for field, tensor in zip(TopKRows._fields, rows, strict=True):
                state[f"{name}_{field}"] = tensor.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a state of this class, or of :class:`ClassPrior` (each row keeps its ``top_k`` largest entries)."""
        if state["num_classes"] != self.num_classes:
            raise ValueError(f"the saved class prior has {state['num_classes']} classes, this one {self.num_classes}")
        device = self.prior.value.device
        self.temperature = float(state["temperature"])
        for name in ("prior", "sums"):
            if name in state:  # a ClassPrior's [C, C] matrix
                dense = state[name].to(device=device, dtype=torch.float64)
                zero = torch.zeros(self.num_classes, dtype=torch.float64, device=device)
                rows = self._keep_top(dense.clone(), zero)
            else:
                if state.get("top_k") != self.top_k:
                    raise ValueError(f"the saved class prior keeps top_k={state.get('top_k')}, this one {self.top_k}")
                rows = TopKRows(*(state[f"{name}_{f}"].to(device) for f in TopKRows._fields))
                rows = TopKRows(rows.index.long(), rows.value.double(), rows.residual.double())
            setattr(self, name, rows)
