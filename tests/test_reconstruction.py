"""Prior-free reconstruction end to end on the CPU: quality of the input view, outputs, resume, --test,
bad checkpoints and non-finite losses."""

from __future__ import annotations

import time

import cv2
import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from nerf.cli import train as main_module
from nerf import losses
from nerf.checkpoint import load_checkpoint
from nerf.build import build_run
from nerf.option_checks import parse
from nerf.options_file import load_options
from nerf.renderer import RenderSettings
from nerf.trainer import TrainingDiverged

ITERS = 200
SMALL = ["--lambda_prior", "0", "--HW_real", "32", "--num_rays", "1024", "--occupancy_grid_size", "32",
         "--HW_vis", "8", "--eval_interval", "1", "--seed", "0", "--no_cuda_ray"]


def shaded_sphere_rgba(path, size=64):
    """A shaded, colour-graded disk: what a sphere in front of the input camera looks like."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    c, r = size / 2, size * 0.3
    d2 = ((xx - c) ** 2 + (yy - c) ** 2) / r**2
    z = np.sqrt(np.clip(1 - d2, 0, 1))
    shade = 0.3 + 0.7 * z
    rgb = np.stack([0.9 * shade, 0.4 * shade + 0.3 * xx / size, 0.2 + 0.5 * yy / size], -1)
    rgba = np.concatenate([rgb, (d2 <= 1)[..., None]], -1)
    cv2.imwrite(str(path), cv2.cvtColor((np.clip(rgba, 0, 1) * 255).astype(np.uint8), cv2.COLOR_RGBA2BGRA))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon")
    image = shaded_sphere_rgba(root / "rgba.png")
    workspace = root / "ws"
    args = ["--image_path", str(image), "--workspace", str(workspace), "--iters", str(ITERS), *SMALL]
    start = time.time()
    assert main_module.main(args) == 0
    return {"image": image, "workspace": workspace, "args": args, "seconds": time.time() - start}


def input_view_metrics(args):
    run = build_run(parse(args + ["--test", "--ckpt", "latest"]))
    trainer = run.trainer
    trainer.renderer.eval()
    with trainer.ema.averaged():
        out = run.frames.render(trainer.real_view.camera, 0, RenderSettings())
    gt = trainer.real_view.rgba
    gt_rgb = gt[..., :3] * gt[..., 3:] + (1 - gt[..., 3:])
    mse = float(((out["image"].clamp(0, 1) - gt_rgb) ** 2).mean())
    pred_mask, gt_mask = out["weights_sum"] > 0.5, gt[..., 3] > 0.5
    iou = float((pred_mask & gt_mask).sum() / (pred_mask | gt_mask).sum())
    return -10 * np.log10(mse), iou


def test_prior_free_run_reproduces_the_input_view(trained):
    psnr, iou = input_view_metrics(trained["args"])
    print(f"\ninput view: PSNR {psnr:.2f} dB, mask IoU {iou:.3f}, {ITERS / trained['seconds']:.2f} it/s (incl. outputs)")
    assert psnr >= 25 and iou >= 0.9


def test_run_writes_its_outputs(trained):
    ws = trained["workspace"]
    assert load_options(ws / "options.json").train.iters == ITERS
    state = load_checkpoint(ws / "checkpoints" / "latest.pth")
    assert state["global_step"] == ITERS
    assert (ws / "validation" / "real_ep0002.png").is_file() and (ws / "validation" / "orbit_ep0002.png").is_file()
    assert (ws / "log.txt").read_text().strip()
    for stream in ("rgb", "opacity", "depth", "normals", "textureless", "grid"):
        reader = imageio.get_reader(ws / "results" / f"df_test_{stream}.mp4")
        assert reader.count_frames() == 100
    assert list((ws / "tensorboard").iterdir())


def test_resume_continues_with_the_saved_optimiser_state(trained, tmp_path):
    saved = load_checkpoint(trained["workspace"] / "checkpoints" / "latest.pth")
    trainer = build_run(parse(trained["args"] + ["--iters", str(ITERS + 100)])).trainer
    assert trainer.global_step == ITERS
    restored = trainer.optimizer.state_dict()["state"]
    for key, value in saved["optimizer"]["state"].items():
        assert torch.equal(restored[key]["exp_avg"], value["exp_avg"])
    first_loss = float(trainer.train_step()["loss"])
    assert trainer.global_step == ITERS + 1
    assert first_loss < 0.02  # a restarted run starts near 0.08 (see the progress bar of the first run)


def test_test_mode_renders_videos_from_the_checkpoint(trained):
    args = ["--workspace", str(trained["workspace"]), "--test", "--save_test_name", "again"]
    assert main_module.main(args) == 0
    reader = imageio.get_reader(trained["workspace"] / "results" / "again_rgb.mp4")
    assert reader.count_frames() == 100


def test_corrupt_checkpoint_is_refused_and_left_untouched(trained, tmp_path, capsys):
    ws = tmp_path / "ws"
    (ws / "checkpoints").mkdir(parents=True)
    bad = ws / "checkpoints" / "latest.pth"
    bad.write_bytes(b"\x00garbage" * 10)
    args = ["--image_path", str(trained["image"]), "--workspace", str(ws), "--iters", "10", *SMALL]
    assert main_module.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot be read" in err and len(err.splitlines()) == 1
    assert bad.read_bytes() == b"\x00garbage" * 10
    foreign = ws / "checkpoints" / "foreign.pth"
    torch.save({"model": {}}, foreign)
    assert main_module.main(args + ["--ckpt", str(foreign)]) == 2
    assert "not written by this project" in capsys.readouterr().err


def test_non_finite_losses_are_skipped_then_stop_without_a_checkpoint(trained, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    trainer = build_run(parse(
        ["--image_path", str(trained["image"]), "--workspace", str(ws), "--iters", "100", "--max_bad_steps", "3", *SMALL])).trainer
    before = [p.detach().clone() for p in trainer.field.parameters()]
    monkeypatch.setattr(losses, "mask_loss", lambda ws_, alpha: torch.tensor(float("nan")))
    with pytest.raises(TrainingDiverged, match="3 consecutive"):
        trainer.train()
    assert trainer.skipped_steps == 3
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, trainer.field.parameters()))
    assert not (ws / "checkpoints" / "latest.pth").exists()


def test_inference_keeps_the_workspace_record_and_refuses_other_training_options(trained, capsys):
    ws = trained["workspace"]
    record = (ws / "options.json").read_bytes()
    videos = sorted(p.name for p in (ws / "results").iterdir())
    # Only the workspace: the training options come from its options.json (the input, the sizes, the camera).
    assert main_module.main(["--workspace", str(ws), "--mesh_only", "--mesh_resolution", "32",
                             "--mesh_decimate_target", "0"]) == 0
    assert (ws / "mesh" / "mesh.glb").is_file() and (ws / "mesh" / "mesh.obj").is_file()
    assert sorted(p.name for p in (ws / "results").iterdir()) == videos  # no videos rendered
    assert (ws / "options.json").read_bytes() == record
    capsys.readouterr()
    assert main_module.main(["--workspace", str(ws), "--test", "--pose_angle", "60"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--pose_angle 60.0 (trained with 75.0)" in err and len(err.splitlines()) == 1
    assert (ws / "options.json").read_bytes() == record
