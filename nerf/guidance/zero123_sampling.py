"""Novel views sampled from Zero-1-to-3: what the prior believes the object looks like from a camera.

Score distillation never samples; this is for looking at a Zero-1-to-3 model and measuring it (for example, a
sample at the input camera should reproduce the input view, one at another camera should not). It uses the same
conditioning and classifier-free guidance as the SDS of `nerf.guidance.zero123` and the model's own scheduler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from nerf.cameras import CameraBatch
    from nerf.guidance.zero123 import Zero123Guidance


@torch.no_grad()
def sample_view(guidance: Zero123Guidance, camera: CameraBatch, steps: int = 50,
                generator: torch.Generator | None = None) -> Tensor:
    """The view of the input's object from `camera` (one camera): [1, 3, S, S] in [0, 1] at the model's size S."""
    parts = guidance.parts
    scheduler = parts.scheduler
    scheduler.set_timesteps(steps, device=parts.device)
    side = parts.unet.config.sample_size
    where = generator.device if generator is not None else parts.device
    latents = torch.randn((1, 4, side, side), generator=generator, device=where).to(parts.device)
    latents = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        noise = guidance.predict_noise(scheduler.scale_model_input(latents, t), int(t), camera)
        latents = scheduler.step(noise, t, latents).prev_sample
    with guidance.autocast():
        image = parts.vae.decode(latents.to(parts.dtype) / parts.vae.config.scaling_factor).sample
    return ((image.float() + 1) / 2).clamp(0, 1)
