"""tools/released_lbgat_on_digits.py runs a clone's ``lbgat_loss`` on the digits config's models and data.

The real clone is not reachable here: a stand-in ``lbgat.py`` with the released signature (and its ``.cuda()``
call on the start noise) records what it is given."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.recipes.conftest import REPO, digits_dir  # noqa: F401

STAND_IN = """
import json, os
import torch
import torch.nn.functional as F

def lbgat_loss(model, model_teacher, x_natural, y, optimizer, step_size=0.003, epsilon=0.031, perturb_steps=10,
               beta=1.0, distance="l_inf"):
    x_adv = x_natural.detach() + 0.001 * torch.randn(x_natural.shape).cuda().detach()
    with open(os.environ["CALLS"], "a") as f:
        f.write(json.dumps([list(x_natural.shape), step_size, epsilon, perturb_steps, beta,
                            optimizer.param_groups[0]["lr"], float(x_natural.min()), float(x_natural.max())]) + "\\n")
    out = model_teacher(x_natural)
    return F.mse_loss(model(x_adv), out) + F.cross_entropy(out, y)
"""


@pytest.mark.recipe
def test_the_released_step_gets_the_configs_settings(digits_dir, tmp_path):  # noqa: F811
    clone, calls = tmp_path / "LBGAT", tmp_path / "calls.jsonl"
    clone.mkdir()
    (clone / "lbgat.py").write_text(STAND_IN)
    command = [sys.executable, "-m", "tools.released_lbgat_on_digits", str(clone), "--epochs", "2",
               "max_steps_per_epoch=2", f"data_dir={digits_dir}"]  # fmt: skip
    env = {**os.environ, "CALLS": str(calls), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert "robust model clean top-1=" in lines[0] and "natural model=" in lines[0]

    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    assert len(recorded) == 4  # two steps in each of two epochs
    shape, step_size, eps, steps, beta, lr, low, high = recorded[0]
    assert (shape, step_size, eps, steps, beta) == ([64, 3, 32, 32], 0.0225, 0.1, 10, 6.0)  # digits_lbgat.yaml
    assert lr == pytest.approx(0.0006) and recorded[2][5] != lr  # lr_first_epoch, then the schedule
    assert 0.0 <= low < high <= 1.0  # images in [0, 1], as the released attack's clamp expects


def test_a_missing_clone_is_named(tmp_path):
    from tools.released_lbgat_on_digits import released_module

    with pytest.raises(SystemExit, match=r"lbgat.py not found: clone https://github.com/dvlab-research/LBGAT"):
        released_module(tmp_path / "nowhere")


def test_a_bad_setting_is_one_line(tmp_path, capsys):
    from tools.released_lbgat_on_digits import main

    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path), "lr=abc"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines() == ["error: lr: expected a number, got 'abc'"]
