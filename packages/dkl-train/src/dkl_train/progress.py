"""Progress bars on a terminal only: a log file (stderr not a terminal) gets no carriage-return redraws.

Runs sent to a file print one line per stage instead (the epoch summaries, AutoAttack's per-attack
lines), so logs stay readable with ``less`` and ``grep``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def interactive() -> bool:
    """Whether progress bars are drawn: stderr is a terminal."""
    return sys.stderr.isatty()


def progress_bar(iterable: Iterable[T] | None = None, *, show: bool = True, **options: Any) -> tqdm:
    """``tqdm(iterable, **options)``, drawn only when ``show`` and on a terminal; it disappears when done."""
    options.setdefault("leave", False)
    options.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not (show and interactive()), **options)


def write(message: str) -> None:
    """Print a line above any progress bar (flushed: logs of long runs show it at once)."""
    tqdm.write(message)
    sys.stdout.flush()


def say(prefix: str) -> Callable[[str], None]:
    """A ``progress`` callback for long evaluations (AutoAttack, PGD): each report as one line, ``prefix: report``.

    Lines rather than a bar, on a terminal and in a log alike: each line is a stage (an attack on a chunk)
    that can take minutes, and a log keeps every one of them.
    """
    return lambda report: write(f"{prefix}: {report}")
