"""scripts/reconstruct.py: photo -> mask -> token -> NeRF -> mesh -> evaluation in one command, every stage
skipped when its output is complete, so that running it again continues an interrupted pipeline."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tests.test_bad_input_tools import message_lines, snapshot

TINY_RUN = ["--iters", "10", "--HW_synthetic", "16", "--HW_real", "16", "--num_rays", "128", "--HW_vis", "8",
            "--occupancy_grid_size", "16", "--max_steps", "64", "--mesh_resolution", "32", "--eval_interval", "100",
            "--mesh_decimate_target", "0"]


def one_thread_env() -> dict[str, str]:
    """The environment with one OpenMP thread per process: the first two pipelines run at once, one on each core."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def photo(path):
    """A red disk on a light background: an object GrabCut can find."""
    yy, xx = np.mgrid[0:64, 0:64]
    image = np.full((64, 64, 3), 230, np.uint8)
    image[(yy - 32) ** 2 + (xx - 30) ** 2 < 18**2] = (200, 60, 40)
    Image.fromarray(image).save(path)
    return path


def pipeline(repo, tiny_sd_dir, image, workspace, *extra, main_args=()):
    command = [sys.executable, str(repo / "scripts" / "reconstruct.py"), str(image), "--workspace", str(workspace),
               "--initializer_token", "cat", "--pretrained_model_name_or_path", str(tiny_sd_dir), "--ti_steps", "2",
               "--ti_resolution", "16", *extra, "--", *TINY_RUN, *main_args]
    return subprocess.run(command, capture_output=True, text=True, env=one_thread_env())


def stages(stderr: str) -> list[str]:
    return [line.split("]")[0][1:] for line in stderr.splitlines() if line.startswith("[")]


def finish(repo, tiny_sd_dir, root):
    """The pipeline run to its end on `photo`: (the photo, the workspace, the finished process)."""
    image, workspace = photo(root / "photo.png"), root / "ws"
    done = pipeline(repo, tiny_sd_dir, image, workspace)
    assert done.returncode == 0, done.stderr[-2000:]
    return image, workspace, done


@pytest.fixture(scope="module")
def started(repo, tiny_sd_dir, tmp_path_factory):
    """`finish` and `interrupt_quick_start` at once: both wait on their subprocesses, which take a core each."""
    with ThreadPoolExecutor(1) as pool:
        quick = pool.submit(interrupt_quick_start, repo, tiny_sd_dir, tmp_path_factory.mktemp("quick-start"))
        return finish(repo, tiny_sd_dir, tmp_path_factory.mktemp("pipeline")), quick.result()


@pytest.fixture(scope="module")
def finished(started):
    return started[0]


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


def interrupt_quick_start(repo, tiny_sd_dir, root):
    """README's first command with the tiny model, small sizes and endless NeRF training, the hub offline and no
    noun embeddings anywhere; Ctrl-C (SIGINT to its process group, as a terminal sends it) once the NeRF stage
    holds its workspace."""
    ws = root / "outputs" / "coffee_cup"
    example = "examples/natural-images/coffee_cup"
    command = [sys.executable, "scripts/reconstruct.py", f"{example}/image.png", "--mask_path", f"{example}/mask.png",
               "--workspace", str(ws), "--pretrained_model_name_or_path", str(tiny_sd_dir), "--ti_steps", "1",
               "--ti_resolution", "16", "--", "--pose_angle", "45", *TINY_RUN, "--iters", "100000"]
    env = {**one_thread_env(), "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(root / "empty-cache")}
    with subprocess.Popen(command, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as process:
        deadline = time.monotonic() + 300
        while not (ws / "nerf" / ".lock").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # into training
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=300)
    return ws, process.returncode, out, err


@pytest.fixture(scope="module")
def quick_start(started):
    return started[1]


def test_the_quick_start_gets_past_the_initializer(quick_start):
    ws, _, _, err = quick_start
    assert stages(err)[:4] == ["input", "autoinit", "token", "nerf"], err[-2000:]
    assert (ws / "input" / "token_autoinit.txt").read_text() == "cup\n"  # the example's word
    assert (ws / "token" / "learned_embeds.bin").is_file()


def test_ctrl_c_lets_the_stage_save_and_exit_then_says_what_is_left(quick_start):
    ws, code, _, err = quick_start
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 130, err[-2000:]
    assert lines[-1].startswith("interrupted during stage nerf") and "left: nerf, mesh, evaluate, report" in lines[-1]
    assert any("interrupted" in line for line in lines[:-1]), err[-3000:]  # main.py's own message: it ended itself
    assert (ws / "nerf").is_dir() and not (ws / "nerf" / ".lock").exists()


def test_stage_commands_are_shown_quoted(quick_start):
    _, _, _, err = quick_start
    shown = next(line for line in err.splitlines() if line.startswith("[token] "))
    assert shlex.split(shown.removeprefix("[token] "))[1].endswith("textual_inversion.py")
    assert "textual inversion:" in err  # the stage's own progress is passed through


def test_another_photo_on_a_finished_workspace_is_refused(repo, tiny_sd_dir, finished, tmp_path):
    _, ws, _ = finished
    other = tmp_path / "other.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(other)
    before = snapshot(ws)
    done = pipeline(repo, tiny_sd_dir, other, ws)
    lines = message_lines(done.stderr)
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: stage input:"), done.stderr
    assert "--restart_from input" in lines[0] and "new --workspace" in lines[0]
    assert snapshot(ws) == before


def test_more_iterations_remake_the_mesh_and_evaluation(repo, tiny_sd_dir, finished):
    image, ws, _ = finished
    mesh, evaluation = ws / "nerf" / "mesh" / "mesh.glb", ws / "evaluation.json"
    before = mesh.stat().st_mtime_ns, evaluation.stat().st_mtime_ns
    longer = pipeline(repo, tiny_sd_dir, image, ws, main_args=["--iters", "12"])
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert stages(longer.stderr) == ["nerf", "mesh", "evaluate"]
    assert mesh.stat().st_mtime_ns > before[0] and evaluation.stat().st_mtime_ns > before[1]
    assert json.loads((ws / "nerf" / "checkpoints" / "latest.pth.made.json").read_text())["step"] == 12
