"""An adversarial-training run stopped after epoch 1 and resumed equals the uninterrupted run.

Every piece of state is on: AWP (from epoch 1), the class prior, the running checkpoint average, the
EMA, the eps ramp, the random attack start (global RNG, restored from the checkpoint) and the
held-out PGD validation. LBGAT adds its natural model (trained by the same optimiser, in the same
checkpoint) and the first epoch's lower learning rate. All six runs (straight, stopped, resumed for
ikl and for lbgat) share one launch to pay the start-up once: this file is also the launched script.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from tests.recipes.conftest import digits_dir  # noqa: F401  (shared fixture)

COMMON = ["epochs=2", "max_steps_per_epoch=2", "batch_size=16", "eval_subset=32", "eval_batch_size=32",
          "robust_val_size=24", "robust_val_steps=2", "ema_decay=0.5", "log_step_losses=true", "deterministic=true"]  # fmt: skip
CONFIGS = {
    "ikl": ["--config", "recipes/adv/configs/digits_ikl.yaml", *COMMON, "awp_warmup_epochs=1"],
    "lbgat": ["--config", "recipes/adv/configs/digits_lbgat.yaml", *COMMON, "checkpoint_average=true"],
}
# The run "stopped" ends after epoch 1 in the folder "resumed", where the run "resumed" continues it.
RUNS = {"straight": [], "stopped": ["stop_after_epochs=1"], "resumed": ["resume=true"]}
# Objects registered for checkpointing, in order: 0 TrainingState, 1 ClassPrior, 2 EMA, 3 CheckpointAverage.
PRIOR, AVERAGE = 1, 3


@pytest.fixture(scope="module")
def resumed_runs(digits_dir, tmp_path_factory):  # noqa: F811
    from tests.recipes.conftest import launch_command, run_launch

    root = tmp_path_factory.mktemp("adv_resume")
    names = [f"{method}-{run}" for method in CONFIGS for run in RUNS]
    out = run_launch(launch_command(__file__, root, ",".join(names), f"data_dir={digits_dir}")).stdout
    assert out.count("resumed from") == 2 and out.count("epoch 1, step 2") == 2
    return root


def registered(run_dir, index):
    return torch.load(run_dir / "checkpoints" / "epoch_0002" / f"custom_checkpoint_{index}.pkl", weights_only=False)


def compare(root, method, keys, files):
    straight, resumed = root / method / "straight", root / method / "resumed"
    a, b = (json.loads((d / "results.json").read_text()) for d in (straight, resumed))
    assert [[h[k] for k in keys] for h in a["history"]] == [[h[k] for k in keys] for h in b["history"]]
    assert a["final"] == b["final"] and a["averaged"] == b["averaged"] and a["global_steps"] == b["global_steps"] == 4
    for name in files:
        wa, wb = (torch.load(d / name)["model"] for d in (straight, resumed))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
    return a, b, straight, resumed


@pytest.mark.recipe
def test_resumed_run_equals_uninterrupted(resumed_runs):
    keys = ["step_losses", "train_loss", "ce", "ikl", "attack_eps", "val_clean_top1", "val_pgd2_top1", "test_top1"]
    a, _, straight, resumed = compare(
        resumed_runs, "ikl", [*keys, "test_loss"], ("model.pth", "model_avg.pth", "model_ema.pth")
    )
    assert a["history"][0]["attack_eps"] == pytest.approx(0.05) and a["history"][1]["attack_eps"] == pytest.approx(0.1)
    prior_a, prior_b = registered(straight, PRIOR), registered(resumed, PRIOR)
    assert torch.equal(prior_a["prior"], prior_b["prior"])
    assert not torch.allclose(prior_a["prior"], torch.full_like(prior_a["prior"], 0.1))
    assert registered(straight, AVERAGE)["epochs"] == registered(resumed, AVERAGE)["epochs"] == 2


@pytest.mark.recipe
def test_lbgat_resumed_run_equals_uninterrupted(resumed_runs):
    keys = ["step_losses", "train_loss", "mse", "ce_natural", "lbgat", "lr", "val_pgd2_top1", "test_top1", "test_loss"]
    files = ("model.pth", "model_natural.pth", "model_avg.pth", "model_ema.pth")
    a, b, straight, _ = compare(resumed_runs, "lbgat", keys, files)
    assert a["history"][0]["lr"] == pytest.approx(0.0006) and a["history"][1]["lr"] == pytest.approx(0.0015)
    assert a["natural_model"] == b["natural_model"]
    robust, natural = (torch.load(straight / name)["model"] for name in ("model.pth", "model_natural.pth"))
    assert not torch.equal(robust["head.weight"], natural["head.weight"])  # two models, each saved


if __name__ == "__main__":  # launched by the fixture: every run in one process, in order
    from dkl_recipe_adv.train import main

    from tests.recipes.conftest import launched_runs

    root, names, overrides = launched_runs(sys.argv)
    for name in names:
        method, run = name.split("-")
        folder = root / method / ("resumed" if run == "stopped" else run)
        main([*CONFIGS[method], *overrides, *RUNS[run], f"output_dir={folder}"])
