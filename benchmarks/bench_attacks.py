"""PGD with k steps vs k forward+backward passes of the same model on the same batch.

Target: PGD-k costs at most 1.15x k forward+backward passes. The baseline is the
least work any k-step gradient attack must do: k times (forward, cross-entropy, backward to the
*input* only) with the model in eval mode and its parameters frozen. The candidates are
``dkl_core.attacks.pgd`` with the CE loss (with and without the input checks, which add one
no-grad forward) and with the TRADES/KL loss (which needs one no-grad forward for the natural
logits); ``--all`` adds PGD without the checks and with the IKL attack loss of adversarial training.
Usage: ``python -m benchmarks --only attacks [--device cuda] [--model wrn_34_10] [--batch-size 128]``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks._common import device_name, time_side_by_side, write_results
from dkl_core.attacks import ikl_attack_loss, pgd


def k_forward_backward(model, images, labels, steps):
    """The floor: k input-gradient passes, no projection, no sign, no bookkeeping."""
    for _ in range(steps):
        x = images.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x), labels, reduction="sum"), x)
    return grad


def frozen_baseline(model, images, labels, steps):
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        return k_forward_backward(model, images, labels, steps)
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="wrn_16_2", help="a dkl_train.models name (CIFAR-sized, 32x32 inputs)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 16 on CPU, 128 on GPU")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=None, help="default 5 on CPU, 20 on GPU")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable ratios on a shared machine)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="autocast dtype")
    parser.add_argument("--all", action="store_true", help="also time PGD without input checks and the inner max")
    args, _ = parser.parse_known_args(argv)
    from dkl_train.models import create_model  # the shared model zoo; imported here so dkl-core stays torch-only

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    batch = args.batch_size or (16 if device.type == "cpu" else 128)
    repeats = args.repeats or (5 if device.type == "cpu" else 20)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10).to(device).eval()
    images = torch.rand(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    k, eps, step = args.steps, 8 / 255, 2 / 255
    prior = torch.full((10, 10), 0.1, device=device)
    baseline = f"{k} x fwd+bwd"
    candidates = {
        baseline: lambda: frozen_baseline(model, images, labels, k),
        "pgd ce": lambda: pgd(model, images, labels, eps=eps, step_size=step, steps=k),
        "pgd kl": lambda: pgd(model, images, labels, eps=eps, step_size=step, steps=k, loss="kl"),
    }
    if args.all:
        candidates["pgd ce, no checks"] = lambda: pgd(
            model, images, labels, eps=eps, step_size=step, steps=k, check_inputs=False
        )
        candidates[f"inner max ikl ({k} steps)"] = lambda: pgd(
            model, images, labels, eps=eps, step_size=step, steps=k, loss=ikl_attack_loss(prior)
        )
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
        times = time_side_by_side(candidates, device, repeats=repeats, warmup=1)
    base = times[baseline]
    rows = [[name, f"{seconds * 1e3:,.1f}", f"{seconds / base:.3f}x"] for name, seconds in times.items()]
    record = {
        "device": device_name(device), "model": args.model, "batch": batch, "steps": k, "dtype": args.dtype,
        "repeats": repeats, "seconds": times, "ratios": {name: t / base for name, t in times.items()}, "target": 1.15,
    }  # fmt: skip
    name = "attacks" if device.type == "cpu" else f"attacks_{device.type}_{args.dtype}"
    notes = (
        f"Device: {device_name(device)}; model {args.model}, batch {batch}, 32x32 inputs, L-inf eps 8/255, "
        f"{k} steps, autocast {args.dtype}; median of {repeats} interleaved rounds. Ratio = time / time of {k} "
        "input-gradient forward+backward passes (eval mode, frozen parameters). Target: <= 1.15x. "
        "pgd ce includes the input checks (one extra no-grad forward); pgd kl needs one no-grad forward "
        "for the natural logits, so its floor is about 1 + 1/(3k)."
    )
    write_results(name, record, rows, ["candidate", "ms", "ratio"], notes)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
