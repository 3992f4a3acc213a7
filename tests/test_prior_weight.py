"""The prior's weight: the default is the original's effective --O weight (2^-16), and `--legacy sds_unscaled`
reproduces the original's dependence on the live fp16 loss scale (equal to the default at the initial scale)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nerf.build import build_run
from nerf.scenes.files import Conventions, write_scene
from nerf.scenes.procedural import make_scene
from nerf.option_checks import parse
from nerf.options import Options

TINY = ["--iters", "10", "--HW_real", "16", "--HW_synthetic", "16", "--num_rays", "128", "--occupancy_grid_size",
        "16", "--max_steps", "64", "--grid_levels", "4", "--grid_levels_mask", "0", "--log2_hashmap_size", "12",
        "--HW_vis", "8", "--no_cuda_ray", "--albedo", "--guidance", "oracle", "--ckpt", "scratch"]


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scene")
    return write_scene(make_scene("union", 0), root / "union", Conventions.from_options(Options()), 32, 16, 2, 32)


def prior_term(scene_dir: Path, tmp_path: Path, *flags: str, loss_scale: float = 1.0) -> float:
    opt = parse([*TINY, "--image_path", str(scene_dir / "rgba.png"), "--guidance_scene", str(scene_dir),
                 "--workspace", str(tmp_path / "ws"), *flags])
    objective = build_run(opt, device=torch.device("cpu")).trainer.objective
    return float(objective.synthetic_step(0, lambda: loss_scale).terms["oracle"].detach())


def test_default_weight_is_the_original_fp16_weight(scene_dir, tmp_path):
    unit = prior_term(scene_dir, tmp_path, "--lambda_prior", "1")
    assert prior_term(scene_dir, tmp_path) == pytest.approx(unit * 2.0 ** -16, rel=1e-6)
    assert prior_term(scene_dir, tmp_path, "--legacy", "sds_unscaled", loss_scale=2.0 ** 16) == pytest.approx(
        unit * 2.0 ** -16, rel=1e-6)  # at the initial loss scale the original's weight is the default
    assert prior_term(scene_dir, tmp_path, "--legacy", "sds_unscaled", loss_scale=2.0 ** 17) == pytest.approx(
        unit * 2.0 ** -17, rel=1e-6)  # ...and it falls as the scale grows
    assert prior_term(scene_dir, tmp_path, "--legacy", "sds_unscaled") == pytest.approx(unit, rel=1e-6)  # fp32
