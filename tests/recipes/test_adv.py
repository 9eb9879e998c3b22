"""Adversarial-training recipe smoke runs on digits through `accelerate launch` on CPU, and the AutoAttack evaluation.

Every method trains two steps with every piece switched on (eps ramp, AWP from the first epoch,
class prior, checkpoint average, EMA, held-out PGD validation; AutoAugment views for one method;
lbgat without AWP, with its natural model). All five methods run inside one launch (this file is
also the launched script: its ``__main__`` calls the recipe's ``main`` per method) to pay the
start-up once. Then ``eval.py`` runs AutoAttack on the ikl run's weights (raw, checkpoint average,
EMA) and writes them into its ``results.json``; it is launched through this file too, with
pyautoattack's iteration and query budgets cut down (standard AutoAttack costs about 8,000 forward
passes per chunk that stays robust, minutes on a CPU even for a tiny model); everything else is
``eval.py`` itself.
"""

from __future__ import annotations

import json
import sys

import pytest

CONFIG = "recipes/adv/configs/digits_ikl.yaml"
TINY = ["epochs=1", "max_steps_per_epoch=2", "batch_size=16", "eval_subset=32", "eval_batch_size=32",
        "robust_val_size=24", "robust_val_steps=2", "awp_warmup_epochs=1", "ema_decay=0.5", "log_every=1",
        "log_step_losses=true"]  # fmt: skip
METHODS = ["ikl", "gkl", "trades", "lbgat", "pgd_at"]
VIT = "{img_size: 32, patch_size: 8, depth: 1, embed_dim: 32, num_heads: 2, mlp_ratio: 2}"  # the digits model
EXTRA = {
    "gkl": ["gamma=0.5", "augmentation=autoaug"],
    "trades": ["project_start=false", "lr_schedule=cosine_shifted"],  # the released start and cosine
    "lbgat": [
        "awp=false",
        "lr_first_epoch=0.0006",
        "natural_model=timm:vit_tiny_patch16_224",
        f"natural_model_kwargs={VIT}",
    ],  # fmt: skip
    "pgd_at": ["random_start=uniform"],
}


@pytest.fixture(scope="module")
def smoke_runs(digits_dir, tmp_path_factory):
    from tests.recipes.conftest import launch_runs

    return launch_runs(__file__, tmp_path_factory.mktemp("adv_smoke"), METHODS, f"data_dir={digits_dir}")


@pytest.mark.recipe
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_two_steps(method, smoke_runs):
    run_dir = smoke_runs / method
    results = json.loads((run_dir / "results.json").read_text())
    assert results["config"]["method"] == method and results["method"] == method
    assert results["global_steps"] == 2 and results["epochs_completed"] == 1
    epoch = results["history"][0]
    assert 0.0 <= results["final"]["top1"] <= 100.0 and results["final"]["samples"] == 32
    assert 0.0 <= epoch["val_pgd2_top1"] <= epoch["val_clean_top1"] <= 100.0  # held-out, logged next to clean
    assert epoch["attack_eps"] == pytest.approx(0.1) and epoch["attack_steps"] == 5  # 1-epoch run: full eps
    for label, name in (("raw", "model.pth"), ("checkpoint_average", "model_avg.pth"), ("ema", "model_ema.pth")):
        assert results["weights"][label] == name and (run_dir / name).is_file()
    assert set(results["averaged"]) == {"checkpoint_average", "ema"}
    if method in ("ikl", "gkl", "trades"):
        assert "ce" in epoch and method in epoch
    if method == "gkl":
        assert "gkl_aug" in epoch  # the AutoAugment half of the two-view loss
    if method == "lbgat":  # the natural model's guidance, its file beside model.pth, the first epoch's rate
        assert {"mse", "ce_natural", "lbgat"} <= set(epoch) and epoch["lr"] == pytest.approx(0.0006)
        natural = results["natural_model"]
        assert natural["file"] == "model_natural.pth" and natural["test_samples"] == 32
        assert (run_dir / "model_natural.pth").is_file()
    assert (run_dir / "checkpoints" / "epoch_0001").is_dir()


@pytest.mark.recipe
def test_autoattack_eval_writes_results(smoke_runs, digits_dir, launch):
    run_dir = smoke_runs / "ikl"
    args = [f"run_dir={run_dir}", f"data_dir={digits_dir}", "subset=20", "batch_size=10"]
    first = launch(__file__, "--eval-small-budget", *args)
    assert f"results: {run_dir / 'results.json'}" in first.stdout  # says where it wrote
    results = json.loads((run_dir / "results.json").read_text())
    attack = results["autoattack"]
    assert attack["primary"] == "checkpoint_average" and set(attack["weights"]) == {"raw", "checkpoint_average", "ema"}
    for entry in attack["weights"].values():
        assert entry["num_samples"] == 20
        assert 0.0 <= entry["robust"] <= entry["clean"] <= 100.0
        assert list(entry["per_attack"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
        assert entry["per_attack"]["square"] == entry["robust"]
    assert attack["eps"] == pytest.approx(0.1) and attack["clean"] == attack["weights"]["checkpoint_average"]["clean"]
    assert results["final"]["top1"] >= 0 and results["final"]["autoattack_robust"] == attack["robust"]
    # Resumable: the progress files exist, and a second run reads them instead of attacking again.
    assert (run_dir / "autoattack" / "raw.pt").is_file()
    again = launch(__file__, "--eval-small-budget", *args, "weights=[raw]")
    raw = json.loads((run_dir / "results.json").read_text())["autoattack"]["weights"]["raw"]
    assert {k: v for k, v in raw.items() if k != "seconds"} == {
        k: v for k, v in attack["weights"]["raw"].items() if k != "seconds"
    }
    assert "robust" in again.stdout


def small_autoattack_budgets() -> None:
    """Shrink every attack of pyautoattack's standard version (same attacks, same cascade, far fewer iterations)."""
    import pyautoattack

    original = pyautoattack.AutoAttack.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.apgd.n_iter = self.apgd_targeted.n_iter = self.fab.n_iter = 3
        self.apgd.n_restarts = self.fab.n_restarts = 1
        self.apgd_targeted.n_target_classes = self.fab.n_target_classes = 2
        self.square.n_queries = 20

    pyautoattack.AutoAttack.__init__ = init


if __name__ == "__main__" and sys.argv[1] == "--eval-small-budget":  # launched by the eval test
    from dkl_recipe_adv.eval import main as evaluate_main

    small_autoattack_budgets()
    evaluate_main(sys.argv[2:])
elif __name__ == "__main__":  # launched by the smoke fixture: every method in one process
    from dkl_recipe_adv.train import AdvConfig, main

    from tests.recipes.conftest import config_for_method, launched_runs

    root, methods, overrides = launched_runs(sys.argv)
    for method in methods:
        # One shared config and overrides; each method gets the settings it reads (it refuses the others).
        shared = [*TINY, *overrides, *EXTRA.get(method, [])]
        config = config_for_method(AdvConfig, CONFIG, shared, method, root / f"{method}.yaml")
        main(["--config", str(config), f"output_dir={root / method}"])
