"""JSON files replaced atomically, keeping their previous version (``NAME.bak``).

A save writes ``NAME.tmp``, fsyncs it, moves a readable ``NAME`` to ``NAME.bak``, renames
the new file into place and fsyncs the directory. A load that finds ``NAME`` missing or
unreadable logs it and returns what ``NAME.bak`` holds: a crash or a damaged file costs at
most the last save, and never stops a start.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from twisted.logger import Logger

__all__ = ["fsync_directory", "load_json", "save_json"]

_log = Logger()


def fsync_directory(path: Path) -> None:
    """fsync a directory, so the names created or renamed in it are on disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_json(path: Path, value: Any) -> None:
    """Replace ``path`` with ``value`` as JSON atomically, first moving a readable current
    version to ``path.bak`` (a damaged one is overwritten, so the .bak stays good)."""
    data = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if _read(path)[1] is None:
        os.replace(path, path.with_name(path.name + ".bak"))
    os.replace(tmp, path)
    fsync_directory(path.parent)


def _read(path: Path) -> tuple[Any, str | None]:
    """(value, None), or (None, why not)."""
    try:
        return json.loads(path.read_bytes().decode("utf-8")), None
    except FileNotFoundError:
        return None, "missing"
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, str(e) or type(e).__name__


def load_json(path: Path) -> Any | None:
    """The value in ``path``, else (logged) the one in ``path.bak``, else None."""
    value, problem = _read(path)
    if problem is None:
        return value
    backup = path.with_name(path.name + ".bak")
    previous, backup_problem = _read(backup)
    if problem != "missing":
        _log.warn(
            "{path} is unreadable ({problem}); using its previous version {backup}"
            " ({backup_state})",
            path=str(path),
            problem=problem,
            backup=str(backup),
            backup_state="readable" if backup_problem is None else backup_problem,
        )
    elif backup_problem is None:
        _log.warn(
            "{path} is missing; using its previous version {backup}",
            path=str(path),
            backup=str(backup),
        )
    return previous if backup_problem is None else None
