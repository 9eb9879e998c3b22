"""The fused output-layer losses and TopKClassPrior on two real processes (gloo, through accelerate launch).

A student wrapped in DDP by Accelerate, each process computing fused IKL / GKL on its shard (two micro-batches,
one of them entirely ignored on process 1) with ``num_items_in_batch`` = the step's valid positions and the loss
times the world size, gets the gradients of the dense loss on the whole batch in one process (float64, 1e-10);
the all-reduced top-k prior equals the prior of the whole batch (``top_k = V``) and the merge of the shards'
kept rows (``top_k < V``).
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dkl_core import ClassPrior, TopKClassPrior, gkl_loss, ikl_loss
from tests.distributed import _fused_worker as w

WORKER = Path(__file__).with_name("_fused_worker.py")
TOL = dict(rtol=1e-10, atol=1e-12)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_processes(script: Path, *args: str) -> None:
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--main_process_port", str(_free_port()), "--mixed_precision", "no", "--dynamo_backend", "no",
               str(script), *args]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": str(Path(__file__).parents[2]),
    }
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def whole_batch_prior(data, top_k: int) -> TopKClassPrior:
    prior = TopKClassPrior(w.V, top_k=top_k, temperature=w.PRIOR_TEMPERATURE)
    for rank in range(w.WORLD):
        for micro in range(w.MICRO):
            prior.update(w.teacher_logits(data, rank, micro), data["labels"][rank, micro])
    prior.end_epoch(sync=False)
    return prior


def merged_shards_prior(data, top_k: int) -> TopKClassPrior:
    """What the all-reduce should give without processes: each shard's kept rows, merged."""
    shards = [TopKClassPrior(w.V, top_k=top_k, temperature=w.PRIOR_TEMPERATURE) for _ in range(w.WORLD)]
    for rank, shard in enumerate(shards):
        for micro in range(w.MICRO):
            shard.update(w.teacher_logits(data, rank, micro), data["labels"][rank, micro])
    merged = TopKClassPrior(w.V, top_k=top_k, temperature=w.PRIOR_TEMPERATURE)
    merged.sums = merged._merge([shard.sums for shard in shards])
    merged.end_epoch(sync=False)
    return merged


def dense_reference(data, loss_fn, **options):
    """The dense loss on the whole batch in one process: its value and the gradients of the parameters and the
    hidden states ``[WORLD, MICRO, B, T, H]``."""
    params = {
        k: data[k].clone().requires_grad_() for k in ("proj.weight", "proj.bias", "lm_head.weight", "lm_head.bias")
    }
    hidden = torch.tanh(F.linear(data["x"], params["proj.weight"], params["proj.bias"]))
    hidden.retain_grad()
    logits = F.linear(hidden, params["lm_head.weight"], params["lm_head.bias"])
    teacher = F.linear(data["teacher_hidden"], data["teacher_weight"], data["teacher_bias"])
    loss = loss_fn(logits, teacher, labels=data["labels"], **options)
    loss.backward()
    return loss.detach(), {k: p.grad for k, p in params.items()}, hidden.grad


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the two processes saved (one launch for the whole module)."""
    out = tmp_path_factory.mktemp("fused")
    launch_two_processes(WORKER, str(out))
    saved = [torch.load(out / f"rank{r}.pt") for r in range(w.WORLD)]
    assert saved[0]["world_size"] == w.WORLD
    assert saved[0]["model_type"] == "DistributedDataParallel"
    return saved


def small_prior_rows(data) -> torch.Tensor:
    return merged_shards_prior(data, top_k=w.TOP_K).weights(data["labels"].clamp_min(0), dtype=torch.float64)


def assert_step_equals(got: list[dict], reference, case: str) -> None:
    """The processes' accumulated step ``got`` against the dense ``reference`` on the whole batch."""
    loss, grads, hidden_grad = reference
    # the micro-batches' losses of every process add up to the whole batch's mean
    total = sum(g["losses"].sum() for g in got)
    torch.testing.assert_close(total, loss, **TOL, msg=lambda m: f"{case} loss: {m}")
    assert float(got[1]["losses"][1]) == 0.0  # the ignored micro-batch
    for rank, g in enumerate(got):
        for param, expected in grads.items():
            torch.testing.assert_close(
                g["grads"][param], expected, **TOL, msg=lambda m, p=param, r=rank: f"{case} {p} rank {r}: {m}"
            )
        # the hidden states' own gradient is local: the world size times the whole batch's
        torch.testing.assert_close(
            g["hidden_grads"], w.WORLD * hidden_grad[rank], **TOL, msg=lambda m, r=rank: f"{case} hidden r{r}: {m}"
        )
    assert not got[1]["hidden_grads"][1].any()


@pytest.mark.distributed
def test_all_reduced_top_k_prior_equals_the_whole_batch_prior(ranks):
    data = w.problem()
    # top_k = V: the whole batch's prior in one process (and ClassPrior's)
    exact = whole_batch_prior(data, top_k=w.V).weights(torch.arange(w.V), dtype=torch.float64)
    dense_prior = ClassPrior(w.V, temperature=w.PRIOR_TEMPERATURE)
    for rank in range(w.WORLD):
        for micro in range(w.MICRO):
            dense_prior.update(w.teacher_logits(data, rank, micro), data["labels"][rank, micro], ignore_index=-100)
    torch.testing.assert_close(exact, dense_prior.end_epoch(sync=False), rtol=1e-13, atol=1e-15)
    # top_k < V: the merge of the shards' kept rows (truncation happens per process, so not the whole batch's)
    small = merged_shards_prior(data, top_k=w.TOP_K).weights(torch.arange(w.V), dtype=torch.float64)
    for r in ranks:
        torch.testing.assert_close(r["exact_prior"], exact, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(r["small_prior"], small, rtol=1e-13, atol=1e-15)


@pytest.mark.distributed
@pytest.mark.parametrize("where", ["inside", "outside"])
@pytest.mark.parametrize("name", ["ikl", "gkl"])
def test_fused_loss_under_ddp_equals_the_dense_loss_on_the_whole_batch(ranks, name, where):
    """``where``: the loss computed inside the DDP module's forward, or after it on ``model.module.lm_head``."""
    data = w.problem()
    valid = data["labels"] != -100
    assert ranks[0]["num_items_in_batch"] == int(valid.sum()) == 14
    if name == "ikl":
        reference = dense_reference(data, ikl_loss, **w.IKL)
    else:
        prior_rows = small_prior_rows(data)
        mass_sq_sum = (prior_rows[valid] ** w.GKL["gamma"]).sum(dim=-1).square().sum()
        torch.testing.assert_close(ranks[0]["mass_sq_sum"], mass_sq_sum, rtol=1e-13, atol=0)
        reference = dense_reference(data, gkl_loss, weights=prior_rows, **w.GKL)
    assert_step_equals([r[f"{name}_{where}"] for r in ranks], reference, f"{name}_{where}")


@pytest.mark.distributed
def test_num_items_in_batch_as_an_int64_tensor(ranks):
    """The Hugging Face Trainer passes ``num_items_in_batch`` as an int64 tensor (e.g. ``tensor(14)``)."""
    data = w.problem()
    assert_step_equals([r["ikl_tensor_items"] for r in ranks], dense_reference(data, ikl_loss, **w.IKL), "int64")
