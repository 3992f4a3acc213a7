"""Stable Diffusion as a prior's source: model loading, the learned token, and the prompts it is asked about.

Every SD module is loaded frozen. The learned token (textual inversion) enters as one new row of the text
encoder's input embeddings, and the literal ``<token>`` in the prompts becomes that token (or, without a learned
embedding, the one-word description in ``token_autoinit.txt`` next to the input image).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nerf.cameras import direction_prompts
from nerf.errors import UserError, reason
from nerf.initializer_file import RESULT_FILE, read_initializer
from nerf.options import DEFAULT_MODEL

if TYPE_CHECKING:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    from nerf.options import PriorOptions

log = logging.getLogger("realfusion")

# Hub ids that no longer exist, mapped to the official copy of the same weights.
RETIRED_MODELS = {"runwayml/stable-diffusion-v1-5": DEFAULT_MODEL}
PREDICTION_TYPES = ("epsilon", "v_prediction")  # what the UNet predicts; both convert to the noise SDS needs
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
TOKEN_PLACEHOLDER = "<token>"
MODEL_FORMS = ("a hub id (cached, or downloadable with network access), a local diffusers folder, "
               "or one .safetensors/.ckpt file")


@dataclass
class StableDiffusionParts:
    """The frozen pieces of Stable Diffusion that SDS and textual inversion need (no safety checker)."""

    tokenizer: Any
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: torch.nn.Module
    scheduler: Any  # the model's own noise scheduler: provides the noise schedule alphas_cumprod
    device: torch.device
    dtype: torch.dtype


def resolve_model_name(name: str) -> str:
    """Map hub ids that were taken down to their official replacement, with a notice on stderr."""
    if name in RETIRED_MODELS:
        print(f"note: '{name}' is no longer on the Hugging Face hub; using '{RETIRED_MODELS[name]}' (same weights)",
              file=sys.stderr)
        return RETIRED_MODELS[name]
    return name


def load_stable_diffusion(name_or_path: str, device: torch.device, fp16: bool,
                          revision: str | None = None) -> StableDiffusionParts:
    """Load tokenizer, text encoder, VAE, UNet and scheduler from a hub id, a folder or a single file.

    A single checkpoint file carries weights only; its configuration comes from the diffusers folder it
    sits in (a folder with model_index.json) or, failing that, from diffusers' own detection of the
    model family (which reads that family's configs from the hub cache). fp16 weights only on CUDA.
    `revision` picks a branch/tag/commit of a hub model.
    """
    from diffusers import StableDiffusionPipeline

    name = resolve_model_name(name_or_path)
    dtype = torch.float16 if fp16 and device.type == "cuda" else torch.float32
    path = Path(name).expanduser()
    common: dict[str, Any] = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if revision is not None:
        common["revision"] = revision
    flag = "--pretrained_model_name_or_path"
    loader, source, hint = StableDiffusionPipeline.from_pretrained, name, ""
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise UserError(f"model file {path} does not exist; set {flag} to {MODEL_FORMS}.")
        common["config"] = str(path.parent) if (path.parent / "model_index.json").is_file() else None
        loader, source = StableDiffusionPipeline.from_single_file, str(path)
        if common["config"] is None:
            hint = (" a single file takes its configuration from the diffusers folder around it (model_index.json) "
                    "or from the hub cache of its model family;")
    elif path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UserError(f"{path} is not a diffusers model folder (no model_index.json); "
                            f"set {flag} to {MODEL_FORMS}.")
        source = str(path)
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"model folder {path} does not exist; set {flag} to {MODEL_FORMS}.")
    try:
        pipe = loader(source, **common)
    except (OSError, ValueError) as exc:  # hub offline / not cached / not found, unreadable or foreign files
        raise UserError(f"cannot load Stable Diffusion model '{name}' ({reason(exc)});{hint} "
                        f"set {flag} to {MODEL_FORMS}.") from exc

    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise UserError(f"model '{name}' predicts '{prediction}', which score distillation cannot use; give a model "
                        f"whose scheduler's prediction_type is one of {', '.join(PREDICTION_TYPES)}.")
    parts = StableDiffusionParts(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                                 unet=pipe.unet, scheduler=pipe.scheduler, device=device, dtype=dtype)
    for module in (parts.text_encoder, parts.vae, parts.unet):
        module.to(device).eval().requires_grad_(False)
        if dtype == torch.float16:
            module.half()
    return parts


def load_learned_embeds(path: str, token: str | None = None) -> tuple[str, torch.Tensor]:
    """Read one learned token and its vector from a textual-inversion result.

    Accepts learned_embeds.bin ({token: tensor[D]}, the original's format), a diffusers
    learned_embeds.safetensors (a [1, D] row is accepted as [D]), or an output folder holding either
    (the .safetensors file is preferred). Only safe loaders are used.
    """
    file = Path(path).expanduser()
    flag = "--learned_embeds_path"
    if file.is_dir():
        found = [f for f in (file / "learned_embeds.safetensors", file / "learned_embeds.bin") if f.is_file()]
        if not found:
            raise UserError(f"{file} holds neither learned_embeds.safetensors nor learned_embeds.bin; "
                            f"set {flag} to a textual-inversion output folder or file.")
        file = found[0]
    elif not file.is_file():
        raise UserError(f"learned embedding {file} does not exist; set {flag} to the file textual inversion wrote.")
    try:
        if file.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(file))
        else:
            data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoding failure: truncated, foreign or unsafe content
        raise UserError(f"cannot read learned embedding {file} ({type(exc).__name__}); it must be a learned_embeds.bin "
                        f"or .safetensors written by textual inversion.") from exc
    if not isinstance(data, dict) or not data:
        what = "an empty dict" if isinstance(data, dict) else f"a {type(data).__name__}"
        raise UserError(f"learned embedding {file} holds {what}, not {{token: vector}}; re-run textual inversion.")
    if "string_to_param" in data:
        raise UserError(f"learned embedding {file} is in the AUTOMATIC1111 format (string_to_param), not "
                        f"{{token: vector}}; learn the token with textual-inversion/textual_inversion.py.")
    names = ", ".join(map(str, data))
    if token is not None and token not in data:
        raise UserError(f"learned embedding {file} has no token '{token}' (it holds: {names}).")
    if token is None and len(data) > 1:
        raise UserError(f"learned embedding {file} holds {len(data)} tokens ({names}); "
                        f"keep exactly one token per file.")
    key = token if token is not None else next(iter(data))
    vector = data[key]
    if isinstance(vector, torch.Tensor) and vector.ndim == 2 and vector.shape[0] == 1:
        vector = vector[0]
    if not isinstance(vector, torch.Tensor):
        raise UserError(f"learned embedding {file}: the value of '{key}' is a {type(vector).__name__}, expected a "
                        f"1-D float vector; re-run textual inversion.")
    if not vector.is_floating_point():
        raise UserError(f"learned embedding {file}: the value of '{key}' holds {str(vector.dtype).split('.')[-1]} "
                        f"numbers, not a float embedding; re-run textual inversion.")
    if vector.ndim != 1:
        raise UserError(f"learned embedding {file}: the value of '{key}' has shape {tuple(vector.shape)}, expected a "
                        f"1-D vector.")
    if not torch.isfinite(vector).all():
        raise UserError(f"learned embedding {file}: the vector of '{key}' holds NaN or infinite numbers (its textual "
                        f"inversion diverged); learn it again, e.g. with a lower --learning_rate.")
    return str(key), vector.detach().to(torch.float32).clone()


def register_token(tokenizer: Any, text_encoder: CLIPTextModel, token: str) -> int:
    """Append `token` to the tokenizer and give the text encoder a row for it; returns its id.

    The caller checks that the token is new. After adding, the token must encode to exactly its own id
    (e.g. not swallowed by normalisation), else prompts would silently miss it. A token spelled like a word of the
    vocabulary is warned about: it takes that word's place in every prompt.
    """
    if len(tokenizer(token, add_special_tokens=False).input_ids) == 1:
        log.warning("the token '%s' is spelled like a word of the vocabulary, so it replaces that word in "
                    "every prompt; a new string such as _%s_ avoids that.", token, token.strip("_<>"))
    tokenizer.add_tokens(token)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    token_id = tokenizer.convert_tokens_to_ids(token)
    if tokenizer(token, add_special_tokens=False).input_ids != [token_id]:
        raise UserError(f"the token '{token}' cannot be matched as one token in prompts; use a lowercase word "
                        f"without spaces such as _my_object_.")
    return token_id


def add_learned_token(parts: StableDiffusionParts, token: str, vector: torch.Tensor) -> None:
    """Make `token` usable in prompts with `vector` as its input embedding row."""
    table = parts.text_encoder.get_input_embeddings()
    width = table.weight.shape[1]
    if vector.ndim != 1 or vector.numel() != width:
        raise UserError(f"the learned embedding of '{token}' has shape {tuple(vector.shape)} but this model's text "
                        f"encoder needs [{width}] (SD 1.x: 768, SD 2.x: 1024); learn the token with the model given "
                        f"by --pretrained_model_name_or_path.")
    row = vector.to(device=table.weight.device, dtype=table.weight.dtype)
    vocab = parts.tokenizer.get_vocab()
    if token in vocab:
        if torch.equal(table.weight[vocab[token]], row):
            return
        raise UserError(f"the token '{token}' already exists in the tokenizer with a different embedding; "
                        f"learn the embedding under a new placeholder token.")
    token_id = register_token(parts.tokenizer, parts.text_encoder, token)
    with torch.no_grad():
        parts.text_encoder.get_input_embeddings().weight[token_id] = row
    parts.text_encoder.requires_grad_(False)


def replace_token_placeholder(text: str, token: str) -> str:
    """Every literal ``<token>`` in a prompt becomes the learned token."""
    return text.replace(TOKEN_PLACEHOLDER, token)


def resolve_token(prior: PriorOptions, image_path: str) -> tuple[str, torch.Tensor | None]:
    """The word that replaces <token> and its learned vector: the learned token, or the one-word autoinit
    description next to the image (no vector)."""
    if prior.learned_embeds_path:
        return load_learned_embeds(prior.learned_embeds_path)
    autoinit = Path(image_path).parent / RESULT_FILE
    word = read_initializer(autoinit.parent)
    if word is not None:
        log.info("no --learned_embeds_path: %s becomes '%s' from %s", TOKEN_PLACEHOLDER, word, autoinit)
        return word, None
    raise UserError(f"the prompt contains {TOKEN_PLACEHOLDER} but there is no --learned_embeds_path and no "
                    f"{autoinit}; run textual inversion first or write the object's name in the prompt.")


@dataclass(frozen=True)
class Prompts:
    """The prompts after <token> replacement, one (positive, negative) pair per view bucket, and the learned
    token still to add to the model (None when the prompts use ordinary words only)."""

    text: str
    negative: str
    pairs: list[tuple[str, str]]
    token: str | None
    vector: torch.Tensor | None


def resolve_prompts(prior: PriorOptions, image_path: str) -> Prompts:
    """The prompts of a run; the token is resolved before any model is loaded, so a missing one fails fast."""
    token, vector = None, None
    if TOKEN_PLACEHOLDER in prior.text + prior.negative or prior.learned_embeds_path:
        token, vector = resolve_token(prior, image_path)
    if prior.learned_embeds_path and TOKEN_PLACEHOLDER not in prior.text + prior.negative:
        from nerf.options import DEFAULT_PROMPT

        log.warning("--learned_embeds_path is loaded but neither --text nor --negative contains %s, so the learned "
                    "token is not used; put %s in --text (e.g. %r)", TOKEN_PLACEHOLDER, TOKEN_PLACEHOLDER,
                    DEFAULT_PROMPT)
    text, negative = prior.text, prior.negative
    if token is not None:
        text, negative = replace_token_placeholder(text, token), replace_token_placeholder(negative, token)
    pairs = direction_prompts(text, negative, prior.dir_text, prior.suppress_face)
    return Prompts(text, negative, pairs, token, vector)
