"""Errors the user can fix (a setting, a missing or damaged file, a diverged run), reported in one line.

Every command line of the recipes and of ``tools/`` runs its work inside :func:`report_user_errors`: a :class:`UserError`
(or a missing or unwritable file) ends the process with ``error: <message>`` as its last line and exit
status :data:`USER_ERROR_EXIT_CODE`, without a traceback (``DEBUG=1`` shows one). Any other exception is
a bug and keeps its traceback. A closed output pipe ends the process quietly.

``accelerate launch`` reports a failed process with a traceback of its own, after the process's
message. When ``DKL_ERROR_FILE`` names a file (the Makefile's launcher wrapper, ``tools/last_error.py``,
sets it), the first message is also written there, so the wrapper can repeat it as the very last line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

USER_ERROR_EXIT_CODE = 2  # as argparse's usage errors
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT: what a shell reports for a job ended by Ctrl-C


class UserError(Exception):
    """Something the user can fix; the message says what is wrong and how to fix it."""


@contextmanager
def report_user_errors() -> Iterator[None]:
    """Turn a :class:`UserError`, ``FileNotFoundError`` or ``PermissionError`` into one line and exit status 2.

    A closed output pipe (``... | head``) ends the process quietly, as ``cat`` does, not with a traceback; Ctrl-C
    (outside a training loop, where it saves a checkpoint) ends it with ``interrupted (Ctrl-C)`` and status 130.
    """
    try:
        yield
    except BrokenPipeError:
        # The reader is gone: later writes (and Python's flush at exit) would fail again, so point stdout
        # at /dev/null, as the ``signal`` module's documentation recommends, and stop.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        if os.environ.get("DEBUG", "") not in ("", "0"):
            raise
        # Ctrl-C outside the training loop (which saves a checkpoint instead): stop at once, in one line.
        sys.stdout.flush()
        print("interrupted (Ctrl-C)", file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED_EXIT_CODE) from None
    except (UserError, FileNotFoundError, PermissionError) as err:
        if os.environ.get("DEBUG", "") not in ("", "0"):
            raise
        message = f"error: {err}"
        record_error(message)
        sys.stdout.flush()
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(USER_ERROR_EXIT_CODE) from None


def record_error(message: str) -> None:
    """Write the first error of the run to ``$DKL_ERROR_FILE`` (if set); later ones (other processes) are dropped."""
    path = os.environ.get("DKL_ERROR_FILE")
    if not path:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError:
        return
    with os.fdopen(fd, "w") as file:
        file.write(message + "\n")
