"""Write a tiny random-weight Stable Diffusion model for tests and smoke runs, fully offline.

    python scripts/make-tiny-sd.py OUT [--single_file PATH.safetensors] [--seed 0]

OUT gets the standard diffusers layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/,
model_index.json), so every loader that reads a real SD 1.x folder reads this one too. The networks
are shaped like SD 1.x (same block types, cross-attention on the text encoder's hidden states,
4-channel latents, scaling factor 0.18215, PNDM scheduler with SD 1.5's scaled_linear betas
0.00085..0.012) but are a few MB in size, so the whole model builds and saves in seconds.
The same seed always gives the same weights.

Tokenizer: the offline byte-level BPE vocabulary of `nerf/toy_models/sd_parts.py` (same format as CLIP's), in which every
word of its CORPUS -- the prompt and template words and a few dozen nouns -- is a single token.

``--single_file`` also writes the same weights as one checkpoint in the original (CompVis LDM) key
layout -- ``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*`` --
which is what diffusers' single-file loader converts from. Loading it needs the component configs of
this folder (diffusers' ``config=`` argument), exactly as a real SD 1.5 checkpoint needs the SD 1.5
configs.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

from nerf.errors import ArgumentParser, UserError, one_line_errors
from nerf.toy_models.sd_parts import assemble_pipeline, clip_text_encoder, load_tokenizer, write_tokenizer_files


def build_pipeline(token_dir: Path, seed: int):
    """The tiny SD 1.x-shaped pipeline with random weights drawn from `seed`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    tokenizer = load_tokenizer(token_dir)
    width = 32
    torch.manual_seed(seed)
    text_encoder = clip_text_encoder(tokenizer, width=width, intermediate=37, layers=2, heads=4)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=width, attention_head_dim=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64), latent_channels=4, sample_size=16,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        scaling_factor=0.18215,
    )
    return assemble_pipeline(vae, text_encoder, tokenizer, unet)


RESNET_TO_LDM = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}


def rename(state: dict[str, torch.Tensor], prefixes: list[tuple[str, str, dict[str, str]]]) -> dict[str, torch.Tensor]:
    """Rename keys by the longest matching (diffusers prefix, LDM prefix, first-part renames) rule."""
    rules = sorted(prefixes, key=lambda rule: -len(rule[0]))
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        src, dst, parts = next(rule for rule in rules if key.startswith(rule[0]))
        head, _, tail = key[len(src):].partition(".")
        rest = f"{parts[head]}.{tail}" if head in parts and tail else key[len(src):]
        out[dst + rest] = value
    return out


def unet_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel keys -> CompVis openaimodel keys (SD 1.x block layout)."""
    per = config.layers_per_block
    rules = [
        ("time_embedding.linear_1.", "time_embed.0.", {}), ("time_embedding.linear_2.", "time_embed.2.", {}),
        ("conv_in.", "input_blocks.0.0.", {}), ("conv_norm_out.", "out.0.", {}), ("conv_out.", "out.2.", {}),
        ("mid_block.resnets.0.", "middle_block.0.", RESNET_TO_LDM), ("mid_block.attentions.0.", "middle_block.1.", {}),
        ("mid_block.resnets.1.", "middle_block.2.", RESNET_TO_LDM),
    ]
    levels = len(config.block_out_channels)
    for i in range(levels):
        for j in range(per):
            rules.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(per + 1) * i + j + 1}.0.", RESNET_TO_LDM))
            rules.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(per + 1) * i + j + 1}.1.", {}))
        rules.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(per + 1) * (i + 1)}.0.op.", {}))
        up_has_attention = "CrossAttn" in config.up_block_types[i]
        for j in range(per + 1):
            rules.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(per + 1) * i + j}.0.", RESNET_TO_LDM))
            rules.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(per + 1) * i + j}.1.", {}))
        slot = 2 if up_has_attention else 1
        rules.append((f"up_blocks.{i}.upsamplers.0.conv.", f"output_blocks.{(per + 1) * i + per}.{slot}.conv.", {}))
    return rename(state, rules)


def vae_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys -> CompVis keys; attention projections become 1x1 convolutions."""
    levels = len(config.block_out_channels)
    rules = [
        ("encoder.conv_norm_out.", "encoder.norm_out.", {}), ("decoder.conv_norm_out.", "decoder.norm_out.", {}),
        ("encoder.", "encoder.", {}), ("decoder.", "decoder.", {}), ("quant_conv.", "quant_conv.", {}),
        ("post_quant_conv.", "post_quant_conv.", {}),
    ]
    for part in ("encoder", "decoder"):
        rules += [
            (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", {}),
            (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", {}),
            (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", {}),
        ]
    for i in range(levels):
        rules.append((f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.", {}))
        rules.append((f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv.", {}))
        rules.append((f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{levels - 1 - i}.block.", {}))
        rules.append((f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{levels - 1 - i}.upsample.conv.", {}))
    out: dict[str, torch.Tensor] = {}
    for key, value in rename(state, rules).items():
        if ".mid.attn_1." in key:
            head, _, rest = key.partition(".mid.attn_1.")
            rest = rest.replace("to_out.0.", "proj_out.").replace("group_norm.", "norm.")
            rest = re.sub(r"^to_([qkv])\.", r"\1.", rest)
            key = f"{head}.mid.attn_1.{rest}"
            value = value[:, :, None, None] if value.ndim == 2 else value
        out[key.replace(".conv_shortcut.", ".nin_shortcut.")] = value
    return out


def write_single_file(pipe, path: Path) -> None:
    """Save all weights as one original-layout .safetensors checkpoint."""
    from safetensors.torch import save_file

    from nerf.fileio import write_atomic

    tensors: dict[str, torch.Tensor] = {}
    for key, value in unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config).items():
        tensors["model.diffusion_model." + key] = value
    for key, value in vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config).items():
        tensors["first_stage_model." + key] = value
    for key, value in pipe.text_encoder.state_dict().items():  # transformers >= 5.6 drops "text_model."
        tensors["cond_stage_model.transformer.text_model." + key.removeprefix("text_model.")] = value
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp)))


def refuse_files_on_the_way(folder: Path, what: str) -> None:
    """A folder to be written whose path runs through a file fails half-way in save_pretrained; say so first."""
    for step in (folder, *folder.parents):
        if step.exists() and not step.is_dir():
            raise UserError(f"{what}: {step} is a file, not a folder; choose another path.")


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (diffusers layout)")
    parser.add_argument("--single_file", type=Path, default=None, help="also write one .safetensors checkpoint here")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    refuse_files_on_the_way(args.out, "the output folder")
    if args.single_file is not None:
        refuse_files_on_the_way(args.single_file.parent, "--single_file")

    token_dir = args.out / "tokenizer"
    write_tokenizer_files(token_dir)
    pipe = build_pipeline(token_dir, args.seed)
    pipe.save_pretrained(args.out, safe_serialization=True)
    if args.single_file is not None:
        write_single_file(pipe, args.single_file)
    print(f"tiny Stable Diffusion model written to {args.out}")
