"""Forward+backward time and peak extra memory of ikl_loss / gkl_loss vs plain KL and the pairwise form.

Targets: ikl/gkl at most 1.5x plain KL at every size; at least 1000x faster than the
pairwise B x C x C formulation at (64, 1000); peak extra memory linear in B*C.
Usage: ``python -m benchmarks --only losses [--device cuda] [--dtype bfloat16]``.
"""

from __future__ import annotations

import argparse
import weakref

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks._common import device_name, time_side_by_side, write_results
from dkl_core import gkl_loss, ikl_loss

SIZES = [(64, 100), (256, 100), (64, 1000), (256, 1000)]
TEMPERATURE = 4.0


def plain_kl(student, teacher, weights):
    """The usual distillation loss people write: F.kl_div on log-softmax / softmax, T^2, batchmean."""
    log_q = F.log_softmax(student / TEMPERATURE, dim=1)
    p = F.softmax(teacher / TEMPERATURE, dim=1)
    return F.kl_div(log_q, p, reduction="batchmean") * TEMPERATURE**2


def pairwise_ikl(student, teacher, weights):
    """IKL as the released code computes it: B x C x C pairwise differences."""
    student, teacher = student.float(), teacher.float()
    diff_t = teacher.unsqueeze(2) - teacher.unsqueeze(1)
    diff_s = student.unsqueeze(2) - student.unsqueeze(1)
    pair_weights = weights.unsqueeze(2) * weights.unsqueeze(1)
    mse = 0.25 * (pair_weights * (diff_t - diff_s) ** 2).sum(dim=(1, 2)).mean()
    ce = -(F.softmax(teacher / TEMPERATURE, dim=1) * F.log_softmax(student / TEMPERATURE, dim=1)).sum(1).mean()
    return 8.0 * mse + ce


def ours_ikl(student, teacher, weights):
    return ikl_loss(student, teacher, mse_weight=8.0, temperature=TEMPERATURE, weights=weights)


def ours_gkl(student, teacher, weights):
    return gkl_loss(student, teacher, mse_weight=8.0, temperature=TEMPERATURE, weights=weights, gamma=0.2)


def ours_ikl_compiled(student, teacher, weights):
    return ikl_loss(student, teacher, mse_weight=8.0, temperature=TEMPERATURE, weights=weights, compiled=True)


def ours_gkl_compiled(student, teacher, weights):
    return gkl_loss(
        student, teacher, mse_weight=8.0, temperature=TEMPERATURE, weights=weights, gamma=0.2, compiled=True
    )


EAGER = {"plain_kl": plain_kl, "ikl_loss": ours_ikl, "gkl_loss": ours_gkl}
COMPILED = {"ikl_compiled": ours_ikl_compiled, "gkl_compiled": ours_gkl_compiled}  # torch.compile'd passes
CANDIDATES = {**EAGER, **COMPILED, "pairwise_ikl": pairwise_ikl}


class PeakMemory(TorchDispatchMode):
    """Peak bytes of live tensors created by ops inside the mode (CPU has no allocator statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._schema.is_mutable:  # in-place and out= ops write into memory that is already counted
            return out
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor._base is None:
                nbytes = tensor.untyped_storage().nbytes()
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(tensor, self._release, nbytes)
        return out


class OpCount(TorchDispatchMode):
    """Operators dispatched, views excluded: on a GPU each one is a kernel launch, which is what small
    losses are bound by there (the CPU pays a few microseconds of framework overhead per op instead)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += not func.is_view
        return func(*args, **(kwargs or {}))


def ops_per_step(loss_fn, inputs) -> int:
    with OpCount() as counter:
        step(loss_fn, *inputs)
    return counter.ops


def compiled_that_work(inputs) -> tuple[dict, str]:
    """The compiled candidates that compile here, and the first error (a GPU image may lack a compiler);
    a failed compile drops those columns and is written into the results instead of ending the run."""
    try:
        for fn in COMPILED.values():
            step(fn, *inputs)
    except Exception as error:  # noqa: BLE001 - any compiler failure; reported, not hidden
        print(f"!! compiled=True failed, measuring eager only: {error!r}", flush=True)
        return {}, repr(error)
    return COMPILED, ""


def make_inputs(batch, num_classes, device, dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    student = (3 * torch.randn(batch, num_classes, generator=g)).to(device, dtype).requires_grad_()
    teacher = (3 * torch.randn(batch, num_classes, generator=g)).to(device, dtype)
    weights = torch.softmax(torch.randn(batch, num_classes, generator=g), dim=1).to(device)
    return student, teacher, weights


def step(loss_fn, student, teacher, weights):
    student.grad = None
    loss_fn(student, teacher, weights).backward()


def peak_extra_bytes(loss_fn, inputs, device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(loss_fn, *inputs)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with PeakMemory() as tracker:
        step(loss_fn, *inputs)
    return tracker.peak


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=30)
    args, _ = parser.parse_known_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    rows, records, compile_error = [], [], ""
    for batch, num_classes in SIZES:
        inputs = make_inputs(batch, num_classes, device, dtype)
        heavy = batch * num_classes * num_classes > 5_000_000
        compiled, error = compiled_that_work(inputs) if not compile_error else ({}, compile_error)
        compile_error = compile_error or error
        fast = {**EAGER, **compiled}
        times = time_side_by_side(
            {n: (lambda f=f, x=inputs: step(f, *x)) for n, f in fast.items()}, device, args.repeats
        )
        pairwise = {"pairwise_ikl": lambda x=inputs: step(pairwise_ikl, *x)}
        times.update(time_side_by_side(pairwise, device, repeats=3 if heavy else 10, warmup=1))
        measured = {**EAGER, "pairwise_ikl": pairwise_ikl}
        memory = {name: peak_extra_bytes(fn, inputs, device) for name, fn in measured.items()}
        ops = {name: ops_per_step(fn, inputs) for name, fn in EAGER.items()}
        record = {
            "batch": batch, "classes": num_classes, "seconds": times, "peak_extra_bytes": memory, "ops": ops,
            "ikl_over_kl": times["ikl_loss"] / times["plain_kl"],
            "gkl_over_kl": times["gkl_loss"] / times["plain_kl"],
            "ikl_compiled_over_kl": times["ikl_compiled"] / times["plain_kl"] if compiled else None,
            "gkl_compiled_over_kl": times["gkl_compiled"] / times["plain_kl"] if compiled else None,
            "pairwise_over_ikl": times["pairwise_ikl"] / times["ikl_loss"],
            "ikl_bytes_per_element": memory["ikl_loss"] / (batch * num_classes),
        }  # fmt: skip
        records.append(record)
        rows.append([
            f"({batch}, {num_classes})",
            *(f"{times[n] * 1e6:,.0f}" if n in times else "failed" for n in CANDIDATES),
            *(f"{record[k]:.2f}x" if record[k] else "failed" for k in ("ikl_over_kl", "gkl_over_kl", "ikl_compiled_over_kl", "gkl_compiled_over_kl")),
            f"{record['pairwise_over_ikl']:,.0f}x",
            f"{memory['plain_kl'] / 2**20:.2f}", f"{memory['ikl_loss'] / 2**20:.2f}", f"{memory['pairwise_ikl'] / 2**20:,.1f}",
            "/".join(str(ops[n]) for n in EAGER),
        ])  # fmt: skip
        print(rows[-1], flush=True)

    name = "losses" if device.type == "cpu" else f"losses_{device.type}_{args.dtype}"
    header = ["(B, C)", *(f"{n} us" for n in CANDIDATES), "ikl/kl", "gkl/kl", "ikl_compiled/kl", "gkl_compiled/kl",
              "pairwise/ikl",
              "kl MiB", "ikl MiB", "pairwise MiB", "ops kl/ikl/gkl"]  # fmt: skip
    notes = (
        f"Device: {device_name(device)}; logits dtype {args.dtype}; forward+backward of the student logits, "
        f"median of {args.repeats} interleaved rounds; peak extra memory of one step. Plain KL is "
        "F.kl_div(log_softmax(s/T), softmax(t/T)); pairwise is the released code's B x C x C form; *_compiled "
        "pass compiled=True (torch.compile'd fused passes, compiled during warm-up). Ops: aten operators "
        "dispatched per eager step, views excluded (on a GPU, kernel launches: what these sizes are bound by)."
    )
    if compile_error:
        notes += f" compiled=True failed on this machine: {compile_error}"
    payload = {"device": device_name(device), "dtype": args.dtype, "compile_error": compile_error, "results": records}
    write_results(name, payload, rows, header, notes)
