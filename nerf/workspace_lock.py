"""One run per workspace: a lock file, held with the kernel's `flock` for as long as the run lives.

Two runs on one workspace would mix one run's checkpoint and videos with the other's options.json. The lock is
taken once the run is known to be valid and released when the run ends, by one context manager (`held`) that
every tool uses. Whether the owner is still running is the kernel's answer (it drops a dead process's `flock`),
never a guess from the pid, which may belong to another process by now, or from an empty file, which may be a run
that is starting. The file also names the owner (pid, host, start time) for the message. A lock from another host
cannot be checked from here (a network file system may not share `flock` between hosts) and needs
`--force_unlock`, which takes any lock.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import IO, Iterator

from nerf.errors import UserError

LOCK_NAME = ".lock"
log = logging.getLogger("realfusion")
_held: dict[Path, IO[str]] = {}


def _owner(file: IO[str]) -> dict:
    """What the lock file says about its owner; {} when it says nothing readable (a run that is starting)."""
    file.seek(0)
    try:
        data = json.loads(file.read())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(owner: dict) -> str:
    if "pid" not in owner:
        return "a run that is starting"
    return f"pid {owner['pid']} on {owner.get('host', '?')}, started {owner.get('started', '?')}"


def _open_locked(lock: Path, force: bool) -> IO[str] | None:
    """The lock file, opened (made if missing) and `flock`ed by this process; None while another process holds it.
    A file removed or replaced between the open and the lock (its owner released it) is opened again. Where the
    file system refuses locks, only `force` goes on, unlocked."""
    while True:
        made = not lock.exists()
        file = os.fdopen(os.open(lock, os.O_RDWR | os.O_CREAT, 0o644), "r+", encoding="utf-8")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            if force:
                log.warning("--force_unlock: %s cannot be locked on this file system (%s); running without the "
                            "lock", lock, exc.strerror)
                return file
            file.close()
            if made:
                lock.unlink(missing_ok=True)
            raise UserError(f"cannot lock {lock}: the file system refuses file locks ({exc.strerror}); choose a "
                            f"workspace on another disk, or pass --force_unlock to run without the lock.") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(file.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return file
        file.close()


def _take(file: IO[str]) -> None:
    """Write this process into the (locked) file: from now on the lock names it."""
    file.seek(0)
    file.truncate()
    json.dump({"pid": os.getpid(), "host": socket.gethostname(),
               "started": datetime.datetime.now().isoformat(timespec="seconds")}, file)
    file.flush()
    os.fsync(file.fileno())


def _force(lock: Path, flag: str) -> IO[str]:
    """--force_unlock: a fresh lock file in place of whatever is there, whoever holds it."""
    with contextlib.suppress(OSError), open(lock, encoding="utf-8") as old:
        log.warning("--force_unlock: taking %s over from %s", lock, _describe(_owner(old)))
    lock.unlink(missing_ok=True)
    file = _open_locked(lock, force=True)
    if file is None:
        raise UserError(f"could not lock {lock}: another run took it at the same moment; choose another {flag}.")
    return file


def acquire(workspace: Path, force: bool = False, flag: str = "--workspace") -> None:
    """Hold `workspace` for this process (again, if it already does), or raise a UserError naming the owner and
    the lock file.

    `flag` is the option that chose the folder, for the message (each tool names its own)."""
    workspace = workspace.resolve()
    if workspace in _held:
        return
    lock = workspace / LOCK_NAME
    if force:
        file = _force(lock, flag)
        _take(file)
        _held[workspace] = file
        return
    file = _open_locked(lock, force=False)
    if file is None:
        owner = {}
        with contextlib.suppress(OSError), open(lock, encoding="utf-8") as other:
            owner = _owner(other)
        raise UserError(f"{workspace} is in use by another run ({_describe(owner)}; lock file {lock}); wait for it "
                        f"to end or choose another {flag}.")
    owner = _owner(file)
    if owner and owner.get("host") != socket.gethostname():
        file.close()
        raise UserError(f"{workspace} is locked by a run on host {owner.get('host')} ({_describe(owner)}; lock file "
                        f"{lock}); if that run is over, pass --force_unlock.")
    if owner:
        log.warning("taking over %s from pid %s, which is no longer running (lock file %s)", workspace,
                    owner.get("pid"), lock)
    _take(file)
    _held[workspace] = file


@contextlib.contextmanager
def held(workspace: Path, force: bool = False, flag: str = "--workspace") -> Iterator[Path]:
    """The folder locked for the block (see `acquire`), released when it ends, however it ends."""
    acquire(workspace, force, flag)
    try:
        yield workspace
    finally:
        release(workspace)


def release(workspace: Path) -> None:
    """Drop this process's lock on `workspace` (nothing when it holds none): the file goes first, then the lock,
    so that no other run can take the file this process is about to remove."""
    file = _held.pop(workspace.resolve(), None)
    if file is None:
        return
    lock = workspace.resolve() / LOCK_NAME
    with contextlib.suppress(FileNotFoundError):
        if os.stat(lock).st_ino == os.fstat(file.fileno()).st_ino:  # not a file --force_unlock put in its place
            lock.unlink()
    file.close()


