"""dkl_train.training / results: lr schedule, state, evaluation, checkpoint folders, NaN stop, results.json."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from dkl_train.checkpoints import CheckpointError
from dkl_train.config import EpochConfig, load_config
from dkl_train.evaluation import evaluate
from dkl_train.launch import (
    TrackerNotInstalledError,
    accelerate_config_file,
    gpu_backend_on_cpu_warning,
    launch_sources,
    launcher_options,
    unused_gpu_warning,
)
from dkl_train.nonfinite import NonFiniteLossError
from dkl_train.optim import learning_rate
from dkl_train.results import git_revision, write_json_atomic
from dkl_train.training import PREEMPTED_EXIT_CODE, Run, TrainingState


def config(**overrides) -> EpochConfig:
    return load_config(EpochConfig, None, [f"{k}={v}" for k, v in overrides.items()])


def test_multistep_matches_mdistiller_epoch_convention():
    c = config(lr=0.05)
    assert learning_rate(c, 149) == 0.05
    assert learning_rate(c, 150) == pytest.approx(0.005) and learning_rate(c, 239) == pytest.approx(0.05e-3)


def test_cosine_and_warmup():
    c = config(lr=1.0, lr_schedule="cosine", epochs=10, lr_warmup_epochs=2)
    assert [learning_rate(c, e) for e in (0, 1)] == [0.5, 1.0]
    assert learning_rate(c, 5) == pytest.approx(0.5) and learning_rate(config(lr_schedule="constant"), 99) == 0.05


def test_training_state_round_trip():
    state = TrainingState(epoch=3, global_step=30, best={"top1": 50.0}, history=[{"epoch": 1}])
    copy = TrainingState()
    copy.load_state_dict(state.state_dict())
    assert copy == state


def test_results_json_is_atomic_and_valid(tmp_path):
    path = write_json_atomic({"a": float("nan"), "b": torch.tensor(2.5), "c": (1, 2)}, tmp_path / "results.json")
    assert json.loads(path.read_text()) == {"a": "nan", "b": 2.5, "c": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert isinstance(git_revision(), str)


class FixedLogits(torch.nn.Module):
    """Predicts class (label + shift) % C with a clear margin, so top-1/top-5 are known."""

    def __init__(self, shift: int) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = x[:, 0].long()
        logits = torch.zeros(len(x), 10)
        logits[torch.arange(len(x)), (labels + self.shift) % 10] = 10.0
        logits[torch.arange(len(x)), labels] += 5.0  # the true class is second best unless shift == 0
        return logits


def test_evaluate_top1_top5_over_an_uneven_last_batch():
    accelerator = Accelerator(cpu=True)
    labels = torch.arange(23) % 10
    loader = accelerator.prepare(
        torch.utils.data.DataLoader([{"image": y.float()[None], "label": y} for y in labels], batch_size=8)
    )
    exact = evaluate(FixedLogits(0), loader, accelerator)
    assert (exact["top1"], exact["top5"], exact["samples"]) == (100.0, 100.0, 23)
    second = evaluate(FixedLogits(1), loader, accelerator)
    assert second["top1"] == 0.0 and second["top5"] == 100.0


@pytest.fixture
def run(tmp_path):
    r = Run(config(output_dir=tmp_path / "run", log_every=1))
    yield r
    r.accelerator.end_training()


def test_run_folder_checkpoints_and_refusal(run, tmp_path):
    assert (tmp_path / "run" / "config.yaml").is_file()
    run.state.epoch = 1
    first = run.save_checkpoint()
    (run.checkpoint_dir / ".tmp_epoch_0002").mkdir()  # an interrupted save
    assert run.latest_checkpoint() == first and (first / "custom_checkpoint_0.pkl").is_file()
    for epoch in (2, 3):
        run.state.epoch = epoch
        run.save_checkpoint()
    assert sorted(p.name for p in run.checkpoint_dir.iterdir()) == ["epoch_0002", "epoch_0003"]  # keep 2
    with pytest.raises(FileExistsError, match="resume=true"):
        Run(config(output_dir=tmp_path / "run"))


def test_non_finite_loss_names_step_and_terms(run):
    with pytest.raises(NonFiniteLossError, match=r"epoch 3, optimiser step 1 \(terms: ce=1.5, kd=nan\)"):
        run.check_finite(torch.tensor(float("nan")), {"ce": torch.tensor(1.5), "kd": torch.tensor(float("nan"))}, 2)


def _tiny_epoch(tmp_path, bad_step: int | None, **overrides):
    """A Run and the arguments of train_epoch for a linear model on 12 float samples (batch 2: 6 steps)."""
    run = Run(config(output_dir=tmp_path / "run", batch_size=2, num_workers=0, report_to="[]", **overrides))
    data = [{"image": torch.full((3, 2, 2), float(i)), "label": torch.tensor(i % 2)} for i in range(12)]
    dataset = torch.utils.data.DataLoader(data, batch_size=2)  # not a TransformedDataset: no batch_transform
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model, optimizer = run.prepare(model, optimizer)
    loader = run.device_loader(run.accelerator.prepare(dataset), dataset)
    run.build_scheduler(optimizer, loader)
    steps = []

    def compute_loss(batch):
        steps.append(run.state.global_step + 1)  # the optimiser step this batch belongs to
        loss = torch.nn.functional.cross_entropy(model(batch["image"] / 12), batch["label"])
        if steps[-1] == bad_step:
            loss = loss * float("nan")
        return loss, {"ce": loss.detach(), "scale": 2.0}

    return run, (model, optimizer, loader, compute_loss), steps


@pytest.mark.parametrize(("log_every", "bad_step", "found_after"), [(4, 2, 4), (4, 5, 6), (1, 3, 3)])
def test_a_nan_loss_at_step_k_stops_the_epoch_naming_k_and_the_range(tmp_path, log_every, bad_step, found_after):
    run, (model, optimizer, loader, compute_loss), steps = _tiny_epoch(tmp_path, bad_step, log_every=log_every)
    with pytest.raises(NonFiniteLossError) as err:
        run.train_epoch(model, optimizer, loader, compute_loss, 0)
    message = str(err.value)
    # Checked at logging steps and at the end of the epoch (step 6); the steps in between ran on.
    assert steps[-1] == found_after and run.state.global_step == found_after
    assert f"non-finite loss nan at epoch 1, optimiser step {bad_step} (terms: ce=nan, scale=2)" in message
    if found_after > bad_step:
        previous = (found_after - 1) // log_every * log_every
        assert f"found at the check after step {found_after}" in message
        assert f"steps {previous + 1}-{found_after} ran since the previous check" in message
    assert "the last good checkpoint is none" in message and not (tmp_path / "run" / "checkpoints").exists()
    run.accelerator.end_training()


def test_finite_epochs_read_the_device_only_at_logging_steps(tmp_path, monkeypatch):
    run, (model, optimizer, loader, compute_loss), steps = _tiny_epoch(tmp_path, None, log_every=3)
    checks = []
    original = run.guard.check
    monkeypatch.setattr(run.guard, "check", lambda epoch: checks.append(run.state.global_step) or original(epoch))
    metrics = run.train_epoch(model, optimizer, loader, compute_loss, 0)
    assert steps == [1, 2, 3, 4, 5, 6] and checks == [3, 6, 6]  # logging steps 3 and 6, then the epoch's end
    assert metrics["scale"] == 2.0 and torch.isfinite(torch.tensor(metrics["train_loss"]))
    run.accelerator.end_training()


def test_a_run_is_freed_with_its_last_reference(tmp_path):
    """No reference cycles: the run, its accelerator and the loaders it prepared go when the recipe returns, so
    their data-loader workers (which ignore SIGTERM) stop before the interpreter's exit waits for child processes."""
    import gc
    import weakref

    gc.collect()
    gc.disable()
    try:
        run, (model, optimizer, loader, compute_loss), _ = _tiny_epoch(tmp_path, None)
        run.train_epoch(model, optimizer, loader, compute_loss, 0)
        run.accelerator.end_training()
        freed = weakref.ref(run)
        del run, model, optimizer, loader, compute_loss
        assert freed() is None
    finally:
        gc.enable()


def test_loader_options_memory_format_and_cudnn_benchmark(tmp_path):
    from dkl_train.config import ConfigError

    run = Run(config(output_dir=tmp_path / "run", channels_last=True, cudnn_benchmark=True, report_to="[]"))
    assert torch.backends.cudnn.benchmark and run.memory_format == torch.channels_last
    conv = run.prepare(torch.nn.Conv2d(3, 4, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert run.place_model(torch.nn.Conv2d(3, 4, 3)).weight.is_contiguous(memory_format=torch.channels_last)
    assert run.accelerator.dataloader_config.non_blocking  # copies from pinned memory overlap compute
    torch.backends.cudnn.benchmark = False
    run.accelerator.end_training()
    with pytest.raises(ConfigError, match="cudnn_benchmark=true .* deterministic=true"):
        config(cudnn_benchmark=True, deterministic=True)


def test_batch_size_must_split_over_accumulation(tmp_path):
    with pytest.raises(ValueError, match="divisible"):
        Run(config(output_dir=tmp_path / "x", batch_size=10, gradient_accumulation_steps=4))


# --- pre-emption and damaged checkpoints ------------------------------------------------------


def _checkpoints(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def _two_epoch_checkpoints(run_dir):
    first = Run(config(output_dir=run_dir))
    for epoch in (1, 2):
        first.state.epoch, first.state.global_step = epoch, 10 * epoch
        first.save_checkpoint()
    first.accelerator.end_training()
    return run_dir / "checkpoints"


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage):
    folder = _two_epoch_checkpoints(tmp_path / "run")
    state_file = folder / "epoch_0002" / "custom_checkpoint_0.pkl"
    data = state_file.read_bytes()
    # A crash during a copy (shorter file) or garbage of the same size (only the load notices).
    state_file.write_bytes(data[:10] if damage == "truncate" else b"\0" * len(data))
    capsys.readouterr()
    run = Run(config(output_dir=tmp_path / "run", resume=True))
    assert run.resume() and (run.state.epoch, run.state.global_step) == (1, 10)
    out = capsys.readouterr().out
    reason = "is 10 bytes but" if damage == "truncate" else "custom_checkpoint_0.pkl cannot be read"
    assert f"checkpoint {folder / 'epoch_0002'} is damaged (" in out and reason in out
    assert f"resumed from the previous complete checkpoint {folder / 'epoch_0001'}" in out
    assert _checkpoints(tmp_path / "run") == ["damaged_epoch_0002", "epoch_0001"]
    run.accelerator.end_training()


def test_no_usable_checkpoint_names_the_damaged_files(tmp_path):
    folder = _two_epoch_checkpoints(tmp_path / "run")
    (folder / "epoch_0002" / "random_states_0.pkl").unlink()
    (folder / "epoch_0001" / "custom_checkpoint_0.pkl").write_bytes(b"not a pickle")
    run = Run(config(output_dir=tmp_path / "run", resume=True))
    with pytest.raises(CheckpointError, match="random_states_0.pkl is missing") as err:
        run.resume()
    assert "custom_checkpoint_0.pkl is 12 bytes" in str(err.value) and "start the run over" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)  # the recipes print it as one line
    assert _checkpoints(tmp_path / "run") == ["epoch_0001", "epoch_0002"]  # nothing moved when nothing loads
    run.accelerator.end_training()


def test_resume_without_checkpoint_starts_fresh(tmp_path, capsys):
    run = Run(config(output_dir=tmp_path / "run", resume=True))
    assert not run.resume() and run.state.global_step == 0
    out = capsys.readouterr().out
    assert "resume=true" in out and "holds no checkpoint, starting from scratch" in out
    run.accelerator.end_training()


def test_stop_signal_saves_the_position_inside_the_epoch_and_exits_143(tmp_path, capsys):
    run = Run(config(output_dir=tmp_path / "run", keep_checkpoints=3))
    before = signal.getsignal(signal.SIGTERM)
    epochs = run.periods()
    assert next(epochs) == 0 and signal.getsignal(signal.SIGTERM) == run.stop_signals.on_signal
    assert not run.stop_requested()
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGTERM)  # a second signal is noted, not acted on
    run.state.global_step = 5
    assert run.stop_requested()
    with pytest.raises(SystemExit) as stopped:
        run.preempt(0, {"batches": 5, "sums": {"loss": torch.tensor(2.5)}})
    assert stopped.value.code == PREEMPTED_EXIT_CODE == 143
    assert signal.getsignal(signal.SIGTERM) == before  # handlers restored
    out = capsys.readouterr().out
    assert "SIGUSR1: stopped after optimiser step 5 (inside epoch 1)" in out and "1 more signal(s)" in out
    path = tmp_path / "run" / "checkpoints" / "epoch_0000_step_00000005"
    assert (path / "process_state_0.pkl").is_file() and json.loads((path / "checkpoint.json").read_text())["mid_epoch"]

    resumed = Run(config(output_dir=tmp_path / "run", resume=True))
    assert resumed.resume() and resumed.state.global_step == 5
    assert "inside epoch 1" in capsys.readouterr().out
    assert resumed.resumed_progress(1) is None
    progress = resumed.resumed_progress(0)
    assert progress["batches"] == 5 and progress["sums"]["loss"].item() == 2.5
    assert resumed.resumed_progress(0) is None  # handed back once
    resumed.accelerator.end_training()

    manifest = json.loads((path / "checkpoint.json").read_text())
    (path / "checkpoint.json").write_text(json.dumps({**manifest, "num_processes": 2}))
    other = Run(config(output_dir=tmp_path / "run", resume=True))
    with pytest.raises(CheckpointError, match="resumes with exactly 2 processes"):
        other.resume()
    other.accelerator.end_training()


# --- launch settings: precision, trackers, where each setting came from --------------------------


@pytest.fixture
def fresh_accelerate():
    """Accelerate keeps one state per process; reset it so each Run here sets its own precision."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_auto_precision_defers_to_the_launcher_and_explicit_wins(fresh_accelerate, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch` passes on
    auto = Run(config(output_dir=tmp_path / "auto"))
    assert auto.accelerator.mixed_precision == "bf16"
    assert "precision bf16 (env ACCELERATE_MIXED_PRECISION)" in capsys.readouterr().out
    auto.accelerator.end_training()
    AcceleratorState._reset_state(reset_partial_state=True)
    pinned = Run(config(output_dir=tmp_path / "pinned", mixed_precision="no"))
    assert pinned.accelerator.mixed_precision == "no"
    line = capsys.readouterr().out
    assert "launch: 1 process(es) (detection), 1 machine(s) (detection), device cpu" in line
    assert "precision no (run config; overrides the launcher's bf16)" in line
    pinned.accelerator.end_training()


def test_launch_sources_name_who_decided():
    def sources(precision="auto", options=None, file_values=None, env=None):
        return launch_sources(precision, options, "/cfg.yaml", file_values or {}, env or {})

    assert set(sources().values()) == {"detection"}
    launched = sources(
        options={"num_processes": "8", "cpu": ""}, file_values={"num_machines": 2, "mixed_precision": "fp16"}
    )
    assert launched == {"processes": "launcher flag", "machines": "accelerate config /cfg.yaml",
                        "device": "launcher flag", "precision": "accelerate config /cfg.yaml"}  # fmt: skip
    assert sources("bf16", options={"mixed_precision": "fp16"})["precision"] == "run config"
    assert sources(options={})["processes"] == "detection"  # accelerate launch alone: all visible devices
    assert sources(options={}, file_values={"use_cpu": False})["device"] == "detection"
    assert sources(options={}, file_values={"use_cpu": True})["device"] == "accelerate config /cfg.yaml"
    torchrun = sources(env={"WORLD_SIZE": "4", "GROUP_WORLD_SIZE": "2", "ACCELERATE_MIXED_PRECISION": "fp16"})
    assert torchrun == {"processes": "env WORLD_SIZE", "machines": "env GROUP_WORLD_SIZE", "device": "detection",
                        "precision": "env ACCELERATE_MIXED_PRECISION"}  # fmt: skip


@pytest.mark.skipif(not os.path.exists("/proc/self/cmdline"), reason="reads the launcher's command line from /proc")
def test_launcher_options_and_config_file_are_read_back(tmp_path):
    import subprocess
    import sys
    import time

    saved = tmp_path / "accelerate.yaml"
    saved.write_text("compute_environment: LOCAL_MACHINE\nnum_processes: 4\nmixed_precision: bf16\n")
    # A process whose command line is that of an `accelerate launch` (it only sleeps).
    command = [sys.executable, "-c", "import time; time.sleep(60)", "-m", "accelerate.commands.launch", "--cpu",
               "--num_processes=2", "--config_file", str(saved), "train.py", "--num_machines", "3"]  # fmt: skip
    fake = subprocess.Popen(command)
    try:
        # /proc shows the new command line once the child's exec has completed (Popen may return just before).
        deadline = time.monotonic() + 30
        while (options := launcher_options(fake.pid)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        fake.kill()
        fake.wait()
    assert options == {"cpu": "", "num_processes": "2", "config_file": str(saved)}  # the script's own args excluded
    assert accelerate_config_file(options) == (str(saved), {"compute_environment": "LOCAL_MACHINE",
                                                            "num_processes": 4, "mixed_precision": "bf16"})  # fmt: skip
    assert accelerate_config_file({"cpu": ""}) == (None, {})  # --cpu: Accelerate ignores the default file
    assert launcher_options(os.getpid()) is None  # pytest was not started by accelerate launch


def test_idle_gpus_are_warned_about():
    assert unused_gpu_warning(8, 8) is None and unused_gpu_warning(0, 0) is None
    warning = unused_gpu_warning(8, 1)
    assert "8 GPUs are visible" in warning and "uses 1" in warning and "--num_processes 8" in warning


def test_the_gpu_data_backend_without_a_gpu_is_warned_about():
    assert gpu_backend_on_cpu_warning("gpu", "cuda") is None and gpu_backend_on_cpu_warning("pil", "cpu") is None
    warning = gpu_backend_on_cpu_warning("gpu", "cpu")
    assert "cpu device" in warning and "Use data_backend=pil" in warning


def test_a_tracker_that_is_not_installed_is_named_with_its_pip_command(tmp_path):
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    installed = {str(t) for t in get_available_trackers()}
    absent = next(name for name in LOGGER_TYPE_TO_CLASS if name not in installed)  # the dev install has only tb
    with pytest.raises(TrackerNotInstalledError, match=f"report_to names {absent}.*-m pip install {absent}`"):
        Run(config(output_dir=tmp_path / "run", report_to=f"[tensorboard,{absent}]"))
    assert not (tmp_path / "run").exists()  # nothing was started


def test_report_to_none_logs_nowhere(fresh_accelerate, tmp_path):
    run = Run(config(output_dir=tmp_path / "run", report_to="[]"))
    assert run.accelerator.trackers == [] and not (tmp_path / "run" / "tb").exists()
    run.accelerator.end_training()
