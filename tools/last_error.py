"""Run a training launch (``accelerate launch ...``) so that it ends as the run ends: signals, status, last error.

The Makefile's training and evaluation targets run their launcher through this wrapper:

- **Signals reach the training processes once, and the wrapper waits for them.** The command runs in a
  process group of its own; each SIGINT (Ctrl-C), SIGTERM, SIGUSR1 or SIGHUP the wrapper receives (from
  the terminal, from ``make``, which passes SIGTERM on to its child, or sent to make's whole process group
  by ``timeout``, docker, CI or a scheduler) is forwarded to the launcher's children, the training
  processes, which finish their step and save a checkpoint. The wrapper exits only when the launch has
  ended, with its status (143 after SIGTERM, 130 after Ctrl-C), so ``make`` returns after the save.
- **No launcher traceback.** ``accelerate launch`` runs inside this module (:func:`accelerate_launch`,
  the same options and launchers): a failed training process ends the launch with that process's exit
  status, without Accelerate's ``CalledProcessError`` or torch's ``ChildFailedError`` traceback, and
  without Accelerate's notice listing the defaults it used (``--num_processes`` 0 there means one
  process, on the CPU); every run prints its own launch line saying where its settings came from.
- **The run's error is the last line.** The wrapper names a file in ``DKL_ERROR_FILE``, where the recipe
  records its first error (:func:`dkl_train.errors.report_user_errors`); when something may have been
  printed after it (several processes, or another launcher), the line is printed again at the end.

Output is not captured (progress bars and colours are unchanged); the launch reads no input from the terminal
(log in to a tracker such as wandb beforehand).

Usage: ``python -m tools.last_error COMMAND [ARGS ...]``
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from dkl_train.quiet_launch import exit_status, hide_defaults_notice, repeat_error

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)
# The launcher run in-process. Its module's name in the command line lets a run read the launcher's options
# back from /proc as it does for `accelerate launch` (dkl_train.launch.launcher_options).
IN_PROCESS = ["-m", "tools.last_error", "--in-process", "accelerate.commands.launch"]


def main(argv: list[str]) -> int:
    if argv[:2] == IN_PROCESS[2:]:
        return accelerate_launch(argv[2:])
    if not argv:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    command = in_process_launcher(argv)
    with tempfile.TemporaryDirectory(prefix="dkl-error-") as folder:
        record = Path(folder) / "error.txt"
        # A process group of its own: the terminal's Ctrl-C and a signal to make's group reach the training
        # processes only through forward(), once each; the launcher itself never sees them.
        # Outside the terminal's foreground group a read from the terminal would stop the launch for good: a prompt
        # (e.g. a tracker's login) reads end-of-file instead.
        stdin = subprocess.DEVNULL if os.isatty(0) else None
        environment = {**os.environ, "DKL_ERROR_FILE": str(record)}
        process = subprocess.Popen(command, env=environment, stdin=stdin, process_group=0)
        previous = {s: signal.signal(s, lambda signum, _frame: forward(process.pid, signum)) for s in FORWARDED}
        try:
            status = process.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if status != 0 and command is argv:  # the in-process launcher leaves the run's error last itself
            repeat_error(record)
    return exit_status(status)


def in_process_launcher(argv: list[str]) -> list[str]:
    """``accelerate launch OPTIONS...`` (or ``accelerate-launch``) as :func:`accelerate_launch`; else ``argv``."""
    program = Path(argv[0]).name
    if program == "accelerate" and argv[1:2] == ["launch"]:
        options = argv[2:]
    elif program == "accelerate-launch":
        options = argv[1:]
    else:
        return argv
    python = Path(argv[0]).with_name("python")  # the launcher's own environment
    return [str(python) if python.is_file() else sys.executable, *IN_PROCESS, *options]


def forward(launcher: int, signum: int) -> None:
    """Send ``signum`` to the launcher's children (the training processes), or to the launcher before it has any."""
    try:
        targets = psutil.Process(launcher).children() or [psutil.Process(launcher)]
    except psutil.NoSuchProcess:
        return
    for target in targets:
        try:
            target.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


def accelerate_launch(options: list[str]) -> int:
    """``accelerate launch OPTIONS...`` in this process; the first failed training process's status, quietly."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # stopped before a training process started: end without a traceback
    hide_defaults_notice()
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        launch_command(launch_command_parser().parse_args(options))
    except subprocess.CalledProcessError as err:  # the one-process launcher
        return exit_status(err.returncode)
    except ChildFailedError as err:  # torch's launcher (several processes): its own log lines came last
        repeat_error()
        return exit_status(err.get_first_failure()[1].exitcode)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
