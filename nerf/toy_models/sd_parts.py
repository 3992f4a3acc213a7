"""The offline CLIP-style tokenizer and the SD 1.x-shaped parts that the model-writing scripts share.

`make-tiny-sd.py` (random weights) and `train-toy-prior.py` (a trained toy prior) both write standard Stable
Diffusion folders; they build the tokenizer, the text encoder, the schedulers and the pipeline through this
module so that both folders load the same way as a real SD 1.x folder.

Tokenizer. The real CLIP vocabulary cannot be bundled or downloaded here, so a real byte-level BPE vocabulary
is built in the same format as CLIP's: the 256 byte symbols (GPT-2 byte-to-unicode map), the same symbols with
the end-of-word marker ``</w>``, then one entry per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` (the
last two ids, as in CLIP; padding uses ``<|endoftext|>``). The merges are learned by ordinary BPE training (most
frequent adjacent pair first, ties broken alphabetically) on the words of ``CORPUS`` below, run until every
corpus word is a single token. Because BPE replays its training merges in rank order, every corpus word ("a",
"photo", "of", "cat", "dog", "image", the prompt and template words, a few dozen nouns) encodes to exactly one
token, and any other text still encodes, falling back to shorter pieces and bytes. The ids differ from CLIP's;
nothing here depends on them.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

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
MAX_LENGTH = 77  # CLIP's context: every SD 1.x prompt is padded to 77 positions


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


def load_tokenizer(folder: Path) -> Any:
    """The CLIP tokenizer over the files `write_tokenizer_files` wrote, with SD's 77-token context."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder, model_max_length=MAX_LENGTH)


def clip_text_encoder(tokenizer: Any, width: int, intermediate: int, layers: int, heads: int) -> Any:
    """A CLIP text transformer over the tokenizer's vocabulary, with its special-token ids."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=width, intermediate_size=intermediate, num_hidden_layers=layers,
            num_attention_heads=heads, max_position_embeddings=MAX_LENGTH, projection_dim=width,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def sd15_schedule() -> dict[str, Any]:
    """SD 1.5's noise schedule: scaled_linear betas 0.00085..0.012 over 1000 training steps."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def sd15_pndm_scheduler() -> Any:
    """The sampling scheduler SD 1.5 ships (PNDM without Runge-Kutta warm-up steps)."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(**sd15_schedule(), skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)


def assemble_pipeline(vae: Any, text_encoder: Any, tokenizer: Any, unet: Any) -> Any:
    """The parts as a StableDiffusionPipeline without safety checker, with SD 1.5's PNDM scheduler."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=sd15_pndm_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def save_fp16_pipeline(out: Path, vae: Any, text_encoder: Any, tokenizer: Any, unet: Any) -> None:
    """Save the parts as an SD folder with fp16 safetensors weights that every loader reads back in fp32.

    diffusers upcasts the UNet and VAE itself; transformers >= 5 loads in the dtype the config names, so the
    text encoder's config says float32 (as SD 1.5's does), else it would come back fp16 beside a fp32 UNet."""
    from nerf.fileio import write_text_atomic

    pipe = assemble_pipeline(vae.half(), text_encoder.half(), tokenizer, unet.half())
    pipe.save_pretrained(out, safe_serialization=True)
    config = out / "text_encoder" / "config.json"
    write_text_atomic(config, json.dumps({**json.loads(config.read_text()), "dtype": "float32"}, indent=2) + "\n")
