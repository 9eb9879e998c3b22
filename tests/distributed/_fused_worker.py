"""Launched by test_fused_linear_two_process.py: the fused losses and TopKClassPrior on two gloo processes.

Each process holds one shard of a tiny token batch (two micro-batches of ``[B, T]`` positions). It accumulates
a ``TopKClassPrior`` over its shard and all-reduces it (``end_epoch``), then runs one gradient-accumulation step
of a float64 student (``proj`` -> tanh -> ``lm_head``) wrapped in DDP by ``accelerator.prepare`` with the fused
IKL and GKL losses: ``reduction="mean"`` with ``num_items_in_batch`` = the valid positions of the whole step
(all processes, all micro-batches), and the loss multiplied by the world size before ``backward`` because DDP
averages the gradients over the processes. The loss is computed inside the DDP module's forward
("inside") and, as in the README, on ``model.module.lm_head.weight`` after a forward that returns the hidden
states ("outside"); and IKL once more with ``num_items_in_batch`` as an int64 tensor. Each process saves what it got to ``rank{r}.pt``; the test compares it with the dense
losses on the whole batch in one process.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import dkl_core

WORLD, MICRO, B, T = 2, 2, 2, 3  # 12 positions per process, 24 in all
H_IN, H, H_T, V = 5, 8, 6, 37
TOP_K = 8
PRIOR_TEMPERATURE = 2.0
IKL = dict(mse_weight=2.0, ce_weight=1.0, temperature=2.0, weight_temperature=3.0)
GKL = dict(mse_weight=4.0, ce_weight=1.0, temperature=2.0, gamma=0.5)
CHUNK = 4


def problem() -> dict[str, torch.Tensor]:
    """The whole batch, ``[WORLD, MICRO, B, T, ...]``, and the student's and teacher's parameters (float64)."""
    g = torch.Generator().manual_seed(0)
    dt = torch.float64
    labels = torch.randint(0, V, (WORLD, MICRO, B, T), generator=g)
    labels[0, 0, 0, :2] = -100  # a prompt
    labels[0, 1, 1, 2] = -100  # padding
    labels[1, 0, 1, 0] = -100
    labels[1, 1] = -100  # process 1's second micro-batch: every position ignored
    return {
        "x": torch.randn(WORLD, MICRO, B, T, H_IN, generator=g, dtype=dt),
        "teacher_hidden": 2 * torch.randn(WORLD, MICRO, B, T, H_T, generator=g, dtype=dt),
        "teacher_weight": torch.randn(V, H_T, generator=g, dtype=dt),
        "teacher_bias": torch.randn(V, generator=g, dtype=dt),
        "labels": labels,
        "proj.weight": torch.randn(H, H_IN, generator=g, dtype=dt),
        "proj.bias": torch.randn(H, generator=g, dtype=dt),
        "lm_head.weight": torch.randn(V, H, generator=g, dtype=dt),
        "lm_head.bias": torch.randn(V, generator=g, dtype=dt),
    }


class Student(nn.Module):
    """``proj`` -> tanh gives the hidden states; ``lm_head`` is the output layer the fused losses take."""

    def __init__(self, data: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.proj = nn.Linear(H_IN, H).double()
        self.lm_head = nn.Linear(H, V).double()
        self.load_state_dict({k: data[k] for k in ("proj.weight", "proj.bias", "lm_head.weight", "lm_head.bias")})

    def forward(self, x: torch.Tensor, loss_fn=None, **kwargs):
        hidden = torch.tanh(self.proj(x))
        if loss_fn is None:
            return hidden
        hidden.retain_grad()
        loss = loss_fn(hidden, self.lm_head.weight, student_bias=self.lm_head.bias, **kwargs)
        return loss, hidden


def teacher_logits(data: dict[str, torch.Tensor], rank: int, micro: int) -> torch.Tensor:
    return F.linear(data["teacher_hidden"][rank, micro], data["teacher_weight"], data["teacher_bias"])


def one_step(accelerator, model, data, loss_fn, options, inside: bool) -> dict[str, object]:
    """One accumulated step (MICRO micro-batches, the last one synchronised); the losses and gradients seen here."""
    rank = accelerator.process_index
    model.zero_grad(set_to_none=True)
    losses, hidden_grads = [], []
    for micro in range(MICRO):
        sync = micro == MICRO - 1
        with nullcontext() if sync else accelerator.no_sync(model):
            kwargs = dict(
                teacher_hidden=data["teacher_hidden"][rank, micro], teacher_weight=data["teacher_weight"],
                teacher_bias=data["teacher_bias"], labels=data["labels"][rank, micro], chunk_size=CHUNK, **options,
            )  # fmt: skip
            x = data["x"][rank, micro]
            if inside:
                loss, hidden = model(x, loss_fn=loss_fn, **kwargs)
            else:
                hidden = model(x)
                hidden.retain_grad()
                head = model.module.lm_head
                loss = loss_fn(hidden, head.weight, student_bias=head.bias, **kwargs)
            # DDP averages the gradients over the processes: scale the loss so that they add up instead.
            accelerator.backward(loss * accelerator.num_processes)
        losses.append(loss.detach().clone())
        hidden_grads.append(hidden.grad.detach().clone())
    grads = {name.removeprefix("module."): p.grad.detach().clone() for name, p in model.named_parameters()}
    return {"losses": torch.stack(losses), "hidden_grads": torch.stack(hidden_grads), "grads": grads}


def main(out_dir: str) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    assert world == WORLD, world
    data = problem()
    labels = data["labels"][rank]

    # The class priors: each process its shard, then end_epoch() all-reduces.
    exact = dkl_core.TopKClassPrior(V, top_k=V, temperature=PRIOR_TEMPERATURE)
    small = dkl_core.TopKClassPrior(V, top_k=TOP_K, temperature=PRIOR_TEMPERATURE)
    for micro in range(MICRO):
        for prior in (exact, small):
            prior.update(teacher_logits(data, rank, micro), labels[micro])
    exact.end_epoch()
    small.end_epoch()
    everything = torch.arange(V)

    # What a trainer computes before the step: the valid positions of every process, GKL's sum of W_b^2 too.
    valid = labels != -100
    num_items = valid.sum().to(torch.float64)
    rows = small.weights(labels[valid], dtype=torch.float64) ** GKL["gamma"]
    mass_sq_sum = rows.sum(dim=-1).square().sum()
    totals = torch.stack([num_items, mass_sq_sum])
    torch.distributed.all_reduce(totals)
    num_items_in_batch = int(totals[0])
    items_tensor = totals[0].to(torch.int64)  # the form the Hugging Face Trainer passes: an int64 tensor

    model = accelerator.prepare(Student(data))
    results = {
        "world_size": world,
        "model_type": type(model).__name__,
        "exact_prior": exact.weights(everything, dtype=torch.float64),
        "small_prior": small.weights(everything, dtype=torch.float64),
        "num_items_in_batch": num_items_in_batch,
        "mass_sq_sum": totals[1],
    }
    cases = {
        "ikl": (dkl_core.fused_linear_ikl_loss, dict(IKL, num_items_in_batch=num_items_in_batch)),
        "gkl": (
            dkl_core.fused_linear_gkl_loss,
            dict(GKL, weights=small, num_items_in_batch=num_items_in_batch, mass_sq_sum=totals[1]),
        ),
    }
    for name, (loss_fn, options) in cases.items():
        for inside in (True, False):
            results[f"{name}_{'inside' if inside else 'outside'}"] = one_step(
                accelerator, model, data, loss_fn, options, inside
            )
    options = dict(IKL, num_items_in_batch=items_tensor)
    results["ikl_tensor_items"] = one_step(accelerator, model, data, dkl_core.fused_linear_ikl_loss, options, True)
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
