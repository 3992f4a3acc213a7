"""Options: names, types and defaults of the original (with the documented differences), presets, annealing,
validation and the options.json round trip."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from nerf.anneal import AnnealedValue
from nerf.errors import UserError
from nerf.option_checks import parse
from nerf.options import GROUPS, Options
from nerf.options_file import load_options, save_options, to_dict

# name -> default, as listed in the specification of the original's options.
ORIGINAL_DEFAULTS = {
    "O": False, "O2": False, "test": False, "seed": 101, "run_name": "default", "workspace": None,
    "text": "A high-resolution DSLR image of a <token>", "negative": "",
    "pretrained_model_image_size": 512, "guidance_scale": 100.0, "uniform_sphere_rate": 0.5, "bound": 0.75,
    "dt_gamma": 0.0, "min_near": 0.1, "radius_range": (1.0, 1.5), "radius_rot": 1.8, "fovy_range": (40.0, 70.0),
    "dir_text": True, "suppress_face": None, "angle_overhead": 30.0, "angle_front": 60.0, "pose_angle": 75.0,
    "jitter_pose": False, "ckpt": "latest", "eval_interval": 5, "iters": 5000, "lr_warmup": None, "lr": 1e-3,
    "min_lr": 1e-6, "warm_iters": 2000, "cuda_ray": True, "max_steps": 512, "num_steps": 64,
    "upsample_steps": 32, "update_extra_interval": 16, "max_ray_batch": 4096, "albedo": False,
    "albedo_iters": 1000, "num_rays": 4096, "HW_synthetic": 96, "HW_real": 128, "HW_vis": 128,
    "bg_radius": 1.4, "density_thresh": 10.0, "blob_density": 5.0, "blob_radius": 0.2,
    "grid_levels": 16, "grid_resolution": 2048, "grid_levels_mask": 8, "grid_levels_mask_iters": 3000,
    "fp16": False, "ema_decay": 0.95, "lambda_prior": [2.0 ** -16], "lambda_image": [5.0], "lambda_mask": [0.5],
    "lambda_entropy": [1e-4], "lambda_opacity": [0.0], "lambda_orient": [1e-2], "lambda_smooth": [0.0],
    "lambda_smooth_2d": [0.5], "real_iters": 0, "real_every": 1, "replace_synthetic_camera_every": 10,
    "replace_synthetic_camera_noise": 0.02, "noise_real_camera": 0.001, "noise_real_camera_annealing": True,
    "save_mesh": False, "save_test_name": "df_test", "test_on_real_data": False, "wandb": False, "debug": False,
}
# Deliberate differences (README, "Differences from the original").
CHANGED_DEFAULTS = {
    "pretrained_model_name_or_path": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "learned_embeds_path": None,
    "image_path": "examples/natural-images/cat/rgba.png",
    "optim": "adam",
}
# Flags that are accepted and do nothing here; their help says so.
COMPATIBILITY_ONLY = ("pretrained_model_image_size", "num_steps", "upsample_steps")


def flat(opt: Options) -> dict:
    """Every option by its flag name, whatever group it lives in."""
    values = {f.name: getattr(opt, f.name) for f in dataclasses.fields(Options) if f.name not in GROUPS}
    for group in GROUPS:
        values.update({f.name: getattr(getattr(opt, group), f.name)
                       for f in dataclasses.fields(type(getattr(opt, group)))})
    return values


def test_every_original_option_exists_with_its_default():
    defaults = flat(Options())
    for name, value in {**ORIGINAL_DEFAULTS, **CHANGED_DEFAULTS}.items():
        assert defaults[name] == value, name


def test_flag_names_are_unique_across_groups():
    names = [f.name for group in GROUPS for f in dataclasses.fields(type(getattr(Options(), group)))]
    top = [f.name for f in dataclasses.fields(Options) if f.name not in GROUPS]
    assert len(set(names + top)) == len(names + top)


def test_every_option_has_a_one_line_help(capsys):
    with pytest.raises(SystemExit):
        parse(["--help"])
    text = capsys.readouterr().out
    entries = {}  # flag -> its help text (the lines up to the next flag)
    for chunk in re.split(r"\n[│ ]{1,3}(?=--\w)", text)[1:]:  # an entry starts at the left edge
        flag = re.match(r"--(\w+)", chunk).group(1)
        entries[flag] = " ".join(line.strip("│ ") for line in re.split("╰|\n\n", chunk)[0].splitlines())
    for name in flat(Options()):
        help_text = entries[name].split(" ", 1)[1].split("(default")[0]
        assert len(help_text.split()) >= 4, name
    for name in COMPATIBILITY_ONLY:
        assert "Compatibility only" in entries[name], name
    for group in GROUPS:
        assert f"{group} options" in text, group


def test_help_lists_every_option_with_underscores(capsys):
    with pytest.raises(SystemExit) as exc:
        parse(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for name in {**ORIGINAL_DEFAULTS, **CHANGED_DEFAULTS}:
        assert f"--{name} " in text or f"--{name}," in text or f"--{name}\n" in text, name


def test_presets():
    o = parse(["--O"])
    assert (o.train.fp16, o.prior.dir_text, o.render.cuda_ray) == (True, True, True)
    o2 = parse(["--O2", "--no_dir_text"])
    assert (o2.train.fp16, o2.prior.dir_text, o2.render.cuda_ray) == (False, True, False)
    assert parse(["--O2", "--albedo"]).train.fp16 is True
    assert parse(["--albedo", "--iters", "300"]).objective.albedo_iters == 300
    assert parse([]).train.lr_warmup is False
    debug = parse(["--debug", "--workspace", "w", "--wandb"])
    assert debug.workspace is None and debug.output.wandb is False


def test_original_flag_spellings_parse():
    o = parse(["--image_path", "x.png", "--learned_embeds_path", "e.bin", "--text", "a <token>",
               "--pretrained_model_name_or_path", "m", "--radius_range", "1", "2", "--lambda_prior", "0.5", "2"])
    assert o.data.radius_range == (1.0, 2.0) and o.objective.lambda_prior == [0.5, 2.0]
    assert o.prior.learned_embeds_path == "e.bin" and o.data.image_path == "x.png"


@pytest.mark.parametrize("spec,expected", [
    ([2.0], (2.0, 2.0, 2.0)),
    ([0.0, 1.0], (0.0, 0.5, 1.0)),
    ([0.0, 1.0, 500, "linear"], (0.0, 1.0, 1.0)),   # reaches its end value at end_iters (step 500)
    ([1.0, 100.0, 1000, "log"], (1.0, 10.0, 100.0)),  # geometric midpoint
])
def test_anneal_start_middle_end(spec, expected):
    iters = 1000
    middle = 250 if len(spec) == 4 and spec[3] == "linear" else 500
    value = AnnealedValue(spec, iters)
    got = (value.value(0), value.value(middle), value.value(iters))
    if spec == [0.0, 1.0, 500, "linear"]:
        assert got == pytest.approx((0.0, 0.5, 1.0))
        assert value.value(500) == pytest.approx(1.0)
    else:
        assert got == pytest.approx(expected)


def test_legacy_four_entry_anneal_is_constant():
    value = AnnealedValue([0.0, 1.0, 500, "linear"], 1000, legacy_constant_4=True)
    assert value.value(0) == value.value(999) == pytest.approx(0.5)


def test_anneal_from_command_line():
    o = parse(["--lambda_entropy", "1e-4", "1e-2", "2000", "log"])
    assert o.objective.lambda_entropy == [1e-4, 1e-2, 2000.0, "log"]


@pytest.mark.parametrize("args,fragment", [
    (["--radius_range", "2", "1"], "--radius_range"),
    (["--fovy_range", "40", "190"], "--fovy_range"),
    (["--fovy_range", "0", "40"], "--fovy_range"),
    (["--iters", "0"], "--iters"),
    (["--occupancy_grid_size", "24"], "power of two"),
    (["--lambda_prior", "1", "2", "3"], "--lambda_prior"),
    (["--lambda_prior", "1", "2", "3", "cosine"], "linear"),
    (["--lambda_prior", "0", "1", "100", "log"], "log"),
    (["--lambda_prior", "0", "--real_every", "2"], "--lambda_prior 0"),
    (["--O", "--O2"], "--O"),
    (["--ckpt", "something"], "--ckpt"),
    (["--lambda_prior", "abc"], "--lambda_prior"),
    (["--lambda_mask", "nan"], "--lambda_mask"),
    (["--lr", "inf"], "--lr"),
    (["--seed", "-1"], "--seed"),
    (["--guidance", "oracle"], "--guidance_scene"),
    (["--t_range", "0.6", "0.2"], "--t_range needs 0 <= min < max <= 1"),
    (["--t_range", "0.02", "1.5"], "--t_range needs 0 <= min < max <= 1"),
    # tyro's parse errors: condensed to one line, with the nearest flag suggested
    (["--itters", "5"], "Unrecognized options: --itters, 5; did you mean --iters? (--help lists every option)"),
    (["--no_such_option", "1"], "--no_such_option"),
    (["--legacy", "nosuch"], "'nosuch' for argument '--legacy'. Expected one of ('camera_replacement'"),
    (["--iters", "abc"], "Error parsing --iters"),
])
def test_invalid_values_give_one_line_errors(args, fragment):
    with pytest.raises(UserError) as exc:
        parse(args)
    message = str(exc.value)
    assert fragment in message and "\n" not in message and "│" not in message


def test_a_workspace_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "ws").write_text("not a folder")
    with pytest.raises(UserError, match="is a file"):
        parse(["--workspace", str(tmp_path / "ws")])


def test_options_json_round_trip(tmp_path):
    opt = parse(["--O", "--lambda_entropy", "1e-4", "1e-2", "2000", "log", "--legacy", "left_handed"])
    save_options(opt, tmp_path / "options.json")
    back = load_options(tmp_path / "options.json")
    assert dataclasses.asdict(back) == dataclasses.asdict(opt)


def test_options_json_is_grouped_and_flat_files_still_load(tmp_path):
    opt = parse(["--iters", "300", "--pose_angle", "80", "--lambda_mask", "0.25"])
    grouped = to_dict(opt)
    assert grouped["train"]["iters"] == 300 and grouped["data"]["pose_angle"] == 80.0
    older = {k: v for k, v in grouped.items() if k not in GROUPS}
    for group in GROUPS:
        older.update(grouped[group])
    older["backbone"] = "grid"  # a removed option with a single value
    (tmp_path / "flat.json").write_text(json.dumps(older))
    assert load_options(tmp_path / "flat.json") == opt


def test_foreign_options_file_is_refused(tmp_path):
    (tmp_path / "options.json").write_text(json.dumps({"iters": 10, "no_such_option": 1}))
    with pytest.raises(UserError, match="no_such_option"):
        load_options(tmp_path / "options.json")


def test_the_mesh_resolution_follows_the_run_s_size():
    """256 (the original's) at the default occupancy grid, finer grids capped there, small runs get a small mesh;
    an explicit value wins."""
    assert parse([]).output.mesh_resolution == 256
    assert parse(["--occupancy_grid_size", "256"]).output.mesh_resolution == 256
    assert parse(["--occupancy_grid_size", "32"]).output.mesh_resolution == 64
    assert parse(["--occupancy_grid_size", "32", "--mesh_resolution", "200"]).output.mesh_resolution == 200
