"""Inference on a trained workspace takes its training options from options.json; the command line changes only
what inference may change, and a different training option is refused by name."""

from __future__ import annotations

import pytest

from nerf.errors import UserError
from nerf.inference_options import inference_options
from nerf.option_checks import parse
from nerf.options_file import save_options


@pytest.fixture
def workspace(tmp_path):
    trained = parse(["--workspace", str(tmp_path), "--iters", "300", "--pose_angle", "80", "--image_path", "in.png",
                     "--lambda_mask", "0.25", "--O"])
    save_options(trained, tmp_path / "options.json")
    return tmp_path, trained


def test_training_options_come_from_the_workspace(workspace):
    ws, trained = workspace
    opt = inference_options(parse(["--test", "--workspace", str(ws), "--HW_vis", "16", "--save_test_name", "x",
                                   "--max_ray_batch", "1024"]))
    assert opt.test and opt.train == trained.train and opt.data == trained.data and opt.prior == trained.prior
    assert opt.objective == trained.objective and opt.O
    assert (opt.output.HW_vis, opt.output.save_test_name, opt.render.max_ray_batch) == (16, "x", 1024)


def test_the_same_training_value_is_accepted(workspace):
    ws, _ = workspace
    assert inference_options(parse(["--test", "--workspace", str(ws), "--pose_angle", "80"])).data.pose_angle == 80


@pytest.mark.parametrize("args,named", [
    (["--pose_angle", "60"], "--pose_angle 60.0 (trained with 80.0)"),
    (["--image_path", "other.png"], "--image_path other.png"),
    (["--lambda_mask", "1"], "--lambda_mask"),
    (["--grid_levels", "8"], "--grid_levels"),
])
def test_another_training_value_is_refused_by_name(workspace, args, named):
    ws, _ = workspace
    with pytest.raises(UserError) as exc:
        inference_options(parse(["--test", "--workspace", str(ws), *args]))
    assert named in str(exc.value) and "\n" not in str(exc.value)


def test_a_folder_without_a_record_is_not_a_trained_workspace(tmp_path):
    with pytest.raises(UserError, match="no options.json"):
        inference_options(parse(["--test", "--workspace", str(tmp_path)]))
    with pytest.raises(UserError, match="--workspace"):
        inference_options(parse(["--mesh_only"]))


def test_output_options_left_at_their_default_keep_the_workspace_s(tmp_path):
    save_options(parse(["--workspace", str(tmp_path), "--HW_vis", "8", "--save_test_name", "mine", "--ckpt",
                        "scratch"]), tmp_path / "options.json")
    opt = inference_options(parse(["--test", "--workspace", str(tmp_path)]))
    assert (opt.output.HW_vis, opt.output.save_test_name, opt.test) == (8, "mine", True)
    assert opt.ckpt == "latest"  # the checkpoint is chosen on the command line, never taken from the record
    assert inference_options(parse(["--test", "--workspace", str(tmp_path), "--HW_vis", "32"])).output.HW_vis == 32


@pytest.mark.parametrize("case", ["no checkpoint yet", "ckpt scratch"])
def test_inference_never_renders_an_untrained_model(tmp_path, capsys, case):
    import cv2
    import numpy as np

    from nerf.cli import train as main_module

    image = tmp_path / "rgba.png"
    rgba = np.full((16, 16, 4), 200, np.uint8)
    rgba[:4, :, 3] = 0  # some background
    cv2.imwrite(str(image), rgba)
    ws = tmp_path / "ws"
    save_options(parse(["--workspace", str(ws), "--image_path", str(image), "--no_cuda_ray"]), ws / "options.json")
    (ws / "checkpoints").mkdir()  # killed before its first save
    before = sorted(p.relative_to(ws) for p in ws.rglob("*"))
    extra = ["--ckpt", "scratch"] if case == "ckpt scratch" else []
    assert main_module.main(["--test", "--workspace", str(ws), *extra]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and ("untrained" in errors[0] or "no checkpoint" in errors[0])
    assert sorted(p.relative_to(ws) for p in ws.rglob("*") if p.name != "log.txt") == before  # no render written
