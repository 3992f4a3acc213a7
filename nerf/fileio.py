"""Atomic file writes: a crash or Ctrl-C never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator


_UMASK = os.umask(0)
os.umask(_UMASK)


PARTIAL = ".partial-"  # in the names of files being written: `.NAME.partial-XXXXXXXX.SUFFIX`
STALE_AFTER_S = 600.0  # a partial file this old belongs to a write that was killed, not to one under way


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success, flush it to the disk and rename it onto `path`
    (then flush the folder), so neither a crash nor a power cut leaves a half-written or empty file there."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}{PARTIAL}", suffix=target.suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file ordinary permissions
        with open(tmp_path, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp_path, target)
        _fsync_folder(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_partials(folder: Path, older_than_s: float = STALE_AFTER_S) -> int:
    """Delete the partial files of writes that were killed (SIGKILL, power cut) in `folder`; the bytes freed."""
    freed = 0
    now = time.time()
    for file in folder.glob(f".*{PARTIAL}*") if folder.is_dir() else ():
        try:
            info = file.stat()
            if now - info.st_mtime > older_than_s:
                file.unlink()
                freed += info.st_size
        except FileNotFoundError:  # finished or removed meanwhile
            continue
    return freed


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call `writer(tmp_path)` and move the result onto `path` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda p: p.write_text(text, encoding="utf-8"))

