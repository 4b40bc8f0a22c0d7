"""Atomic file writes: a reader sees the old file or the new one, never half of one.

A write the environment refuses (a full disk, a read-only file system, no permission)
raises :class:`OutputError`: one line for the user, still an ``OSError`` for code
that handles those. Torch-free, so the recipe loader's callers
(``scripts/reproduce.py``) can use it too.

The one file that is appended to rather than replaced, a run's JSONL log, is read with
:func:`read_jsonl`: a run stopped mid-write leaves a torn last line, which it drops.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diladiff_cli.errors import DiladiffError


class OutputError(DiladiffError, OSError):
    """An output the environment refuses to take (``errno`` is the system's)."""


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` raised inside into an :class:`OutputError` naming ``path``."""
    try:
        yield
    except OutputError:
        raise
    except OSError as err:
        error = OutputError(f"cannot write {path}: {err.strerror or err}")
        error.errno = err.errno
        raise error from err


def check_output(path: str | Path) -> None:
    """Refuse, before any work, an output that could never be written: an existing
    directory, or a path below a file. Creates the missing parent directories.

    Raises:
        DiladiffError: the path is a directory or one of its parents is a file.
        OutputError: the parent directory cannot be created.
    """
    path = Path(path)
    if path.is_dir():
        raise DiladiffError(f"output {path} is a directory; name a file (e.g. {path / 'model.pt'})")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DiladiffError(f"cannot write {path}: {parent} is a file, not a directory")
            break
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)


def _temporary(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def remove_temporaries(path: str | Path, *, suffix: str = ".tmp") -> list[Path]:
    """Remove what interrupted atomic writes of ``path`` left beside it: the files or
    directories ``.<name>.<random><suffix>`` that a killed process created and never
    renamed. Only safe while no other process writes ``path`` (hold its lock).

    Returns:
        The paths removed.
    """
    path = Path(path)
    # tempfile's random part has no dot, so another output's temporaries never match
    # (``.m.pt.x.abc.tmp`` belongs to ``m.pt.x``, not to ``m.pt``)
    own = re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]+" + re.escape(suffix))
    if not path.parent.is_dir():
        return []
    removed = []
    for entry in path.parent.iterdir():
        if own.fullmatch(entry.name):
            with writing(entry):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            removed.append(entry)
    return removed


def read_utf8(path: Path, *, what: str = "", error: type[DiladiffError] = DiladiffError) -> str:
    """The text of a UTF-8 file; a file that is not UTF-8 or cannot be read is one
    ``error`` line (``what`` is appended to it, e.g. where the file was named)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text (byte {err.start}){what}") from None
    except OSError as err:
        raise error(f"cannot read {path}: {err.strerror or err}{what}") from None


def read_jsonl(path: str | Path, *, corrupt_hint: str = "") -> list[dict[str, Any]]:
    """The records of a JSONL file that a run appends to (a training run's metrics log),
    blank lines skipped. A torn last line (the run stopped mid-write by a full disk or a
    kill) is dropped: the file is whole up to it.

    Raises:
        DiladiffError: the file cannot be read, or a line before the last one is not a
            JSON record (the file is corrupt, not torn).
    """
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        raise DiladiffError(f"cannot read {path}: {err.strerror or err}") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    records = []
    for i, (n, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            if i == len(lines) - 1:
                break  # the write that never finished
            raise DiladiffError(
                f"{path} line {n} is not a JSON record: the file is corrupt{corrupt_hint}"
            )
        records.append(record)
    return records


def replace_directory(staging: Path, out: Path) -> None:
    """Rename the finished directory ``staging`` to ``out`` (same file system), replacing
    what is there: the old ``out`` is moved aside first and removed after, so a reader
    sees the old directory or the new one, never a mix; if the last rename fails the old
    one is left beside ``out`` (``.<name>.old.*``), not deleted."""
    old = None
    with writing(out):
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(old / out.name)
        staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    Raises:
        OutputError: the write failed (``path`` is left as it was).
    """
    path = Path(path)
    with writing(path):
        fd, tmp = _temporary(path)
        os.close(fd)
        try:
            write_synced(tmp, data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_synced(path: str | Path, data: bytes) -> None:
    """Write ``data`` and wait for the disk, so that a rename after it publishes a
    complete file even across a power loss."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, record: Any, *, indent: int = 2) -> None:
    """A JSON record, indented, with a final newline, written atomically."""
    atomic_write_text(path, json.dumps(record, indent=indent) + "\n")
