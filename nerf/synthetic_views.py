"""What the prior looks at each iteration: a random camera (or the input camera) and a shading draw."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nerf.cameras import FRONT, CameraBatch, random_cameras
from nerf.options import DataOptions

SHADING_RATIO = 0.1  # ambient share of lambertian and textureless shading


@dataclass(frozen=True)
class SyntheticView:
    """One sampled view: its camera, the prompt bucket and the std of the offset added to its rays."""

    camera: CameraBatch
    direction: int
    ray_noise: float


class SyntheticViews:
    """Samples the prior's cameras and shadings from the run's seeded generator.

    Every `replace_every`-th step renders the input camera with the front prompt (the original meant to, but its
    inverted condition gave a random camera with the front prompt on 9 of 10 steps: `legacy_replacement`).
    """

    def __init__(self, data: DataOptions, *, dir_text: bool, replace_every: int, replace_noise: float,
                 albedo_iters: int, real_camera: CameraBatch | None, generator: torch.Generator,
                 device: torch.device, left_handed: bool = False, legacy_replacement: bool = False) -> None:
        self.data = data
        self.dir_text = dir_text
        self.replace_every = replace_every
        self.replace_noise = replace_noise
        self.albedo_iters = albedo_iters
        self.real_camera = real_camera
        self.generator = generator
        self.device = device
        self.left_handed = left_handed
        self.legacy_replacement = legacy_replacement

    def _random_camera(self) -> CameraBatch:
        data = self.data
        return random_cameras(1, data.HW_synthetic, radius_range=data.radius_range, fovy_range=data.fovy_range,
                              uniform_sphere_rate=data.uniform_sphere_rate, angle_overhead=data.angle_overhead,
                              angle_front=data.angle_front, jitter=data.jitter_pose, left_handed=self.left_handed,
                              generator=self.generator)

    def _input_camera(self) -> CameraBatch:
        real = self.real_camera
        assert real is not None
        size = self.data.HW_synthetic
        return CameraBatch(real.poses, size, real.focal * size / real.height, real.directions, real.theta, real.phi)

    def view(self, step: int) -> SyntheticView:
        camera = self._random_camera()  # drawn every step, so the random stream does not depend on replacement
        # Its prompt bucket is read on the host before the camera moves to the device (a read there would wait for
        # the GPU's queue).
        direction = int(camera.directions[0]) if self.dir_text else 0
        camera = camera.to(self.device)
        front = FRONT if self.dir_text else 0
        every = self.replace_every
        if every > 0 and self.legacy_replacement:
            if step % every:
                return SyntheticView(camera, front, self.replace_noise)
        elif every > 0 and step % every == 0 and self.real_camera is not None:
            return SyntheticView(self._input_camera(), front, self.replace_noise)
        return SyntheticView(camera, direction, 0.0)

    def shading(self, step: int) -> tuple[str, float]:
        """Albedo for the first albedo_iters steps; then albedo 20 %, textureless 40 %, lambertian 40 %."""
        if step < self.albedo_iters:
            return "albedo", 1.0
        draw = float(torch.rand((), generator=self.generator))
        if draw > 0.8:
            return "albedo", 1.0
        return ("textureless", SHADING_RATIO) if draw > 0.4 else ("lambertian", SHADING_RATIO)
