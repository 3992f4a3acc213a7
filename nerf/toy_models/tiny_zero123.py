"""Write a random-weight Zero-1-to-3 model in the published diffusers layout, fully offline.

    python scripts/make-tiny-zero123.py OUT [--full_size] [--seed 0]

OUT gets the folder layout of the diffusers copy of Zero-1-to-3-XL, so the loader of `nerf.guidance.zero123_model`
reads it as it reads the published model:

    model_index.json     the pipeline's component list
    unet/                UNet2DConditionModel with 8 input channels: the noisy latent and the input view's latent
    vae/                 AutoencoderKL (4 latent channels)
    image_encoder/       CLIPVisionModelWithProjection: the input view's CLIP image embedding
    feature_extractor/   CLIPImageProcessor: the encoder's input size, mean and standard deviation
    scheduler/           DDIMScheduler with Stable Diffusion 1.x's noise schedule
    cc_projection/       the linear layer (image embedding + 4 camera numbers -> cross-attention width):
                         config.json {in_channel, out_channel} and diffusion_pytorch_model.safetensors

The default networks are a few MB (images of 16 px, for tests and smoke runs on the CPU). ``--full_size`` gives
Zero-1-to-3-XL's shapes (SD 1.x UNet at 256 px, CLIP ViT-L/14, cc_projection 772 -> 768; about 5 GB in fp32) for
measuring memory and speed; its weights are random too. The same seed always gives the same weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nerf.errors import ArgumentParser, UserError, one_line_errors
from nerf.toy_models.sd_parts import sd15_schedule

PIPELINE_CLASS = "Zero1to3StableDiffusionPipeline"  # the class name the published model_index.json carries
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's pixel statistics, as in every CLIP image processor
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Shapes:
    """The sizes that distinguish the tiny model from Zero-1-to-3-XL."""

    unet_channels: tuple[int, ...]
    unet_down: tuple[str, ...]
    unet_up: tuple[str, ...]
    latent_size: int
    attention_head_dim: int
    vae_channels: tuple[int, ...]
    clip_width: int
    clip_layers: int
    clip_heads: int
    clip_intermediate: int
    clip_patch: int
    clip_image: int
    embedding: int  # CLIP's projected image embedding = the UNet's cross-attention width


TINY = Shapes(unet_channels=(32, 64), unet_down=("DownBlock2D", "CrossAttnDownBlock2D"),
              unet_up=("CrossAttnUpBlock2D", "UpBlock2D"), latent_size=8, attention_head_dim=8,
              vae_channels=(32, 64), clip_width=32, clip_layers=2, clip_heads=4, clip_intermediate=37, clip_patch=8,
              clip_image=32, embedding=32)
XL = Shapes(unet_channels=(320, 640, 1280, 1280),
            unet_down=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            unet_up=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            latent_size=32, attention_head_dim=8, vae_channels=(128, 256, 512, 512), clip_width=1024, clip_layers=24,
            clip_heads=16, clip_intermediate=4096, clip_patch=14, clip_image=224, embedding=768)


def clip_processor(side: int) -> Any:
    """The feature extractor's config: CLIP's input side and pixel statistics."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                              image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def ddim_scheduler() -> Any:
    """The published models' sampling scheduler: DDIM over Stable Diffusion 1.x's noise schedule."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**sd15_schedule(), clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def build_parts(shapes: Shapes, seed: int) -> dict[str, Any]:
    """The random-weight components, by subfolder name (cc_projection as a plain linear layer)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=shapes.latent_size, in_channels=8, out_channels=4, layers_per_block=2,
        block_out_channels=shapes.unet_channels, down_block_types=shapes.unet_down, up_block_types=shapes.unet_up,
        cross_attention_dim=shapes.embedding, attention_head_dim=shapes.attention_head_dim)
    levels = len(shapes.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=shapes.vae_channels, latent_channels=4, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        sample_size=shapes.latent_size * 2 ** (levels - 1), scaling_factor=0.18215)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=shapes.clip_width, intermediate_size=shapes.clip_intermediate,
        num_hidden_layers=shapes.clip_layers, num_attention_heads=shapes.clip_heads, patch_size=shapes.clip_patch,
        image_size=shapes.clip_image, projection_dim=shapes.embedding))
    processor = clip_processor(shapes.clip_image)
    scheduler = ddim_scheduler()
    projection = torch.nn.Linear(shapes.embedding + 4, shapes.embedding)
    return {"unet": unet, "vae": vae, "image_encoder": encoder, "feature_extractor": processor,
            "scheduler": scheduler, "cc_projection": projection}


def save_projection(projection: torch.nn.Linear, folder: Path) -> None:
    """cc_projection/ as the published model has it: {in_channel, out_channel} and the weights of `projection`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    config = {"_class_name": "CCProjection", "in_channel": projection.in_features,
              "out_channel": projection.out_features}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    weights = {f"projection.{k}": v.detach().contiguous() for k, v in projection.state_dict().items()}
    save_file(weights, str(folder / "diffusion_pytorch_model.safetensors"))


def model_index(parts: dict[str, Any]) -> dict[str, Any]:
    """model_index.json: each component's (library, class), as diffusers writes it."""
    import diffusers

    index: dict[str, Any] = {"_class_name": PIPELINE_CLASS, "_diffusers_version": diffusers.__version__}
    for name, part in parts.items():
        library = "diffusers" if type(part).__module__.startswith("diffusers") else "transformers"
        index[name] = [library, type(part).__name__]
    index["cc_projection"] = ["diffusers_modules.local.pipeline_zero1to3", "CCProjection"]
    index["safety_checker"] = [None, None]
    index["requires_safety_checker"] = False
    return index


def save_parts(parts: dict[str, Any], folder: Path) -> None:
    """Every component into its subfolder of `folder` (safetensors weights) and model_index.json: the published
    layout, for random and trained models alike."""
    for name, part in parts.items():
        if name == "cc_projection":
            save_projection(part, folder / name)
        else:
            part.save_pretrained(folder / name)  # weights as safetensors (the libraries' default)
    (folder / "model_index.json").write_text(json.dumps(model_index(parts), indent=2) + "\n")


def write_model(out: Path, shapes: Shapes = TINY, seed: int = 0) -> Path:
    """Build the model and write it to `out` (a new folder), complete or not at all."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists; give a new folder for the model.")
    for step in out.parents:
        if step.exists() and not step.is_dir():
            raise UserError(f"the output folder: {step} is a file, not a folder; choose another path.")
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = build_parts(shapes, seed)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_parts(parts, staging)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (a new one; the published diffusers layout)")
    parser.add_argument("--full_size", action="store_true", help="Zero-1-to-3-XL's shapes instead of tiny ones")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    write_model(args.out, XL if args.full_size else TINY, args.seed)
    print(f"random-weight Zero-1-to-3 model written to {args.out}")
