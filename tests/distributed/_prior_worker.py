"""Launched by test_class_prior_two_process.py: each process accumulates its shard, then all-reduce."""

import sys

import torch
from accelerate import Accelerator

from dkl_core import ClassPrior


def main(out_path: str) -> None:
    accelerator = Accelerator(cpu=True)
    g = torch.Generator().manual_seed(0)
    batches = [(3 * torch.randn(8, 10, generator=g), torch.randint(0, 8, (8,), generator=g)) for _ in range(6)]
    prior = ClassPrior(10, temperature=4.0)
    for index, (logits, targets) in enumerate(batches):
        if index % accelerator.num_processes == accelerator.process_index:
            prior.update(logits, targets)
    result = prior.end_epoch()  # all-reduces across the processes
    gathered = accelerator.gather(result.unsqueeze(0))
    if accelerator.is_main_process:
        torch.save({"priors": gathered, "world_size": accelerator.num_processes}, out_path)
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
