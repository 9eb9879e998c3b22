"""``accelerate launch`` without its traceback after a run's own one-line error.

When a training process ends with a user error it prints ``error: ...`` and exits with status 2. The launcher
then adds lines that say nothing true or useful: Accelerate's one-process launcher raises
``CalledProcessError`` (an 11-line traceback), torch's several-process launcher raises ``ChildFailedError``
(a traceback and a table), and before the run starts Accelerate logs a notice of the defaults it used
(``--num_processes`` "0", which means one process on the CPU; every run prints its own launch line instead).

Two ways in, one behaviour:

- the Makefile's targets run ``accelerate launch`` in-process through ``tools/last_error.py``, which uses
  :func:`hide_defaults_notice` and :func:`exit_status`;
- ``make install`` writes ``dkl_train_quiet_launch.pth`` into the virtual environment, so a bare
  ``.venv/bin/accelerate launch`` (or ``accelerate-launch``) calls :func:`install` at start-up: the notice is
  hidden, Ctrl-C waits for the training processes (which save a checkpoint and exit with status 130), and a
  failed launch ends with the training process's status and without the launcher's traceback when that
  process has said why itself (a recorded user error, or a stop by Ctrl-C or SIGTERM after saving). Any
  other failure, in any script, keeps the launcher's traceback. Other programs in the environment are left
  alone: the hook looks at the command line and returns.

Only the standard library is imported at start-up.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import TracebackType

DEFAULTS_NOTICE = "The following values were not passed to `accelerate launch`"
PTH_NAME = "dkl_train_quiet_launch.pth"
# Exit statuses a run explains itself: a stop by Ctrl-C (130) or SIGTERM (143) saved a checkpoint and said how
# to continue; a user error (2) counts only when the run recorded it (another script may exit 2 for anything).
STOPPED = (130, 143)
USER_ERROR = 2
_installed = False


def exit_status(returncode: int) -> int:
    """A child's return code as a shell reports it: 128 + N for a process ended by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def hide_defaults_notice() -> None:
    """Drop Accelerate's notice of the launch defaults it used (each run prints its own launch line)."""
    import logging

    logging.getLogger("accelerate.commands.launch").addFilter(
        lambda record: not record.getMessage().startswith(DEFAULTS_NOTICE)
    )


def is_accelerate_launch(argv: list[str]) -> bool:
    """``accelerate launch ...`` or ``accelerate-launch ...``."""
    if not argv:
        return False
    program = Path(argv[0]).name
    return (program == "accelerate" and argv[1:2] == ["launch"]) or program == "accelerate-launch"


def install(argv: list[str] | None = None) -> None:
    """Under ``accelerate launch``: hide the notice, let Ctrl-C wait for the run, end a failure the run has
    explained with its status alone. Anything else: nothing."""
    global _installed
    if _installed or not is_accelerate_launch(sys.argv if argv is None else argv):
        return  # once: site.py may read the .pth twice (lib and lib64 name the same folder)
    _installed = True
    import atexit
    import shutil
    import signal
    import tempfile

    folder = None
    if not os.environ.get("DKL_ERROR_FILE"):  # where the run records its error (dkl_train.errors.record_error)
        folder = tempfile.mkdtemp(prefix="dkl-error-")
        atexit.register(shutil.rmtree, folder, True)
        os.environ["DKL_ERROR_FILE"] = os.path.join(folder, "error.txt")
    hide_defaults_notice()
    # Ctrl-C reaches every process of the terminal's group: the training processes save and exit, and the
    # launcher goes on waiting for them instead of ending at once with a KeyboardInterrupt traceback. (A Python
    # handler, not SIG_IGN: the training processes, which the launcher starts, do not inherit it.)
    signal.signal(signal.SIGINT, wait_for_the_run)
    previous = sys.excepthook

    def quiet(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
        status = explained_status(error)
        if status is None:
            previous(kind, error, traceback)
            return
        sys.stdout.flush()
        sys.stderr.flush()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        os._exit(status)  # the launcher has nothing left to do; a normal exit would end with status 1

    sys.excepthook = quiet


def wait_for_the_run(_signum: int, _frame: object) -> None:
    """Ctrl-C in the launcher: before the run has started, stop (status 130); after, wait for it to save."""
    import psutil  # a dependency of Accelerate

    if not psutil.Process().children():
        print("interrupted (Ctrl-C)", file=sys.stderr, flush=True)
        raise SystemExit(130)


def explained_status(error: BaseException) -> int | None:
    """The status to exit with when ``error`` is a launcher's report of a run that explained its own end."""
    from subprocess import CalledProcessError

    if isinstance(error, CalledProcessError):
        status = exit_status(error.returncode)
    elif type(error).__name__ == "ChildFailedError" and hasattr(error, "get_first_failure"):
        status = exit_status(error.get_first_failure()[1].exitcode)
        repeat_error()  # torch's launcher logged its own lines after the run's error
    else:
        return None
    recorded = Path(os.environ.get("DKL_ERROR_FILE", "")).is_file()
    return status if status in STOPPED or (status == USER_ERROR and recorded) else None


def repeat_error(record: Path | None = None) -> None:
    """Print the run's recorded error line (``record``, default ``$DKL_ERROR_FILE``) again, after whatever the
    launcher printed."""
    record = record or Path(os.environ.get("DKL_ERROR_FILE", ""))
    if record.is_file():
        sys.stdout.flush()
        print(record.read_text().strip(), file=sys.stderr, flush=True)


def write_pth(site_packages: Path) -> Path:
    """Write the start-up line that calls :func:`install` into ``site_packages`` (``make install`` does)."""
    path = site_packages / PTH_NAME
    # A .pth line that starts with "import" runs at start-up; the hook returns at once outside accelerate launch.
    path.write_text("import dkl_train.quiet_launch as _dkl_quiet_launch; _dkl_quiet_launch.install()\n")
    return path


if __name__ == "__main__":  # python -m dkl_train.quiet_launch --write-pth: install the start-up hook
    import sysconfig

    if sys.argv[1:] != ["--write-pth"]:
        raise SystemExit("usage: python -m dkl_train.quiet_launch --write-pth")
    print(f"wrote {write_pth(Path(sysconfig.get_paths()['purelib']))}")
