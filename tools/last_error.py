"""Run a command (``accelerate launch ...``); if it fails, repeat the run's own one-line error as the last line.

``accelerate launch`` answers a failed training process with a traceback of its own, printed after the
process's clear message (``error: ...``), which then scrolls out of sight. The Makefile's training and
evaluation targets run the launcher through this wrapper: it names a file in ``DKL_ERROR_FILE``, where
the recipe records its first error (:func:`dkl_train.errors.report_user_errors`), and prints that line
again once the command has ended. Output is not captured (progress bars, colours and prompts are
unchanged); the exit status is the command's.

Usage: ``python -m tools.last_error COMMAND [ARGS ...]``
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dkl-error-") as folder:
        record = Path(folder) / "error.txt"
        process = subprocess.Popen(argv, env={**os.environ, "DKL_ERROR_FILE": str(record)})
        while True:
            try:
                status = process.wait()
                break
            except KeyboardInterrupt:  # Ctrl-C reached the command too: wait for it to finish its own way
                continue
        if status != 0 and record.is_file():
            sys.stdout.flush()
            print(record.read_text().strip(), file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
