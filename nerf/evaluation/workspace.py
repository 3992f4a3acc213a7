"""A trained workspace as the evaluation sees it: the field with its averaged (EMA) weights, renders of any
camera, and the density mesh.

The run is assembled by `nerf.build.build_run` from the workspace's options.json, as main.py --test assembles it,
with nothing written to the workspace.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nerf.build import build_run
from nerf.cameras import CameraBatch
from nerf.errors import UserError
from nerf.mesh import Mesh, extract_surface, keep_main_components, sample_grid
from nerf.options import Options
from nerf.options_file import load_options
from nerf.renderer import Renderer, RenderSettings

FLOATER_RATIO = 0.1  # as the mesh export: parts under a tenth of the largest part's area are dropped


@dataclass
class TrainedField:
    """A workspace's renderer (eval mode, EMA weights in place) and the options it was trained with."""

    workspace: Path
    opt: Options
    renderer: Renderer
    device: torch.device
    step: int

    @classmethod
    def load(cls, workspace: str | Path, device: torch.device) -> "TrainedField":
        workspace = Path(workspace)
        if not (workspace / "options.json").is_file():
            raise UserError(f"{workspace} is not a reconstruction workspace (no options.json); "
                            "give the --workspace folder of a main.py run.")
        opt = dataclasses.replace(load_options(workspace / "options.json"), test=True, ckpt="latest",
                                  workspace=str(workspace))
        trainer = build_run(opt, device=device).trainer
        trainer.ema.copy_to_params()
        trainer.renderer.eval()
        return cls(workspace, opt, trainer.renderer, device, trainer.global_step)

    @torch.no_grad()
    def render(self, camera: CameraBatch, index: int = 0) -> dict[str, Tensor]:
        """Full-frame render of one camera over white: image [H, W, 3] and opacity [H, W], on the CPU."""
        rays_o, rays_d, _ = camera.select(index, index + 1).to(self.device).rays()
        out = self.renderer.render(rays_o, rays_d, RenderSettings(), max_ray_batch=self.opt.render.max_ray_batch)
        size = camera.height
        return {"image": out["image"].reshape(size, size, 3).float().clamp(0, 1).cpu(),
                "opacity": out["weights_sum"].reshape(size, size).float().cpu()}

    @torch.no_grad()
    def density_mesh(self, resolution: int | None = None) -> Mesh:
        """The surface the mesh export would extract (same grid, threshold and floater removal), closed at the
        scene cube's faces so that its inside is well defined."""
        opt, field = self.opt, self.renderer.field
        resolution = resolution or opt.output.mesh_resolution
        threshold = opt.output.mesh_threshold or self.renderer.occupancy_threshold
        sigma = sample_grid(lambda x: field.density(x)["sigma"], opt.render.bound, resolution, 1 << 16, self.device)
        padded = np.pad(sigma, 1, constant_values=0.0)  # one empty layer outside the cube
        spacing = 2 * opt.render.bound / (resolution - 1)
        vertices, faces = extract_surface(padded, threshold, opt.render.bound + spacing)
        vertices, faces = keep_main_components(vertices, faces, FLOATER_RATIO)
        return Mesh(vertices.astype(np.float64), faces)
