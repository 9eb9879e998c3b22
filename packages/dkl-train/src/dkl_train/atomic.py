"""Atomic writes: a file or folder appears whole or not at all, also after a crash or a power cut.

Every writer of the library (``results.json``, model weights, checkpoints, prepared datasets) and of the
repository's tools goes through here. The content is written to a temporary name in the target's own
folder, flushed to disk (``fsync``), renamed into place (``os.replace``, atomic within one file system),
and then the folder itself is flushed, so the rename survives a power cut too. Readers see the old
content or the new, never half of it. Standard library only: ``tools/`` imports it without torch.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def fsync_dir(folder: str | Path) -> None:
    """Flush ``folder``'s entries (e.g. a rename into it) to disk."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the rename is still atomic
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    """Flush a written file's data to disk (before it is renamed into place)."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_tree(folder: str | Path) -> None:
    """Flush every file of ``folder`` and the folder to disk before it is renamed into place (a power cut keeps it whole)."""
    for path in Path(folder).rglob("*"):
        if path.is_file():
            fsync_file(path)
    fsync_dir(folder)


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` writes the content to ``tmp``, a temporary file beside ``path``.

    ``tmp`` is then flushed to disk, renamed over ``path`` and the folder flushed. ``tmp``'s name holds the
    process id, so processes writing the same file at the same time (array jobs) do not clash: the last
    rename wins. On an error the temporary file is removed and the error raised; ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """:func:`write_atomic` of ``text`` (``Path.write_text``'s encoding)."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def replace_folder(tmp: str | Path, final: str | Path) -> Path:
    """Move the finished folder ``tmp`` to ``final`` (a sibling), replacing an older ``final``; ``tmp`` is flushed first.

    For folders written whole into a temporary name (a prepared dataset, an index). Unlike a file, a
    folder cannot be renamed over an existing one: the old ``final`` is deleted first, so a crash
    between the two steps leaves no ``final`` (``tmp`` is complete then, and preparing again rewrites it).
    """
    tmp, final = Path(tmp), Path(final)
    fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return final
