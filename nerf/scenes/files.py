"""A synthetic scene on disk: the input view, the ground-truth mesh, renders on the validation path, the recipe.

    SCENE/rgba.png     input view from the input camera (phi = 0, theta = pose_angle, radius_rot, mean fovy)
    SCENE/mesh.ply     ground-truth surface (marching cubes of the signed distance), vertex colours = albedo
    SCENE/views/k.png  RGBA renders of the circular validation path, view k at azimuth k/count * 360 degrees
    SCENE/scene.json   the scene's parts and the camera conventions the files were rendered with

The camera conventions are the reconstruction's defaults (`Options`), so a default run on rgba.png sees the
object from exactly the camera that rendered it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
from tqdm import tqdm

from nerf.cameras import CameraBatch, circle_cameras, fixed_cameras
from nerf.errors import UserError
from nerf.scenes.raytrace import render_rgba
from nerf.scenes.procedural import Scene
from nerf.fileio import write_atomic, write_text_atomic
from nerf.mesh import Mesh, extract_surface, sample_grid
from nerf.options import Options

MESH_BOUND = 0.7  # marching-cubes cube; the scenes stay inside [-0.65, 0.65]^3


@dataclass(frozen=True)
class Conventions:
    """Where the input and validation cameras are (degrees and world units, as the options name them)."""

    pose_angle: float
    radius: float
    fovy: float

    @classmethod
    def from_options(cls, opt: Options) -> "Conventions":
        return cls(opt.data.pose_angle, opt.data.orbit_radius, opt.data.default_fovy)

    def input_camera(self, size: int, left_handed: bool = False) -> CameraBatch:
        return fixed_cameras(self.pose_angle, torch.zeros(1), self.radius, self.fovy, size, left_handed=left_handed)

    def orbit(self, count: int, size: int, left_handed: bool = False) -> CameraBatch:
        """The circular validation path: view k at azimuth k/count * 360 degrees, view 0 at the input camera."""
        return circle_cameras(count, self.pose_angle, self.radius, self.fovy, size, left_handed=left_handed)


def scene_mesh(scene: Scene, resolution: int = 256) -> Mesh:
    """Marching cubes of the signed distance on a resolution^3 grid over [-MESH_BOUND, MESH_BOUND]^3."""
    inside = sample_grid(lambda x: -scene.sdf(x), MESH_BOUND, resolution, 1 << 18, "cpu")
    vertices, faces = extract_surface(inside, 0.0, MESH_BOUND)
    return Mesh(vertices.astype(np.float64), faces)


def write_rgba_png(path: Path, rgba: torch.Tensor) -> Path:
    """Straight RGBA [H, W, 4] in [0, 1] as an 8-bit PNG (atomic)."""
    array = (rgba.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    bgra = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA)
    return write_atomic(path, lambda p: _imwrite(p, bgra))


def _imwrite(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def read_rgba_png(path: Path) -> torch.Tensor:
    """An RGBA PNG as straight RGBA [H, W, 4] float in [0, 1]."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.ndim != 3 or raw.shape[2] != 4:
        raise UserError(f"{path} is not an RGBA image; ground-truth views must be RGBA PNGs "
                        "(as scripts/make-synthetic-scene.py writes them).")
    scale = float(np.iinfo(raw.dtype).max)
    return torch.from_numpy(cv2.cvtColor(raw, cv2.COLOR_BGRA2RGBA).astype(np.float32) / scale)


def orbit_views(scene: Scene, conventions: Conventions, views: int, size: int) -> Iterator[torch.Tensor]:
    """The scene's exact RGBA renders [size, size, 4] along the validation orbit, view 0 at the input camera."""
    orbit = conventions.orbit(views, size)
    for k in range(views):
        yield render_rgba(scene, orbit.select(k, k + 1))[0]


def write_scene(scene: Scene, out_dir: str | Path, conventions: Conventions, input_size: int = 256,
                view_size: int = 128, views: int = 8, mesh_resolution: int = 256) -> Path:
    """Render and write every file of a scene folder (see the module docstring)."""
    import trimesh

    out = Path(out_dir)
    progress = tqdm(total=3 + views, desc=f"scene {scene.family}-{scene.seed}", leave=False)
    write_rgba_png(out / "rgba.png", render_rgba(scene, conventions.input_camera(input_size))[0])
    progress.update(1)
    for k, view in enumerate(orbit_views(scene, conventions, views, view_size)):
        write_rgba_png(out / "views" / f"{k:03d}.png", view)
        progress.update(1)
    mesh = scene_mesh(scene, mesh_resolution)
    colours = scene.albedo(torch.from_numpy(mesh.vertices).float()).clamp(0, 1).numpy()
    tri = trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_colors=(colours * 255).astype(np.uint8), process=False)
    write_atomic(out / "mesh.ply", lambda p: tri.export(str(p), file_type="ply"))
    progress.update(1)
    description = {**scene.to_dict(), "conventions": conventions.__dict__,
                   "input_size": input_size, "view_size": view_size, "views": views}
    write_text_atomic(out / "scene.json", json.dumps(description, indent=2) + "\n")
    progress.update(1)
    progress.close()
    return out


def load_scene(scene_dir: str | Path) -> tuple[Scene, Conventions]:
    """The scene and camera conventions of a folder written by `write_scene`."""
    path = Path(scene_dir) / "scene.json"
    if not path.is_file():
        raise UserError(f"{path.parent} is not a synthetic scene folder (no scene.json); "
                        "make one with scripts/make-synthetic-scene.py.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        conventions = Conventions(**data["conventions"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is malformed ({exc!r}); regenerate the scene.") from None
    return Scene.from_dict(data), conventions
