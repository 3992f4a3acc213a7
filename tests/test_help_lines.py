"""Help lines that once said something the code did not do, checked against what the code does."""

from __future__ import annotations

import inspect
import re

import imageio.v3 as iio
import numpy as np
import pytest

from nerf.cli import train as main_module
from nerf.option_checks import parse
from nerf.options import GROUPS, Options
from nerf.outputs import ORBIT_VIEWS

TINY = ["--lambda_prior", "0", "--iters", "100", "--HW_real", "16", "--HW_synthetic", "16", "--num_rays", "128",
        "--occupancy_grid_size", "16", "--max_steps", "32", "--no_cuda_ray", "--eval_interval", "1"]


def help_of(name: str) -> str:
    """The option's help text: the docstring under its field in nerf/options.py (what --help shows)."""
    for group in [Options, *(type(getattr(Options(), g)) for g in GROUPS)]:
        found = re.search(rf"\n    {name}:[^\n]*\n\s*\"\"\"(.*?)\"\"\"", inspect.getsource(group), flags=re.S)
        if found:
            return " ".join(found.group(1).split())
    raise KeyError(name)


def test_hw_vis_sets_the_validation_orbit_and_hw_real_the_input_view_panels(tmp_path):
    image = np.zeros((32, 32, 4), np.uint8)
    image[8:24, 8:24] = (40, 90, 200, 255)
    iio.imwrite(tmp_path / "rgba.png", image)
    ws = tmp_path / "ws"
    args = [*TINY, "--HW_vis", "8", "--image_path", str(tmp_path / "rgba.png"), "--workspace", str(ws)]
    assert main_module.main(args) == 0
    orbit = iio.imread(ws / "validation" / "orbit_ep0001.png")
    real = iio.imread(ws / "validation" / "real_ep0001.png")
    assert orbit.shape[:2] == (3 * 8, ORBIT_VIEWS * 8)  # rgb, opacity and depth rows of --HW_vis views
    assert real.shape[:2] == (16, 6 * 16)  # the input view's six panels at --HW_real
    assert "validation orbit" in help_of("HW_vis") and "--HW_real" in help_of("HW_vis")


def test_debug_ignores_the_workspace_and_turns_wandb_off():
    opt = parse(["--debug", "--wandb", "--workspace", "somewhere"])
    assert opt.workspace is None and not opt.output.wandb
    assert "--workspace is ignored" in help_of("debug") and "no wandb" in help_of("debug")


def test_radius_rot_none_follows_the_largest_radius_range():
    opt = parse(["--radius_rot", "None", "--radius_range", "1.0", "2.0"])
    assert opt.data.orbit_radius == pytest.approx(2.4)
    assert parse([]).data.orbit_radius == 1.8 and "None: 1.2 * the largest" in help_of("radius_rot")
