"""Files that are never half-written: write under a temporary name in the same folder, then rename.

A crash, a full disk or an exception while writing leaves the previous file (or none) in place,
never a truncated or empty one; the temporary file is removed on failure.

>>> import os, tempfile
>>> folder = tempfile.mkdtemp()
>>> path = atomic_write(os.path.join(folder, "a.txt"), lambda f: f.write(b"hello"))
>>> open(path, "rb").read(), sorted(os.listdir(folder))
(b'hello', ['a.txt'])
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Callable, Union

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], object]) -> str:
    """Call ``write(file)`` on a temporary binary file beside ``path``, flush it to disk, rename it to ``path``.

    Returns:
        ``path`` as a string.

    Raises:
        OSError: the folder is missing or not writable, or the disk is full; ``path`` is then untouched.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def check_writable(folder: PathLike, what: str) -> None:
    """Create ``folder`` if needed and prove a file can be written there; a clear error naming the fix if not.

    Raises:
        ValueError: ``folder`` is a file, cannot be created, or is not writable.
    """
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"{what} {folder!r} is a file, not a folder; remove it or choose another folder")
    try:
        os.makedirs(folder, exist_ok=True)
        atomic_write(os.path.join(folder, ".write_test"), lambda f: f.write(b"ok"))
        os.unlink(os.path.join(folder, ".write_test"))
    except OSError as err:
        raise ValueError(
            f"{what} {folder!r} is not writable ({type(err).__name__}: {err}); fix its permissions or free "
            "space, or point the logger at another folder"
        ) from err
