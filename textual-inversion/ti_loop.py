"""The training loop of textual inversion: micro-batches of the photo(s), optimisation steps until
--max_train_steps, and what is saved and logged every few steps."""

from __future__ import annotations

import argparse
import itertools
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from PIL import Image

from ti_dataset import ResumableSampler, TextualInversionDataset
from ti_logging import StepLog, Trackers, validation_images
from ti_model import Model
from ti_state import save_checkpoint, save_embeds
from ti_step import FUSED_SAMPLES, Optimisation, optimisation_step


def loader_workers(args: argparse.Namespace, device: torch.device) -> int:
    """--dataloader_num_workers, or by default none on the CPU and, on CUDA, enough worker processes for
    the augmentations (tens of milliseconds of CPU per image) to keep ahead of the GPU."""
    if args.dataloader_num_workers is not None:
        return args.dataloader_num_workers
    return 0 if device.type != "cuda" else max(1, min(6, (os.cpu_count() or 1) - 2))


def make_loader(args: argparse.Namespace, images: list[Image.Image], tokenizer: Any,
                device: torch.device) -> tuple[TextualInversionDataset, torch.utils.data.DataLoader]:
    """The captioned, augmented dataset of the photo(s) and its shuffling loader of micro-batches."""
    dataset = TextualInversionDataset(images, tokenizer, args.placeholder_token, args.resolution,
                                      args.repeats, args.learnable_property, args.center_crop,
                                      args.use_augmentations, args.augment_range_01)
    workers = loader_workers(args, device)
    # The data seed comes from the seeded global generator; a resumed run takes it from its checkpoint.
    sampler = ResumableSampler(len(dataset), args.train_batch_size, seed=int(torch.randint(2**62, ())))
    # The loader's own generator (its workers' base seed) keeps it off the global one as well.
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.train_batch_size, sampler=sampler,
                                         num_workers=workers, persistent_workers=workers > 0,
                                         pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(sampler.seed))
    return dataset, loader


def derive_counts(args: argparse.Namespace, items: int, micro_batches: int) -> None:
    """Set the counts the original derives: --validation_steps from the deprecated --validation_epochs, and
    --num_train_epochs from --max_train_steps (both reach the trackers' record of the settings)."""
    if args.validation_epochs is not None:
        print("note: --validation_epochs is deprecated; use --validation_steps")
        args.validation_steps = args.validation_epochs * items
    steps_per_epoch = math.ceil(micro_batches / args.gradient_accumulation_steps)
    args.num_train_epochs = math.ceil(args.max_train_steps / steps_per_epoch)


def endless(loader: Iterable[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
    """The loader's micro-batches epoch after epoch (accumulation runs across epoch boundaries)."""
    while True:
        yield from loader


def run_steps(args: argparse.Namespace, model: Model, opt: Optimisation, loader: torch.utils.data.DataLoader, *,
              step: int, output_dir: Path, trackers: Trackers, on_phase: Callable[[str], None]) -> None:
    """Optimisation steps from `step` to --max_train_steps, each followed by its saves and logging."""
    from tqdm.auto import tqdm

    accumulation = args.gradient_accumulation_steps
    loader.sampler.skip_batches(step * accumulation)
    stream = endless(loader)
    fuse_limit = 1 if args.gradient_checkpointing else FUSED_SAMPLES
    # closed however the loop ends, so that a message after a Ctrl-C is not followed by the bar's last redraw
    with tqdm(total=args.max_train_steps, initial=step, desc="textual inversion") as bar:
        log = StepLog(trackers, bar)
        while step < args.max_train_steps:
            step_loss = optimisation_step(model, opt, list(itertools.islice(stream, accumulation)),
                                          accumulation=accumulation, fuse_limit=fuse_limit, on_phase=on_phase)
            step += 1
            bar.update(1)
            log.add(step, step_loss, opt.lr_scheduler.get_last_lr()[0])
            save_and_validate(args, model, opt, step=step, output_dir=output_dir, trackers=trackers,
                              data_seed=loader.sampler.seed)
            on_phase("logging")
        log.flush()
    trackers.close()


def save_and_validate(args: argparse.Namespace, model: Model, opt: Optimisation, *, step: int, output_dir: Path,
                      trackers: Trackers, data_seed: int) -> None:
    """The embedding, checkpoint and validation samples that are due after `step`."""
    if step % args.save_steps == 0:
        save_embeds(output_dir / f"learned_embeds-steps-{step}.bin", args.placeholder_token, model.row.vector)
    if step % args.checkpointing_steps == 0:
        save_checkpoint(output_dir, step, args.placeholder_token, model.row, opt.optimizer, opt.lr_scheduler,
                        opt.scaler, args.checkpoints_total_limit, data_seed)
    if args.validation_prompt is not None and step % args.validation_steps == 0:
        images = validation_images(model.parts, args, model.autocast)
        trackers.images("validation", images, args.validation_prompt, step)
