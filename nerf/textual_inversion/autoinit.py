#!/usr/bin/env python
"""Choose the textual-inversion initializer automatically: the CLIP noun token closest to the photo.

    python textual-inversion/autoinit.py get_initialization IMAGE      # top 5 + token_autoinit.txt
    python textual-inversion/autoinit.py save_embeddings               # optional: made on first use anyway

``save_embeddings`` embeds "an image of a <noun>" with CLIP's text tower for every token of CLIP's
vocabulary that is a whole word (ends with ``</w>``) and an English noun, and saves
``{"idx": token ids, "emb": L2-normalised features [V, D]}`` (the original's file format).
Nouns come from NLTK's WordNet when its data is installed, else from ``wordnet-nouns.txt`` next to this
file (the same set, extracted from WordNet 3.0; see its header). ``get_initialization`` makes them itself, with
progress, the first time a CLIP model is used on this machine, into ``noun_embeddings_file``'s cache folder.

``get_initialization`` embeds the image with CLIP's image tower (an RGBA image is composited on white,
as textual inversion sees it), scores every noun by cosine similarity, prints the five best with
their softmax scores, and writes the best word to ``token_autoinit.txt`` next to the image (or in
--save_dir), which ``main.py`` and the sweep script read. ``--no_save`` only prints.

The CLIP model is ``openai/clip-vit-large-patch14`` (from the Hugging Face cache or the hub) or any
local CLIP folder given with --clip_model. Runs from any directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

import torch
from PIL import Image

from nerf.errors import ArgumentParser, UserError, one_line_errors
from nerf.fileio import write_file_atomic, write_text_atomic
from nerf.initializer_file import RESULT_FILE
from nerf.textual_inversion.dataset import load_rgb

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_EMBEDDINGS = HERE / "clip-vit-large-patch14-text-embeddings.pth"
NOUN_LIST = HERE / "wordnet-nouns.txt"
PROMPT = "an image of a {}"


def noun_embeddings_file(clip_model: str) -> Path:
    """Where the noun embeddings of `clip_model` are kept: the file shipped beside this script for the default
    model when it is there, else one per model in $XDG_CACHE_HOME/realfusion (~/.cache/realfusion), so that they
    are made once per machine rather than once per workspace."""
    if clip_model == DEFAULT_CLIP and DEFAULT_EMBEDDINGS.is_file():
        return DEFAULT_EMBEDDINGS
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "realfusion"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", clip_model).strip("-.")
    return cache / f"{slug}-text-embeddings.pth"


def noun_set() -> set[str]:
    """WordNet noun synset names up to their first '.' (NLTK if its data is there, else the shipped list)."""
    try:
        from nltk.corpus import wordnet

        return {synset.name().split(".")[0] for synset in wordnet.all_synsets("n")}
    except (ImportError, LookupError):
        lines = NOUN_LIST.read_text(encoding="utf-8").splitlines()
        return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def noun_tokens(tokenizer: Any, nouns: set[str]) -> list[tuple[int, str]]:
    """(id, word) for every whole-word vocabulary token that is a noun, by id."""
    suffix = "</w>"
    return sorted((i, t[: -len(suffix)]) for t, i in tokenizer.get_vocab().items()
                  if t.endswith(suffix) and t[: -len(suffix)] in nouns)


def load_clip(name: str, device: torch.device) -> tuple[Any, Any]:
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(name).to(device).eval().requires_grad_(False)
        processor = CLIPProcessor.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the CLIP model '{name}' ({type(exc).__name__}); give --clip_model a local CLIP "
                        f"folder, or a hub id that is cached or downloadable; or choose the word yourself "
                        f"(--initializer_token WORD of reconstruct.py and textual inversion).") from exc
    return model, processor


def unit(features: Any) -> torch.Tensor:
    """L2-normalised projected features (transformers 5 wraps them in an output object)."""
    tensor = features if isinstance(features, torch.Tensor) else features.pooler_output
    return tensor / tensor.norm(dim=-1, keepdim=True)


@torch.no_grad()
def text_features(model: Any, processor: Any, words: list[str], device: torch.device,
                  batch_size: int = 256) -> torch.Tensor:
    from tqdm.auto import tqdm

    chunks = []
    for start in tqdm(range(0, len(words), batch_size), desc="noun embeddings"):
        prompts = [PROMPT.format(word) for word in words[start:start + batch_size]]
        inputs = processor(text=prompts, return_tensors="pt", padding=True).to(device)
        chunks.append(unit(model.get_text_features(**inputs)).float().cpu())
    return torch.cat(chunks)


@torch.no_grad()
def image_feature(model: Any, processor: Any, image: Image.Image, device: torch.device) -> torch.Tensor:
    inputs = processor(images=image, return_tensors="pt").to(device)
    return unit(model.get_image_features(**inputs))[0].float().cpu()


def save_embeddings(file_name: Path, clip_model: str, device: torch.device) -> Path:
    """Embed every noun token of the CLIP vocabulary and save {'idx', 'emb'} atomically."""
    model, processor = load_clip(clip_model, device)
    tokens = noun_tokens(processor.tokenizer, noun_set())
    if not tokens:
        raise UserError(f"the tokenizer of {clip_model} has no whole-word noun tokens; use a CLIP model.")
    emb = text_features(model, processor, [word for _, word in tokens], device)
    data = {"idx": [i for i, _ in tokens], "emb": emb}
    write_file_atomic(file_name, lambda file: torch.save(data, file))
    print(f"saved {len(tokens)} noun embeddings to {file_name}")
    return file_name


def load_embeddings(file_name: Path) -> tuple[list[int], torch.Tensor]:
    if not file_name.is_file():
        raise UserError(f"noun embeddings {file_name} not found; run `python textual-inversion/autoinit.py "
                        f"save_embeddings --file_name {file_name}`, or omit --text_emb_file to make them on first "
                        f"use, or skip the choice with --initializer_token WORD.")
    try:
        data = torch.load(file_name, map_location="cpu", weights_only=True)
        idx, emb = list(data["idx"]), data["emb"].float()
    except Exception as exc:  # truncated or foreign file
        raise UserError(f"cannot read noun embeddings {file_name} ({type(exc).__name__}); run save_embeddings "
                        f"again.") from exc
    return idx, emb


def rank_tokens(image: Path, text_emb_file: Path | None, clip_model: str, device: torch.device,
                top: int = 5) -> list[tuple[str, float]]:
    """The `top` noun tokens for the image with their softmax scores, best first (text_emb_file None: the model's
    cached embeddings, made now if this machine has none)."""
    if text_emb_file is None:
        text_emb_file = noun_embeddings_file(clip_model)
        if not text_emb_file.is_file():
            print(f"making the noun embeddings of {clip_model} (once on this machine) in {text_emb_file}", flush=True)
            save_embeddings(text_emb_file, clip_model, device)
    idx, emb = load_embeddings(text_emb_file)
    if not image.is_file():
        raise UserError(f"image {image} does not exist; give the path of the input photo.")
    photo = load_rgb(image)
    model, processor = load_clip(clip_model, device)
    feature = image_feature(model, processor, photo, device)
    if emb.shape[1] != feature.shape[0] or max(idx) >= len(processor.tokenizer):
        raise UserError(f"{text_emb_file} was made with another CLIP model than {clip_model}; run save_embeddings "
                        f"with this --clip_model.")
    scores = torch.softmax(emb @ feature, dim=0)
    best = scores.topk(min(top, len(idx)))
    names = processor.tokenizer.convert_ids_to_tokens([idx[i] for i in best.indices.tolist()])
    return list(zip(names, best.values.tolist()))


def get_initialization(image: Path, text_emb_file: Path | None, clip_model: str, device: torch.device, save: bool = True,
                       save_dir: Path | None = None) -> str:
    """Print the five best tokens; write the best word to token_autoinit.txt unless save is False."""
    ranked = rank_tokens(image, text_emb_file, clip_model, device)
    print("Top tokens:")
    for name, score in ranked:
        print(f"  {name:<24} {score:.4f}")
    word = ranked[0][0].removesuffix("</w>")
    if save:
        target = (save_dir or image.parent) / RESULT_FILE
        write_text_atomic(target, word + "\n")
        print(f"wrote '{word}' to {target}")
    return word


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description="Pick a textual-inversion initializer word with CLIP.")
    commands = parser.add_subparsers(dest="command", required=True)
    common = ArgumentParser(add_help=False)
    common.add_argument("--clip_model", default=DEFAULT_CLIP, help="hub id or local CLIP folder")
    common.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    save = commands.add_parser("save_embeddings", parents=[common], help="embed every noun token (once per model)")
    save.add_argument("--file_name", type=Path, default=None,
                      help="output file (default: the model's cache file, see noun_embeddings_file)")
    get = commands.add_parser("get_initialization", parents=[common], help="best noun tokens for an image")
    get.add_argument("image", type=Path)
    get.add_argument("--text_emb_file", type=Path, default=None,
                     help="noun embeddings (default: the model's cache file, made on first use)")
    get.add_argument("--save_dir", type=Path, default=None, help="folder for token_autoinit.txt (default: the image's)")
    get.add_argument("--no_save", action="store_true", help="print only, do not write token_autoinit.txt")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.command == "save_embeddings":
        save_embeddings(args.file_name or noun_embeddings_file(args.clip_model), args.clip_model, device)
    else:
        get_initialization(args.image, args.text_emb_file, args.clip_model, device, save=not args.no_save,
                           save_dir=args.save_dir)
    return 0

