"""The command line of textual_inversion.py: the original script's flags, checked before anything loads.

Flag names, defaults and their order (and so ``--help``) are those of the original (the diffusers
textual-inversion example plus RealFusion's ``--use_augmentations``), so its command lines keep working;
values that cannot work fail here with a message instead of deep inside the run.
"""

from __future__ import annotations

import argparse
import math
import os

from nerf.errors import ArgumentParser, UserError
from nerf.options import DEFAULT_MODEL

# The training recipe a preset gives (flags given on the command line win). realfusion is the recipe of the
# RealFusion README for one photo (effective learning rate 5e-4 * 4 = 2e-3); diffusers is the defaults of the
# diffusers textual-inversion example, which the original script kept.
PRESETS = {
    "realfusion": dict(train_batch_size=1, gradient_accumulation_steps=4, max_train_steps=3000, learning_rate=5e-4,
                       scale_lr=True, lr_scheduler="constant", lr_warmup_steps=0, use_augmentations=True,
                       mixed_precision="auto"),
    "diffusers": dict(train_batch_size=16, gradient_accumulation_steps=1, max_train_steps=5000, learning_rate=1e-4,
                      scale_lr=False, lr_scheduler="constant", lr_warmup_steps=500, use_augmentations=False,
                      mixed_precision="no"),
}

# Counts that must be at least 1 (zero or less would divide by zero or never save/step).
POSITIVE = ("save_steps", "repeats", "resolution", "train_batch_size", "max_train_steps",
            "gradient_accumulation_steps", "checkpointing_steps", "validation_steps", "num_validation_images")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The run's settings from `argv` (default: the command line), validated."""
    p = ArgumentParser(description="Learn a text token for the object of one photo (textual inversion).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=tuple(PRESETS), default="realfusion",
                   help="defaults of the training recipe: realfusion (the README's, for one photo) or diffusers "
                        "(the diffusers example's); flags given explicitly win")
    for add in (add_model_and_data_flags, add_optimisation_flags, add_run_flags, add_feature_flags):
        add(p)
    p.set_defaults(**PRESETS[chosen_preset(argv)])
    args = p.parse_args(argv)
    args.local_rank = int(os.environ.get("LOCAL_RANK", args.local_rank))
    validate(args)
    return args


def chosen_preset(argv: list[str] | None) -> str:
    """--preset alone, read first because it decides the other flags' defaults (and so what --help shows)."""
    pre = ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=tuple(PRESETS), default="realfusion")
    return pre.parse_known_args(argv)[0].preset


def validate(args: argparse.Namespace) -> None:
    """Raise UserError for a value that the run could not use."""
    for name in POSITIVE:
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.dataloader_num_workers is not None and args.dataloader_num_workers < 0:
        raise UserError(f"--dataloader_num_workers must be 0 or more, got {args.dataloader_num_workers}.")
    if not args.placeholder_token.strip():
        raise UserError("--placeholder_token is empty; give a new word such as _my_object_.")
    words = args.initializer_token.split()
    if len(words) != 1:
        raise UserError(f"--initializer_token '{args.initializer_token}' is {len(words)} words; give one word "
                        f"(textual-inversion/autoinit.py suggests one).")
    for name in ("learning_rate", "adam_beta1", "adam_beta2", "adam_weight_decay", "adam_epsilon"):
        if not math.isfinite(getattr(args, name)):
            raise UserError(f"--{name} must be a finite number, got {getattr(args, name)}.")
    if args.learning_rate <= 0:
        raise UserError(f"--learning_rate must be > 0, got {args.learning_rate}.")


def add_model_and_data_flags(p: argparse.ArgumentParser) -> None:
    """The first flags of the original: embedding saves, model, token, data and output folder."""
    p.add_argument("--save_steps", type=int, default=500, help="save learned_embeds-steps-{N}.bin every N steps")
    p.add_argument("--only_save_embeds", action="store_true", help="do not save the whole pipeline at the end")
    p.add_argument("--pretrained_model_name_or_path", default=DEFAULT_MODEL,
                   help="hub id, local diffusers folder, or single .safetensors/.ckpt file")
    p.add_argument("--revision", default=None, help="branch, tag or commit of a hub model")
    p.add_argument("--tokenizer_name", default=None, help="tokenizer to use instead of the model's")
    p.add_argument("--train_data_dir", required=True, help="folder holding the training photo(s)")
    p.add_argument("--placeholder_token", required=True, help="the new token, e.g. _cat_statue_")
    p.add_argument("--initializer_token", required=True, help="an existing one-token word to start from")
    p.add_argument("--learnable_property", choices=["object", "style", "reconstruction"], default="object",
                   help="caption templates: object (the original's), style, or reconstruction (main.py's default "
                        "prompt at the input view, 'A high-resolution DSLR image of a <token>, front view')")
    p.add_argument("--repeats", type=int, default=100, help="dataset length = images x repeats")
    p.add_argument("--output_dir", default="text-inversion-model", help="where results and checkpoints go")
    p.add_argument("--seed", type=int, default=None, help="seed of Python, NumPy and torch")
    p.add_argument("--resolution", type=int, default=512, help="training image size")
    p.add_argument("--center_crop", action="store_true", help="crop the centre square before resizing")


def add_optimisation_flags(p: argparse.ArgumentParser) -> None:
    """Batch, step counts, learning-rate schedule, data loading and AdamW."""
    p.add_argument("--train_batch_size", type=int, default=16, help="images per micro-batch")
    p.add_argument("--num_train_epochs", type=int, default=100, help="recomputed from --max_train_steps")
    p.add_argument("--max_train_steps", type=int, default=5000, help="optimisation steps")
    p.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per step")
    p.add_argument("--gradient_checkpointing", action="store_true", help="trade compute for memory")
    p.add_argument("--learning_rate", type=float, default=1e-4, help="base learning rate")
    p.add_argument("--scale_lr", action=argparse.BooleanOptionalAction,
                   help="lr *= gradient_accumulation_steps * train_batch_size")
    p.add_argument("--lr_scheduler", default="constant",
                   help="diffusers schedule: linear, cosine, cosine_with_restarts, polynomial, constant, "
                        "constant_with_warmup")
    p.add_argument("--lr_warmup_steps", type=int, default=500, help="warm-up steps (times accumulation)")
    p.add_argument("--dataloader_num_workers", type=int, default=None,
                   help="data loading processes (default: none on the CPU; on CUDA enough to keep the GPU busy)")
    p.add_argument("--adam_beta1", type=float, default=0.9)
    p.add_argument("--adam_beta2", type=float, default=0.999)
    p.add_argument("--adam_weight_decay", type=float, default=1e-2)
    p.add_argument("--adam_epsilon", type=float, default=1e-8)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """Hub upload, precision, trackers, validation samples, device and checkpoints."""
    p.add_argument("--push_to_hub", action="store_true", help="upload --output_dir to the Hugging Face hub")
    p.add_argument("--hub_token", default=None, help="token for --push_to_hub")
    p.add_argument("--hub_model_id", default=None, help="hub repository (default: the output folder's name)")
    p.add_argument("--logging_dir", default="logs", help="tracker folder, relative to --output_dir")
    p.add_argument("--mixed_precision", choices=["auto", "no", "fp16", "bf16"],
                   help="UNet and VAE in this precision with autocast (CUDA only; auto: fp16 on CUDA)")
    p.add_argument("--allow_tf32", action="store_true", help="TF32 matmuls on Ampere or newer GPUs")
    p.add_argument("--report_to", choices=["tensorboard", "wandb", "comet_ml", "all"], default="tensorboard",
                   help="logging of the scalars and validation images: tensorboard, wandb, or all (both; tensorboard "
                        "only without the wandb package); comet_ml is accepted by the parser but not supported")
    p.add_argument("--validation_prompt", default=None, help="sample this prompt every --validation_steps")
    p.add_argument("--num_validation_images", type=int, default=4)
    p.add_argument("--validation_steps", type=int, default=100)
    p.add_argument("--validation_epochs", type=int, default=None,
                   help="deprecated: sets --validation_steps to this times the dataset length")
    p.add_argument("--local_rank", type=int, default=-1, help="GPU index (the LOCAL_RANK variable wins)")
    p.add_argument("--checkpointing_steps", type=int, default=500, help="save a resumable checkpoint every N steps")
    p.add_argument("--checkpoints_total_limit", type=int, default=None, help="keep at most this many checkpoints")
    p.add_argument("--resume_from_checkpoint", default=None, help="'latest', a checkpoint-N name, or a path")
    p.add_argument("--force_unlock", action="store_true",
                   help="take over an --output_dir locked by a run on another host (one run per folder)")


def add_feature_flags(p: argparse.ArgumentParser) -> None:
    """xformers attention, RealFusion's augmentation and its pixel range, CUDA graphs, compilation."""
    p.add_argument("--enable_xformers_memory_efficient_attention", action="store_true")
    p.add_argument("--use_augmentations", action=argparse.BooleanOptionalAction,
                   help="RealFusion's heavy single-image augmentation")
    p.add_argument("--no_cuda_graph", action="store_true",
                   help="run the frozen VAE encoder and UNet eagerly instead of replaying CUDA graphs")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile of the frozen VAE encoder and UNet (inside their CUDA graphs), with the "
                        "compiled code cached per user. auto: only on CUDA, for runs of at least 1000 steps, and only "
                        "what an earlier --compile on run cached (nerf/compilation.py)")
    p.add_argument("--augment_range_01", action="store_true",
                   help="feed augmented images to the VAE in [0, 1] as the original did (default [-1, 1])")
