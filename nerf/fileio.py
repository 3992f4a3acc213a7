"""Atomic file writes: a crash or Ctrl-C never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator


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
        try:
            yield tmp_path
        except OSError as exc:
            if exc.errno is None or exc.filename not in (None, tmp, str(tmp_path)):
                raise
            raise OSError(exc.errno, exc.strerror, str(target)) from exc  # the file the user knows, not its temp
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
    """Delete the partial files of writes that were killed (SIGKILL, power cut) in `folder` and its subfolders (every
    folder a run writes: checkpoints, validation, results, mesh); the bytes freed."""
    freed = 0
    now = time.time()
    for file in folder.rglob(f".*{PARTIAL}*") if folder.is_dir() else ():
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


def write_file_atomic(path: str | os.PathLike, dump: Callable[[BinaryIO], None]) -> Path:
    """Call `dump(file)` on a Python file object and move the result onto `path` atomically. Writing through
    Python (not a library's own file handle) makes the operating system's refusal (a full disk, a quota, a file-size
    limit) the OSError it is, named after `path`, even where the library wraps it in an error of its own."""
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as file:
                dump(file)
        except Exception as exc:
            refusal = next((e for e in _chain(exc) if isinstance(e, OSError) and e.errno is not None), None)
            if refusal is None:
                raise
            raise OSError(refusal.errno, refusal.strerror, str(tmp)) from exc
    return Path(path)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from or while handling, innermost last."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda p: p.write_text(text, encoding="utf-8"))

