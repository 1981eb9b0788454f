"""Atomic file writes: a file is either the old one or the complete new one, never half-written.

Every writer in the package (reports, plots, sparse exports, importance models, compacted models)
goes through :func:`atomic_write`: the payload is written to a temporary file in the destination's
folder, flushed and synced, given the permissions a plain ``open()`` would give it, and renamed
over the destination. On any error the temporary file is removed and the destination is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def default_file_mode() -> int:
    """``0o666`` less the process umask: what ``open()`` would give (``mkstemp`` gives ``0o600``).

    Example:
        >>> 0 <= default_file_mode() <= 0o666
        True
    """
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it over ``path``.

    Args:
        path: the destination; its folder must exist.
        write: writes the payload to the open binary handle it is given.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "note.txt"
        >>> atomic_write(target, lambda handle: handle.write(b"hello")).read_text()
        'hello'
        >>> def broken(handle):
        ...     handle.write(b"half")
        ...     raise OSError("disk full")
        >>> atomic_write(target, broken)
        Traceback (most recent call last):
        ...
        OSError: disk full
        >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
        ('hello', ['note.txt'])
    """
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; see :func:`atomic_write`."""
    return atomic_write(path, lambda out: out.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write`."""
    return atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: object, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj, path)``, atomically; see :func:`atomic_write`."""
    return atomic_write(path, lambda out: torch.save(obj, out))


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable where the platform allows it (POSIX)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
