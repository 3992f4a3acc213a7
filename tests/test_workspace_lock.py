"""One run per workspace: a second run on a workspace in use is refused in one line and changes nothing; a lock
left by a dead process is taken over; another host's lock needs --force_unlock; the lock goes when the run ends."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import cv2
import numpy as np
import pytest

from nerf.cli import train as main_module
from nerf import workspace_lock
from nerf.errors import UserError

TINY = ["--lambda_prior", "0", "--iters", "5", "--HW_real", "16", "--HW_synthetic", "16", "--num_rays", "128",
        "--occupancy_grid_size", "16", "--max_steps", "32", "--HW_vis", "8", "--no_cuda_ray", "--eval_interval", "1"]


def write_lock(workspace, pid, host=None):
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / workspace_lock.LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                                                  "started": "earlier"}))


@pytest.fixture
def image(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (40, 90, 200, 255)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    return tmp_path / "rgba.png"


def test_a_workspace_in_use_is_refused_and_left_as_it_was(tmp_path, image, capsys):
    ws = tmp_path / "ws"
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(ws, owner.pid)
        (ws / "options.json").write_text("the other run's record")
        assert main_module.main([*TINY, "--image_path", str(image), "--workspace", str(ws)]) == 2
    finally:
        owner.kill()
        owner.wait()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"in use by another run (pid {owner.pid}" in errors[0]
    assert (ws / "options.json").read_text() == "the other run's record"
    assert sorted(p.name for p in ws.iterdir()) == [".lock", "options.json"]


def test_a_dead_run_s_lock_is_taken_over_and_the_lock_is_released_at_the_end(tmp_path, image):
    ws = tmp_path / "ws"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lock(ws, dead.pid)
    assert main_module.main([*TINY, "--image_path", str(image), "--workspace", str(ws)]) == 0
    assert (ws / "checkpoints" / "latest.pth").is_file() and not (ws / workspace_lock.LOCK_NAME).exists()
    assert "no longer running" in (ws / "log.txt").read_text()


def test_another_host_s_lock_needs_force_unlock(tmp_path):
    ws = tmp_path / "ws"
    write_lock(ws, os.getpid() + 1, host="elsewhere")
    with pytest.raises(UserError, match="--force_unlock"):
        workspace_lock.acquire(ws)
    workspace_lock.acquire(ws, force=True)
    assert json.loads((ws / workspace_lock.LOCK_NAME).read_text())["pid"] == os.getpid()
    workspace_lock.release(ws)
    assert not (ws / workspace_lock.LOCK_NAME).exists()


def test_a_run_that_fails_before_saving_keeps_the_workspace_s_record(tmp_path, image, monkeypatch, capsys):
    """options.json is written with each checkpoint: a run that stops before its first save (here it diverges at
    once) leaves the record of the checkpoint beside it, which inference and evaluation trust."""
    from nerf.trainer import Trainer, TrainingDiverged  # a UserError: main prints one line, exits 2

    ws = tmp_path / "ws"
    args = [*TINY, "--image_path", str(image), "--workspace", str(ws)]
    assert main_module.main(args) == 0
    record = (ws / "options.json").read_bytes()

    def diverges(self):
        raise TrainingDiverged("the loss was not finite for 20 consecutive iterations")

    monkeypatch.setattr(Trainer, "train", diverges)
    capsys.readouterr()
    assert main_module.main([*args, "--iters", "50", "--lr", "1e9"]) == 2  # the one-line error path
    err = capsys.readouterr().err  # (progress lines such as "resumed from" come first)
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "error" in line] == [
        "error: the loss was not finite for 20 consecutive iterations"]
    assert (ws / "options.json").read_bytes() == record
    assert not (ws / workspace_lock.LOCK_NAME).exists()


def test_open_run_holds_the_workspace_for_its_block_only(tmp_path, image):
    from nerf.build import open_run
    from nerf.option_checks import parse

    ws = tmp_path / "ws"
    with pytest.raises(RuntimeError, match="stopped inside the block"):
        with open_run(parse([*TINY, "--image_path", str(image), "--workspace", str(ws)])) as run:
            assert run.workspace == ws and (ws / "log.txt").is_file()
            assert json.loads((ws / workspace_lock.LOCK_NAME).read_text())["pid"] == os.getpid()
            raise RuntimeError("stopped inside the block")
    assert not (ws / workspace_lock.LOCK_NAME).exists()
