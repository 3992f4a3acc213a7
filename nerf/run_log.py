"""Where a run's scalars and validation images go: tensorboard in the workspace, and Weights & Biases with --wandb.

wandb is optional: asking for it without the package installed is a one-line error before anything is written;
its offline mode (WANDB_MODE=offline) is wandb's own and is honoured as is.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from torch import Tensor

from nerf.errors import UserError

WANDB_PROJECT = "realfusion"


def require_wandb() -> None:
    if importlib.util.find_spec("wandb") is None:
        raise UserError("--wandb needs the wandb package: pip install wandb (set WANDB_MODE=offline to log without "
                        "an account), or drop --wandb.")


class RunLog:
    """Scalars and images by tag and step; the writers open on first use, inside the workspace."""

    def __init__(self, workspace: Path, wandb_config: dict[str, Any] | None = None) -> None:
        """`wandb_config`: the run's options, to log to Weights & Biases too (None: tensorboard only)."""
        self.workspace = workspace
        self.wandb_config = wandb_config
        self._tensorboard = None
        self._wandb = None

    def _writers(self) -> tuple[Any, Any]:
        if self._tensorboard is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.workspace / "tensorboard"))
            if self.wandb_config is not None:
                import wandb

                self._wandb = wandb.init(project=WANDB_PROJECT, name=self.workspace.name, dir=str(self.workspace),
                                         config=self.wandb_config)
        return self._tensorboard, self._wandb

    def scalars(self, values: dict[str, float], step: int) -> None:
        tensorboard, wandb_run = self._writers()
        for tag, value in values.items():
            tensorboard.add_scalar(tag, value, step)
        if wandb_run is not None:
            wandb_run.log(values, step=step)

    def image(self, tag: str, image: Tensor, step: int) -> None:
        """An [H, W, 3] image in [0, 1]."""
        tensorboard, wandb_run = self._writers()
        tensorboard.add_image(tag, image.permute(2, 0, 1), step)
        if wandb_run is not None:
            import wandb

            wandb_run.log({tag: wandb.Image(image.clamp(0, 1).cpu().numpy())}, step=step)

    def flush(self) -> None:
        """Write what is buffered (the report reads the tensorboard files right after training)."""
        if self._tensorboard is not None:
            self._tensorboard.flush()
