"""Training iterations per second of FixMatch-IKL vs FixMatch: forward, loss, backward, optimiser step, EMA update.

Target: on CPU with the digits config, a FixMatch-IKL iteration costs at most 1.05x a FixMatch
iteration (the IKL consistency is O(B*C), small next to the network). With ``--device cuda``: ViT-S/2
at the paper's batch (8 labeled + 8 unlabeled x 2 views, CIFAR-100) under bf16 autocast.
Data loading is left out (it is the same for both). Both models start from the same weights.
Usage: ``python -m benchmarks --only ssl [--device cuda] [--repeats 20]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
from pathlib import Path

import torch
from dkl_recipe_ssl.train import SSLConfig, build_method, build_optimizer

from benchmarks._common import device_name, time_side_by_side, write_results
from dkl_train.averaging import ema_model
from dkl_train.config import load_config
from dkl_train.data import get_spec
from dkl_train.models import create_model
from dkl_train.optim import iteration_learning_rate

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "ssl" / "configs"
PAIRS = {
    "cpu": ("digits_fixmatch.yaml", "digits_fixmatch_ikl.yaml"),
    "cuda": ("cifar100_200_fixmatch.yaml", "cifar100_200_fixmatch_ikl.yaml"),
}


def make_batch(config: SSLConfig, device: torch.device, seed: int = 0) -> tuple[dict, dict]:
    """Random normalised images and labels with the config's global batch shapes (one process)."""
    spec = get_spec(config.dataset)
    g = torch.Generator().manual_seed(seed)
    size, n_lb, n_ulb = spec.image_size, config.batch_size, config.uratio * config.batch_size

    def images(n: int) -> torch.Tensor:
        return torch.randn(n, 3, size, size, generator=g).to(device)

    labeled = {"image": images(n_lb), "label": torch.randint(0, spec.num_classes, (n_lb,), generator=g).to(device)}
    unlabeled = {"weak": images(n_ulb), "strong": images(n_ulb)}
    return labeled, unlabeled


def make_step(config: SSLConfig, model: torch.nn.Module, batch: tuple[dict, dict], autocast: bool):
    """One training iteration of the recipe (the same calls as its loop, without the Accelerator)."""
    optimizer = build_optimizer(config, model)
    ema = ema_model(model, config.ema_decay)
    method = build_method(config, teacher=ema.module)
    device_type = next(model.parameters()).device.type
    state = {"iteration": config.warmup_iters}

    def step() -> None:
        for group in optimizer.param_groups:
            group["lr"] = iteration_learning_rate(config, state["iteration"]) * group.get("lr_scale", 1.0)
        context = torch.autocast(device_type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with context:
            loss, _ = method.loss(model, *batch, state["iteration"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update_parameters(model)
        state["iteration"] += 1

    return step


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    args, _ = parser.parse_known_args(argv)
    device = torch.device(args.device)
    autocast = device.type == "cuda"  # bf16 on the GPU, as a fast paper run would use; fp32 on the CPU
    base_name, ikl_name = PAIRS["cuda" if device.type == "cuda" else "cpu"]
    configs = {name: load_config(SSLConfig, CONFIGS / name) for name in (base_name, ikl_name)}
    base = configs[base_name]
    spec = get_spec(base.dataset)
    torch.manual_seed(0)
    model = create_model(base.model, spec.num_classes, **base.model_kwargs).to(device)
    batch = make_batch(base, device)
    steps = {
        "fixmatch": make_step(configs[base_name], copy.deepcopy(model), batch, autocast),
        "fixmatch_ikl": make_step(configs[ikl_name], copy.deepcopy(model), batch, autocast),
    }
    seconds = time_side_by_side(steps, device, repeats=args.repeats, warmup=3)
    ratio = seconds["fixmatch_ikl"] / seconds["fixmatch"]
    images = base.batch_size * (1 + 2 * base.uratio)
    payload = {
        "device": device_name(device),
        "model": base.model,
        "configs": [base_name, ikl_name],
        "images_per_iteration": images,
        "autocast_bf16": autocast,
        "seconds_per_iteration": seconds,
        "iterations_per_s": {k: 1.0 / v for k, v in seconds.items()},
        "ikl_over_fixmatch": ratio,
        "target": "<= 1.05",
    }
    rows = [[name, f"{1e3 * s:.1f}", f"{1.0 / s:.2f}"] for name, s in seconds.items()]
    rows.append(["ratio ikl/fixmatch", f"{ratio:.3f}x", "target <= 1.05x"])
    name = "ssl" if device.type == "cpu" else f"ssl_{device.type}_bf16"
    notes = (
        f"Device: {device_name(device)}; {base.model} on {base.dataset}, {images} images per iteration "
        f"({base.batch_size} labeled + 2 x {base.uratio * base.batch_size} unlabeled); one training iteration "
        f"(forward, loss, backward, optimiser step, EMA update), median of {args.repeats} interleaved rounds"
        f"{', bf16 autocast' if autocast else ', float32'}; data loading excluded."
    )
    write_results(name, payload, rows, ["method", "ms / iteration", "iterations / s"], notes)
