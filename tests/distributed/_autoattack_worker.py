"""Launched by test_autoattack_two_process.py (and run once without a launcher): evaluate, save this rank's result."""

import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from dkl_core.attacks import autoattack_evaluation, robust_accuracy
from tests.unit.attacks_digits import digits_tensors, make_model


def main(model_path: str, out_dir: str) -> None:
    accelerator = Accelerator(cpu=True)
    torch.set_num_threads(1)
    model = make_model()
    model.load_state_dict(torch.load(model_path, weights_only=True))
    _, _, x, y = digits_tensors()
    x, y = x[:70], y[:70]  # 5 chunks of 16 (the last one short): ranks get 3 and 2
    out = Path(out_dir)
    result = autoattack_evaluation(
        model, x, y, eps=0.08, batch_size=16, version="custom", attacks=["apgd-ce", "apgd-t"],
        progress_path=out / "progress.pt",
    )  # fmt: skip
    validation = robust_accuracy(model, x, y, eps=0.08, batch_size=16)
    torch.save(
        {
            "world_size": accelerator.num_processes,
            "robust": result.robust,
            "per_attack": result.per_attack,
            "clean": result.clean_accuracy,
            "pgd20": (validation.clean_accuracy, validation.robust_accuracy, validation.num_samples),
        },
        out / f"result{accelerator.process_index}.pt",
    )
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
