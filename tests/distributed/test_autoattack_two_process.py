"""Two real processes (gloo, through accelerate launch) split the AutoAttack and PGD-20 evaluations and agree with one."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dkl_core.attacks import autoattack_evaluation
from tests.unit.attacks_digits import digits_tensors, train_digits_model

pytest.importorskip("pyautoattack")

WORKER = Path(__file__).with_name("_autoattack_worker.py")
ROOT = Path(__file__).parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def run(command):
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


class MustNotRun(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        raise AssertionError("every chunk is in the progress files; the model must not run")


@pytest.mark.distributed
def test_two_processes_equal_one(tmp_path):
    model = train_digits_model()
    model_path = tmp_path / "model.pt"
    torch.save(model.state_dict(), model_path)
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir(), double.mkdir()
    run([sys.executable, str(WORKER), str(model_path), str(single)])
    accelerate = Path(sys.executable).with_name("accelerate")
    run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(WORKER), str(model_path), str(double)])  # fmt: skip

    one = torch.load(single / "result0.pt", weights_only=True)
    ranks = [torch.load(double / f"result{r}.pt", weights_only=True) for r in range(2)]
    assert one["world_size"] == 1 and ranks[0]["world_size"] == 2
    for result in ranks:  # every rank returns the single-process result
        assert torch.equal(result["robust"], one["robust"])
        assert result["per_attack"] == one["per_attack"] and result["clean"] == one["clean"]
        assert result["pgd20"] == one["pgd20"]
    assert one["robust"].numel() == 70 and one["pgd20"][2] == 70

    # each rank wrote its own progress file; one process resumes from both without attacking again
    assert sorted(p.name for p in double.glob("progress.pt*")) == ["progress.pt.rank0", "progress.pt.rank1"]
    _, _, x, y = digits_tensors()
    resumed = autoattack_evaluation(
        MustNotRun(model), x[:70], y[:70], eps=0.08, batch_size=16, version="custom",
        attacks=["apgd-ce", "apgd-t"], progress_path=double / "progress.pt",
    )  # fmt: skip
    assert torch.equal(resumed.robust, one["robust"])
