"""Reconstructions for the benchmark: the project's Trainer on a synthetic scene's input view, either prior-free
or with the oracle as its guidance. The Trainer receives the oracle through the same argument as Stable Diffusion
and cannot tell them apart; main.py offers no way to select it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from nerf.data import RealView
from nerf.evaluation.oracle import DEFAULT_STRENGTH, OracleGuidance
from nerf.evaluation.scene_files import load_scene
from nerf.evaluation.workspace import build_renderer
from nerf.options import parse, save_options
from nerf.trainer import Trainer, seed_everything

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
MODE_ARGS = {"prior_free": ["--lambda_prior", "0"], "oracle": ["--albedo"]}


def reconstruct(scene_dir: str | Path, workspace: str | Path, mode: str, size: str = "default",
                device: torch.device | None = None, seed: int = 0, oracle_strength: float = DEFAULT_STRENGTH,
                extra_args: Sequence[str] = ()) -> Path:
    """Train from scratch on SCENE/rgba.png into `workspace` (checkpoint + options.json, as main.py writes)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scene_dir, workspace = Path(scene_dir), Path(workspace)
    args = ["--image_path", str(scene_dir / "rgba.png"), "--workspace", str(workspace), "--seed", str(seed),
            "--ckpt", "scratch", *SIZES[size], *MODE_ARGS[mode], *extra_args]
    if device.type != "cuda":
        args.append("--no_cuda_ray")
    opt = parse(args)
    scene, conventions = load_scene(scene_dir)
    if (conventions.pose_angle, conventions.radius, conventions.fovy) != (opt.pose_angle, opt.orbit_radius,
                                                                         opt.default_fovy):
        log.warning("scene %s was rendered with other camera conventions than the options use", scene_dir)
    seed_everything(opt.seed)
    real_view = RealView.from_file(opt.image_path, opt.HW_real, opt.pose_angle, opt.orbit_radius, opt.default_fovy)
    guidance = OracleGuidance(scene, strength=oracle_strength) if mode == "oracle" else None
    workspace.mkdir(parents=True, exist_ok=True)
    save_options(opt, workspace / "options.json")
    trainer = Trainer(opt, build_renderer(opt, device), real_view, guidance, workspace, device)
    trainer.train()
    return workspace
