"""One run per run folder: the run holds ``<output_dir>/.lock`` from its start to its end.

Two runs writing into one folder would interleave ``config.yaml``, ``results.json``, checkpoints and
TensorBoard files, and a ``resume=true`` while the first run still trains would load a checkpoint that is
being replaced. The run's main process takes an exclusive POSIX record lock (``fcntl.lockf``) on the file
and writes its host, pid and start time into it; the kernel (or the file server) drops the lock when the
process ends in any way, SIGKILL and crashes included, so a stale file never blocks a new run. A second
run, or a resume, on a held folder stops with one line naming the holder.

Where the lock holds: between processes of one machine on any local file system; across machines on a
shared file system that supports POSIX locks (NFSv3 with lockd, NFSv4, GPFS, BeeGFS; Lustre when mounted
with ``-o flock``). A file system without locks (``ENOLCK``/``EOPNOTSUPP``) gets a warning and no lock. A
POSIX lock belongs to a process: data-loader workers do not inherit it, and a second :class:`~dkl_train.training.Run`
on the same folder inside one process is not refused.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    from accelerate import Accelerator

LOCK_NAME = ".lock"
_HELD: dict[Path, int] = {}  # folder -> the descriptor that holds its lock (kept open for the process's life)


class RunFolderInUseError(UserError):
    """Another process holds the run folder (a run is training, or resuming, in it)."""


def hold_run_folder(run_dir: Path, accelerator: Accelerator) -> None:
    """Lock ``run_dir`` for this run (main process), or raise :class:`RunFolderInUseError` on every process.

    Every process must call it (the main process's answer is broadcast); the folder must exist.
    """
    problem = lock_folder(run_dir) if accelerator.is_main_process else None
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        problem = broadcast_object_list([problem])[0]
    if problem is not None:
        raise RunFolderInUseError(problem)


def lock_folder(run_dir: Path) -> str | None:
    """Take the lock of ``run_dir`` for this process; ``None``, or the error message naming the holder."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _HELD:
        return None
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EACCES, errno.EAGAIN):
            return _in_use_message(run_dir)
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            print(
                f"warning: the file system of {run_dir} does not support file locks ({err.strerror}); nothing stops "
                "a second run from writing into this folder at the same time"
            )
            return None
        raise
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    holder = f"host {socket.gethostname()}, pid {os.getpid()}, started {started}\n".encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder, 0)
    _HELD[run_dir] = fd  # never closed: closing any descriptor of the file would release the lock
    return None


def _in_use_message(run_dir: Path) -> str:
    holder = ""
    for _ in range(20):  # the holder writes its name right after locking: give it a moment
        holder = (run_dir / LOCK_NAME).read_text().strip()
        if holder:
            break
        time.sleep(0.05)
    return (
        f"{run_dir} is in use by another run ({holder or 'holder not recorded'}); wait for it to end, stop it "
        "(SIGTERM or Ctrl-C saves a checkpoint; then resume=true continues it), or choose another output_dir=..."
    )
