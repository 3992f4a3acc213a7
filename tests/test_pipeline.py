"""scripts/reconstruct.py: photo -> mask -> token -> NeRF -> mesh -> evaluation in one command, every stage
skipped when its output is complete, so that running it again continues an interrupted pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

TINY_RUN = ["--iters", "10", "--HW_synthetic", "16", "--HW_real", "16", "--num_rays", "128", "--HW_vis", "8",
            "--occupancy_grid_size", "16", "--max_steps", "64", "--mesh_resolution", "32", "--eval_interval", "100",
            "--mesh_decimate_target", "0"]


def photo(path):
    """A red disk on a light background: an object GrabCut can find."""
    yy, xx = np.mgrid[0:64, 0:64]
    image = np.full((64, 64, 3), 230, np.uint8)
    image[(yy - 32) ** 2 + (xx - 30) ** 2 < 18**2] = (200, 60, 40)
    Image.fromarray(image).save(path)
    return path


def pipeline(repo, tiny_sd_dir, image, workspace, *extra):
    command = [sys.executable, str(repo / "scripts" / "reconstruct.py"), str(image), "--workspace", str(workspace),
               "--initializer_token", "cat", "--pretrained_model_name_or_path", str(tiny_sd_dir), "--ti_steps", "2",
               "--ti_resolution", "16", *extra, "--", *TINY_RUN]
    return subprocess.run(command, capture_output=True, text=True)


def stages(stderr: str) -> list[str]:
    return [line.split("]")[0][1:] for line in stderr.splitlines() if line.startswith("[")]


@pytest.fixture(scope="module")
def finished(repo, tiny_sd_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    image, workspace = photo(root / "photo.png"), root / "ws"
    done = pipeline(repo, tiny_sd_dir, image, workspace)
    assert done.returncode == 0, done.stderr[-2000:]
    return image, workspace, done


def test_one_command_writes_every_stage(finished):
    _, ws, done = finished
    assert stages(done.stderr) == ["input", "token", "nerf", "mesh", "evaluate"]
    assert (ws / "input" / "rgba.png").is_file() and (ws / "input" / "token_autoinit.txt").read_text().strip() == "cat"
    assert (ws / "token" / "learned_embeds.bin").is_file()
    assert (ws / "nerf" / "checkpoints" / "latest.pth").is_file() and (ws / "nerf" / "results").is_dir()
    assert (ws / "nerf" / "mesh" / "mesh.glb").is_file()
    psnr = json.loads((ws / "evaluation.json").read_text())["input_view"]["psnr"]
    page = (ws / "nerf" / "report.html").read_text()
    assert f"input_view.psnr</td><td>{psnr:.4g}</td>" in page  # the report ends with the evaluation in it


def test_running_again_continues_where_it_stopped(repo, tiny_sd_dir, finished):
    image, ws, _ = finished
    again = pipeline(repo, tiny_sd_dir, image, ws)
    assert again.returncode == 0 and stages(again.stderr) == []  # everything was complete
    for name in ("mesh.glb", "mesh.obj"):
        (ws / "nerf" / "mesh" / name).unlink()  # as if stopped during the mesh export
    (ws / "evaluation.json").unlink()
    resumed = pipeline(repo, tiny_sd_dir, image, ws)
    assert resumed.returncode == 0 and stages(resumed.stderr) == ["mesh", "evaluate"]


def test_bad_input_is_one_line_and_writes_nothing(repo, tiny_sd_dir, tmp_path):
    for bad in (tmp_path, tmp_path / "missing.png"):
        done = pipeline(repo, tiny_sd_dir, bad, tmp_path / "ws")
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:")
        assert not (tmp_path / "ws").exists()


def test_the_quick_start_runs_as_written(repo, tiny_sd_dir, tmp_path):
    """README's first command, with the tiny model and small sizes, the hub offline and no noun embeddings: the
    example's token_autoinit.txt gives the word."""
    example = "examples/natural-images/coffee_cup"
    command = [sys.executable, "scripts/reconstruct.py", f"{example}/image.png", "--mask_path", f"{example}/mask.png",
               "--workspace", str(tmp_path / "outputs" / "coffee_cup"),
               "--pretrained_model_name_or_path", str(tiny_sd_dir), "--ti_steps", "1", "--ti_resolution", "16",
               "--", "--pose_angle", "45", *TINY_RUN]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(tmp_path / "empty-cache")}
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert stages(done.stderr) == ["input", "autoinit", "token", "nerf", "mesh", "evaluate"]
    ws = tmp_path / "outputs" / "coffee_cup"
    assert (ws / "input" / "token_autoinit.txt").read_text() == "cup\n"
    assert (ws / "nerf" / "mesh" / "mesh.glb").is_file() and done.stdout.splitlines()[-1].startswith("done: ")
