"""Oracle guidance: a prior that knows the true object, with the same interface as score distillation.

For the camera the Trainer sampled, it renders the ground-truth scene and returns the surrogate loss whose
gradient on the rendered image is g = weight * strength * (x - x_gt) / (H * W): the image-space analogue of the SDS
gradient (a step towards what the prior believes the view should look like), injected the same way
(`nerf.guidance.surrogate_loss`). The ground truth is composited over white, the colour the background network
then learns. It exists to measure the reconstruction pipeline itself: with a perfect prior, how much of the
object's 3-D shape comes back? It is used by the evaluation suite only, never by main.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nerf.cameras import CameraBatch
from nerf.evaluation.raytrace import over_background, render_rgba
from nerf.evaluation.scenes import Scene
from nerf.guidance import surrogate_loss

# The oracle's per-pixel pull relative to the input view's: at the reduced benchmark size (1024 input rays, 32^2
# synthetic views) a strength of 10 makes each synthetic pixel weigh about three times an input-view pixel.
DEFAULT_STRENGTH = 10.0

class OracleGuidance:
    """Pulls every synthetic render towards the ground-truth render of its camera."""

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

    def __call__(self, image: Tensor, direction: int, weight: float, *,
                 camera: CameraBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Surrogate loss for a rendered image [1, 3, H, W] of `camera` and {oracle_grad_norm, oracle_mse}.

        `direction` is accepted for interface compatibility: the camera says more than its prompt bucket.
        """
        target = self.target(camera).to(image.device)
        error = image.detach().float() - target
        grad = weight * self.strength * error / (image.shape[-2] * image.shape[-1])
        return surrogate_loss(image, grad), {"oracle_grad_norm": grad.abs().mean(), "oracle_mse": (error**2).mean()}
