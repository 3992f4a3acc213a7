#!/usr/bin/env python
"""Write a tiny random-weight Stable Diffusion model for tests and smoke runs, fully offline.

    python scripts/make-tiny-sd.py OUT [--single_file PATH.safetensors] [--seed 0]

OUT gets the standard diffusers layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/,
model_index.json), so every loader that reads a real SD 1.x folder reads this one too. The networks
are shaped like SD 1.x (same block types, cross-attention on the text encoder's hidden states,
4-channel latents, scaling factor 0.18215, PNDM scheduler with SD 1.5's scaled_linear betas
0.00085..0.012) but are a few MB in size, so the whole model builds and saves in seconds.
The same seed always gives the same weights.

Tokenizer. The real CLIP vocabulary cannot be bundled or downloaded here, so a real byte-level BPE
vocabulary is built in the same format as CLIP's: the 256 byte symbols (GPT-2 byte-to-unicode map),
the same symbols with the end-of-word marker ``</w>``, then one entry per merge, then
``<|startoftext|>`` and ``<|endoftext|>`` (the last two ids, as in CLIP; padding uses
``<|endoftext|>``). The merges are learned by ordinary BPE training (most frequent adjacent pair
first, ties broken alphabetically) on the words of ``CORPUS`` below, run until every corpus word is a
single token. Because BPE replays its training merges in rank order, every corpus word ("a",
"photo", "of", "cat", "dog", "image", the prompt and template words, a few dozen nouns) encodes to
exactly one token, and any other text still encodes, falling back to shorter pieces and bytes.
The ids differ from CLIP's; nothing here depends on them.

``--single_file`` also writes the same weights as one checkpoint in the original (CompVis LDM) key
layout -- ``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*`` --
which is what diffusers' single-file loader converts from. Loading it needs the component configs of
this folder (diffusers' ``config=`` argument), exactly as a real SD 1.5 checkpoint needs the SD 1.5
configs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

import torch

# Words the tiny tokenizer knows as whole tokens: the prompts of the reconstruction stage, the
# textual-inversion caption templates, the automatic-initialisation prompt and common object nouns.
CORPUS = """
a an the of in on my one this that with and or by for to at from is
photo image picture rendering rendition painting drawing sketch render view
high resolution dslr front side back overhead bottom
cropped close up clean dirty dark bright cool good nice small large weird big tiny
style
cat dog fish bird horse cow sheep bear teddy toy car truck bus bike boat plane train
chair table sofa bed lamp vase cup mug bottle bowl plate teapot kettle clock phone book bag
shoe hat shirt ball apple banana orange lemon cake bread pizza flower tree plant cactus rock
statue house castle robot person man woman child face hand
red green blue yellow white black brown gray pink purple
"""


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE (GPT-2 / CLIP convention).

    Printable Latin-1 bytes stand for themselves; the remaining bytes (controls, space, ...) are
    shifted to code points 256 and up so every byte has a visible, whitespace-free symbol.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, str] = {b: chr(b) for b in keep}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return [table[b] for b in range(256)]


def word_symbols(word: str, symbols: list[str]) -> tuple[str, ...]:
    """A word as the byte symbols BPE starts from, the last one carrying ``</w>``."""
    pieces = [symbols[b] for b in word.encode("utf-8")]
    pieces[-1] += "</w>"
    return tuple(pieces)


def merge_pair(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Replace every non-overlapping occurrence of `pair` in `word`, scanning left to right."""
    merged: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            merged.append(word[i] + word[i + 1])
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return tuple(merged)


def learn_merges(text: str, symbols: list[str]) -> list[tuple[str, str]]:
    """Plain BPE training on `text` until every word is one symbol; deterministic."""
    words = Counter(word_symbols(w, symbols) for w in re.findall(r"[a-z]+", text.lower()))
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            return merges
        best = min(pairs.items(), key=lambda item: (-item[1], item[0]))[0]
        merges.append(best)
        words = Counter({merge_pair(word, best): count for word, count in words.items()})


def write_tokenizer_files(folder: Path) -> None:
    """vocab.json + merges.txt in CLIP's layout and id order (bytes, bytes</w>, merges, specials)."""
    symbols = byte_symbols()
    merges = learn_merges(CORPUS, symbols)
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_pipeline(token_dir: Path, seed: int):
    """The tiny SD 1.x-shaped pipeline with random weights drawn from `seed`."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(token_dir, model_max_length=77)
    width = 32
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=width, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, projection_dim=width,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
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
    scheduler = PNDMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


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

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (diffusers layout)")
    parser.add_argument("--single_file", type=Path, default=None, help="also write one .safetensors checkpoint here")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)

    token_dir = args.out / "tokenizer"
    write_tokenizer_files(token_dir)
    pipe = build_pipeline(token_dir, args.seed)
    pipe.save_pretrained(args.out, safe_serialization=True)
    if args.single_file is not None:
        write_single_file(pipe, args.single_file)
    print(f"tiny Stable Diffusion model written to {args.out}")


if __name__ == "__main__":
    main()
