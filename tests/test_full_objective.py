"""The complete RealFusion objective (SDS with a learned token + input view + regularisers) with a tiny
random-weight Stable Diffusion, end to end through main.py, plus mesh export of the result."""

from __future__ import annotations

import json

import imageio.v2 as imageio
import torch
import trimesh

from nerf.cli import train as main_module
from nerf.checkpoint import load_checkpoint
from nerf.options_file import load_options
from tests.test_reconstruction import shaded_sphere_rgba


def test_main_with_tiny_stable_diffusion(tiny_sd_dir, tmp_path):
    image = shaded_sphere_rgba(tmp_path / "rgba.png")
    embeds = tmp_path / "learned_embeds.bin"
    width = json.loads((tiny_sd_dir / "text_encoder" / "config.json").read_text())["hidden_size"]
    torch.save({"_sphere_": torch.randn(width) * 0.01}, embeds)
    ws = tmp_path / "ws"
    args = ["--O", "--image_path", str(image), "--learned_embeds_path", str(embeds),
            "--text", "A high-resolution DSLR image of a <token>", "--pretrained_model_name_or_path", str(tiny_sd_dir),
            "--iters", "30", "--albedo_iters", "10", "--HW_synthetic", "16", "--HW_real", "16", "--num_rays", "256",
            "--HW_vis", "8", "--occupancy_grid_size", "16", "--replace_synthetic_camera_every", "3",
            "--lambda_smooth", "0.1", "--lambda_opacity", "0.01", "--workspace", str(ws), "--save_mesh",
            "--mesh_resolution", "48", "--mesh_threshold", "5", "--seed", "0"]
    assert main_module.main(args) == 0
    opt = load_options(ws / "options.json")
    assert opt.prior.text == "A high-resolution DSLR image of a <token>" and opt.train.fp16
    assert "prompt: A high-resolution DSLR image of a _sphere_" in (ws / "log.txt").read_text()
    assert load_checkpoint(ws / "checkpoints" / "latest.pth")["global_step"] == 30
    assert imageio.get_reader(ws / "results" / "df_test_rgb.mp4").count_frames() == 100
    mesh = trimesh.load(ws / "mesh" / "mesh.glb", force="mesh")
    assert len(mesh.faces) > 0
    assert (ws / "mesh" / "mesh.obj").is_file() and (ws / "mesh" / "albedo.png").is_file()
