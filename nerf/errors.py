"""The one error type for problems the user can fix, and the one place that turns them into an exit status.

Every command-line tool's `main` is wrapped in `one_line_errors`: a `UserError`, and the operating system's
"disk full" and "not writable" errors, become a single line on stderr and exit status 2; anything else that
escapes is a bug in this project and keeps its traceback.
"""

from __future__ import annotations

import errno
import functools
import sys
from typing import Callable, ParamSpec

P = ParamSpec("P")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class UserError(Exception):
    """Bad input or configuration: the message names the problem and the fix, on one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def os_error_message(exc: OSError) -> str | None:
    """The one-line explanation of an OSError the user can fix (a full disk, a folder that is not writable)."""
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in DISK_FULL:
        return (f"the disk is full (writing{where}); free some space and run again. Files are replaced only once "
                f"written whole, so what was there before is intact.")
    if exc.errno in NOT_WRITABLE:
        return f"cannot write{where}: {exc.strerror}; choose a folder you can write to, or fix its permissions."
    return None


def one_line_errors(main: Callable[P, int | None]) -> Callable[P, int]:
    """Decorate a tool's `main`: expected failures print `error: ...` on one line and return 2."""

    @functools.wraps(main)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except UserError as exc:
            message = str(exc)
        except OSError as exc:
            message = os_error_message(exc)
            if message is None:
                raise
        print(f"error: {message}", file=sys.stderr)
        return 2

    return wrapped
