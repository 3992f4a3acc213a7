"""Check that a toy Zero-1-to-3 (scripts/train-toy-zero123.py) uses the camera: on its held-out instances, the
denoising loss of views conditioned on the input view with the true relative camera, with a wrong one, and the
input view itself at the zero relative camera against other cameras; and views sampled at the zero camera against
samples at other cameras.

    python scripts/check-toy-prior.py --zero123 MODEL [--views V] [--seed S] [--device cuda] [--out DIR]

Everything goes through the loader and the guidance that reconstruction uses (`load_zero123`, `Zero123Guidance`
at guidance scale 1, which is the conditional prediction), so the check measures the model as score distillation
sees it. Each instance's input view is its render from main.py's input camera.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nerf.cameras import CameraBatch
from nerf.data import RealView
from nerf.errors import UserError
from nerf.fileio import write_text_atomic
from nerf.guidance.zero123 import Zero123Guidance
from nerf.guidance.zero123_model import Zero123Parts, load_zero123
from nerf.scenes.procedural import make_scene
from nerf.scenes.raytrace import over_background, render_rgba
from nerf.toy_models.world import ToyObject, input_camera, load_world, parse_object, training_cameras

WRONG_AZIMUTHS = (90.0, 180.0, 270.0)  # degrees added to a target camera's azimuth to make a wrong one
SAMPLE_GUIDANCE = 3.0  # classifier-free guidance of the samples (the published sampling default)
# Timesteps of the losses: the noisier half, where the noisy latent gives little of the view away and the prediction
# rests on the conditioning (measured on a CPU-size model: the input view at the zero camera scored 6 % below other
# cameras over 500-980, 3 % over 20-980).
T_RANGE = (500, 980)


def turned(camera: CameraBatch, degrees: float) -> CameraBatch:
    """`camera` with its azimuth turned by `degrees`: all the relative camera reads of a wrong camera."""
    return replace(camera, phi=camera.phi + degrees)


@torch.no_grad()
def denoising_loss(guidance: Zero123Guidance, images: Tensor, camera: CameraBatch, noise: Tensor,
                   steps: Tensor) -> float:
    """The conditional epsilon-prediction loss of `images` [N, 3, S, S] in [0, 1] seen by `camera`, over the draws
    of `noise` [D, N, 4, s, s] and `steps` [D] shared between the calls that are compared."""
    parts = guidance.parts
    latents = parts.vae.encode(images.to(parts.device) * 2 - 1).latent_dist.mean * parts.vae.config.scaling_factor
    total = 0.0
    for eps, t in zip(noise, steps):
        abar = parts.alphas_cumprod[int(t)]
        noisy = abar.sqrt() * latents + (1 - abar).sqrt() * eps
        total += float(F.mse_loss(guidance.predict_noise(noisy, int(t), camera), eps))
    return total / len(noise)


def instance_losses(parts: Zero123Parts, obj: ToyObject, views: int, draws: int, seed: int,
                    t_range: tuple[int, int] = T_RANGE) -> dict[str, float]:
    """One held-out instance: target views at the true camera and at wrong ones; the input view at the zero relative
    camera and at the target views' cameras; timesteps drawn in `t_range`."""
    size = parts.image_size
    scene = make_scene(obj.family, obj.seed)
    front = input_camera(size)
    generator = torch.Generator().manual_seed(seed)
    cams = training_cameras(views, size, generator)
    rgba = render_rgba(scene, front)[0].cpu()
    guidance = Zero123Guidance(parts, RealView(rgba, front), guidance_scale=1.0)
    targets = over_background(render_rgba(scene, cams)).permute(0, 3, 1, 2)
    side = parts.unet.config.sample_size
    noise = torch.randn((draws, views, 4, side, side), generator=generator).to(parts.device)
    steps = torch.randint(*t_range, (draws,), generator=generator)
    row = {"true camera": denoising_loss(guidance, targets, cams, noise, steps),
           "wrong camera": float(np.mean([denoising_loss(guidance, targets, turned(cams, d), noise, steps)
                                          for d in WRONG_AZIMUTHS]))}
    source = over_background(rgba[None]).permute(0, 3, 1, 2).expand(views, -1, -1, -1)
    zero = CameraBatch(front.poses.expand(views, -1, -1), size, front.focal, front.directions.expand(views),
                       front.theta.expand(views), front.phi.expand(views))
    row["input, zero camera"] = denoising_loss(guidance, source, zero, noise, steps)
    row["input, other cameras"] = denoising_loss(guidance, source, cams, noise, steps)
    return row


def held_out(model: Path, per_class: int | None = None) -> list[ToyObject]:
    """The model's held-out instances (objects.json) as ToyObjects: all, or the first `per_class` of each word."""
    _, instances = load_world(model)
    if not instances:
        raise UserError(f"{model} lists no held-out instances; train it with --held_out (train-toy-zero123.py).")
    objects = [parse_object(f"{source}={word}") for source, word in instances.items()]
    if per_class is None:
        return objects
    counts: dict[str, int] = {}
    chosen = []
    for obj in objects:
        counts[obj.word] = counts.get(obj.word, 0) + 1
        if counts[obj.word] <= per_class:
            chosen.append(obj)
    return chosen


def camera_check(model: Path, views: int = 8, draws: int = 4, seed: int = 0, device: str = "cpu",
                 per_class: int | None = None, t_range: tuple[int, int] = T_RANGE) -> dict:
    """Per held-out instance and their mean: the four losses of `instance_losses`. A model that uses the camera
    scores the true camera below the wrong ones, and the input view at the zero camera below the other cameras."""
    parts = load_zero123(str(model), torch.device(device), fp16=False)
    rows = {obj.source: instance_losses(parts, obj, views, draws, seed, t_range)
            for obj in held_out(model, per_class)}
    mean = {key: float(np.mean([row[key] for row in rows.values()])) for key in next(iter(rows.values()))}
    return {"model": str(model), "views": views, "draws": draws, "timesteps": list(t_range), "per_instance": rows,
            "mean": mean}


CONDITIONS = ("true", "wrong", "random unet")


def sds_alignment(model: Path, instance: str, wrong: str, condition: str = "true", views: int = 4, draws: int = 8,
                  seed: int = 0, guidance_scale: float = 5.0, t_range: tuple[float, float] = (0.02, 0.98)) -> float:
    """The cosine between (true render - wrong render) and the Zero-1-to-3 SDS descent direction at the wrong
    render, averaged over `draws` noise and timestep draws (in `t_range`, fractions of the schedule, as
    `--zero123_t_range`) and `views` random training cameras.

    The wrong render is another object (`wrong`, family:seed) seen from the same camera. Conditioned on the true
    instance's input view ("true"), a model that turns what it sees pulls the pixels towards the true look from that
    camera. Conditioned on the wrong object's own input view ("wrong"), it pulls towards what is rendered, and a
    random UNet ("random unet", true input view) has no direction."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; choose one of {CONDITIONS}")
    parts = load_zero123(str(model), torch.device("cpu"), fp16=False)
    if condition == "random unet":
        torch.manual_seed(seed)
        parts.unet = type(parts.unet).from_config(parts.unet.config)
    size = parts.image_size
    generator = torch.Generator().manual_seed(seed)
    cams = training_cameras(views, size, generator)
    true_scene, wrong_scene = (make_scene(family, int(number)) for family, _, number in
                               (instance.partition(":"), wrong.partition(":")))
    true = over_background(render_rgba(true_scene, cams)).permute(0, 3, 1, 2)
    rendered = over_background(render_rgba(wrong_scene, cams)).permute(0, 3, 1, 2)
    front = input_camera(size)
    seen = wrong_scene if condition == "wrong" else true_scene
    guidance = Zero123Guidance(parts, RealView(render_rgba(seen, front)[0].cpu(), front), guidance_scale, t_range)
    cosines = []
    for k in range(views):
        image = rendered[k:k + 1].clone().requires_grad_(True)
        for _ in range(draws):
            loss, _ = guidance(image, 0, camera=cams.select(k, k + 1), generator=generator)
            loss.backward()
        cosines.append(float(F.cosine_similarity(-image.grad.flatten(), (true[k] - rendered[k]).flatten(), dim=0)))
    return float(np.mean(cosines))


def psnr(a: Tensor, b: Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean().clamp_min(1e-10)))


def sample_check(model: Path, azimuths: tuple[float, ...] = (0.0, *WRONG_AZIMUTHS), steps: int = 50, seed: int = 0,
                 device: str = "cpu", per_class: int | None = None) -> dict[str, dict[str, float]]:
    """Per held-out instance: the PSNR against its input view of views sampled at the input camera turned by each
    azimuth (0: the zero relative camera, which should reproduce the input view best)."""
    from nerf.guidance.zero123_sampling import sample_view

    parts = load_zero123(str(model), torch.device(device), fp16=False)
    size = parts.image_size
    front = input_camera(size)
    table = {}
    for obj in held_out(model, per_class):
        rgba = render_rgba(make_scene(obj.family, obj.seed), front)[0].cpu()
        guidance = Zero123Guidance(parts, RealView(rgba, front), guidance_scale=SAMPLE_GUIDANCE)
        truth = over_background(rgba[None]).permute(0, 3, 1, 2).to(parts.device)
        table[obj.source] = {f"{a:g}": psnr(sample_view(guidance, turned(front, a), steps,
                                                         torch.Generator().manual_seed(seed)), truth)
                             for a in azimuths}
    return table


def write_report(out: Path, report: dict) -> Path:
    """zero123.json in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    file = out / "zero123.json"
    write_text_atomic(file, json.dumps(report, indent=2) + "\n")
    return file
