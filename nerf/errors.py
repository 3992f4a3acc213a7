"""The one error type for problems the user can fix.

`main.py` and the scripts print its message as a single line and exit with status 2; anything else
that escapes is a bug in this project and keeps its traceback.
"""


class UserError(Exception):
    """Bad input or configuration: the message names the problem and the fix, on one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
