"""Two processes train what one process trains with the same global batch: losses, AWP, class prior, weights.

The digits model has no BatchNorm (a one-block ViT), so the halves of a batch on two processes
compute exactly what the whole batch computes on one. The attack start is made deterministic
(``random_start=none`` with the CE attack loss, which moves from the clean image) because each
process draws its own random start; everything else is the real recipe: the eps ramp, the
released "high" budget, AWP from epoch 1 (its proxy gradients averaged over processes), the class
prior (all-reduced), the checkpoint average and the held-out PGD validation (sharded). LBGAT's two
models sit in one DDP module, so the natural model's gradients are averaged like the robust one's.
The one-process runs of both recipes share a launch: this file is also the launched script.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from tests.distributed._one_and_two import saved_weights, step_losses
from tests.recipes.conftest import digits_dir, launch  # noqa: F401  (shared fixtures)

COMMON = ["epochs=2", "max_steps_per_epoch=2", "batch_size=16", "eval_subset=50", "eval_batch_size=16",
          "robust_val_size=40", "robust_val_steps=2", "random_start=none", "attack_loss=ce", "log_step_losses=true"]  # fmt: skip
CONFIGS = {
    "ikl": ["--config", "recipes/adv/configs/digits_ikl.yaml", *COMMON, "awp_warmup_epochs=1"],
    "lbgat": ["--config", "recipes/adv/configs/digits_lbgat.yaml", *COMMON],
}


@pytest.fixture(scope="module")
def one_and_two(digits_dir, tmp_path_factory):  # noqa: F811
    """``root/<method>/{one,two}``: each recipe on one process and on two (``run_one_and_two``'s layout)."""
    from tests.recipes.conftest import launch_command, run_launch

    root = tmp_path_factory.mktemp("adv_two")
    # One process runs both recipes in one launch; a two-process launch holds one run (its process group ends
    # with the run).
    for processes, names in ((1, list(CONFIGS)), *((2, [method]) for method in CONFIGS)):
        run_launch(launch_command(__file__, root, ",".join(names), f"data_dir={digits_dir}", processes=processes))
    return root


def results(root, method):
    one, two = (json.loads((root / method / d / "results.json").read_text()) for d in ("one", "two"))
    assert [one["num_processes"], two["num_processes"]] == [1, 2]
    return one, two


@pytest.mark.distributed
def test_two_processes_equal_one(one_and_two):
    one, two = results(one_and_two, "ikl")
    curve_one, curve_two = step_losses(one), step_losses(two)
    assert len(curve_one) == len(curve_two) == 4
    # Equal up to float summation order (all-reduce of gradients and of the AWP proxy's gradients); AdamW
    # divides by sqrt(v), which magnifies last-bit differences of tiny gradients in the weights a little.
    assert torch.allclose(torch.tensor(curve_one), torch.tensor(curve_two), rtol=1e-4)
    for key in ("val_clean_top1", "val_pgd2_top1", "test_top1"):
        assert [h[key] for h in one["history"]] == [h[key] for h in two["history"]], key
    assert [h["test_samples"] for h in two["history"]] == [50, 50]

    def prior(d):
        path = one_and_two / "ikl" / d / "checkpoints" / "epoch_0002" / "custom_checkpoint_1.pkl"
        return torch.load(path, weights_only=False)

    assert torch.allclose(prior("one")["prior"], prior("two")["prior"], rtol=1e-5, atol=1e-8)
    for name in ("model.pth", "model_avg.pth"):
        w1, w2 = saved_weights(one_and_two / "ikl", name)
        for key, value in w1.items():
            assert torch.allclose(value, w2[key], rtol=1e-3, atol=1e-4), (name, key)


@pytest.mark.distributed
def test_lbgat_two_processes_equal_one(one_and_two):
    one, two = results(one_and_two, "lbgat")
    assert torch.allclose(torch.tensor(step_losses(one)), torch.tensor(step_losses(two)), rtol=1e-4)
    assert [h["lr"] for h in one["history"]] == [h["lr"] for h in two["history"]] == [0.0006, 0.0015]
    for key in ("mse", "ce_natural", "lbgat"):
        assert [h[key] for h in one["history"]] == pytest.approx([h[key] for h in two["history"]], rel=1e-4), key
    assert one["natural_model"]["test_top1"] == two["natural_model"]["test_top1"]
    for name in ("model.pth", "model_natural.pth"):
        w1, w2 = saved_weights(one_and_two / "lbgat", name)
        for key, value in w1.items():
            assert torch.allclose(value, w2[key], rtol=1e-3, atol=1e-4), (name, key)


if __name__ == "__main__":  # launched by the fixture: both recipes, into <method>/one or <method>/two
    from dkl_recipe_adv.train import main

    from tests.recipes.conftest import launched_runs

    root, names, overrides = launched_runs(sys.argv)
    label = "two" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "one"
    for method in names:
        main([*CONFIGS[method], *overrides, f"output_dir={root / method / label}"])
