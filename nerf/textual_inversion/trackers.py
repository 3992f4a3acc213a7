"""What a run reports while it trains: loss and learning rate per step, validation samples, to
tensorboard and/or wandb (--report_to) and the progress bar."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nerf.errors import UserError
from nerf.guidance.stable_diffusion import StableDiffusionParts

# Losses are read back from the GPU (a wait for the GPU) once every this many steps.
LOG_EVERY = 10


class Trackers:
    """Scalar and image logging to tensorboard and/or wandb."""

    def __init__(self, report_to: str, log_dir: Path, config: dict[str, Any]) -> None:
        wanted = {"all": ["tensorboard", "wandb"], "comet_ml": ["comet_ml"]}.get(report_to, [report_to])
        if "comet_ml" in wanted:
            raise UserError("--report_to comet_ml is not supported; use tensorboard or wandb.")
        if report_to == "all" and importlib.util.find_spec("wandb") is None:
            wanted = ["tensorboard"]
        self.writer = self.wandb = None
        if "tensorboard" in wanted:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir))
        if "wandb" in wanted:
            if importlib.util.find_spec("wandb") is None:
                raise UserError("--report_to wandb needs the wandb package (pip install wandb); or use tensorboard.")
            import wandb

            self.wandb = wandb.init(project="textual_inversion", config=config, dir=str(log_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Log each named value at `step`."""
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def images(self, tag: str, images: list, caption: str, step: int) -> None:
        """Log PIL images (HWC) under `tag` at `step`."""
        if self.writer is not None:
            self.writer.add_images(tag, np.stack([np.asarray(im) for im in images]), step, dataformats="NHWC")
        if self.wandb is not None:
            import wandb

            pictures = [wandb.Image(im, caption=f"{i}: {caption}") for i, im in enumerate(images)]
            self.wandb.log({tag: pictures}, step=step)

    def close(self) -> None:
        """Flush and finish every tracker."""
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


class StepLog:
    """Loss and learning rate of every step for the trackers and the progress bar.

    The loss stays on the GPU until `LOG_EVERY` steps have gathered: reading it makes the CPU wait for
    the GPU, and doing so every step would keep the CPU from queueing the next step's work meanwhile.
    """

    def __init__(self, trackers: Trackers, bar: Any) -> None:
        self.trackers, self.bar = trackers, bar
        self.pending: list[tuple[int, torch.Tensor, float]] = []

    def add(self, step: int, loss: torch.Tensor, lr: float) -> None:
        """Queue one step's values; they are written at the next flush."""
        self.pending.append((step, loss.detach(), lr))
        if len(self.pending) >= LOG_EVERY:
            self.flush()

    def flush(self) -> None:
        """Read the queued losses back in one transfer and write every queued step."""
        if not self.pending:
            return
        losses = torch.stack([loss for _, loss, _ in self.pending]).tolist()
        for (step, _, lr), loss in zip(self.pending, losses):
            self.trackers.scalars({"loss": loss, "lr": lr}, step)
        self.bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{self.pending[-1][2]:.2e}")
        self.pending.clear()


def validation_images(parts: StableDiffusionParts, prompt: str, count: int, seed: int | None, autocast: Any) -> list:
    """`count` samples of `prompt` with 25 DPM-Solver steps (the current vector is in the text encoder)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    sampler = DPMSolverMultistepScheduler.from_config(parts.scheduler.config)
    pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                   unet=parts.unet, scheduler=sampler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    generator = None if seed is None else torch.Generator(parts.device).manual_seed(seed)
    with torch.no_grad(), autocast():
        return [pipe(prompt, num_inference_steps=25, generator=generator).images[0] for _ in range(count)]
