"""Help lines that once said something the code did not do, checked against what the code does."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
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


def _captured_help(parse_args) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parse_args(["--help"])
    return out.getvalue()


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


def test_albedo_iters_is_followed_by_albedo_textureless_and_lambertian_at_random():
    import torch

    from nerf.synthetic_views import SyntheticViews

    views = SyntheticViews(Options().data, dir_text=True, replace_every=0, replace_noise=0.0, albedo_iters=10,
                           real_camera=None, generator=torch.Generator().manual_seed(0),
                           device=torch.device("cpu"))
    assert {views.shading(step)[0] for step in range(10)} == {"albedo"}
    later = [views.shading(10)[0] for _ in range(400)]
    assert {"albedo", "textureless", "lambertian"} == set(later) and 40 < later.count("albedo") < 120
    assert "then albedo, textureless or lambertian" in help_of("albedo_iters")


def test_suppress_face_needs_view_dependent_prompts():
    from nerf.cameras import FRONT, direction_prompts

    pairs = direction_prompts("a cat", "", True, "face")
    assert pairs[FRONT][1] == "" and all(neg == "face" for i, (_, neg) in enumerate(pairs) if i != FRONT)
    assert direction_prompts("a cat", "", False, "face") == [("a cat", "")]
    assert help_of("suppress_face").startswith("With --dir_text") and "does nothing" in help_of("suppress_face")


def test_optim_adan_multiplies_every_learning_rate_by_5():
    import torch

    from nerf.optim import make_optimizer

    groups = lambda: [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.01},  # noqa: E731
                      {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.001}]
    assert [g["lr"] for g in make_optimizer("adan", groups(), 0.001).param_groups] == pytest.approx([0.05, 0.005])
    assert [g["lr"] for g in make_optimizer("adam", groups(), 0.001).param_groups] == pytest.approx([0.01, 0.001])
    assert "adan multiplies every learning rate by 5" in help_of("optim")


def test_ckpt_best_is_the_latest_file_and_test_renders_the_ckpt_checkpoint(tmp_path):
    from nerf.build import read_checkpoint
    from nerf.checkpoint import LATEST, find_checkpoint

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / LATEST).write_bytes(b"")
    assert find_checkpoint(tmp_path, "best") == find_checkpoint(tmp_path, "latest") == tmp_path / "checkpoints" / LATEST
    assert "best (the same file as latest" in help_of("ckpt")
    with pytest.raises(Exception, match="missing.pth"):  # --test reads the checkpoint --ckpt names
        read_checkpoint(parse(["--test", "--ckpt", str(tmp_path / "missing.pth")]), tmp_path)
    assert "from the --ckpt checkpoint" in help_of("test")


def test_kernel_benchmark_counts_default_by_quick():
    from nerf.benchmarks import kernels
    from nerf.cli.benchmark import parse_args

    assert kernels.call_counts(parse_args(["kernels"])) == (5, 20, 300)
    assert kernels.call_counts(parse_args(["kernels", "--quick"])) == (1, 2, 2)
    assert kernels.call_counts(parse_args(["kernels", "--quick", "--warmup", "3"])) == (3, 2, 2)
    parser = argparse.ArgumentParser()
    kernels.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "(default 5, 1 with --quick)" in text and "(default 20, 2 with --quick)" in text
    assert "(default 300, 2 with --quick)" in text


def test_toy_prior_size_and_steps_defaults(tmp_path):
    from nerf.toy_models.training import SIZES, parse_args, settings

    help_text = _captured_help(parse_args)

    recipe = settings(parse_args([str(tmp_path / "out")]), None)
    assert recipe["size"] == "gpu" and recipe["steps"] == list(SIZES["gpu"].steps) == [3000, 8000]
    assert settings(parse_args([str(tmp_path / "out"), "--size", "cpu"]), None)["steps"] == [30, 40]
    text = " ".join(help_text.split())
    assert "gpu (default)" in text and "(default: 30 40 with --size cpu, 3000 8000 with --size gpu)" in text


def test_extract_mask_writes_framing_json_into_output_dir(tmp_path):
    from nerf.cli import extract_mask

    photo = np.full((24, 24, 3), 200, np.uint8)
    mask = np.zeros((24, 24), np.uint8)
    mask[8:16, 8:16] = 255
    iio.imwrite(tmp_path / "photo.png", photo)
    iio.imwrite(tmp_path / "mask.png", mask)
    out = tmp_path / "out"
    assert extract_mask.main(["--image_path", str(tmp_path / "photo.png"), "--mask_path", str(tmp_path / "mask.png"),
                              "--output_dir", str(out), "--size", "16"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["framing.json", "image.png", "mask.png", "rgba.png"]
    assert iio.imread(out / "rgba.png").shape[:2] == (16, 16)  # --size: side of the square outputs
    assert "rgba.png and framing.json" in " ".join(_captured_help(extract_mask.parse_args).split())


def test_toy_check_views_scored_without_the_input_camera_copies():
    from nerf.toy_models import check
    from nerf.toy_models.world import parse_object

    images, directions = check.held_out_views(parse_object("primitive:0=ball"), 8, 10, 0)
    assert images.shape[:2] == (9, 3) and len(directions) == 9  # 10 views, one of them an input-camera copy
    assert "less their input-camera copies (a tenth, at least one)" in " ".join(
        _captured_help(check.parse_args).split())


def test_textual_inversion_report_to_comet_ml_is_refused(tmp_path):
    from nerf.errors import UserError
    from nerf.textual_inversion.args import parse_args
    from nerf.textual_inversion.trackers import Trackers

    with pytest.raises(UserError, match="comet_ml is not supported"):
        Trackers("comet_ml", tmp_path, {})
    text = " ".join(_captured_help(parse_args).split())
    assert "comet_ml is accepted by the parser but not supported" in text


def test_log2_hashmap_size_caps_the_rows_of_a_grid_level():
    from nerf.field.geometry import DensityGeometry

    for grid_type in ("tiled", "hash"):
        encoder = DensityGeometry(grid_levels=4, grid_resolution=256, log2_hashmap_size=14, grid_type=grid_type,
                                  backend="torch").encoder
        rows = (encoder.offsets[1:] - encoder.offsets[:-1]).tolist()
        assert 17 ** 3 <= rows[0] < 17 ** 3 + 8 and rows[-1] == 2 ** 14  # a row per vertex (8-aligned), then the cap
    assert "largest table of a grid level" in help_of("log2_hashmap_size")


def test_sweep_skip_textual_inversion_keeps_a_learned_embeds_bin_beside_the_input(tmp_path):
    from nerf.cli import sweep

    for name, has_embeds in (("with", True), ("without", False)):
        (tmp_path / name).mkdir()
        iio.imwrite(tmp_path / name / "rgba.png", np.zeros((8, 8, 4), np.uint8))
        if has_embeds:
            (tmp_path / name / "learned_embeds.bin").write_bytes(b"")
        args, main_args = sweep.parse_args(["--skip_textual_inversion", "--output_dir", str(tmp_path / "out")])
        job = sweep.plan_job(tmp_path / name / "rgba.png", args, main_args)
        assert [stage.name for stage in job.stages] == ["nerf"]
        assert ("--learned_embeds_path" in job.stages[0].args) == has_embeds
    text = " ".join(_captured_help(sweep.parse_args).split())
    assert "uses the input's learned_embeds.bin if it has one, else its token_autoinit.txt" in text


def test_ema_decay_is_capped_by_the_update_count():
    import torch

    from nerf.optim import EMA

    param = torch.nn.Parameter(torch.zeros(1))
    ema = EMA([param], decay=0.95)
    with torch.no_grad():
        param.fill_(1.0)
    ema.update()  # n = 1: decay min(0.95, 2 / 11)
    assert float(ema.shadow[0]) == pytest.approx(9 / 11)
    for _ in range(167):
        ema.update()
    decays = []
    for _ in range(2):  # updates 169 and 170, each from a zero average
        ema.shadow[0].zero_()
        ema.update()
        decays.append(1 - float(ema.shadow[0]))
    assert decays == pytest.approx([170 / 179, 0.95]) and decays[0] < 0.95
    assert "(1 + n) / (10 + n)" in help_of("ema_decay") and "170th epoch" in help_of("ema_decay")
