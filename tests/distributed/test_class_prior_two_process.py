"""Two real processes (gloo, through accelerate launch) produce the prior one process gets."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dkl_core import ClassPrior

WORKER = Path(__file__).with_name("_prior_worker.py")


def launch_two_processes(script: Path, *args: str) -> None:
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(script), *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.distributed
def test_all_reduced_prior_equals_single_process_prior(tmp_path):
    out = tmp_path / "prior.pt"
    launch_two_processes(WORKER, str(out))
    saved = torch.load(out)
    assert saved["world_size"] == 2
    priors = saved["priors"]
    torch.testing.assert_close(priors[0], priors[1], rtol=0, atol=0)

    g = torch.Generator().manual_seed(0)
    batches = [(3 * torch.randn(8, 10, generator=g), torch.randint(0, 8, (8,), generator=g)) for _ in range(6)]
    single = ClassPrior(10, temperature=4.0)
    for logits, targets in batches:
        single.update(logits, targets)
    expected = single.end_epoch()
    torch.testing.assert_close(priors[0], expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(priors[0][8:], torch.full((2, 10), 0.1, dtype=torch.float64))
