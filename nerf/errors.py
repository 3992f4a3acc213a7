"""The one error type for problems the user can fix, and the one place that turns them into an exit status.

Every command-line tool's `main` is wrapped in `one_line_errors`: a `UserError`, and the operating system's
"disk full" (or quota, or file-size limit) and "not writable" errors, become a single line on stderr and exit status 2; anything else that
escapes is a bug in this project and keeps its traceback.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import functools
import sys
from typing import Callable, NoReturn, ParamSpec

P = ParamSpec("P")
# Write refusals that are no bug of the program: what ran out, and what to do.
NO_ROOM = {errno.ENOSPC: ("the disk is full", "free some space"),
           errno.EDQUOT: ("the disk quota is used up", "free some of your space or ask for a larger quota"),
           errno.EFBIG: ("the file would exceed the size limit (ulimit -f, or the file system's largest file)",
                         "raise the limit or write to another file system")}
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def reason(exc: BaseException, limit: int = 200) -> str:
    """An exception as a short clause for a one-line message: its first non-empty line, else its type's name
    (some exceptions, e.g. a bare `AssertionError`, carry no message at all)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(exc).__name__


class UserError(Exception):
    """Bad input or configuration: the message names the problem and the fix, on one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a command line it cannot parse is a `UserError`: one line (with the nearest valid option for
    an unknown one) instead of the usage block, and exit status 2 through `one_line_errors`."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):
            known = self.option_names()
            guesses = [match for word in message.split(":", 1)[1].split() if word.startswith("-")
                       for match in difflib.get_close_matches(word.split("=")[0], known, n=1)]
            if guesses:
                message += f"; did you mean {' or '.join(dict.fromkeys(guesses))}?"
        elif message.endswith(": expected one argument"):  # argparse reads a lone value such as '--flag' as an option
            option = message.removeprefix("argument ").split(":")[0].split("/")[-1]
            message += f"; write a value that starts with '-' after '=' ({option}=VALUE)"
        raise UserError(f"{self.prog}: {message.rstrip('.')} ({self.prog} --help lists every option).")

    def option_names(self) -> list[str]:
        """Every option string of this parser and of its subcommands' parsers."""
        names = []
        for action in self._actions:
            names += action.option_strings
            if isinstance(action, argparse._SubParsersAction):
                names += [name for sub in action.choices.values() for name in sub.option_names()]
        return list(dict.fromkeys(names))


def os_error_message(exc: OSError) -> str | None:
    """The one-line explanation of an OSError the user can fix (a full disk, a folder that is not writable)."""
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in NO_ROOM:
        what, fix = NO_ROOM[exc.errno]
        return (f"{what} (writing{where}); {fix} and run again. Files are replaced only once written whole, so what "
                f"was there before is intact.")
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
