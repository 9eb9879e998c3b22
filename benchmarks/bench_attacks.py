"""PGD with k steps vs k forward+backward passes of the same model on the same batch.

Target (issue 3): PGD-k costs at most 1.15x k forward+backward passes. The baseline is the
least work any k-step gradient attack must do: k times (forward, cross-entropy, backward to the
*input* only) with the model in eval mode and its parameters frozen. The candidates are
``dkl_core.attacks.pgd`` with the CE loss (with and without the input checks, which add one
no-grad forward) and with the TRADES/KL loss (which needs one no-grad forward for the natural
logits), plus the IKL inner maximisation of adversarial training (5 steps as released).
Usage: ``python -m benchmarks --only attacks [--device cuda] [--model wrn_34_10] [--batch-size 128]``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks._common import device_name, time_side_by_side, write_results
from dkl_core.attacks import inner_maximization, pgd


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
    parser.add_argument("--batch-size", type=int, default=None, help="default 32 on CPU, 128 on GPU")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=None, help="default 5 on CPU, 20 on GPU")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="autocast dtype")
    args, _ = parser.parse_known_args(argv)
    from dkl_train.models import create_model  # the shared model zoo; imported here so dkl-core stays torch-only

    device = torch.device(args.device)
    batch = args.batch_size or (32 if device.type == "cpu" else 128)
    repeats = args.repeats or (5 if device.type == "cpu" else 20)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10).to(device).eval()
    images = torch.rand(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    k, eps = args.steps, 8 / 255
    prior = torch.full((10, 10), 0.1, device=device)
    candidates = {
        f"{k} x fwd+bwd": lambda: frozen_baseline(model, images, labels, k),
        "pgd ce": lambda: pgd(model, images, labels, eps=eps, step_size=2 / 255, steps=k),
        "pgd ce, no checks": lambda: pgd(
            model, images, labels, eps=eps, step_size=2 / 255, steps=k, check_inputs=False
        ),
        "pgd kl": lambda: pgd(model, images, labels, eps=eps, step_size=2 / 255, steps=k, loss="kl"),
    }
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    with autocast:
        times = time_side_by_side(candidates, device, repeats=repeats, warmup=1)
        inner = time_side_by_side(
            {
                "5 x fwd+bwd": lambda: frozen_baseline(model, images, labels, 5),
                "inner max ikl (5 steps)": lambda: inner_maximization(
                    model,
                    images,
                    labels,
                    epoch=200,
                    epochs=200,
                    budget="high_as_released",
                    attack_loss="ikl",
                    class_prior=prior,
                ),
            },  # fmt: skip
            device,
            repeats=repeats,
            warmup=1,
        )
    base = times[f"{k} x fwd+bwd"]
    rows = [[name, f"{seconds * 1e3:,.1f}", f"{seconds / base:.3f}x"] for name, seconds in times.items()]
    rows.append(["5 x fwd+bwd", f"{inner['5 x fwd+bwd'] * 1e3:,.1f}", "1.000x"])
    rows.append([
        "inner max ikl (5 steps)", f"{inner['inner max ikl (5 steps)'] * 1e3:,.1f}",
        f"{inner['inner max ikl (5 steps)'] / inner['5 x fwd+bwd']:.3f}x",
    ])  # fmt: skip
    record = {
        "device": device_name(device), "model": args.model, "batch": batch, "steps": k, "dtype": args.dtype,
        "seconds": {**times, **inner},
        "pgd_ce_over_baseline": times["pgd ce"] / base,
        "pgd_ce_no_checks_over_baseline": times["pgd ce, no checks"] / base,
        "pgd_kl_over_baseline": times["pgd kl"] / base,
        "inner_max_over_baseline": inner["inner max ikl (5 steps)"] / inner["5 x fwd+bwd"],
        "target": 1.15,
    }  # fmt: skip
    name = "attacks" if device.type == "cpu" else f"attacks_{device.type}_{args.dtype}"
    notes = (
        f"Device: {device_name(device)}; model {args.model}, batch {batch}, 32x32 inputs, L-inf eps 8/255, "
        f"autocast {args.dtype}; median of {repeats} interleaved rounds. Ratio = time / time of the same "
        "number of input-gradient forward+backward passes (eval mode, frozen parameters). Target: <= 1.15x."
    )
    write_results(name, record, rows, ["candidate", "ms", "ratio"], notes)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
