"""Stable Diffusion as a 2-D prior: model loading, the learned token, and score distillation (SDS).

The NeRF never sees Stable Diffusion's weights change: every SD module is frozen. What flows back is
the SDS gradient g = lambda * w(t) * (eps_hat - eps) on the VAE latents of a rendered view, pushed
through the VAE encoder and the bilinear resize into the renderer. It enters training as the surrogate
loss 0.5 * ||z - stopgrad(z - g)||^2, whose gradient with respect to the latents z is exactly g, so the
AMP GradScaler scales and unscales it like every other loss term (the original injected g with an
unscaled ``backward`` and, under fp16, effectively divided it by the loss scale).
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from nerf.cuda_graphs import GraphedDifferentiable, GraphedInference
from nerf.errors import UserError

if TYPE_CHECKING:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# Hub ids that no longer exist, mapped to the official copy of the same weights.
RETIRED_MODELS = {"runwayml/stable-diffusion-v1-5": DEFAULT_MODEL}
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
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load Stable Diffusion model '{name}' ({reason});{hint} "
                        f"set {flag} to {MODEL_FORMS}.") from exc

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
    if not isinstance(vector, torch.Tensor) or vector.ndim != 1 or not vector.is_floating_point():
        shape = tuple(vector.shape) if isinstance(vector, torch.Tensor) else type(vector).__name__
        raise UserError(f"learned embedding {file}: the value of '{key}' is {shape}, expected a 1-D float vector.")
    return str(key), vector.detach().to(torch.float32).clone()


def register_token(tokenizer: Any, text_encoder: CLIPTextModel, token: str) -> int:
    """Append `token` to the tokenizer and give the text encoder a row for it; returns its id.

    The caller checks that the token is new. After adding, the token must encode to exactly its own id
    (e.g. not swallowed by normalisation), else prompts would silently miss it.
    """
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


def surrogate_loss(latents: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """0.5 * ||z - stopgrad(z - g)||^2: a scalar whose gradient with respect to z is exactly g."""
    latents = latents.float()
    target = (latents - grad.float()).detach()
    return 0.5 * ((latents - target) ** 2).sum()


class SDSGuidance:
    """Score distillation from Stable Diffusion with fixed prompts (one pair per view-direction bucket)."""

    def __init__(self, parts: StableDiffusionParts, prompts: Sequence[tuple[str, str]], guidance_scale: float = 100.0,
                 min_step: int = 20, max_step: int = 980, cuda_graph: bool = False) -> None:
        """`cuda_graph`: replay the UNet call and the VAE encoder (forward and backward) as CUDA graphs."""
        if not prompts:
            raise ValueError("SDSGuidance needs at least one (positive, negative) prompt pair")
        self.parts = parts
        self.guidance_scale = guidance_scale
        self.min_step, self.max_step = min_step, max_step
        # SD's native resolution: the UNet's latent size times the VAE's downsampling factor (512 for SD 1.5).
        self.image_size = parts.unet.config.sample_size * 2 ** (len(parts.vae.config.block_out_channels) - 1)
        self.alphas_cumprod = parts.scheduler.alphas_cumprod.to(device=parts.device, dtype=torch.float32)
        self.text_embeddings = self.encode_prompts(prompts)
        self.moments: Callable[[torch.Tensor], torch.Tensor] = self.encode_moments
        self.predict_noise: Callable[..., torch.Tensor] = self.predict_noise_eager
        if cuda_graph and parts.device.type == "cuda":
            self.moments = GraphedDifferentiable(self.encode_moments, "VAE encoder")
            self.predict_noise = GraphedInference(self.predict_noise_eager, "UNet")

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[tuple[str, str]]) -> torch.Tensor:
        """[K, 2, 77, D] text encoder states, negative (unconditional) first, computed once."""
        tok = self.parts.tokenizer
        texts = [text for positive, negative in prompts for text in (negative, positive)]
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(self.parts.device)
        states = self.parts.text_encoder(ids)[0]
        return states.reshape(len(prompts), 2, *states.shape[1:])

    def autocast(self):
        """Half-precision autocast when the weights are fp16 (CUDA); a no-op in fp32.

        The cast cache is off: it would keep tensors alive across CUDA-graph capture and replay."""
        if self.parts.dtype != torch.float16:
            return nullcontext()
        return torch.autocast(device_type=self.parts.device.type, dtype=torch.float16, cache_enabled=False)

    def encode_moments(self, image: torch.Tensor) -> torch.Tensor:
        """The VAE posterior's [mean, logvar] (at least fp32) for a [1, 3, h, w] image in [0, 1] at SD's size."""
        size = self.image_size
        x = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)
        vae = self.parts.vae
        # The VAE's one attention layer has a single 512-wide head over 64x64 positions: the fused attention
        # kernels are slow at that width (their backward above all), plain matrix products are not.
        with self.autocast(), sdpa_kernel(SDPBackend.MATH):
            moments = vae.encoder(x * 2 - 1)
            if vae.quant_conv is not None:
                moments = vae.quant_conv(moments)
        return moments.to(torch.promote_types(moments.dtype, torch.float32))

    def encode(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Differentiable latents of a [1, 3, h, w] image in [0, 1]: resize, VAE posterior sample, scale."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        posterior = DiagonalGaussianDistribution(self.moments(image))
        return posterior.sample(generator) * self.parts.vae.config.scaling_factor

    def predict_noise_eager(self, noisy: torch.Tensor, steps: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """The UNet's noise prediction, fp32, for a batch of noisy latents at timesteps `steps`."""
        with self.autocast():
            return self.parts.unet(noisy, steps, encoder_hidden_states=embedding).sample.float()

    @torch.no_grad()
    def sds_gradient(self, latents: torch.Tensor, direction: int, weight: float, t: int | None = None,
                     noise: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        """g = weight * (1 - abar_t) * (eps_hat - eps) for the latents; t and noise are drawn unless given."""
        from diffusers.utils.torch_utils import randn_tensor

        if t is None:
            where = generator.device if generator is not None else "cpu"
            t = int(torch.randint(self.min_step, self.max_step + 1, (1,), generator=generator, device=where))
        if noise is None:
            noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        steps = torch.full((2,), t, device=latents.device, dtype=torch.long)
        # The forward diffusion q(z_t | z_0) of every SD scheduler's add_noise, with the schedule already on
        # the device (add_noise copies it there at each call, which waits for the GPU).
        abar = self.alphas_cumprod[t]
        noisy = abar.sqrt() * latents.detach().float() + (1 - abar).sqrt() * noise.float()
        embedding = self.text_embeddings[direction if len(self.text_embeddings) > 1 else 0]
        eps = self.predict_noise(torch.cat([noisy, noisy]), steps, embedding)
        eps_uncond, eps_cond = eps.chunk(2)
        eps_hat = eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)
        grad = weight * (1 - self.alphas_cumprod[t]) * (eps_hat - noise.float())
        return torch.nan_to_num(grad), t

    def __call__(self, image: torch.Tensor, direction: int, weight: float,
                 generator: torch.Generator | None = None, *,
                 camera: object = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """SDS on one rendered view: the surrogate loss (its latent gradient is g) and {sds_grad_norm, t}.

        Random draws, in order: VAE posterior noise, t, the diffusion noise eps. The camera is not needed:
        the prompt bucket `direction` carries all SDS uses of the view.
        """
        latents = self.encode(image, generator)
        grad, t = self.sds_gradient(latents, direction, weight, generator=generator)
        return surrogate_loss(latents, grad), {"sds_grad_norm": grad.abs().mean(), "t": torch.tensor(float(t))}
