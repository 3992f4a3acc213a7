"""Score distillation (SDS) from Stable Diffusion, and the builder of the ``sd`` prior.

The NeRF never sees Stable Diffusion's weights change. What flows back is the SDS gradient
g = w(t) * (eps_hat - eps) on the VAE latents of a rendered view, pushed through the VAE encoder and the bilinear
resize into the renderer as the surrogate loss (`surrogate.py`); the objective multiplies that loss by
``lambda_prior``, which makes the gradient lambda * g.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from nerf.guidance.frozen_calls import (
    PosteriorMoments,
    accelerated,
    encode_latents,
    frozen_layouts,
    half_autocast,
    timestep_bounds,
)
from nerf.guidance.stable_diffusion import (
    StableDiffusionParts,
    add_learned_token,
    load_stable_diffusion,
    resolve_prompts,
)
from nerf.guidance.surrogate import surrogate_loss

if TYPE_CHECKING:
    from nerf.guidance import PriorContext
    from nerf.options import PriorOptions

log = logging.getLogger("realfusion")


def build(prior: PriorOptions, context: PriorContext) -> SDSGuidance:
    """Stable Diffusion with the learned token and the view-dependent prompts; fp16 weights on CUDA only."""
    prompts = resolve_prompts(prior, context.image_path)
    parts = load_stable_diffusion(prior.pretrained_model_name_or_path, context.device, fp16=context.fp16)
    if prompts.vector is not None:
        add_learned_token(parts, prompts.token, prompts.vector)
    log.info("prompt: %s | negative: %s", prompts.text, prompts.negative or "(empty)")
    guidance = SDSGuidance(parts, prompts.pairs, guidance_scale=prior.guidance_scale, t_range=prior.t_range,
                           cuda_graph=prior.cuda_graph, compile=context.compile, channels_last=prior.channels_last)
    guidance.prompt, guidance.negative_prompt = prompts.text, prompts.negative
    return guidance


class NoisePredictor(torch.nn.Module):
    """The UNet's noise prediction, fp32, for a batch of noisy latents at timesteps `steps`: a module of tensors
    only, so that it can be compiled ahead of time (`nerf.compilation.Packaged`) and captured as a CUDA graph.

    A v-prediction UNet (e.g. SD 2.x 768-v) predicts v = sqrt(abar) eps - sqrt(1 - abar) z_0; with
    z_t = sqrt(abar) z_0 + sqrt(1 - abar) eps that gives eps = sqrt(abar) v + sqrt(1 - abar) z_t. The
    conversion is linear in the UNet's output, so classifier-free guidance may follow it."""

    def __init__(self, unet: torch.nn.Module, alphas_cumprod: torch.Tensor, prediction_type: str,
                 weight_dtype: torch.dtype) -> None:
        super().__init__()
        self.unet = unet
        self.register_buffer("alphas_cumprod", alphas_cumprod)
        self.v_prediction = prediction_type == "v_prediction"
        self.weight_dtype = weight_dtype

    def forward(self, noisy: torch.Tensor, steps: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        with half_autocast(self.weight_dtype, noisy.device):
            out = self.unet(noisy, steps, encoder_hidden_states=embedding).sample.float()
        if self.v_prediction:
            abar = self.alphas_cumprod[steps].view(-1, 1, 1, 1)
            out = abar.sqrt() * out + (1 - abar).sqrt() * noisy.float()
        return out


class SDSGuidance:
    """Score distillation from Stable Diffusion with fixed prompts (one pair per view-direction bucket)."""

    term = "sds"

    def __init__(self, parts: StableDiffusionParts, prompts: Sequence[tuple[str, str]], guidance_scale: float = 100.0,
                 t_range: tuple[float, float] = (0.02, 0.98), cuda_graph: bool = False, compile: str = "off",
                 channels_last: bool = False) -> None:
        """`t_range`: the timesteps drawn, as fractions of the schedule's training steps; `cuda_graph`: replay the
        UNet call and the VAE encoder (forward and backward) as CUDA graphs; `compile`: "on", "off" or "if_cached",
        torch.compile of both (`nerf.compilation`), inside the graphs; `channels_last`: channels-last convolution
        weights on CUDA where they are faster (`frozen_layouts`)."""
        if not prompts:
            raise ValueError("SDSGuidance needs at least one (positive, negative) prompt pair")
        self.parts = parts
        # The prompts before view suffixes, after <token> replacement: set by `build`, for the caller's records.
        self.prompt: str | None = None
        self.negative_prompt: str | None = None
        self.guidance_scale = guidance_scale
        # SD's native resolution: the UNet's latent size times the VAE's downsampling factor (512 for SD 1.5).
        self.image_size = parts.unet.config.sample_size * 2 ** (len(parts.vae.config.block_out_channels) - 1)
        self.alphas_cumprod = parts.scheduler.alphas_cumprod.to(device=parts.device, dtype=torch.float32)
        self.min_step, self.max_step = timestep_bounds(t_range, len(self.alphas_cumprod))
        self.prediction_type = parts.scheduler.config.get("prediction_type", "epsilon")
        self.text_embeddings = self.encode_prompts(prompts)
        frozen_layouts(parts.vae, parts.unet, parts.device, channels_last)
        identity = {"unet": dict(parts.unet.config), "vae": dict(parts.vae.config), "dtype": str(parts.dtype),
                    "channels_last": channels_last, "prediction_type": self.prediction_type}
        speed_ups = {"device": parts.device, "cuda_graph": cuda_graph, "compile": compile, "identity": identity}
        self.moment_encoder = PosteriorMoments(parts.vae, self.image_size, parts.dtype)
        self.moments: Callable[[torch.Tensor], torch.Tensor] = accelerated(
            self.moment_encoder, "VAE encoder", differentiable=True, **speed_ups)
        self.noise_predictor = NoisePredictor(parts.unet, self.alphas_cumprod, self.prediction_type, parts.dtype)
        self.predict_noise: Callable[..., torch.Tensor] = accelerated(
            self.noise_predictor, "UNet", differentiable=False, **speed_ups)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[tuple[str, str]]) -> torch.Tensor:
        """[K, 2, 77, D] text encoder states, negative (unconditional) first, computed once."""
        tok = self.parts.tokenizer
        texts = [text for positive, negative in prompts for text in (negative, positive)]
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(self.parts.device)
        states = self.parts.text_encoder(ids)[0]
        return states.reshape(len(prompts), 2, *states.shape[1:])

    def encode(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Differentiable latents of a [1, 3, h, w] image in [0, 1]: resize, VAE posterior sample, scale."""
        return encode_latents(self.moments, image, self.parts.vae.config.scaling_factor, generator)

    @torch.no_grad()
    def sds_gradient(self, latents: torch.Tensor, direction: int, t: int | None = None,
                     noise: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        """g = (1 - abar_t) * (eps_hat - eps) for the latents; t and noise are drawn unless given."""
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
        grad = (1 - self.alphas_cumprod[t]) * (eps_hat - noise.float())
        return grad, t  # a non-finite gradient makes a non-finite loss: the trainer skips that step

    def __call__(self, image: torch.Tensor, direction: int, *, camera: object = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """SDS on one rendered view: the surrogate loss (its latent gradient is g) and {sds_grad_norm, t}.

        Random draws, in order: VAE posterior noise, t, the diffusion noise eps. The camera is not needed:
        the prompt bucket `direction` carries all SDS uses of the view.
        """
        latents = self.encode(image, generator)
        grad, t = self.sds_gradient(latents, direction, generator=generator)
        return surrogate_loss(latents, grad), {"sds_grad_norm": grad.abs().mean(), "t": torch.tensor(float(t))}
