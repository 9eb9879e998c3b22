"""One IKL-AT training step vs one TRADES step: same model, same batch, same attack, same AWP.

Target: an IKL-AT step costs at most 1.05x a TRADES step on CPU. Both steps are the
recipe's own (``recipes/adv/train.py``: :func:`step_loss` = attack in eval mode, AWP perturbation,
natural + adversarial forward, loss, class-prior update; then backward, SGD step, AWP restore),
with the CIFAR-10 setting's attack (the KL/sCE term alone, 5 steps of eps/2, the released "high"
budget), so the two differ only in the loss and the class prior.

``--device cuda`` (for a lent GPU): the same two steps for WRN-34-10 at batch 128 under bf16
autocast (the paper's setting), and AutoAttack (standard, L-inf 8/255, float32, dkl-core's
wrapper) throughput in images/second. AutoAttack's cost depends on how many images stay robust:
the images here are random and labelled with the model's own predictions (clean accuracy 100%),
and the model is untrained, so most images fall to APGD-CE and the figure is an upper bound for a
robust model (where about 57% of the images go through all four attacks).

Usage: ``python -m benchmarks --only adv [--device cuda] [--model resnet8] [--batch-size 32]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks._common import device_name, synchronize, time_side_by_side, write_results


def make_step(method, model, images, labels, device, dtype):
    """A closure running one full training step of ``method`` with the recipe's functions."""
    from dkl_recipe_adv.attack import epoch_attack
    from dkl_recipe_adv.train import AdvConfig, build_method, step_loss

    from dkl_core.attacks import AdversarialWeightPerturbation
    from dkl_train.config import build_config

    config = build_config(AdvConfig, {"method": method, "dataset": "cifar10", "epochs": 200})
    schedule = epoch_attack(config, 199)  # the last epoch: full eps, 5 steps of eps/2
    adv_method = build_method(config)
    adv_method.attach(device, 10)  # the class prior of ikl/gkl
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    awp = AdversarialWeightPerturbation(model, gamma=0.005, lr=0.01)
    batch = {"image": images, "label": labels}

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def step():
        model.train()
        loss, _ = step_loss(config, adv_method, model, model, batch, schedule, awp, autocast)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        awp.restore()
        return loss

    return step


def autoattack_throughput(model, device, images: int, batch_size: int) -> dict:
    from dkl_core.attacks import autoattack_evaluation

    x = torch.rand(images, 3, 32, 32, device=device)
    model.eval()
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    synchronize(device)
    start = time.perf_counter()
    result = autoattack_evaluation(model, x, y, eps=8 / 255, batch_size=batch_size, seed=0)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "images": images, "batch_size": batch_size, "seconds": seconds, "images_per_s": images / seconds,
        "clean": result.clean_accuracy, "robust": result.robust_accuracy, "per_attack": result.per_attack,
    }  # fmt: skip


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=None, help="default resnet8 on CPU, wrn_34_10 on GPU")
    parser.add_argument("--batch-size", type=int, default=None, help="default 32 on CPU, 128 on GPU")
    parser.add_argument("--repeats", type=int, default=None, help="default 5 on CPU, 10 on GPU")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable ratios on a shared machine)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default bf16 on GPU")
    parser.add_argument(
        "--aa-images", type=int, default=500, help="GPU: images for the AutoAttack throughput (0: skip)"
    )
    args, _ = parser.parse_known_args(argv)
    from dkl_train.models import create_model

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if not gpu:
        torch.set_num_threads(args.threads)
    model_name = args.model or ("wrn_34_10" if gpu else "resnet8")
    batch = args.batch_size or (128 if gpu else 32)
    repeats = args.repeats or (10 if gpu else 5)
    dtype = args.dtype or ("bfloat16" if gpu else "float32")
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10).to(device)
    images = torch.rand(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    candidates = {
        "trades step": make_step("trades", model, images, labels, device, dtype),
        "ikl step": make_step("ikl", model, images, labels, device, dtype),
    }
    times = time_side_by_side(candidates, device, repeats=repeats, warmup=1)
    base = times["trades step"]
    rows = [[name, f"{seconds * 1e3:,.1f}", f"{seconds / base:.3f}x"] for name, seconds in times.items()]
    record = {
        "device": device_name(device), "model": model_name, "batch": batch, "dtype": dtype, "repeats": repeats,
        "attack": "5 steps of eps/2 (KL), AWP on", "seconds": times,
        "ratios": {name: t / base for name, t in times.items()}, "target": 1.05,
    }  # fmt: skip
    notes = (
        f"Device: {device_name(device)}; model {model_name}, batch {batch}, 32x32 inputs, autocast {dtype}; one "
        "full training step of recipes/adv (attack: 5 sign steps of eps/2 on the KL term in eval mode; AWP; natural "
        "and adversarial forward; loss; backward; SGD step; AWP restore); median of "
        f"{repeats} interleaved rounds. Ratio = time / TRADES step. Target: ikl <= 1.05x."
    )
    if gpu and args.aa_images:
        record["autoattack"] = autoattack_throughput(model, device, args.aa_images, batch_size=min(500, args.aa_images))
        aa = record["autoattack"]
        rows.append(
            [f"AutoAttack, {aa['images']} images", f"{aa['seconds'] * 1e3:,.0f}", f"{aa['images_per_s']:.1f} img/s"]
        )
        notes += (
            " AutoAttack: standard version, float32, untrained model on random images labelled with its own "
            f"predictions (robust after AutoAttack: {100 * aa['robust']:.1f}%), so an upper bound for a robust model."
        )
    name = "adv" if not gpu else f"adv_{device.type}_{dtype}"
    write_results(name, record, rows, ["candidate", "ms", "ratio"], notes)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
