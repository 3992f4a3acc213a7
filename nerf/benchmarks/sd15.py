"""A Stable Diffusion v1.5-shaped diffusers folder with random weights, built from the published configs.

Speed depends on the shapes, not on the values, so random weights time the real model exactly while
nothing is downloaded. The tokenizer is the offline BPE tokenizer of `nerf/toy_models/sd_parts.py`, padded
with unused entries to CLIP's 49,408 ids (start/end of text at 49,406/49,407 as in CLIP), so that the
text encoder's embedding table -- and the gradient textual inversion computes for it -- has SD 1.5's size.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from nerf.toy_models.sd_parts import write_tokenizer_files

CLIP_VOCAB = 49408
MARKER = "model_index.json"


def write_clip_sized_tokenizer(folder: Path) -> None:
    """The offline BPE tokenizer with filler entries inserted before the two special tokens."""
    write_tokenizer_files(folder)
    vocab: dict[str, int] = json.loads((folder / "vocab.json").read_text())
    specials = sorted(vocab, key=vocab.get)[-2:]
    ordered = sorted((t for t in vocab if t not in specials), key=vocab.get)
    ordered += [f"<|unused{k}|>" for k in range(CLIP_VOCAB - len(ordered) - len(specials))] + specials
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(ordered)}, ensure_ascii=False))


def build_sd15(out: Path, seed: int = 0) -> Path:
    """Write the SD 1.5-shaped folder (fp16 weights) to `out`, unless a complete one is already there."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out = Path(out)
    if (out / MARKER).is_file():
        return out
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    write_clip_sized_tokenizer(staging / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(staging / "tokenizer", model_max_length=77)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        latent_channels=4, sample_size=512, scaling_factor=0.18215,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=CLIP_VOCAB, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = PNDMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1,
                              set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=vae.half(), text_encoder=text_encoder.half(), tokenizer=tokenizer,
                                   unet=unet.half(), scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(staging, safe_serialization=True)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out
