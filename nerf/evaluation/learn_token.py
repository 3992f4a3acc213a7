"""Textual inversion on one input view, as the README runs it, for the suite's learned-token runs.

The recipe is RealFusion's (batch 1, 4 accumulated micro-batches, lr 5e-4 scaled, constant schedule, heavy
augmentations), at the prior's own resolution; the stage runs textual_inversion.py in a child process, exactly as
a user would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from nerf.errors import UserError

SCRIPT = Path(__file__).resolve().parents[2] / "textual-inversion" / "textual_inversion.py"
PLACEHOLDER = "_object_"
RECIPE = ("--learnable_property=object", "--train_batch_size=1", "--gradient_accumulation_steps=4",
          "--learning_rate=5.0e-04", "--scale_lr", "--lr_scheduler=constant", "--lr_warmup_steps=0",
          "--use_augmentations", "--only_save_embeds")


def model_resolution(model: Path) -> int:
    """The image size a diffusers folder was trained at: latent size times the VAE's downsampling factor."""
    try:
        unet = json.loads((model / "unet" / "config.json").read_text())
        vae = json.loads((model / "vae" / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{model} is not a readable diffusers model folder ({exc}).") from None
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def learn_token(image: Path, model: Path, out_dir: Path, *, initializer: str, steps: int, seed: int = 0,
                cuda: bool = False) -> Path:
    """learned_embeds of `image`'s object under PLACEHOLDER, learned from `initializer`; reused when present."""
    embeds = out_dir / "learned_embeds.bin"
    if embeds.is_file():
        return embeds
    data = out_dir / "data"  # the input alone: other images beside it would be read as more photos
    data.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(image, data / "rgba.png")
    command = [sys.executable, str(SCRIPT), "--pretrained_model_name_or_path", str(model),
               "--train_data_dir", str(data), "--placeholder_token", PLACEHOLDER, "--initializer_token", initializer,
               "--resolution", str(model_resolution(model)), "--max_train_steps", str(steps), "--seed", str(seed),
               "--output_dir", str(out_dir), "--checkpointing_steps", str(steps), "--save_steps", str(steps),
               "--mixed_precision", "fp16" if cuda else "no", *RECIPE]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not embeds.is_file():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"textual inversion on {image} failed ({tail})")
    return embeds
