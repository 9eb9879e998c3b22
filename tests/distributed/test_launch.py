"""How runs are launched: two machines of one process each equal one machine of two processes, exactly.

The two "machines" are started the way a cluster starts them: scripts/slurm/multinode.sbatch, with
`srun` and `scontrol` replaced by stand-ins that run its per-node command once per node on this host.
Each node is then its own `accelerate launch --num_machines 2 --machine_rank R --main_process_ip
127.0.0.1 --main_process_port P` with one process; on a machine without GPUs both join one gloo group
(Run asks Accelerate for CPU processes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.recipes.conftest import REPO, _free_port, digits_dir, digits_teacher, launch_command, run_launch  # noqa: F401

ARGS = ["--config", "recipes/kd/configs/digits_resnet14_resnet8_ikl.yaml", "student=resnet8", "teacher=resnet8",
        "epochs=2", "max_steps_per_epoch=2", "batch_size=16", "eval_subset=32", "eval_batch_size=16",
        "num_workers=0", "warmup_epochs=2", "log_step_losses=true", "deterministic=true"]  # fmt: skip

# srun: the step's command once per node (SLURM_NODEID 0..N-1) side by side, exit status the highest one.
FAKE_SRUN = """#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_NNODES; node++)); do SLURM_NODEID=$node "$@" & pids+=($!); done
rc=0
for pid in "${pids[@]}"; do wait "$pid"; status=$?; ((status > rc)) && rc=$status; done
exit $rc
"""
FAKE_SCONTROL = """#!/bin/bash
case "$1" in show) echo 127.0.0.1 ;; *) echo "$@" >> "$(dirname "$0")/scontrol.log" ;; esac
"""


def slurm_command(tmp_path: Path, nodes: int, *args: str) -> list[str]:
    """scripts/slurm/multinode.sbatch as SLURM would run it on ``nodes`` nodes of one GPU (here: one CPU process)."""
    bin_dir = tmp_path / "fake_slurm"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "SLURM_SUBMIT_DIR": str(REPO), "SLURM_JOB_ID": "4242", "SLURM_NNODES": str(nodes),
        "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_GPUS_ON_NODE": "1", "MAIN_PORT": str(_free_port()),
        "ACCELERATE": str(Path(sys.executable).parent / "accelerate"),
        "LAUNCH_ARGS": "--mixed_precision no --dynamo_backend no --num_cpu_threads_per_process 1",
    }  # fmt: skip
    return ["env", *(f"{k}={v}" for k, v in env.items()), "bash", str(REPO / "scripts/slurm/multinode.sbatch"), *args]


@pytest.mark.distributed
def test_two_machines_equal_one_machine_with_two_processes(digits_dir, digits_teacher, tmp_path):  # noqa: F811
    common = [*ARGS, f"data_dir={digits_dir}", f"teacher_checkpoint={digits_teacher}"]
    one_node = run_launch(launch_command("recipes/kd/train.py", *common, f"output_dir={tmp_path / 'one'}", processes=2))
    two_nodes = run_launch(slurm_command(tmp_path, 2, "recipes/kd/train.py", *common, f"output_dir={tmp_path / 'two'}"))

    # The launch line says what ran and who decided it.
    assert "launch: 2 process(es) (launcher flag), 1 machine(s) (launcher flag)" in one_node.stdout
    assert "multinode: 2 nodes x 1 processes, rendezvous 127.0.0.1:" in two_nodes.stdout
    assert "launch: 2 process(es) (launcher flag), 2 machine(s) (launcher flag), device cpu" in two_nodes.stdout
    assert "precision no (launcher flag)" in two_nodes.stdout
    assert not (tmp_path / "fake_slurm" / "scontrol.log").exists()  # finished: nothing requeued

    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert one["num_processes"] == two["num_processes"] == 2
    keys = ["train_loss", "ikl", "ce", "step_losses", "test_top1", "test_top5", "test_loss", "test_samples"]
    assert [[h[k] for k in keys] for h in one["history"]] == [[h[k] for k in keys] for h in two["history"]]
    assert one["final"] == two["final"] and one["global_steps"] == two["global_steps"] == 4
    weights_one, weights_two = (torch.load(tmp_path / d / "model.pth")["model"] for d in ("one", "two"))
    assert weights_one.keys() == weights_two.keys()
    assert all(torch.equal(weights_one[k], weights_two[k]) for k in weights_one)
