"""Output locations, checked before any work starts.

A read-only ``--out``, a path under a file, or a folder this process may not write would
otherwise fail only when the first byte is written: after minutes of scoring, or with a raw
``OSError``. Every stage calls :func:`check_writable` on its outputs together with its other
input checks, so such a location is one ``error:`` line before anything is computed or written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from stages.errors import MgpoError


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its closest existing parent."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: str | os.PathLike, option: str, *, beside: bool = False) -> None:
    """Refuse an output location that cannot be written, naming ``option`` and the path.

    ``beside``: the output is built next to ``path`` and renamed into place (shard sets,
    reports, model folders), so it is the parent folder that must take new entries.
    The check is a real write (a temporary file, removed at once): permission bits say nothing
    about read-only file systems, and root ignores them.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise MgpoError(f"{option} {path}: exists and is not a directory")
    folder = nearest_existing(path.parent if beside else path)
    if not folder.is_dir():
        raise MgpoError(f"{option} {path}: {folder} is a file, not a folder")
    try:
        handle, name = tempfile.mkstemp(prefix=".mgpo-write-check-", dir=folder)
        os.close(handle)
        os.unlink(name)
    except OSError as error:
        raise MgpoError(
            f"{option} {path}: cannot write in {folder} ({error.strerror or error})"
        ) from None
