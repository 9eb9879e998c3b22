"""Distillation at vocabulary scale: forward + backward of the loss on ``hidden @ lm_head.T``, dense vs fused.

For KL, IKL, GKL and DKD: the dense loss on the full ``[N, V]`` logits (the teacher's made from its hidden
states under no_grad) against ``dkl_core.fused_linear_*_loss`` (teacher as hidden states + weight), beside
``F.kl_div`` on the dense logits and Liger-Kernel's chunked forward KL
(``LigerFusedLinearJSDLoss(beta=0, weight_hard_loss=0, weight_soft_loss=1)``), all in one call. Reported: median
seconds of a step (interleaved rounds) and its peak extra memory (CUDA allocator statistics on a GPU; on a
CPU, the bytes of live tensors the step's ops create).

Shapes: ``--shape cpu`` is N=2048, H=256, teacher H=384, V=32000 (fp32, chunk_size 128); ``--shape gpu`` is
N=8192, H=2048, teacher H=4096, V=128256 (use ``--dtype bfloat16 --device cuda``).
Targets: fused IKL <= 300 MB peak extra and <= 1.3x Liger's time at the CPU shape; on a GPU at the GPU shape,
<= 2.5 GB extra and <= 1.3x Liger's time.
Usage: ``python -m benchmarks --only vocab [--shape gpu --device cuda --dtype bfloat16] [--no-dense]``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
from collections.abc import Callable

import torch
import torch.nn.functional as F

import dkl_core
from benchmarks._common import device_name, time_side_by_side, write_results
from benchmarks.bench_losses import PeakMemory

SHAPES = {"cpu": dict(rows=2048, hidden=256, teacher_hidden=384, vocab=32000),
          "gpu": dict(rows=8192, hidden=2048, teacher_hidden=4096, vocab=128256)}  # fmt: skip
IKL = dict(mse_weight=1.0, ce_weight=1.0, temperature=1.0, weight_temperature=1.0)
GKL = dict(mse_weight=1.0, ce_weight=1.0, temperature=1.0, gamma=0.5)
DKD = dict(tckd_weight=1.0, nckd_weight=8.0, temperature=1.0)


def make_inputs(shape: dict, device: torch.device, dtype: torch.dtype, top_k: int) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    n, h, ht, v = shape["rows"], shape["hidden"], shape["teacher_hidden"], shape["vocab"]

    def randn(*size, scale=1.0):
        return (scale * torch.randn(*size, generator=g)).to(device, dtype)

    inputs = dict(
        hidden=randn(n, h).requires_grad_(),
        weight=randn(v, h, scale=h**-0.5).requires_grad_(),
        teacher_hidden=randn(n, ht),
        teacher_weight=randn(v, ht, scale=2 * ht**-0.5),
        labels=torch.randint(0, v, (n,), generator=g).to(device),
    )
    # GKL's class prior: kept top_k entries per class, accumulated from a few teacher rows
    prior = dkl_core.TopKClassPrior(v, top_k=top_k, temperature=2.0, device=device)
    with torch.no_grad():
        rows = slice(0, min(n, 256))
        teacher_logits = F.linear(inputs["teacher_hidden"][rows], inputs["teacher_weight"])
        prior.update(teacher_logits.float(), inputs["labels"][rows])
    prior.end_epoch()
    inputs["prior"] = prior
    return inputs


def dense_candidates(x: dict) -> dict[str, Callable[[], torch.Tensor]]:
    """The losses on materialised [N, V] logits (the teacher's under no_grad)."""

    def logits():
        with torch.no_grad():
            teacher = F.linear(x["teacher_hidden"], x["teacher_weight"])
        return F.linear(x["hidden"], x["weight"]), teacher

    def kl_div():
        s, t = logits()
        log_q = F.log_softmax(s.float(), dim=-1)
        return F.kl_div(log_q, F.log_softmax(t.float(), dim=-1), reduction="batchmean", log_target=True)

    def gkl():
        s, t = logits()
        return dkl_core.gkl_loss(s, t, weights=x["prior"].weights(x["labels"]), labels=x["labels"], **GKL)

    return {
        "dense F.kl_div": kl_div,
        "dense kl_loss": lambda: dkl_core.kl_loss(*logits(), labels=x["labels"]),
        "dense ikl_loss": lambda: dkl_core.ikl_loss(*logits(), labels=x["labels"], **IKL),
        "dense gkl_loss": gkl,
        "dense dkd_loss": lambda: dkl_core.dkd_loss(*logits(), x["labels"], **DKD),
    }


def fused_candidates(x: dict, chunk_size: int) -> dict[str, Callable[[], torch.Tensor]]:
    common = dict(
        teacher_hidden=x["teacher_hidden"],
        teacher_weight=x["teacher_weight"],
        labels=x["labels"],
        chunk_size=chunk_size,
    )
    return {
        "fused KL": lambda: dkl_core.fused_linear_kl_loss(x["hidden"], x["weight"], **common),
        "fused IKL": lambda: dkl_core.fused_linear_ikl_loss(x["hidden"], x["weight"], **common, **IKL),
        "fused GKL": lambda: dkl_core.fused_linear_gkl_loss(
            x["hidden"], x["weight"], weights=x["prior"], **common, **GKL
        ),
        "fused DKD": lambda: dkl_core.fused_linear_dkd_loss(x["hidden"], x["weight"], **common, **DKD),
    }


def liger_candidate(x: dict, chunk_size: int, compiled: bool) -> tuple[dict, str]:
    """Liger-Kernel's chunked forward KL, or ``({}, why)`` when it cannot be imported or run here."""
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
    except Exception as error:  # noqa: BLE001 - reported in the results, not hidden
        return {}, f"Liger-Kernel not importable ({error!r}); install requirements/bench-vocab.txt"
    loss = LigerFusedLinearJSDLoss(
        beta=0.0, weight_hard_loss=0.0, weight_soft_loss=1.0, chunk_size=chunk_size, compiled=compiled
    )

    def liger():
        return loss(x["hidden"], x["weight"], x["teacher_hidden"], x["teacher_weight"], x["labels"])

    try:
        step(liger, x)
    except Exception as error:  # noqa: BLE001
        return {}, f"Liger-Kernel's chunked loss failed here: {error!r}"
    return {"Liger fused forward KL": liger}, ""


def step(loss_fn: Callable[[], torch.Tensor], x: dict) -> None:
    x["hidden"].grad = x["weight"].grad = None
    loss_fn().backward()


def peak_extra_bytes(loss_fn: Callable[[], torch.Tensor], x: dict, device: torch.device) -> int:
    x["hidden"].grad = x["weight"].grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(loss_fn, x)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with PeakMemory() as tracker:
        step(loss_fn, x)
    return tracker.peak


def versions() -> dict[str, str]:
    found = {"torch": torch.__version__, "dkl-core": dkl_core.__version__}
    for name in ("liger-kernel", "triton"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--shape", default="cpu", choices=sorted(SHAPES))
    parser.add_argument("--chunk-size", type=int, default=0, help="dkl-core's rows per chunk (default: 128)")
    parser.add_argument(
        "--liger-chunk-size", type=int, default=0, help="Liger's rows per chunk (default: 128 cpu, 1024 gpu shape)"
    )
    parser.add_argument("--top-k", type=int, default=64, help="entries per class of GKL's TopKClassPrior")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-dense", action="store_true", help="skip the dense candidates (memory)")
    args, _ = parser.parse_known_args(argv)
    device, dtype, shape = torch.device(args.device), getattr(torch, args.dtype), SHAPES[args.shape]
    chunk_size = args.chunk_size or 128  # the library's default at V = 128,256 (2**24 / V rounded down)
    liger_chunk_size = args.liger_chunk_size or (128 if args.shape == "cpu" else 1024)  # 1024: Liger's default
    x = make_inputs(shape, device, dtype, args.top_k)
    # Liger's torch.compile of its chunk step needs a GPU toolchain; on a CPU it runs eagerly (compiled=False).
    liger, liger_note = liger_candidate(x, liger_chunk_size, compiled=device.type == "cuda")
    if liger_note:
        print(f"!! {liger_note}", flush=True)
    candidates = {**liger, **fused_candidates(x, chunk_size), **({} if args.no_dense else dense_candidates(x))}

    memory, failed = {}, {}
    for name, fn in list(candidates.items()):
        try:
            memory[name] = peak_extra_bytes(fn, x, device)
        except torch.OutOfMemoryError as error:
            failed[name] = f"out of memory: {str(error).splitlines()[0]}"
            del candidates[name]
            torch.cuda.empty_cache()
        print(f"{name}: peak extra {memory.get(name, 0) / 2**20:,.0f} MiB", flush=True)
    times = time_side_by_side({n: (lambda f=f: step(f, x)) for n, f in candidates.items()}, device, args.repeats, 1)

    reference = "Liger fused forward KL" if liger else None
    rows, records = [], []
    for name in [*candidates, *failed]:
        seconds = times.get(name)
        ratio = seconds / times[reference] if reference and seconds else None
        records.append({"candidate": name, "seconds": seconds, "peak_extra_bytes": memory.get(name),
                        "time_vs_liger": ratio, "failed": failed.get(name)})  # fmt: skip
        rows.append([
            name,
            f"{seconds * 1e3:,.0f}" if seconds else "failed",
            f"{memory[name] / 1e6:,.0f}" if name in memory else failed[name],
            f"{ratio:.2f}x" if ratio else "-",
        ])  # fmt: skip
    fused_ikl = next(r for r in records if r["candidate"] == "fused IKL")
    limit_mb = 300 if args.shape == "cpu" else 2500
    verdict = (
        f"Targets: fused IKL peak extra {fused_ikl['peak_extra_bytes'] / 1e6:,.0f} MB (target <= {limit_mb:,} MB), "
        + (f"time {fused_ikl['time_vs_liger']:.2f}x Liger's (target <= 1.3x)." if reference else "no Liger time.")
    )
    tag = "cpu" if device.type == "cpu" else f"{device.type}_{args.dtype}"
    notes = (
        f"Device: {device_name(device)}; N={shape['rows']}, H={shape['hidden']}, teacher H={shape['teacher_hidden']}, "
        f"V={shape['vocab']}, {args.dtype}, chunk_size={chunk_size}; versions: {versions()}. Forward + backward of "
        f"the student (hidden states and lm_head weight); the teacher's logits are made from its hidden states "
        f"inside every step. Median of {args.repeats} interleaved rounds after one warm-up; peak extra memory of "
        f"one step in MB (10^6 bytes), the gradients of hidden and weight included. IKL: default weights "
        f"softmax(t); GKL: gamma=0.5 with TopKClassPrior(top_k={args.top_k}) weights (the dense GKL gets the "
        f"[N, V] rows); DKD: nckd_weight=8. Liger: LigerFusedLinearJSDLoss(beta=0, weight_hard_loss=0, "
        f"weight_soft_loss=1, chunk_size={liger_chunk_size}, compiled={device.type == 'cuda'}). {verdict}"
    )
    if liger_note:
        notes += f" {liger_note}."
    payload = {"device": device_name(device), "dtype": args.dtype, "shape": shape, "chunk_size": chunk_size,
               "liger_chunk_size": liger_chunk_size,
               "versions": versions(), "liger_note": liger_note, "results": records}  # fmt: skip
    write_results(f"vocab_{tag}", payload, rows, ["candidate", "ms / step", "peak extra MB", "time vs Liger"], notes)
