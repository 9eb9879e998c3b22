"""Cost of one KD training step: IKL-KD vs Hinton KD, and the Accelerate-driven step vs a bare PyTorch step.

Targets, on CPU: one IKL-KD step (resnet32x4 -> resnet8x4, batch 64, 32x32, class prior on)
costs at most 1.05x one KD step; the step as ``dkl_train.training.Run.train_epoch`` drives it
(Accelerate's ``accumulate``/``backward``, the non-finite check, the bookkeeping) costs at most 1.05x
a hand-written PyTorch step doing the same work. With ``--device cuda``: images/s of ResNet34 ->
ResNet18 IKL-KD at 224 px in bf16 on synthetic data (the paper: 0.197 s per 512-image iteration on
8 GPUs, about 325 images/s per GPU), recorded with the device name.

Usage: ``python -m benchmarks --only kd [--device cuda] [--repeats 5] [--batch-size 64]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
import torch.nn.functional as F

from benchmarks._common import device_name, time_side_by_side, write_results
from dkl_core import ClassPrior, ikl_loss, kl_loss

PAPER_IMAGES_PER_S_PER_GPU = 512 / 0.197 / 8


def kd_objective(method: str, prior: ClassPrior):
    """The recipe's losses at the resnet32x4 -> resnet8x4 settings (KD 0.1/0.9, IKL ce/mse 1/8 with GI)."""

    def loss(student_logits, teacher_logits, labels):
        ce = F.cross_entropy(student_logits, labels)
        if method == "kd":
            return 0.1 * ce + 0.9 * kl_loss(student_logits, teacher_logits, temperature=4.0)
        prior.update(teacher_logits, labels)
        term = ikl_loss(student_logits, teacher_logits, mse_weight=8.0, temperature=4.0, weights=prior.weights(labels))
        return ce + term

    return loss


def bare_step(student, optimizer, teacher, objective, batch):
    """The hand-written PyTorch step every KD codebase has."""
    with torch.no_grad():
        teacher_logits = teacher(batch["image"])
    loss = objective(student(batch["image"]), teacher_logits, batch["label"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class OneBatchLoader:
    """What Run.train_epoch iterates: a loader with ``set_epoch`` (here the same batch ``steps`` times)."""

    def __init__(self, batch, steps: int) -> None:
        self.batch, self.steps = batch, steps

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return iter([self.batch] * self.steps)


def cpu_benchmark(args) -> tuple[dict, list[list[str]]]:
    from dkl_train.config import EpochConfig, load_config
    from dkl_train.models import create_model
    from dkl_train.training import Run

    device = torch.device("cpu")
    torch.manual_seed(0)
    teacher = create_model("resnet32x4", 100).eval()
    batch = {"image": torch.randn(args.batch_size, 3, 32, 32), "label": torch.randint(0, 100, (args.batch_size,))}

    def fresh_student():
        torch.manual_seed(1)
        student = create_model("resnet8x4", 100)
        return student, torch.optim.SGD(student.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)

    students = {name: fresh_student() for name in ("kd", "ikl", "ikl_bare")}
    objectives = {name: kd_objective("kd" if name == "kd" else "ikl", ClassPrior(100, 4.0)) for name in students}

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(
            EpochConfig, None, [f"output_dir={tmp}/run", f"batch_size={args.batch_size}", "log_every=1000", "lr=1e-4"]
        )
        run = Run(config)
        accel_student, accel_optimizer = run.prepare(*fresh_student())
        accel_objective = kd_objective("ikl", ClassPrior(100, 4.0))
        loader = OneBatchLoader(batch, steps=1)
        run.build_scheduler(accel_optimizer, loader)

        def accelerate_step():
            def compute_loss(b):
                with torch.no_grad(), run.accelerator.autocast():
                    t = teacher(b["image"])
                loss = accel_objective(accel_student(b["image"]), t, b["label"])
                return loss, {"loss": loss.detach()}

            run.train_epoch(accel_student, accel_optimizer, loader, compute_loss, epoch=0)

        # Compared pairs sit next to each other in every interleaved round; the Accelerate step goes first
        # (the last slot of a round measured a few percent slower in repeated runs on a busy machine).
        candidates = {
            "ikl_accelerate_step": accelerate_step,
            "ikl_bare_step": lambda: bare_step(*students["ikl_bare"], teacher, objectives["ikl_bare"], batch),
            "kd_step": lambda: bare_step(*students["kd"], teacher, objectives["kd"], batch),
            "ikl_step": lambda: bare_step(*students["ikl"], teacher, objectives["ikl"], batch),
        }
        seconds = time_side_by_side(candidates, device, repeats=args.repeats, warmup=1)
        run.accelerator.end_training()

    ikl_vs_kd = seconds["ikl_step"] / seconds["kd_step"]
    accel_vs_bare = seconds["ikl_accelerate_step"] / seconds["ikl_bare_step"]
    payload = {
        "device": device_name(device),
        "batch_size": args.batch_size,
        "seconds_per_step": seconds,
        "ratios": {"ikl_vs_kd": ikl_vs_kd, "accelerate_vs_bare": accel_vs_bare},
        "targets": {"ikl_vs_kd": 1.05, "accelerate_vs_bare": 1.05},
    }
    rows = [
        ["IKL-KD step / KD step", f"{seconds['ikl_step'] * 1e3:.0f} / {seconds['kd_step'] * 1e3:.0f} ms", f"{ikl_vs_kd:.3f}", "<= 1.05"],
        ["Run.train_epoch step / bare step (IKL)", f"{seconds['ikl_accelerate_step'] * 1e3:.0f} / {seconds['ikl_bare_step'] * 1e3:.0f} ms",
         f"{accel_vs_bare:.3f}", "<= 1.05"],
    ]  # fmt: skip
    return payload, rows


def cuda_benchmark(args) -> tuple[dict, list[list[str]]]:
    """ResNet34 -> ResNet18 IKL-KD at 224 px, bf16, synthetic data, through Run (the recipe's path)."""
    from dkl_train.config import EpochConfig, load_config
    from dkl_train.models import create_model
    from dkl_train.training import Run

    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(
            EpochConfig,
            None,
            [
                f"output_dir={tmp}/run",
                f"batch_size={args.batch_size}",
                "mixed_precision=bf16",
                "log_every=100000",
                "lr=1e-3",
            ],
        )
        run = Run(config)
        teacher = create_model("timm:resnet34", 1000).to(run.device).eval()
        student = create_model("timm:resnet18", 1000)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-4)
        student, optimizer = run.prepare(student, optimizer)
        prior = ClassPrior(1000, 1.0, device=run.device)
        batch = {
            "image": torch.randn(args.batch_size, 3, 224, 224, device=device),
            "label": torch.randint(0, 1000, (args.batch_size,), device=device),
        }
        loader = OneBatchLoader(batch, steps=args.cuda_steps)
        run.build_scheduler(optimizer, loader)

        def make_step(method):
            def compute_loss(b):
                with torch.no_grad(), run.accelerator.autocast():
                    t = teacher(b["image"]).float()
                s = student(b["image"])
                ce = F.cross_entropy(s, b["label"])
                if method == "kd":
                    return ce + kl_loss(s, t, temperature=1.0), {}
                prior.update(t, b["label"])
                term = ikl_loss(s, t, mse_weight=0.5, ce_weight=1.0, weights=prior.weights(b["label"]))
                return ce + term, {}

            return lambda: run.train_epoch(student, optimizer, loader, compute_loss, epoch=0)

        seconds = time_side_by_side(
            {"kd": make_step("kd"), "ikl": make_step("ikl")}, device, repeats=args.repeats, warmup=1
        )
        run.accelerator.end_training()
    images_per_s = {k: args.batch_size * args.cuda_steps / v for k, v in seconds.items()}
    payload = {
        "device": device_name(device),
        "batch_size": args.batch_size,
        "images_per_s": images_per_s,
        "paper_images_per_s_per_gpu": PAPER_IMAGES_PER_S_PER_GPU,
        "ikl_vs_kd": seconds["ikl"] / seconds["kd"],
    }
    rows = [
        [f"ResNet34 -> ResNet18 {k.upper()} (bf16, 224 px, batch {args.batch_size})", f"{v:.0f} images/s",
         f"paper ~{PAPER_IMAGES_PER_S_PER_GPU:.0f} images/s per GPU (DataParallel, 8 GPUs)"]
        for k, v in images_per_s.items()
    ]  # fmt: skip
    return payload, rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_kd", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 on CPU, 128 on CUDA")
    parser.add_argument("--cuda-steps", type=int, default=10, help="steps per timed call on CUDA")
    args, _ = parser.parse_known_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.device == "cuda":
        args.batch_size = args.batch_size or 128
        payload, rows = cuda_benchmark(args)
        write_results("kd_cuda", payload, rows, ["setting", "throughput", "reference"], notes=__doc__.split("\n\n")[1])
    else:
        args.batch_size = args.batch_size or 64
        payload, rows = cpu_benchmark(args)
        write_results(
            "kd", payload, rows, ["comparison", "time per step", "ratio", "target"], notes=__doc__.split("\n\n")[1]
        )
