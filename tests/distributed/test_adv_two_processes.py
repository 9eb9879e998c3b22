"""Two processes train what one process trains with the same global batch: losses, AWP, class prior, weights.

The digits model has no BatchNorm (a one-block ViT), so the halves of a batch on two processes
compute exactly what the whole batch computes on one. The attack start is made deterministic
(``random_start=none`` with the CE attack loss, which moves from the clean image) because each
process draws its own random start; everything else is the real recipe: the eps ramp, the
released "high" budget, AWP from epoch 1 (its proxy gradients averaged over processes), the class
prior (all-reduced), the checkpoint average and the held-out PGD validation (sharded).
"""

from __future__ import annotations

import pytest
import torch

from tests.distributed._one_and_two import run_one_and_two, saved_weights, step_losses
from tests.recipes.conftest import digits_dir, launch  # noqa: F401  (shared fixtures)

ARGS = ["--config", "recipes/adv/configs/digits_ikl.yaml", "epochs=2", "max_steps_per_epoch=2", "batch_size=16",
        "eval_subset=50", "eval_batch_size=16", "robust_val_size=40", "robust_val_steps=2", "awp_warmup_epochs=1",
        "random_start=none", "attack_loss=ce", "log_step_losses=true"]  # fmt: skip


@pytest.mark.distributed
def test_two_processes_equal_one(digits_dir, launch, tmp_path):  # noqa: F811
    common = [*ARGS, f"data_dir={digits_dir}"]
    one, two = run_one_and_two(launch, "recipes/adv/train.py", common, tmp_path)
    curve_one, curve_two = step_losses(one), step_losses(two)
    assert len(curve_one) == len(curve_two) == 4
    # Equal up to float summation order (all-reduce of gradients and of the AWP proxy's gradients); AdamW
    # divides by sqrt(v), which magnifies last-bit differences of tiny gradients in the weights a little.
    assert torch.allclose(torch.tensor(curve_one), torch.tensor(curve_two), rtol=1e-4)
    for key in ("val_clean_top1", "val_pgd2_top1", "test_top1"):
        assert [h[key] for h in one["history"]] == [h[key] for h in two["history"]], key
    assert [h["test_samples"] for h in two["history"]] == [50, 50]

    def prior(d):
        return torch.load(tmp_path / d / "checkpoints" / "epoch_0002" / "custom_checkpoint_1.pkl", weights_only=False)

    assert torch.allclose(prior("one")["prior"], prior("two")["prior"], rtol=1e-5, atol=1e-8)
    for name in ("model.pth", "model_avg.pth"):
        w1, w2 = saved_weights(tmp_path, name)
        for key, value in w1.items():
            assert torch.allclose(value, w2[key], rtol=1e-3, atol=1e-4), (name, key)
