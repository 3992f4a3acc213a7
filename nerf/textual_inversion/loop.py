"""The training loop of textual inversion: micro-batches of the photo(s), optimisation steps until
--max_train_steps, and what is saved and logged every few steps."""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from nerf.textual_inversion.dataset import ResumableSampler, TextualInversionDataset
from nerf.textual_inversion.trackers import StepLog, Trackers, validation_images
from nerf.textual_inversion.model import Model
from nerf.textual_inversion.state import save_checkpoint, save_embeds
from nerf.textual_inversion.step import Optimisation, optimisation_step


def loader_workers(requested: int | None, device: torch.device) -> int:
    """`requested` (--dataloader_num_workers), or by default none on the CPU and, on CUDA, enough worker processes
    for the augmentations (tens of milliseconds of CPU per image) to keep ahead of the GPU."""
    if requested is not None:
        return requested
    return 0 if device.type != "cuda" else max(1, min(6, (os.cpu_count() or 1) - 2))


def make_loader(dataset: TextualInversionDataset, *, batch_size: int, workers: int,
                device: torch.device) -> torch.utils.data.DataLoader:
    """The shuffling, resumable loader of micro-batches of the captioned, augmented dataset."""
    # The data seed comes from the seeded global generator; a resumed run takes it from its checkpoint.
    sampler = ResumableSampler(len(dataset), batch_size, seed=int(torch.randint(2**62, ())))
    # The loader's own generator (its workers' base seed) keeps it off the global one as well.
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                       persistent_workers=workers > 0, pin_memory=device.type == "cuda",
                                       generator=torch.Generator().manual_seed(sampler.seed))


def epochs_for(max_steps: int, micro_batches: int, accumulation: int) -> int:
    """The epochs --max_train_steps takes (the original's derived --num_train_epochs)."""
    return math.ceil(max_steps / math.ceil(micro_batches / accumulation))


@dataclass(frozen=True)
class Saves:
    """What is written or sampled during the run, and how often."""

    token: str  # the placeholder the files are keyed by
    save_steps: int  # learned_embeds-steps-{N}.bin
    checkpointing_steps: int  # checkpoint-{N}/state.pt
    checkpoints_total_limit: int | None
    validation_prompt: str | None = None
    validation_steps: int = 100
    num_validation_images: int = 4
    seed: int | None = None  # of the validation samples


def endless(loader: Iterable[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
    """The loader's micro-batches epoch after epoch (accumulation runs across epoch boundaries)."""
    while True:
        yield from loader


def run_steps(model: Model, opt: Optimisation, loader: torch.utils.data.DataLoader, *, step: int, max_steps: int,
              accumulation: int, fuse_limit: int, saves: Saves, output_dir: Path, trackers: Trackers,
              on_phase: Callable[[str], None]) -> None:
    """Optimisation steps from `step` to `max_steps`, each followed by its saves and logging; `fuse_limit`
    micro-batches at most go through the networks as one batch."""
    from tqdm.auto import tqdm

    loader.sampler.skip_batches(step * accumulation)
    stream = endless(loader)
    # closed however the loop ends, so that a message after a Ctrl-C is not followed by the bar's last redraw
    with tqdm(total=max_steps, initial=step, desc="textual inversion") as bar:
        log = StepLog(trackers, bar)
        while step < max_steps:
            step_loss = optimisation_step(model, opt, list(itertools.islice(stream, accumulation)),
                                          accumulation=accumulation, fuse_limit=fuse_limit, on_phase=on_phase)
            step += 1
            bar.update(1)
            log.add(step, step_loss, opt.lr_scheduler.get_last_lr()[0])
            save_and_validate(model, opt, saves, step=step, output_dir=output_dir, trackers=trackers,
                              data_seed=loader.sampler.seed)
            on_phase("logging")
        log.flush()
    trackers.close()


def save_and_validate(model: Model, opt: Optimisation, saves: Saves, *, step: int, output_dir: Path,
                      trackers: Trackers, data_seed: int) -> None:
    """The embedding, checkpoint and validation samples that are due after `step`."""
    if step % saves.save_steps == 0:
        save_embeds(output_dir / f"learned_embeds-steps-{step}.bin", saves.token, model.row.vector)
    if step % saves.checkpointing_steps == 0:
        save_checkpoint(output_dir, step, saves.token, model.row, opt.optimizer, opt.lr_scheduler,
                        opt.scaler, saves.checkpoints_total_limit, data_seed)
    if saves.validation_prompt is not None and step % saves.validation_steps == 0:
        images = validation_images(model.parts, saves.validation_prompt, saves.num_validation_images, saves.seed,
                                   model.autocast)
        trackers.images("validation", images, saves.validation_prompt, step)
