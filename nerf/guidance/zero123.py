"""Score distillation from Zero-1-to-3, an image-conditioned prior, and the builder of the ``zero123`` prior.

Zero-1-to-3 predicts the noise of a view of the object given the input view and the camera that takes the input view
to it. The input view enters twice: its CLIP image embedding, joined with the relative camera (polar angle, sine and
cosine of the azimuth, radius: target minus input) through the ``cc_projection`` layer, is what the UNet attends to;
its VAE latent (the posterior's mode, unscaled, as the published pipeline encodes it) is concatenated with the noisy
latent as 4 more input channels. Classifier-free guidance follows the published models: the unconditional branch
zeroes both the projected embedding and the input latent. The SDS gradient g = (1 - abar_t)(eps_hat - eps) on the
rendered view's latents enters training as a surrogate loss (`surrogate.py`), weighted by ``--lambda_prior_zero123``.

Cameras are the project's (`nerf.cameras`): polar angle down from the up axis, azimuth growing counter-clockwise
seen from above, as Zero-1-to-3's own; the input camera sits at ``--pose_angle``, azimuth 0, ``--radius_rot``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from nerf.cameras import to_device
from nerf.errors import UserError
from nerf.guidance.frozen_calls import (
    PosteriorMoments,
    accelerated,
    encode_latents,
    frozen_layouts,
    half_autocast,
    timestep_bounds,
)
from nerf.guidance.surrogate import surrogate_loss
from nerf.guidance.zero123_model import FLAG, MODEL_FORMS, Zero123Parts, load_zero123

if TYPE_CHECKING:
    from nerf.cameras import CameraBatch
    from nerf.data import RealView
    from nerf.guidance import PriorContext
    from nerf.options import PriorOptions


def relative_camera(camera: CameraBatch, reference: CameraBatch) -> Tensor:
    """[B, 4] (polar in radians, sin azimuth, cos azimuth, radius) of `camera` relative to the one `reference`."""
    polar = torch.deg2rad(camera.theta.float() - reference.theta.float().to(camera.theta.device))
    azimuth = torch.deg2rad(camera.phi.float() - reference.phi.float().to(camera.phi.device))
    radius = camera.centers.float().norm(dim=-1) - reference.centers.float().norm(dim=-1).to(camera.poses.device)
    return torch.stack([polar, torch.sin(azimuth), torch.cos(azimuth), radius], dim=-1)


def over_white(rgba: Tensor) -> Tensor:
    """An [H, W, 4] straight-alpha image over white as [1, 3, H, W]: the background Zero-1-to-3 was trained on."""
    rgb, alpha = rgba[..., :3].float(), rgba[..., 3:].float()
    return (rgb * alpha + (1 - alpha)).permute(2, 0, 1)[None]


def clip_pixels(image: Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Images [B, 3, H, W] in [0, 1] as CLIP's input: resized to `size` (bicubic), normalised by CLIP's statistics.
    One function, so that a model trained by the project sees its input exactly as score distillation gives it."""
    clip = F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    mean_ = torch.tensor(mean, device=image.device).view(1, 3, 1, 1)
    std_ = torch.tensor(std, device=image.device).view(1, 3, 1, 1)
    return (clip.clamp(0, 1) - mean_) / std_


class BothBranches(torch.nn.Module):
    """The UNet's noise predictions (fp32), conditional then unconditional, [2B, 4, h, w], for noisy latents
    [B, 4, h, w] at timesteps `steps` [2B] seen from relative cameras `pose` [B, 4]. A module of tensors only (the
    input view's embedding and latent are its buffers), so that it can be compiled ahead of time
    (`nerf.compilation.Packaged`) and captured as a CUDA graph."""

    def __init__(self, unet: torch.nn.Module, cc_projection: torch.nn.Module, image_embedding: Tensor,
                 input_latent: Tensor, weight_dtype: torch.dtype) -> None:
        super().__init__()
        self.unet = unet
        self.cc_projection = cc_projection
        self.register_buffer("image_embedding", image_embedding)
        self.register_buffer("input_latent", input_latent)
        self.weight_dtype = weight_dtype

    def forward(self, noisy: Tensor, steps: Tensor, pose: Tensor) -> Tensor:
        batch = noisy.shape[0]
        with half_autocast(self.weight_dtype, noisy.device):
            pose = pose.to(self.weight_dtype)
            condition = self.cc_projection(torch.cat([self.image_embedding.expand(batch, -1, -1), pose[:, None]], -1))
            latent = self.input_latent.expand(batch, -1, -1, -1)
            embedding = torch.cat([condition, torch.zeros_like(condition)])
            inputs = torch.cat([torch.cat([noisy, noisy]).to(latent.dtype),
                                torch.cat([latent, torch.zeros_like(latent)])], dim=1)
            return self.unet(inputs, steps, encoder_hidden_states=embedding).sample.float()


class Zero123Guidance:
    """Score distillation from Zero-1-to-3, conditioned on the input view and the camera of each rendered view."""

    term = "zero123"

    def __init__(self, parts: Zero123Parts, view: RealView, guidance_scale: float = 5.0,
                 t_range: tuple[float, float] = (0.02, 0.98), cuda_graph: bool = False, compile: str = "off",
                 channels_last: bool = False) -> None:
        """`cuda_graph`: replay the UNet call and the VAE encoder (forward and backward) as CUDA graphs;
        `compile`: "on", "off" or "if_cached", torch.compile of both (`nerf.compilation`), inside the graphs;
        `channels_last`: the UNet's convolution weights channels-last on CUDA (`frozen_layouts`)."""
        self.parts = parts
        self.reference = view.camera.to(parts.device)
        self.guidance_scale = guidance_scale
        steps = len(parts.alphas_cumprod)
        self.min_step, self.max_step = timestep_bounds(t_range, steps)
        image_embedding, input_latent = self.encode_input(view)
        self.branches = BothBranches(parts.unet, parts.cc_projection, image_embedding, input_latent, parts.dtype)
        frozen_layouts(parts.vae, parts.unet, parts.device, channels_last)
        identity = {"zero123_unet": dict(parts.unet.config), "vae": dict(parts.vae.config), "dtype": str(parts.dtype),
                    "channels_last": channels_last}
        speed_ups = {"device": parts.device, "cuda_graph": cuda_graph, "compile": compile, "identity": identity}
        self.moment_encoder = PosteriorMoments(parts.vae, parts.image_size, parts.dtype)
        self.moments: Callable[[Tensor], Tensor] = accelerated(
            self.moment_encoder, "Zero-1-to-3 VAE encoder", differentiable=True, **speed_ups)
        self.both_branches: Callable[[Tensor, Tensor, Tensor], Tensor] = accelerated(
            self.branches, "Zero-1-to-3 UNet", differentiable=False, **speed_ups)

    def autocast(self):
        """Half-precision autocast when the weights are fp16 (CUDA); a no-op in fp32."""
        return half_autocast(self.parts.dtype, self.parts.device)

    @torch.no_grad()
    def encode_input(self, view: RealView) -> tuple[Tensor, Tensor]:
        """The input view's CLIP image embedding [1, 1, E] and VAE latent [1, 4, h, w], computed once."""
        parts = self.parts
        image = over_white(view.rgba.to(parts.device))
        size = parts.image_size
        pixels = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        clip = clip_pixels(image, parts.clip_size, parts.clip_mean, parts.clip_std)
        with self.autocast():
            embedding = parts.image_encoder(pixel_values=clip).image_embeds[:, None]
            latent = parts.vae.encode(pixels * 2 - 1).latent_dist.mode()
        return embedding.to(parts.dtype), latent.to(parts.dtype)

    def encode(self, image: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Differentiable latents of a rendered [1, 3, h, w] image in [0, 1]: resize, VAE posterior sample, scale."""
        return encode_latents(self.moments, image, self.parts.vae.config.scaling_factor, generator)

    @torch.no_grad()
    def predict_noise(self, noisy: Tensor, t: int, camera: CameraBatch) -> Tensor:
        """The classifier-free guided noise prediction (fp32) for noisy latents [B, 4, h, w] seen by `camera`."""
        batch = noisy.shape[0]
        pose = relative_camera(camera, self.reference).to(self.parts.device)
        steps = torch.full((2 * batch,), t, device=noisy.device, dtype=torch.long)
        conditional, unconditional = self.both_branches(noisy, steps, pose).chunk(2)
        return unconditional + self.guidance_scale * (conditional - unconditional)

    def __call__(self, image: Tensor, direction: int, *, camera: CameraBatch,
                 generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """SDS on one rendered view of `camera`: the surrogate loss and {zero123_grad_norm, zero123_t}.

        Random draws, in order: VAE posterior noise, t, the diffusion noise eps. `direction` is not needed: the
        relative camera says more than a prompt bucket."""
        latents = self.encode(image, generator)
        where = generator.device if generator is not None else latents.device
        t = int(torch.randint(self.min_step, self.max_step + 1, (1,), generator=generator, device=where))
        noise = to_device(torch.randn(latents.shape, generator=generator, device=where), latents.device)
        abar = self.parts.alphas_cumprod[t]
        with torch.no_grad():
            noisy = abar.sqrt() * latents.detach() + (1 - abar).sqrt() * noise
            # a non-finite gradient makes a non-finite loss: the trainer skips that step, as for Stable Diffusion
            grad = (1 - abar) * (self.predict_noise(noisy, t, camera) - noise)
        return surrogate_loss(latents, grad), {"zero123_grad_norm": grad.abs().mean(),
                                               "zero123_t": torch.tensor(float(t))}


def build(prior: PriorOptions, context: PriorContext) -> Zero123Guidance:
    """Zero-1-to-3 conditioned on the run's input view and its camera; fp16 weights on CUDA only."""
    if not prior.zero123_model:
        raise UserError(f"--guidance {prior.guidance} needs {FLAG}: {MODEL_FORMS}.")
    parts = load_zero123(prior.zero123_model, context.device, fp16=context.fp16)
    return Zero123Guidance(parts, context.view, guidance_scale=prior.zero123_guidance_scale,
                           t_range=prior.zero123_t_range, cuda_graph=prior.cuda_graph, compile=context.compile,
                           channels_last=prior.channels_last)
