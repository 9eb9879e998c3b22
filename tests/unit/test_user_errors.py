"""User errors end in one line with the fix (no traceback), through ``make`` too; bugs keep their traceback."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap

import pytest
import torch

from dkl_train.config import BaseConfig, ConfigError, load_config
from dkl_train.errors import USER_ERROR_EXIT_CODE, UserError, report_user_errors
from dkl_train.models import CheckpointReadError, read_checkpoint
from dkl_train.nonfinite import nonfinite_advice
from dkl_train.training import make_run_dir
from tests.recipes.conftest import REPO


def test_a_user_error_is_one_line_on_stderr_and_status_2(capsys, monkeypatch, tmp_path):
    record = tmp_path / "error.txt"
    monkeypatch.setenv("DKL_ERROR_FILE", str(record))
    monkeypatch.delenv("DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info, report_user_errors():
        raise UserError("the thing is wrong; do this instead")
    assert exit_info.value.code == USER_ERROR_EXIT_CODE
    assert capsys.readouterr().err.splitlines() == ["error: the thing is wrong; do this instead"]
    with pytest.raises(SystemExit), report_user_errors():  # a second process's error does not replace the first
        raise FileNotFoundError("another")
    assert record.read_text() == "error: the thing is wrong; do this instead\n"


def test_bugs_and_debug_keep_their_traceback(monkeypatch):
    monkeypatch.delenv("DEBUG", raising=False)
    with pytest.raises(ZeroDivisionError), report_user_errors():
        raise ZeroDivisionError("a bug")
    monkeypatch.setenv("DEBUG", "1")
    with pytest.raises(UserError), report_user_errors():
        raise UserError("shown with its traceback")


def test_ctrl_c_outside_a_training_loop_is_one_line_and_status_130(capsys, monkeypatch):
    monkeypatch.delenv("DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info, report_user_errors():
        raise KeyboardInterrupt
    assert exit_info.value.code == 130 and capsys.readouterr().err == "interrupted (Ctrl-C)\n"


def test_the_make_wrapper_repeats_the_recorded_error_last():
    child = textwrap.dedent("""
        import os, sys
        open(os.environ["DKL_ERROR_FILE"], "w").write("error: teacher file missing; download it\\n")
        print("error: teacher file missing; download it", file=sys.stderr)
        print("Traceback (most recent call last): ... CalledProcessError", file=sys.stderr)
        sys.exit(2)
    """)
    result = subprocess.run(
        [sys.executable, "-m", "tools.last_error", sys.executable, "-c", child],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: teacher file missing; download it"
    ok = subprocess.run([sys.executable, "-m", "tools.last_error", sys.executable, "-c", "print('fine')"], cwd=REPO,
                        capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ok.returncode == 0 and ok.stdout == "fine\n" and ok.stderr == ""


def test_a_closed_pipe_ends_a_listing_quietly():
    """``... --list | head -1``: the tool stops when the reader does, without a BrokenPipeError traceback."""

    def pipeline(reader: str) -> subprocess.CompletedProcess:
        shell = f"{sys.executable} -m tools.sweep kd --list | {reader}"
        return subprocess.run(["bash", "-o", "pipefail", "-c", shell], cwd=REPO, capture_output=True, text=True,
                              timeout=60)  # fmt: skip

    result = pipeline("head -1")  # the listing may fit in the pipe before head exits: then nothing breaks
    assert result.stdout.startswith("cifar100: ") and result.stdout.count("\n") == 1
    assert result.stderr == "" and result.returncode in (0, 1)
    # A reader gone before the first write (it closes its input at once; the tool takes a second to start):
    # the pipe breaks every time.
    result = pipeline("(exec 0<&-)")
    assert result.stderr == ""
    assert result.returncode == 1  # as a pipeline whose writer was cut short, not a crash


def test_malformed_yaml_names_the_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lr: [0.1\nepochs: 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML: .* at line 2, column 7; fix the file"):
        load_config(BaseConfig, path)


def test_a_truncated_checkpoint_is_called_damaged_not_untrusted(tmp_path):
    whole = tmp_path / "teacher.pth"
    torch.save({"model": {"w": torch.randn(64, 64)}}, whole)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(whole.read_bytes()[:5000])
    with pytest.raises(CheckpointReadError, match=r"truncated.pth \(5,000 bytes\): the file is damaged or truncated"):
        read_checkpoint(truncated)
    assert isinstance(CheckpointReadError("x"), UserError)

    untrusted = tmp_path / "objects.pth"
    torch.save({"x": argparse.Namespace(lr=0.1)}, untrusted)  # a whole file, but not only tensors
    with pytest.raises(CheckpointReadError, match="If you trust this file, pass weights_only=False"):
        read_checkpoint(untrusted)


def test_an_unwritable_run_folder_says_so(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(UserError, match=r"cannot write the run folder .*a_file/run .*choose a writable output_dir"):
        make_run_dir(blocker / "run")


def test_non_finite_advice_suggests_float32_only_when_the_run_was_not():
    assert "mixed_precision=no" not in nonfinite_advice(1e6, "no") and "lr=1e+06" in nonfinite_advice(1e6, "no")
    assert "mixed_precision=no; this run used bf16" in nonfinite_advice(0.1, "bf16")
