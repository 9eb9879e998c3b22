"""Resuming compares settings with the run's config.yaml; a finished run is left alone; one TensorBoard entry."""

from __future__ import annotations

import json

import pytest

from dkl_train.config import EpochConfig, load_config
from dkl_train.resuming import ResumeConflictError
from dkl_train.training import Run, RunExistsError


def config(**overrides) -> EpochConfig:
    return load_config(EpochConfig, None, [f"{k}={v}" for k, v in overrides.items()])


def _trained(run_dir, epochs=2, finished=True):
    """A run folder as a run of ``epochs`` epochs leaves it: checkpoints, and results.json when ``finished``."""
    run = Run(config(output_dir=run_dir, epochs=epochs, report_to="[]"))
    for epoch in range(1, epochs + 1):
        run.state.epoch, run.state.global_step = epoch, 3 * epoch
        run.save_checkpoint()
    if finished:
        run.finish({"top1": 50.0})
    else:
        run.accelerator.end_training()
    return run_dir


def test_settings_that_change_the_result_refuse_to_resume_naming_old_and_new(tmp_path):
    run_dir = _trained(tmp_path / "run", finished=False)
    saved = (run_dir / "config.yaml").read_text()
    with pytest.raises(ResumeConflictError) as err:
        Run(config(output_dir=run_dir, epochs=2, report_to="[]", resume=True, lr=0.5, batch_size=32))
    message = str(err.value)
    assert "batch_size: 64 in" in message and "32 now" in message and "lr: 0.05 in" in message and "0.5 now" in message
    assert "resume_override=true" in message
    assert (run_dir / "config.yaml").read_text() == saved  # nothing rewritten


def test_logging_eval_and_longer_runs_are_allowed_and_said(tmp_path, capsys):
    run_dir = _trained(tmp_path / "run", finished=False)
    capsys.readouterr()
    run = Run(config(output_dir=run_dir, epochs=4, report_to="[]", resume=True, log_every=7, eval_every=2))
    out = capsys.readouterr().out
    for line in ("resume: epochs changed from 2 to 4", "resume: log_every changed from 50 to 7",
                 "resume: eval_every changed from 1 to 2"):  # fmt: skip
        assert line in out
    assert run.resume() and run.state.epoch == 2
    run.accelerator.end_training()


def test_override_resumes_with_new_values_deliberately(tmp_path, capsys):
    run_dir = _trained(tmp_path / "run", finished=False)
    capsys.readouterr()
    Run(config(output_dir=run_dir, epochs=2, report_to="[]", resume=True, resume_override=True, lr=0.5))
    assert "resume: lr changed from 0.05 to 0.5 (resume_override=true)" in capsys.readouterr().out
    assert "lr: 0.5" in (run_dir / "config.yaml").read_text()


def test_resuming_a_finished_run_says_so_and_changes_nothing(tmp_path, capsys):
    run_dir = _trained(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (run_dir / "results.json", run_dir / "config.yaml")}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        Run(config(output_dir=run_dir, epochs=2, report_to="[]", resume=True))
    assert exit_info.value.code == 0
    assert "holds a finished run: its last checkpoint epoch_0002 ends epoch 2 of 2" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (run_dir / "results.json", run_dir / "config.yaml")} == before


def test_a_finished_run_without_resume_is_refused_in_one_sentence(tmp_path):
    run_dir = _trained(tmp_path / "run")
    with pytest.raises(RunExistsError, match=r"already holds a run \(finished: .*results.json\).*pass resume=true"):
        Run(config(output_dir=run_dir, epochs=2, report_to="[]"))


def test_one_tensorboard_entry_per_run_with_its_hparams(tmp_path, capsys):
    run = Run(config(output_dir=tmp_path / "run", epochs=1))
    run.finish({"top1": 1.0})
    tb = tmp_path / "run" / "tb"
    assert [p.is_file() for p in tb.iterdir()] == [True]  # one event file, no time-stamped hparams folder
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb))
    events.Reload()
    stored = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(stored)
    assert b"weight_decay" in stored["_hparams_/session_start_info"]  # the run's settings, in its own entry
    out = capsys.readouterr().out
    assert f"results: {tmp_path / 'run' / 'results.json'}" in out and f"TensorBoard: {tb}" in out
    # No REPORT.md yet: the command that writes it, not a path that does not exist.
    assert f"make report RUNS={tmp_path} (writes {tmp_path / 'REPORT.md'})" in out and "report: " not in out
    assert json.loads((tmp_path / "run" / "results.json").read_text())["final"] == {"top1": 1.0}


def test_end_of_run_names_an_existing_report(tmp_path, capsys):
    (tmp_path / "REPORT.md").write_text("# earlier report\n")
    Run(config(output_dir=tmp_path / "run", epochs=1, report_to="[]")).finish({"top1": 1.0})
    assert f"report: {tmp_path / 'REPORT.md'} (mean +- std" in capsys.readouterr().out
