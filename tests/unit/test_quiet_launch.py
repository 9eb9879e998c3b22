"""dkl_train.quiet_launch: which launcher failures end quietly, and the start-up hook's reach."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dkl_train import quiet_launch


def test_only_accelerate_launch_is_hooked():
    assert quiet_launch.is_accelerate_launch(["/x/.venv/bin/accelerate", "launch", "train.py"])
    assert quiet_launch.is_accelerate_launch(["/x/.venv/bin/accelerate-launch", "train.py"])
    for argv in (["/x/.venv/bin/accelerate", "config"], ["python", "-c", "pass"], ["pip", "install", "x"], []):
        assert not quiet_launch.is_accelerate_launch(argv), argv
    before = sys.excepthook
    quiet_launch.install(["/x/.venv/bin/python", "-m", "pytest"])
    assert sys.excepthook is before  # nothing changed outside a launch


@pytest.mark.parametrize(
    ("returncode", "recorded", "expected"),
    [(2, True, 2), (2, False, None), (130, False, 130), (143, False, 143), (-15, False, 143), (1, True, None)],
)
def test_a_failure_ends_quietly_only_when_the_run_explained_it(returncode, recorded, expected, tmp_path, monkeypatch):
    record = tmp_path / "error.txt"
    if recorded:
        record.write_text("config error: lr: expected a number, got 'abc'\n")
    monkeypatch.setenv("DKL_ERROR_FILE", str(record))
    error = subprocess.CalledProcessError(returncode, ["python", "train.py"])
    assert quiet_launch.explained_status(error) == expected
    assert quiet_launch.explained_status(ValueError("not a launcher's")) is None


def test_the_start_up_line_imports_the_hook(tmp_path):
    line = quiet_launch.write_pth(tmp_path).read_text()
    assert line.startswith("import ") and line.count("\n") == 1  # site.py runs such a line at start-up
    exec(line, {})  # under pytest's command line: installs nothing
