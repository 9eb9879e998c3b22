"""The paper's "Training Speed" column: seconds per iteration of every KD method on both ImageNet pairs.

The DKL paper times ResNet34 -> ResNet18 at 0.319 s/iter for ReviewKD and 0.197 for IKL-KD (ratio
1.62), ResNet50 -> MobileNetV1 at 0.526 and 0.252 (ratio 2.09): the released mdistiller trainer's
``batch_time``, from the batch in hand to after ``optimizer.step()``, on 8 GPUs with nn.DataParallel
(global batch 512), without a device sync and without data loading. Here each method (CE, KD, DKD,
ReviewKD, IKL-KD, GKL-KD) runs its ImageNet config's loss through the recipe's own ``step_loss``
(teacher forward, student forward, loss, backward, SGD step; ReviewKD with its ABF modules, IKL/GKL
with the class prior) on one device, on a synthetic batch already on the device: data loading is
excluded, as in the paper's figure, and the device is synchronised once after every timed call of
``--steps`` iterations (so that asynchronous GPU work is counted). Methods are timed in interleaved
rounds and each is reported as a ratio to IKL-KD measured in the same run. Teachers have random weights
(the cost does not depend on them).

Usage: ``make bench-kd-speed`` or ``python -m benchmarks --only kd_speed [--device cuda] [--dtypes bf16,fp32]
[--batch-size N] [--steps N] [--repeats N]``. On a CPU the default batch is 8 images (the paper's per-GPU
batch, 64, at 224 px would take minutes per step); on a GPU it is 64 per step, in bf16 and fp32.
Writes ``kd_speed_<device>.md`` and ``.json`` into ``runs/benchmarks/`` (``--update-committed``: ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

import torch

from benchmarks._common import device_name, time_side_by_side, write_results

REPO = Path(__file__).resolve().parents[1]
METHODS = ("ce", "kd", "dkd", "reviewkd", "ikl", "gkl")
# Config stem of each pair and the paper's s/iter (ReviewKD, IKL-KD) on 8 GPUs, global batch 512.
PAIRS = {
    "ResNet34 -> ResNet18": ("imagenet_resnet34_resnet18", {"reviewkd": 0.319, "ikl": 0.197}),
    "ResNet50 -> MobileNetV1": ("imagenet_resnet50_mobilenetv1_100", {"reviewkd": 0.526, "ikl": 0.252}),
}
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def method_config(stem: str, method: str, batch_size: int):
    """The KD config of ``method`` for the pair (CE: the IKL config's student trained alone)."""
    from dkl_recipe_kd.train import KDConfig

    from dkl_train.config import load_config, with_method

    path = REPO / "recipes" / "kd" / "configs" / f"{stem}_{'ikl' if method == 'ce' else method}.yaml"
    config = load_config(KDConfig, path, [f"batch_size={batch_size}", "output_dir=unused"])
    return with_method(config, "ce") if method == "ce" else config


def make_step(config, device: torch.device, dtype: torch.dtype | None, batch: dict[str, torch.Tensor]):
    """One training iteration of ``config`` as the recipe computes it: a closure over fresh models and optimiser.

    The recipe's own method object computes the loss; only the teacher is given (random weights, no file).
    """
    from dkl_recipe_kd.train import build_method

    from dkl_train.data import get_spec
    from dkl_train.models import create_model
    from dkl_train.optim import build_optimizer

    torch.manual_seed(0)
    spec = get_spec("imagenet")
    method = build_method(config)
    student = create_model(config.student, spec.num_classes, **config.student_kwargs)
    teacher = None
    if getattr(config, "teacher", None):
        teacher = create_model(config.teacher, spec.num_classes, **config.teacher_kwargs).eval().requires_grad_(False)
    trained = method.build(student, spec, teacher=teacher)
    memory_format = torch.channels_last if config.channels_last and device.type == "cuda" else torch.preserve_format
    trained.to(device, memory_format=memory_format)
    optimizer = build_optimizer(config, trained.parameters())

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    method.attach(device, autocast, lambda module: module.to(device, memory_format=memory_format))
    method.start_epoch(100)  # after the warm-up ramp: every term at full weight, as in most of a run

    def step() -> None:
        loss, _ = method.loss(trained, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_pair(stem: str, args, device: torch.device, dtype: torch.dtype | None) -> dict[str, float]:
    """Seconds per iteration of every method of one pair, interleaved."""
    generator = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randn(args.batch_size, 3, 224, 224, generator=generator).to(device),
        "label": torch.randint(0, 1000, (args.batch_size,), generator=generator).to(device),
    }
    steps = {m: make_step(method_config(stem, m, args.batch_size), device, dtype, batch) for m in METHODS}

    def repeated(step):
        def call() -> None:
            for _ in range(args.steps):
                step()

        return call

    seconds = time_side_by_side(
        {m: repeated(s) for m, s in steps.items()}, device, repeats=args.repeats, warmup=args.warmup
    )
    return {m: v / args.steps for m, v in seconds.items()}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_kd_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--dtypes", default=None, help="comma-separated: fp32,bf16,fp16 (default: fp32 on CPU, bf16,fp32 on GPU)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="images per iteration (default: 8 on CPU, 64 on GPU)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="iterations per timed call (default: 1 on CPU, 10 on GPU)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per method first (cuDNN, allocator)")
    args, _ = parser.parse_known_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    args.batch_size = args.batch_size or (64 if on_gpu else 8)
    args.steps = args.steps or (10 if on_gpu else 1)
    dtypes = (args.dtypes or ("bf16,fp32" if on_gpu else "fp32")).split(",")
    if on_gpu:
        torch.backends.cudnn.benchmark = True

    seconds = {
        dtype: {pair: time_pair(stem, args, device, DTYPES[dtype]) for pair, (stem, _) in PAIRS.items()}
        for dtype in dtypes
    }
    rows = []
    for dtype, pairs in seconds.items():
        for pair, per_method in pairs.items():
            paper = PAIRS[pair][1]
            for method in METHODS:
                ratio = per_method[method] / per_method["ikl"]
                reference = (
                    f"{paper[method]:.3f} s/iter, {paper[method] / paper['ikl']:.2f}x" if method in paper else ""
                )
                rows.append([pair, dtype, method, f"{per_method[method]:.4f}", f"{ratio:.2f}", reference])
    name = "kd_speed_" + ("cuda_" + torch.cuda.get_device_name(device).split()[-1].lower() if on_gpu else "cpu")
    payload = {
        "device": device_name(device),
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "steps_per_call": args.steps,
        "repeats": args.repeats,
        "end_to_end": False,
        "seconds_per_iter": seconds,
        "paper_seconds_per_iter": {pair: paper for pair, (_, paper) in PAIRS.items()},
    }
    measured = (
        f"Measured on {payload['device']}, torch {torch.__version__}, batch {args.batch_size} at 224 px per "
        f"iteration, {args.steps} iteration(s) per timed call, median of {args.repeats} interleaved rounds; the "
        "paper's figures are per iteration of a global batch of 512 on 8 GPUs (64 per GPU)."
    )
    header = ["pair", "precision", "method", "s/iter", "ratio to IKL-KD", "paper (8 GPUs, batch 512)"]
    write_results(
        name,
        payload,
        rows,
        header,
        notes=__doc__.split("\n\n")[1] + "\n\n" + measured,
    )
