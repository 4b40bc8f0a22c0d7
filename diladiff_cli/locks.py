"""One writer per output: an advisory lock held for the lifetime of a run.

``output_lock(path)`` takes ``flock`` on ``<path>.lock``. The kernel releases it
when the process ends however it ends, so a killed run never leaves it stuck; a
second run on the same output is refused at once instead of waiting.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from diladiff_cli.errors import DiladiffError
from diladiff_cli.files import writing


def lock_path(path: str | Path) -> Path:
    """The lock file of an output (``m.pt`` -> ``m.pt.lock``)."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def output_lock(path: str | Path) -> Iterator[None]:
    """Hold the lock of ``path`` for the ``with`` body; the lock file is removed after.

    The directory the lock file goes in is created when missing (``path`` itself is not).

    Raises:
        DiladiffError: another process holds it.
        OutputError: the lock file cannot be created (read-only or foreign directory).
    """
    lock = lock_path(path)
    while True:
        with writing(path):
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DiladiffError(
                f"another run is writing {path} (it holds {lock}); wait for it to finish "
                f"or choose another output"
            ) from None
        # The holder before us may have removed the file between our open and our lock:
        # then we hold a lock nobody else can see, and start over with the file now there.
        try:
            on_disk = os.stat(lock)
        except FileNotFoundError:
            on_disk = None
        held = os.fstat(fd)
        if on_disk is not None and (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)
    try:
        yield
    finally:
        # Removed while still held, so that nobody can lock the file we are leaving.
        lock.unlink(missing_ok=True)
        os.close(fd)
