"""A run holds its folder: a second run or a resume on a held folder is refused naming the holder's host and
pid; a holder killed with SIGKILL leaves nothing that blocks the next run."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from dkl_train.config import EpochConfig, load_config
from dkl_train.errors import UserError
from dkl_train.run_lock import RunFolderInUseError, lock_folder
from dkl_train.training import Run

# Another process (another run) takes the folder's lock, says so, and holds it until it is killed.
HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from dkl_train.run_lock import lock_folder
    assert lock_folder(Path(sys.argv[1])) is None
    print("held", flush=True)
    time.sleep(600)
""")


@pytest.fixture
def held(tmp_path):
    """``(run folder, holder process)``: the folder is held by a separate process until the test kills it."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    yield run_dir, holder
    holder.kill()
    holder.wait()


def test_a_second_run_and_a_resume_on_a_held_folder_are_refused_naming_the_holder(held):
    run_dir, holder = held
    for resume in ("false", "true"):
        config = load_config(EpochConfig, None, [f"output_dir={run_dir}", f"resume={resume}"])
        with pytest.raises(RunFolderInUseError) as refused:
            Run(config)
        message = str(refused.value)
        assert f"{run_dir} is in use by another run (host {socket.gethostname()}, pid {holder.pid}, started " in message
        assert "choose another output_dir=..." in message and "\n" not in message
        assert isinstance(refused.value, UserError)  # one line through report_user_errors
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # the refused runs wrote nothing


def test_a_lock_left_by_a_killed_holder_does_not_block(held):
    run_dir, holder = held
    assert "is in use by another run" in lock_folder(run_dir)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (run_dir / ".lock").read_text().startswith("host ")  # its record is still there, its lock is not
    run = Run(load_config(EpochConfig, None, [f"output_dir={run_dir}"]))
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / ".lock").read_text().startswith(f"host {socket.gethostname()}, pid ")
    run.accelerator.end_training()
