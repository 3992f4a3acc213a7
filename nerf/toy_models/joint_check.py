"""Do the two priors of ``--guidance sd+zero123`` pull a render the same way? Their SDS directions side by side.

The joined prior adds Stable Diffusion's and Zero-1-to-3's SDS terms on the same rendered view, each weighted by its
own lambda. Whether that beats either alone depends on the two pixel gradients: on their sizes once weighted (one
may drown the other) and on the angle between them (where they disagree they cancel). `joint_directions` measures
both on the toy world, at renders of another object seen from the same cameras, as the single-prior checks do
(`check.sds_alignment`, `zero123_check.sds_alignment`), with the suite's guidance scales and weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nerf.data import RealView
from nerf.errors import UserError
from nerf.scenes.procedural import make_scene
from nerf.scenes.raytrace import over_background, render_rgba
from nerf.toy_models.world import captions, input_camera, parse_object, training_cameras


@dataclass(frozen=True)
class JointSetting:
    """The scene pair and the suite's settings of each prior."""

    instance: str  # family:seed=word, the object both priors should pull towards (Zero-1-to-3 sees its input view)
    wrong: str  # family:seed of the object rendered instead
    # The suite's values (`nerf.evaluation.reconstruct`'s TOY_* constants; that layer sits above this one, and
    # tests/test_joint_check.py checks that they agree).
    sd_guidance_scale: float = 20.0
    zero123_guidance_scale: float = 5.0
    sd_weight: float = 2.0**-12
    zero123_weight: float = 2.5 * 2.0**-12
    views: int = 4
    draws: int = 8
    seed: int = 0


def _mean_descent(guidance, image: Tensor, draws: int, **call) -> Tensor:
    """The pixel descent direction of one prior at `image`, averaged over `draws` noise and timestep draws."""
    pixels = image.clone().requires_grad_(True)
    for _ in range(draws):
        loss, _ = guidance(pixels, **call)
        loss.backward()
    return -pixels.grad.flatten() / draws


def _cosine(a: Tensor, b: Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=0))


def held_out_pairs(model: Path) -> list[tuple[str, str]]:
    """(instance, wrong) pairs from the model's held-out instances: each class's first instance, rendered as the
    next class's second (so no render is also an instance of the pair before it)."""
    from nerf.toy_models.zero123_check import held_out

    by_word: dict[str, list] = {}
    for obj in held_out(model, per_class=2):
        by_word.setdefault(obj.word, []).append(obj)
    classes = [objs for objs in by_word.values() if len(objs) == 2]
    if len(classes) < 2:
        raise UserError(f"{model} needs two held-out instances of at least two words for the joint check.")
    return [(f"{objs[0].source}={objs[0].word}", classes[(i + 1) % len(classes)][1].source)
            for i, objs in enumerate(classes)]


def joint_directions(prior: Path, zero123: Path, setting: JointSetting) -> dict[str, float]:
    """Means over views of: each prior's cosine with (true - wrong render), the cosine between the two priors'
    directions, the cosine of their weighted sum, and the ratio of their weighted gradient norms (Zero-1-to-3 over
    Stable Diffusion)."""
    from nerf.guidance.sds import SDSGuidance
    from nerf.guidance.stable_diffusion import load_stable_diffusion
    from nerf.guidance.zero123 import Zero123Guidance
    from nerf.guidance.zero123_model import load_zero123

    cpu = torch.device("cpu")
    obj = parse_object(setting.instance)
    family, _, number = setting.wrong.partition(":")
    sd_parts = load_stable_diffusion(str(prior), cpu, fp16=False)
    z_parts = load_zero123(str(zero123), cpu, fp16=False)
    size = z_parts.image_size
    generator = torch.Generator().manual_seed(setting.seed)
    cams = training_cameras(setting.views, size, generator)
    true_scene = make_scene(obj.family, obj.seed)
    true = over_background(render_rgba(true_scene, cams)).permute(0, 3, 1, 2)
    wrong = over_background(render_rgba(make_scene(family, int(number)), cams)).permute(0, 3, 1, 2)
    sd = SDSGuidance(sd_parts, [(text, "") for text in captions(obj.word)], guidance_scale=setting.sd_guidance_scale)
    front = input_camera(size)
    z = Zero123Guidance(z_parts, RealView(render_rgba(true_scene, front)[0].cpu(), front),
                        guidance_scale=setting.zero123_guidance_scale)
    rows = []
    for k in range(setting.views):
        towards_truth = (true[k] - wrong[k]).flatten()
        image = wrong[k:k + 1]
        g_sd = setting.sd_weight * _mean_descent(sd, image, setting.draws, direction=int(cams.directions[k]),
                                                 generator=generator)
        g_z = setting.zero123_weight * _mean_descent(z, image, setting.draws, direction=0,
                                                     camera=cams.select(k, k + 1), generator=generator)
        rows.append({"sd towards truth": _cosine(g_sd, towards_truth),
                     "zero123 towards truth": _cosine(g_z, towards_truth),
                     "joint towards truth": _cosine(g_sd + g_z, towards_truth),
                     "sd vs zero123": _cosine(g_sd, g_z),
                     "weighted norm ratio zero123/sd": float(g_z.norm() / g_sd.norm())})
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
