"""token_autoinit.txt: the one-word description of an input, written beside it by autoinit (or by hand).

Read by main.py (the word replaces ``<token>`` when no token was learned) and by the pipeline (the initializer of
textual inversion); one reader, so that both agree on what the file says.
"""

from __future__ import annotations

from pathlib import Path

RESULT_FILE = "token_autoinit.txt"


def read_initializer(folder: Path) -> str | None:
    """The first word of folder/token_autoinit.txt; None when the file is missing or empty."""
    path = Path(folder) / RESULT_FILE
    words = path.read_text(encoding="utf-8").split() if path.is_file() else []
    return words[0] if words else None
