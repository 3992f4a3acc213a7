"""One run per workspace: a lock file holding the owner's pid and host.

Two runs on one workspace would mix one run's checkpoint and videos with the other's options.json. The lock is
taken once the run is known to be valid and released when the run ends, by one context manager (`held`) that
every tool uses. A lock left by a dead
process of this host is taken over with a notice; one from another host cannot be checked from here and needs
`--force_unlock`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
from pathlib import Path
from typing import Iterator

from nerf.errors import UserError

LOCK_NAME = ".lock"
log = logging.getLogger("realfusion")
_held: set[Path] = set()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _owner(lock: Path) -> dict | None:
    try:
        data = json.loads(lock.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None
    except (OSError, json.JSONDecodeError):
        return None


def _create(lock: Path) -> bool:
    """Write the lock if there is none; False when another file is there."""
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.datetime.now().isoformat(timespec="seconds")}
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump(me, file)
    return True


def acquire(workspace: Path, force: bool = False, flag: str = "--workspace") -> None:
    """Hold `workspace` for this process (again, if it already does), or raise a UserError naming the owner.

    `flag` is the option that chose the folder, for the message (each tool names its own)."""
    workspace = workspace.resolve()
    lock = workspace / LOCK_NAME
    if workspace in _held:
        return
    for _ in range(3):  # another process may take or drop the lock between the checks
        if _create(lock):
            _held.add(workspace)
            return
        owner = _owner(lock)
        host = socket.gethostname()
        if owner is not None and owner.get("host") == host and owner["pid"] == os.getpid():
            _held.add(workspace)
            return
        if owner is None:
            log.warning("%s is unreadable; taking the workspace over", lock)
        elif owner.get("host") == host:
            if _alive(owner["pid"]):
                raise UserError(f"{workspace} is in use by another run (pid {owner['pid']}, started "
                                f"{owner.get('started', '?')}); wait for it to end or choose another {flag}.")
            log.warning("taking over %s from pid %d, which is no longer running", workspace, owner["pid"])
        elif not force:
            raise UserError(f"{workspace} is locked by a run on host {owner.get('host')} (pid {owner['pid']}, "
                            f"started {owner.get('started', '?')}); if that run is over, pass --force_unlock.")
        else:
            log.warning("--force_unlock: taking %s over from host %s", workspace, owner.get("host"))
        lock.unlink(missing_ok=True)
    raise UserError(f"could not lock {workspace}: other runs keep taking it; run one at a time.")


@contextlib.contextmanager
def held(workspace: Path, force: bool = False, flag: str = "--workspace") -> Iterator[Path]:
    """The folder locked for the block (see `acquire`), released when it ends, however it ends."""
    acquire(workspace, force, flag)
    try:
        yield workspace
    finally:
        release(workspace)


def release(workspace: Path) -> None:
    """Drop this process's lock on `workspace` (nothing when it holds none)."""
    workspace = workspace.resolve()
    if workspace in _held:
        _held.discard(workspace)
        lock = workspace / LOCK_NAME
        owner = _owner(lock)
        if owner is not None and owner["pid"] == os.getpid():
            lock.unlink(missing_ok=True)


