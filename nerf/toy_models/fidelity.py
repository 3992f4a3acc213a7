"""How much of an instance's own look score distillation keeps, by timestep and guidance scale.

The SDS gradient at a rendered view is, up to the weight w(t), the difference between the view's latents and the
prior's one-step estimate of the clean latents from a noisy copy at timestep t (with classifier-free guidance). So
at a *true* render of a held-out instance that estimate is where score distillation pulls the truth: a prior that
knows the instance estimates it back; one that knows only its class estimates the class's look, and the pull takes
the instance's colours away. This module measures the estimate's fidelity to the truth (PSNR over the object's
pixels, and the error of the object's mean colour) per prompt, guidance scale and timestep, on the real SDS code path
(`SDSGuidance.sds_gradient`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from nerf.guidance.sds import SDSGuidance
from nerf.pipeline import training_resolution
from nerf.scenes.procedural import make_scene
from nerf.scenes.raytrace import over_background, render_rgba
from nerf.toy_models.world import ToyObject, captions, training_cameras

TIMESTEPS = (100, 300, 500, 700, 900)
GUIDANCE_SCALES = (1.0, 5.0, 20.0)


@torch.no_grad()
def clean_latents_estimate(guidance: SDSGuidance, latents: Tensor, direction: int, t: int, noise: Tensor) -> Tensor:
    """The prior's estimate of the clean latents from `latents` noised to timestep t, as SDS sees it.

    sds_gradient returns g = (1 - abar)(eps_hat - eps) for z_t = sqrt(abar) z + sqrt(1 - abar) eps, and the
    estimate (z_t - sqrt(1 - abar) eps_hat) / sqrt(abar) equals z - g / (sqrt(abar) sqrt(1 - abar))."""
    grad, _ = guidance.sds_gradient(latents, direction, t=t, noise=noise)
    abar = guidance.alphas_cumprod[t]
    return latents.float() - grad / (abar.sqrt() * (1 - abar).sqrt())


def object_fidelity(estimate: Tensor, truth: Tensor, mask: Tensor) -> tuple[float, float]:
    """PSNR (dB) of a [3, H, W] estimate against the truth over the object's pixels (`mask` [H, W]), and the mean
    absolute error of the object's mean colour (0 when the instance's colours are kept on average)."""
    diff = (estimate - truth)[:, mask]
    psnr = -10 * math.log10(max(float(diff.pow(2).mean()), 1e-10))
    colour = float((estimate[:, mask].mean(1) - truth[:, mask].mean(1)).abs().mean())
    return psnr, colour


@torch.no_grad()
def fidelity_table(prior: Path, obj: ToyObject, names: dict[str, str | None], token: tuple[str, Tensor] | None = None,
                   guidance_scales: Sequence[float] = GUIDANCE_SCALES, timesteps: Sequence[int] = TIMESTEPS,
                   views: int = 8, draws: int = 2, seed: int = 0,
                   device: str = "cpu") -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """{name: {guidance scale: {t: {"psnr", "colour_error"}}}}: the clean-view estimate's fidelity at true renders of
    `obj` from `views` random training cameras, `draws` noise draws each, with main.py's prompt naming the object by
    each `names` entry (a word, the learned token's string, or None for the empty prompt). The empty prompt's two
    guidance branches are the same, so its estimate does not depend on the scale: it is measured at the first."""
    from nerf.guidance.stable_diffusion import add_learned_token, load_stable_diffusion

    parts = load_stable_diffusion(str(prior), torch.device(device), fp16=False)
    if token is not None:
        add_learned_token(parts, *token)
    generator = torch.Generator().manual_seed(seed)
    cams = training_cameras(views, training_resolution(prior), generator)
    rgba = render_rgba(make_scene(obj.family, obj.seed), cams)
    truth = over_background(rgba).permute(0, 3, 1, 2).to(device)
    masks = rgba[..., 3].to(device) > 0.5
    scale = parts.vae.config.scaling_factor
    # one posterior draw per view and one noise draw per (t, view, draw), shared by every name and scale, so that
    # the estimates differ by the text and the scale alone
    encoder = SDSGuidance(parts, [("", "")])
    latents = [encoder.encode(truth[k:k + 1], generator) for k in range(views)]
    noises = {t: [[torch.randn(latents[k].shape, generator=generator).to(device) for _ in range(draws)]
                  for k in range(views)] for t in timesteps}
    table: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for name, word in names.items():
        prompts = [(text, "") for text in captions(word)] if word else [("", "")]
        table[name] = {}
        for guidance_scale in guidance_scales if word else guidance_scales[:1]:
            guidance = SDSGuidance(parts, prompts, guidance_scale=guidance_scale)
            row = {}
            for t in timesteps:
                scores = []
                for k in range(views):
                    direction = int(cams.directions[k]) if word else 0
                    for noise in noises[t][k]:
                        clean = clean_latents_estimate(guidance, latents[k], direction, t, noise)
                        image = (parts.vae.decode(clean.to(parts.dtype) / scale).sample.float() / 2 + 0.5).clamp(0, 1)
                        scores.append(object_fidelity(image[0], truth[k], masks[k]))
                row[str(t)] = {"psnr": sum(s[0] for s in scores) / len(scores),
                               "colour_error": sum(s[1] for s in scores) / len(scores)}
            table[name][f"{guidance_scale:g}"] = row
    return table
