"""Atomic file writes: write to a temporary file in the destination's folder, then rename.

``os.replace`` is atomic on POSIX and Windows when source and destination are on the same file
system, so a reader (or a process killed half-way) sees either the old file or the new one, never a
partial file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "write_failure"]


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; on success, fsync it and rename it into place.

    On any exception the temporary file is removed and ``destination`` is left as it was.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(fd)
    temporary = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, destination)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_failure(error: Exception) -> tuple[str, str]:
    """Why a write failed and what to do, in a few words each (``OSError`` or a library's error text)."""
    code = getattr(error, "errno", None)
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if code in (errno.ENOSPC, errno.EDQUOT) or "StorageFull" in text or "os error 28" in text:
        return "no space left on the device", "free some space or choose another output; any previous file is kept"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return os.strerror(code), "choose a writable folder for the output"
    if code in (errno.ENOTDIR, errno.EEXIST):
        return "a parent of the path is a file, not a folder", "choose another output path"
    return text, "check the output folder and the free disk space"
