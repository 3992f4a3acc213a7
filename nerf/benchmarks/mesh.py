"""Mesh export: `nerf.mesh.export_mesh` at `main.py`'s defaults on analytic densities, split by stage.

The density of each scene is a steep function of a procedural object's signed distance, roughened by a small
sine bump so that the surface is as uneven as a NeRF's, and its albedo is the object's. The stages are those of
the export: the density grid, marching cubes, floater removal, decimation, the UV atlas, the texture bake and the
files (timed as the rest). A real run's mesh is in `recon --full`; these rows are reproducible without training.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from nerf import mesh
from nerf.benchmarks.common import device_info, patched
from nerf.errors import UserError
from nerf.scenes.procedural import FAMILIES, Scene, make_scene

STAGES = ("sample_grid", "extract_surface", "keep_main_components", "decimate", "unwrap", "bake_albedo")
COLUMNS = ("scene", "faces", "total_s", *(f"{s}_s" for s in STAGES), "files_s")
SURFACE_SHARPNESS = 200.0  # per world unit: the density goes from 10 % to 90 % of its peak across about 0.02
PEAK_DENSITY = 100.0  # above the default --mesh_threshold 10, so the surface sits just outside the object
BUMP_AMPLITUDE, BUMP_FREQUENCY = 0.004, 60.0  # world units, radians per unit


def analytic_density(scene: Scene) -> Callable[[Tensor], Tensor]:
    """sigma at points [N, 3]: a smooth step across the object's (bumped) surface."""
    def sigma(x: Tensor) -> Tensor:
        bump = BUMP_AMPLITUDE * torch.sin(BUMP_FREQUENCY * x).prod(-1)
        return PEAK_DENSITY * torch.sigmoid(-SURFACE_SHARPNESS * (scene.sdf(x) + bump))
    return sigma


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenes", nargs="+", default=[f"{family}:0" for family in FAMILIES],
                        help="procedural objects FAMILY:SEED (default: seed 0 of every family)")
    parser.add_argument("--resolution", type=int, default=256, help="density grid size (main.py's --mesh_resolution)")
    parser.add_argument("--decimate_target", type=int, default=50_000, help="faces after decimation (0: none)")
    parser.add_argument("--texture_size", type=int, default=1024, help="albedo texture size")
    parser.add_argument("--bound", type=float, default=0.75, help="half-side of the scene cube (main.py's --bound)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")


def _scene(spec: str) -> Scene:
    family, _, seed = spec.partition(":")
    if family not in FAMILIES or (seed and not seed.isdigit()):
        raise UserError(f"--scenes {spec!r}: give FAMILY:SEED with FAMILY one of {', '.join(FAMILIES)}.")
    return make_scene(family, int(seed or 0))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_export(scene: Scene, args: argparse.Namespace, device: torch.device, out_dir: Path) -> dict[str, Any]:
    """One export with each stage's synchronised wall time; the files are what is left of the total."""
    spent: dict[str, float] = {}
    faces: list[int] = []

    def timed(name: str, fn: Callable) -> Callable:
        def run(*a: Any, **k: Any) -> Any:
            _sync(device)
            began = time.perf_counter()
            result = fn(*a, **k)
            _sync(device)
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - began
            if name == "decimate":
                faces.append(len(result[1]))
            return result
        return run

    density = analytic_density(scene)
    with patched([(mesh, name, timed(name, getattr(mesh, name))) for name in STAGES]):
        _sync(device)
        began = time.perf_counter()
        mesh.export_mesh(density, scene.albedo, args.bound, out_dir, resolution=args.resolution,
                         decimate_target=args.decimate_target or None, texture_size=args.texture_size, device=device)
        total = time.perf_counter() - began
    return {"scene": f"{scene.family}:{scene.seed}", "faces": faces[0], "total_s": total,
            **{f"{name}_s": spent.get(name, 0.0) for name in STAGES}, "files_s": total - sum(spent.values())}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is visible; use --device cpu.")
    scenes = [_scene(spec) for spec in args.scenes]
    with tempfile.TemporaryDirectory(prefix="realfusion-mesh-") as tmp:
        rows = [time_export(scene, args, device, Path(tmp) / str(i)) for i, scene in enumerate(scenes)]
    settings = {key: getattr(args, key) for key in ("resolution", "decimate_target", "texture_size", "bound")}
    return {"info": device_info(device), "settings": settings, "rows": rows, "columns": COLUMNS}
