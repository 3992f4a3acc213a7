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
RGBA composited on white (``ti_dataset.py``); heavy augmentations reach the VAE in [-1, 1]
(``--augment_range_01`` restores [0, 1]); one process only (no multi-GPU); trackers are tensorboard
and wandb. The LR scheduler is built, like the original's, with warm-up and total counts multiplied
by --gradient_accumulation_steps and is stepped once per optimisation step.

Speed (same loss, same steps; ``scripts/benchmark.py ti`` measures it): the micro-batches of one
optimisation step go through the networks as one batch (each sample keeps its own VAE sample, noise and
timestep, drawn in the original's order; the step's loss is still the mean of the micro-batch losses);
on CUDA the frozen VAE encoder and UNet are replayed from CUDA graphs (``--no_cuda_graph`` turns
this off), the UNet runs channels-last, the augmentations run in DataLoader worker processes, the
optimiser is the fused AdamW, and losses are read back from the GPU every few steps, not every step.

Code: this file is the entry point (``train`` runs the steps below in order); ``ti_args.py`` the
flags, ``ti_dataset.py`` the images and captions, ``ti_model.py`` the networks and the trainable vector,
``ti_step.py`` the loss and one optimisation step, ``ti_loop.py`` the loop, ``ti_logging.py`` the
trackers, ``ti_state.py`` the files written and resumed from. This folder is not a package: the lines
below put it (and the repository, for ``nerf``) on ``sys.path``, so the modules import each other by name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE.parent):  # the repository's nerf package and this folder's modules
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import torch  # noqa: E402

from nerf.errors import one_line_errors  # noqa: E402
from nerf import workspace_lock  # noqa: E402
from nerf.fileio import remove_stale_partials  # noqa: E402
from nerf.seeding import seed_everything  # noqa: E402
from ti_args import parse_args  # noqa: E402
from ti_dataset import load_images  # noqa: E402
from ti_logging import Trackers  # noqa: E402
from ti_loop import derive_counts, loader_workers, make_loader, run_steps  # noqa: E402
from ti_model import FrozenNetworks, TokenVector, add_placeholder, choose_device, load_model  # noqa: E402
from ti_state import check_output_dir, list_checkpoints, resume, save_pipeline, write_outputs  # noqa: E402
from ti_step import FUSED_SAMPLES, PHASES, denoising_loss, fuse, make_optimisation, no_mark  # noqa: E402

# The names that tests/test_textual_inversion.py and scripts/benchmarks/ti.py use from this module.
__all__ = ["FUSED_SAMPLES", "PHASES", "FrozenNetworks", "TokenVector", "add_placeholder", "denoising_loss", "fuse",
           "loader_workers", "main", "parse_args", "save_pipeline", "train"]


def train(args: argparse.Namespace, on_phase: Callable[[str], None] = no_mark) -> Path:
    """The whole run; returns the path of learned_embeds.bin.

    `on_phase(name)` is called as each phase of a step (`PHASES`) ends -- a hook for timing the real loop.
    """
    output_dir = Path(args.output_dir).expanduser().resolve()
    images = load_images(args.train_data_dir)  # fail before the slow model load
    check_output_dir(output_dir, args.placeholder_token)
    if args.seed is not None:
        seed_everything(args.seed)
    device, weight_dtype = choose_device(args)
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    model = load_model(args, device, weight_dtype)
    dataset, loader = make_loader(args, images, model.parts.tokenizer, device)
    derive_counts(args, items=len(dataset), micro_batches=len(loader))
    opt = make_optimisation(args, model, device, weight_dtype)
    # The run is valid: only now is the folder created, and it is this run's until it ends.
    output_dir.mkdir(parents=True, exist_ok=True)
    with workspace_lock.held(output_dir, args.force_unlock, flag="--output_dir"):
        freed = remove_stale_partials(output_dir)
        if freed:
            print(f"removed {freed / 2**20:.1f} MiB of partial files left by interrupted writes in {output_dir}")
        step = resume(args, output_dir, model.row, opt, loader.sampler)
        trackers = Trackers(args.report_to, output_dir / args.logging_dir, vars(args))
        print(f"textual inversion: {len(dataset)} items, {args.num_train_epochs} epochs, batch "
              f"{args.train_batch_size} x {args.gradient_accumulation_steps} accumulation, {args.max_train_steps} "
              f"steps, lr {opt.learning_rate:g}, on {device}")
        run_steps(args, model, opt, loader, step=step, output_dir=output_dir, trackers=trackers, on_phase=on_phase)
        return write_outputs(args, model, output_dir)


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


if __name__ == "__main__":
    sys.exit(main())
