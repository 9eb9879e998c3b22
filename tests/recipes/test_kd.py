"""KD recipe smoke runs: every method, two steps on digits, through `accelerate launch` on CPU.

All six methods run inside one launch (tests/recipes/_kd_methods.py calls the recipe's ``main`` per
method) to pay the start-up once; the resume and distributed tests launch ``train.py`` itself.
"""

from __future__ import annotations

import json

import pytest

TINY = ["epochs=1", "max_steps_per_epoch=2", "batch_size=16", "eval_subset=32", "eval_batch_size=32",
        "student=resnet8", "teacher=resnet8", "lr=0.05", "log_every=1"]  # fmt: skip


METHODS = ["ce", "kd", "dkd", "reviewkd", "ikl", "gkl"]
# A method from outside the project (CONTRIBUTING.md's worked example), run in the same launch.
OWN_METHOD = "examples/kd_logit_matching.py:LogitMatching"
# ReviewKD's levels for resnet8 -> resnet8 (only reviewkd's run gets them: a method refuses settings it does not read).
REVIEWKD = ["reviewkd_in_channels=[16,32,64,64]", "reviewkd_out_channels=[16,32,64,64]", "reviewkd_shapes=[1,8,16,32]"]


@pytest.fixture(scope="module")
def smoke_runs(digits_dir, digits_teacher, tmp_path_factory):
    from tests.recipes.conftest import launch_runs

    return launch_runs(
        "tests/recipes/_kd_methods.py", tmp_path_factory.mktemp("kd_smoke"), [*METHODS, OWN_METHOD],
        "--config", "recipes/kd/configs/digits_resnet14_resnet8_ikl.yaml", f"data_dir={digits_dir}",
        f"teacher_checkpoint={digits_teacher}", "num_workers=2", "use_prior=true", "gamma=0.5", *REVIEWKD, *TINY,
        "logit_mse_weight=0.5",
    )  # fmt: skip


@pytest.mark.recipe
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_two_steps(method, smoke_runs):
    run_dir = smoke_runs / method
    results = json.loads((run_dir / "results.json").read_text())
    assert results["global_steps"] == 2 and results["epochs_completed"] == 1
    assert 0.0 <= results["final"]["top1"] <= 100.0 and results["final"]["samples"] == 32
    assert (run_dir / "checkpoints" / "epoch_0001" / "model.safetensors").is_file()
    assert (run_dir / "model.pth").is_file() and (run_dir / "config.yaml").is_file()
    assert results["config"]["method"] == method and results["git_revision"]
    if method != "ce":
        assert "top1" in results["teacher"]  # the teacher was evaluated before training
        assert method in results["history"][0]


@pytest.mark.recipe
def test_reviewkd_checkpoints_its_fusion_modules_but_exports_the_student_alone(smoke_runs):
    import torch
    from safetensors.torch import load_file

    run_dir = smoke_runs / "reviewkd"
    checkpoint = load_file(run_dir / "checkpoints" / "epoch_0001" / "model.safetensors")
    assert any(k.startswith("abfs.") for k in checkpoint) and any(k.startswith("student.") for k in checkpoint)
    exported = torch.load(run_dir / "model.pth")["model"]
    assert not any(k.startswith(("abfs.", "student.")) for k in exported)
    # Exactly a resnet8's keys, as the plain KD run of the same student exports them.
    assert exported.keys() == torch.load(smoke_runs / "kd" / "model.pth")["model"].keys()
    history = json.loads((run_dir / "results.json").read_text())["history"][0]
    assert history["reviewkd"] > 0 and history["ce"] > 0


@pytest.mark.recipe
def test_a_method_from_your_own_file_trains_and_resumes_its_config(smoke_runs):
    from dkl_recipe_kd.train import KDConfig, build_method

    from dkl_train.config import load_config

    run_dir = smoke_runs / "LogitMatching"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["config"]["method"] == OWN_METHOD and results["config"]["logit_mse_weight"] == 0.5
    assert results["global_steps"] == 2 and (run_dir / "model.pth").is_file()
    assert results["history"][0]["logit_matching"] > 0 and "top1" in results["teacher"]
    # config.yaml reloads into the same method with its own setting (what resume=true compares against).
    method = build_method(load_config(KDConfig, run_dir / "config.yaml"))
    assert type(method).__name__ == "LogitMatching" and method.settings.logit_mse_weight == 0.5
