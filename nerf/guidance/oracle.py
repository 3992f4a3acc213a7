"""Oracle guidance: a prior that knows the true object, with the same interface as score distillation.

For the camera the Trainer sampled, it renders the ground-truth scene and returns the surrogate loss whose
gradient on the rendered image is g = strength * (x - x_gt) / (H * W): the image-space analogue of the SDS
gradient (a step towards what the prior believes the view should look like), injected the same way
(`surrogate.py`). The truth is rendered along the camera's own rays, its noise included (the input camera's
replacement steps move every ray), so that it never asks for a shifted object. It is composited over white, the
colour the background network then learns. It exists to measure the reconstruction pipeline itself: with a
perfect prior, how much of the object's 3-D shape comes back? ``--guidance oracle --guidance_scene FAMILY[:SEED]``
selects it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from nerf.cameras import CameraBatch
from nerf.errors import UserError
from nerf.scenes.raytrace import over_background, render_rgba
from nerf.scenes.files import load_scene
from nerf.scenes.procedural import FAMILIES, Scene, make_scene
from nerf.guidance.surrogate import surrogate_loss

if TYPE_CHECKING:
    from nerf.guidance import PriorContext
    from nerf.options import PriorOptions

# The oracle's per-pixel pull relative to the input view's: at the reduced benchmark size (1024 input rays, 32^2
# synthetic views) a strength of 10 makes each synthetic pixel weigh about three times an input-view pixel.
DEFAULT_STRENGTH = 10.0
SCENE_FORMS = (f"FAMILY[:SEED] with FAMILY one of {', '.join(FAMILIES)} (seed 0 by default), or a scene folder "
               "(or its scene.json) written by scripts/make-synthetic-scene.py")


class OracleGuidance:
    """Pulls every synthetic render towards the ground-truth render of its camera."""

    term = "oracle"

    def __init__(self, scene: Scene, strength: float = DEFAULT_STRENGTH, supersample: int = 2,
                 background: float = 1.0) -> None:
        self.scene = scene
        self.strength = strength
        self.supersample = supersample
        self.background = background

    @torch.no_grad()
    def target(self, camera: CameraBatch) -> Tensor:
        """Ground truth [B, 3, H, W] of the cameras over the background colour."""
        rgba = render_rgba(self.scene, camera, self.supersample)
        return over_background(rgba, self.background).permute(0, 3, 1, 2)

    def __call__(self, image: Tensor, direction: int, *, camera: CameraBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Surrogate loss for a rendered image [1, 3, H, W] of `camera` and {oracle_grad_norm, oracle_mse}.

        `direction` is accepted for interface compatibility: the camera says more than its prompt bucket.
        """
        target = self.target(camera).to(image.device)
        error = image.detach().float() - target
        grad = self.strength * error / (image.shape[-2] * image.shape[-1])
        return surrogate_loss(image, grad), {"oracle_grad_norm": grad.abs().mean(), "oracle_mse": (error**2).mean()}


def load_guidance_scene(spec: str | None) -> Scene:
    """The scene named by ``--guidance_scene``: a procedural family and seed, or a scene folder on disk."""
    if not spec:
        raise UserError(f"--guidance oracle needs --guidance_scene: {SCENE_FORMS}.")
    family, colon, seed = spec.partition(":")
    if family in FAMILIES:
        if colon and not seed.isdigit():
            raise UserError(f"--guidance_scene '{spec}': the seed must be a whole number >= 0; give {SCENE_FORMS}.")
        return make_scene(family, int(seed) if colon else 0)
    path = Path(spec).expanduser()
    if path.is_file() and path.name == "scene.json":
        path = path.parent
    if not (path / "scene.json").is_file():
        raise UserError(f"--guidance_scene '{spec}' is neither a scene family nor a scene folder; give {SCENE_FORMS}.")
    return load_scene(path)[0]


def build(prior: PriorOptions, context: PriorContext) -> OracleGuidance:
    """The oracle of ``prior.guidance_scene`` with ``prior.oracle_strength``; it renders on the image's device."""
    return OracleGuidance(load_guidance_scene(prior.guidance_scene), strength=prior.oracle_strength)
