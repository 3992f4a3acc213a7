"""Checkpoint files: one dict of tensors and plain values, written atomically, read with weights_only=True."""

from __future__ import annotations

from pathlib import Path

import torch

from nerf.errors import UserError
from nerf.fileio import write_file_atomic

FORMAT = "realfusion-checkpoint-v2"  # v2: the field split into geometry and background modules
OLD_FORMATS = ("realfusion-checkpoint-v1",)
LATEST = "latest.pth"


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write atomically (the previous checkpoint stays until the new one is whole), through a Python file object so
    that a full disk or a file-size limit is reported as such (see `write_file_atomic`)."""
    return write_file_atomic(path, lambda file: torch.save({"format": FORMAT, **state}, file))


TRAINING_WAY_OUT = "pass another --ckpt, or --ckpt scratch to start a new run"


def load_checkpoint(path: str | Path, way_out: str = TRAINING_WAY_OUT) -> dict:
    """Read a checkpoint written by this project; corrupt or foreign files raise UserError and are left as is.
    `way_out` ends the message: what the user can do instead (inference cannot start from scratch)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; {way_out}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated, foreign or unsafe files
        reason = "unsafe or foreign pickle" if "weights_only" in str(exc).lower() else type(exc).__name__
        raise UserError(f"checkpoint {path} cannot be read ({reason}); {way_out}.") from None
    if isinstance(state, dict) and state.get("format") in OLD_FORMATS:
        raise UserError(f"checkpoint {path} was written by an older version of this project ({state['format']}); "
                        f"{way_out}.")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"checkpoint {path} was not written by this project's main.py; {way_out}.")
    return state


def find_checkpoint(workspace: Path, ckpt: str) -> Path | None:
    """The checkpoint that --ckpt selects in a workspace, or None to start from scratch."""
    latest = workspace / "checkpoints" / LATEST
    if latest.exists() and not latest.is_file():  # the run could neither resume from it nor save over it
        raise UserError(f"{latest} is not a file (a folder?); move it out of the way, it is where the run keeps its "
                        f"checkpoint.")
    if ckpt == "scratch":
        return None
    if ckpt in ("latest", "latest_model", "best"):
        candidate = workspace / "checkpoints" / LATEST
        return candidate if candidate.is_file() else None
    return Path(ckpt)
