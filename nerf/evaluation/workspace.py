"""A trained workspace as the evaluation sees it: the field with its averaged (EMA) weights, renders of any
camera, and the density mesh.

The field and renderer are built from the workspace's options.json exactly as main.build_trainer builds them, and
nothing is written to the workspace (build_trainer would rewrite options.json and open its log).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nerf.cameras import CameraBatch
from nerf.checkpoint import LATEST, load_checkpoint
from nerf.errors import UserError
from nerf.evaluation.geometry import Mesh
from nerf.mesh import extract_surface, keep_main_components, sample_grid
from nerf.optim import EMA
from nerf.options import Options, load_options
from nerf.renderer import Renderer, RenderSettings, build_renderer

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
        opt = load_options(workspace / "options.json")
        state = load_checkpoint(workspace / "checkpoints" / LATEST)
        renderer = build_renderer(opt, device)
        ema = EMA(renderer.field.parameters(), opt.ema_decay)
        try:
            renderer.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise UserError(f"the checkpoint of {workspace} does not match its options.json "
                            f"({str(exc).splitlines()[0]}); evaluate an unmodified workspace.") from None
        renderer.field.grid_levels_mask = int(state["grid_levels_mask"])
        with torch.no_grad():
            for param, average in zip(ema.params, ema.shadow):
                param.copy_(average)
        renderer.eval()
        return cls(workspace, opt, renderer, device, int(state["global_step"]))

    @torch.no_grad()
    def render(self, camera: CameraBatch, index: int = 0) -> dict[str, Tensor]:
        """Full-frame render of one camera over white: image [H, W, 3] and opacity [H, W], on the CPU."""
        view = CameraBatch(camera.poses[index:index + 1], camera.height, camera.focal,
                           camera.directions[index:index + 1], camera.theta[index:index + 1],
                           camera.phi[index:index + 1]).to(self.device)
        rays_o, rays_d, _ = view.rays()
        out = self.renderer.render(rays_o, rays_d, RenderSettings(), max_ray_batch=self.opt.max_ray_batch)
        size = camera.height
        return {"image": out["image"].reshape(size, size, 3).float().clamp(0, 1).cpu(),
                "opacity": out["weights_sum"].reshape(size, size).float().cpu()}

    @torch.no_grad()
    def density_mesh(self, resolution: int | None = None) -> Mesh:
        """The surface the mesh export would extract (same grid, threshold and floater removal), closed at the
        scene cube's faces so that its inside is well defined."""
        opt, field = self.opt, self.renderer.field
        resolution = resolution or opt.mesh_resolution
        threshold = opt.mesh_threshold or self.renderer.occupancy_threshold
        sigma = sample_grid(lambda x: field.density(x)["sigma"], opt.bound, resolution, 1 << 16, self.device)
        padded = np.pad(sigma, 1, constant_values=0.0)  # one empty layer outside the cube
        spacing = 2 * opt.bound / (resolution - 1)
        vertices, faces = extract_surface(padded, threshold, opt.bound + spacing)
        vertices, faces = keep_main_components(vertices, faces, FLOATER_RATIO)
        return Mesh(vertices.astype(np.float64), faces)
