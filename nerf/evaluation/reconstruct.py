"""Reconstructions for the benchmark: `main.py`'s own run (nerf.build) on a synthetic scene's input view, either
prior-free or with the oracle chosen by name (`--guidance oracle --guidance_scene SCENE`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from nerf.build import build_run
from nerf.evaluation.scene_files import load_scene
from nerf.guidance.oracle import DEFAULT_STRENGTH
from nerf.option_checks import parse
log = logging.getLogger("realfusion")

# Reduced (CPU): the prior-free CPU test's sizes (tests/test_reconstruction.py), a 32^2 synthetic view, 128 samples
# per ray, no normal-based regularisers (normals cost six more field evaluations per sample) and one validation at
# the end. Default: the options' own defaults.
SIZES: dict[str, list[str]] = {
    "reduced": ["--iters", "400", "--HW_real", "32", "--HW_synthetic", "32", "--num_rays", "1024",
                "--occupancy_grid_size", "32", "--max_steps", "128", "--lambda_orient", "0", "--lambda_smooth_2d", "0",
                "--HW_vis", "8", "--eval_interval", "100", "--mesh_resolution", "64"],
    "default": [],
}
MODES = ("prior_free", "oracle")
# Albedo renders throughout: the oracle's target is the object's colour, and a view shaded under a random light
# (the lambertian/textureless steps after --albedo_iters) has no ground truth to compare with.
MODE_ARGS = {"prior_free": ["--lambda_prior", "0"], "oracle": ["--albedo", "--guidance", "oracle"]}


def reconstruction_args(scene_dir: Path, workspace: Path, mode: str, size: str = "default", seed: int = 0,
                        oracle_strength: float = DEFAULT_STRENGTH, extra_args: Sequence[str] = (),
                        cuda: bool = True) -> list[str]:
    """The main.py command line of one suite run: the scene's input view, the size, the prior by name."""
    args = ["--image_path", str(scene_dir / "rgba.png"), "--workspace", str(workspace), "--seed", str(seed),
            "--ckpt", "scratch", "--guidance_scene", str(scene_dir), "--oracle_strength", str(oracle_strength),
            *SIZES[size], *MODE_ARGS[mode], *extra_args]
    return args if cuda else [*args, "--no_cuda_ray"]


def reconstruct(scene_dir: str | Path, workspace: str | Path, mode: str, size: str = "default",
                device: torch.device | None = None, seed: int = 0, oracle_strength: float = DEFAULT_STRENGTH,
                extra_args: Sequence[str] = ()) -> Path:
    """Train from scratch on SCENE/rgba.png into `workspace` (checkpoint + options.json, as main.py writes)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scene_dir, workspace = Path(scene_dir), Path(workspace)
    opt = parse(reconstruction_args(scene_dir, workspace, mode, size, seed, oracle_strength, extra_args,
                                    cuda=device.type == "cuda"))
    _, conventions = load_scene(scene_dir)
    data = opt.data
    if (conventions.pose_angle, conventions.radius, conventions.fovy) != (data.pose_angle, data.orbit_radius,
                                                                         data.default_fovy):
        log.warning("scene %s was rendered with other camera conventions than the options use", scene_dir)
    build_run(opt, device=device).trainer.train()
    return workspace
