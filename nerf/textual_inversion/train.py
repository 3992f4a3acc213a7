#!/usr/bin/env python
"""Stage one of RealFusion: learn a new text token for the object of one photo (textual inversion).

    python textual-inversion/textual_inversion.py --train_data_dir DIR --placeholder_token _my_object_ \\
        --initializer_token cat --output_dir OUT [--use_augmentations ...]

Runs from any directory. The flags, their names and defaults are those of the original script (the
diffusers textual-inversion example plus ``--use_augmentations``); the model defaults to
``stable-diffusion-v1-5/stable-diffusion-v1-5`` and may be a hub id, a local diffusers folder or a
single .safetensors/.ckpt file (the same loader as the reconstruction stage).

What is learned: one vector, the placeholder token's input embedding, initialised from the
initializer token's row. It is substituted for the placeholder's embedding in every forward pass and
optimised by AdamW; every other row of the embedding table and every other weight stay frozen and are
never written. This is the original's trajectory exactly (it gave the whole table to AdamW and
restored all other rows after each step; Adam is elementwise, so the placeholder row evolves the
same), without the optimiser state for 49,408 rows.

Outputs in --output_dir (written atomically): ``learned_embeds-steps-{N}.bin`` every --save_steps,
and at the end ``learned_embeds.bin`` ({token: tensor[D]}, the original's format, read by
``main.py --learned_embeds_path``) and ``learned_embeds.safetensors`` (the same, readable by
diffusers' ``load_textual_inversion``); unless --only_save_embeds, the whole pipeline with the new
token; ``checkpoint-{N}/state.pt`` every --checkpointing_steps (vector, optimiser, LR schedule, loss
scaler and RNG states); tensorboard logs under --logging_dir.

Resuming: a run whose output folder already holds checkpoints continues from the latest one (a
notice says so), as does ``--resume_from_checkpoint latest``; a path or ``checkpoint-N`` name picks
one. Delete the folder to start over.

Differences from the original (see the README): images are the image files of --train_data_dir only,
RGBA composited on white (``dataset.py``); heavy augmentations reach the VAE in [-1, 1]
(``--augment_range_01`` restores [0, 1]); one process only (no multi-GPU); trackers are tensorboard
and wandb. The LR scheduler is built, like the original's, with warm-up and total counts multiplied
by --gradient_accumulation_steps and is stepped once per optimisation step.

Speed (same loss, same steps; ``scripts/benchmark.py ti`` measures it): the micro-batches of one
optimisation step go through the networks as one batch (each sample keeps its own VAE sample, noise and
timestep, drawn in the original's order; the step's loss is still the mean of the micro-batch losses);
on CUDA the frozen VAE encoder and UNet are replayed from CUDA graphs (``--no_cuda_graph`` turns
this off) and both are compiled under ``--compile`` (``nerf/compilation.py``'s rule), the UNet runs
channels-last, the augmentations run in DataLoader worker processes, the
optimiser is the fused AdamW, and losses are read back from the GPU every few steps, not every step.

Code: ``train`` runs the steps below in order (``textual-inversion/textual_inversion.py`` and the
``realfusion-textual-inversion`` command call ``main``); ``args.py`` the flags, ``dataset.py`` the images and
captions, ``model.py`` the networks and the trainable vector, ``step.py`` the loss and one optimisation step,
``loop.py`` the loop, ``trackers.py`` the trackers, ``state.py`` the files written and resumed from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

from nerf import workspace_lock
from nerf.compilation import resolve as resolve_compile
from nerf.errors import one_line_errors
from nerf.fileio import remove_stale_partials
from nerf.seeding import seed_everything
from nerf.textual_inversion.args import parse_args
from nerf.textual_inversion.dataset import TextualInversionDataset, load_images
from nerf.textual_inversion.loop import Saves, epochs_for, loader_workers, make_loader, run_steps
from nerf.textual_inversion.model import choose_device, load_model
from nerf.textual_inversion.state import HubUpload, check_output_dir, list_checkpoints, resume, write_outputs
from nerf.textual_inversion.step import FUSED_SAMPLES, OptimiserSettings, make_optimisation, no_mark
from nerf.textual_inversion.trackers import Trackers


def train(args: argparse.Namespace, on_phase: Callable[[str], None] = no_mark) -> Path:
    """The whole run from the parsed flags, each step given its own settings; returns the path of
    learned_embeds.bin.

    `on_phase(name)` is called as each phase of a step (`PHASES`) ends -- a hook for timing the real loop.
    """
    output_dir = Path(args.output_dir).expanduser().resolve()
    images = load_images(args.train_data_dir)  # fail before the slow model load
    check_output_dir(output_dir, args.placeholder_token)
    if args.seed is not None:
        seed_everything(args.seed)
    device, weight_dtype = choose_device(args.mixed_precision, args.local_rank)
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    model = load_model(args.pretrained_model_name_or_path, placeholder=args.placeholder_token,
                       initializer=args.initializer_token, device=device, weight_dtype=weight_dtype,
                       revision=args.revision, tokenizer_name=args.tokenizer_name,
                       gradient_checkpointing=args.gradient_checkpointing,
                       xformers=args.enable_xformers_memory_efficient_attention, cuda_graph=not args.no_cuda_graph,
                       compile=resolve_compile(args.compile, device, args.max_train_steps))
    dataset = TextualInversionDataset(images, model.parts.tokenizer, args.placeholder_token, args.resolution,
                                      args.repeats, args.learnable_property, args.center_crop, args.use_augmentations,
                                      args.augment_range_01)
    loader = make_loader(dataset, batch_size=args.train_batch_size,
                         workers=loader_workers(args.dataloader_num_workers, device), device=device)
    if args.validation_epochs is not None:
        print("note: --validation_epochs is deprecated; use --validation_steps")
        args.validation_steps = args.validation_epochs * len(dataset)
    # the original's derived count, in the trackers' record of the settings
    args.num_train_epochs = epochs_for(args.max_train_steps, len(loader), args.gradient_accumulation_steps)
    settings = OptimiserSettings(args.learning_rate, args.scale_lr, args.train_batch_size,
                                 args.gradient_accumulation_steps, args.max_train_steps, args.lr_scheduler,
                                 args.lr_warmup_steps, (args.adam_beta1, args.adam_beta2), args.adam_weight_decay,
                                 args.adam_epsilon)
    opt = make_optimisation(settings, model, device, weight_dtype)
    saves = Saves(args.placeholder_token, args.save_steps, args.checkpointing_steps, args.checkpoints_total_limit,
                  args.validation_prompt, args.validation_steps, args.num_validation_images, args.seed)
    # The run is valid: only now is the folder created, and it is this run's until it ends.
    output_dir.mkdir(parents=True, exist_ok=True)
    with workspace_lock.held(output_dir, args.force_unlock, flag="--output_dir"):
        freed = remove_stale_partials(output_dir)
        if freed:
            print(f"removed {freed / 2**20:.1f} MiB of partial files left by interrupted writes in {output_dir}")
        step = resume(args.resume_from_checkpoint, output_dir, args.placeholder_token, model.row, opt,
                      loader.sampler)
        trackers = Trackers(args.report_to, output_dir / args.logging_dir, vars(args))
        print(f"textual inversion: {len(dataset)} items, {args.num_train_epochs} epochs, batch "
              f"{args.train_batch_size} x {args.gradient_accumulation_steps} accumulation, {args.max_train_steps} "
              f"steps, lr {opt.learning_rate:g}, on {device}")
        run_steps(model, opt, loader, step=step, max_steps=args.max_train_steps,
                  accumulation=args.gradient_accumulation_steps,
                  fuse_limit=1 if args.gradient_checkpointing else FUSED_SAMPLES, saves=saves,
                  output_dir=output_dir, trackers=trackers, on_phase=on_phase)
        hub = HubUpload(args.hub_model_id, args.hub_token) if args.push_to_hub else None
        return write_outputs(model, output_dir, args.placeholder_token, whole_pipeline=not args.only_save_embeds,
                             hub=hub)


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    """The command: 0 on success, 2 with a one-line message for a usage or input error, 130 after Ctrl-C."""
    args = parse_args(argv)
    try:
        train(args)
    except KeyboardInterrupt:
        print("\n" + interrupted_message(Path(args.output_dir).expanduser().resolve()), file=sys.stderr)
        return 130
    return 0


def interrupted_message(output_dir: Path) -> str:
    """What a Ctrl-C leaves: the last checkpoint (written atomically, so whole) to resume from, or nothing."""
    saved = list_checkpoints(output_dir) if output_dir.is_dir() else []
    if saved:
        return (f"interrupted; the last checkpoint {saved[-1].parent} is intact: run the same command to resume "
                f"from it.")
    return ("interrupted before the first checkpoint (--checkpointing_steps); there is nothing to resume, run the "
            "command again to start.")

