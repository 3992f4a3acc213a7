"""One run per workspace: a second run on a workspace in use is refused in one line naming the lock file and changes
nothing; a lock left by a dead process is taken over, also when its pid now belongs to another process; another
host's lock needs --force_unlock, which takes any lock; of processes that try at the same instant exactly one gets
it; the lock goes when the run ends."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest

from nerf.cli import train as main_module
from nerf import workspace_lock
from nerf.errors import UserError

REPO = Path(__file__).resolve().parents[1]

TINY = ["--lambda_prior", "0", "--iters", "5", "--HW_real", "16", "--HW_synthetic", "16", "--num_rays", "128",
        "--occupancy_grid_size", "16", "--max_steps", "32", "--HW_vis", "8", "--no_cuda_ray", "--eval_interval", "1"]


def write_lock(workspace, pid, host=None):
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / workspace_lock.LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                                                  "started": "earlier"}))


@contextlib.contextmanager
def held_by_another_process(workspace: Path) -> Iterator[subprocess.Popen]:
    """A live process of this host holding `workspace`'s lock the way a run does, until the block ends."""
    workspace.mkdir(parents=True, exist_ok=True)
    code = ("import sys; from pathlib import Path; from nerf import workspace_lock; "
            "workspace_lock.acquire(Path(sys.argv[1])); print('held', flush=True); sys.stdin.read()")
    owner = subprocess.Popen([sys.executable, "-c", code, str(workspace)], cwd=REPO, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline() == "held\n"
        yield owner
    finally:
        owner.kill()
        owner.wait()


@pytest.fixture
def image(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (40, 90, 200, 255)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    return tmp_path / "rgba.png"


def test_a_workspace_in_use_is_refused_and_left_as_it_was(tmp_path, image, capsys):
    ws = tmp_path / "ws"
    with held_by_another_process(ws) as owner:
        (ws / "options.json").write_text("the other run's record")
        lock = (ws / workspace_lock.LOCK_NAME).read_bytes()
        assert main_module.main([*TINY, "--image_path", str(image), "--workspace", str(ws)]) == 2
        assert (ws / workspace_lock.LOCK_NAME).read_bytes() == lock
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"in use by another run (pid {owner.pid}" in errors[0]
    assert f"lock file {ws.resolve() / workspace_lock.LOCK_NAME}" in errors[0]
    assert (ws / "options.json").read_text() == "the other run's record"
    assert sorted(p.name for p in ws.iterdir()) == [".lock", "options.json"]


def test_a_lock_whose_pid_now_names_another_process_is_taken_over(tmp_path, image):
    """The owner died and its pid was reused: a live process of this host that does not hold the lock."""
    ws = tmp_path / "ws"
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(ws, stranger.pid)
        assert main_module.main([*TINY, "--image_path", str(image), "--workspace", str(ws)]) == 0
    finally:
        stranger.kill()
        stranger.wait()
    assert (ws / "checkpoints" / "latest.pth").is_file() and not (ws / workspace_lock.LOCK_NAME).exists()
    assert f"from pid {stranger.pid}, which is no longer running" in (ws / "log.txt").read_text()


def test_force_unlock_takes_even_a_live_run_s_lock(tmp_path):
    ws = tmp_path / "ws"
    with held_by_another_process(ws):
        workspace_lock.acquire(ws, force=True)
        assert json.loads((ws / workspace_lock.LOCK_NAME).read_text())["pid"] == os.getpid()
        workspace_lock.release(ws)
    assert not (ws / workspace_lock.LOCK_NAME).exists()


def _race(workspace: Path, start: multiprocessing.Barrier, done: multiprocessing.Barrier, wins) -> None:
    """One contender: all try at the same instant, and hold what they got until all have tried."""
    start.wait()
    try:
        workspace_lock.acquire(workspace)
        with wins.get_lock():
            wins.value += 1
    except UserError:
        pass
    done.wait()
    os._exit(0)  # no exit handlers: the winner's lock is released by the kernel, as for a killed run


def test_of_processes_taking_the_lock_at_the_same_instant_exactly_one_gets_it(tmp_path):
    context = multiprocessing.get_context("fork")
    contenders = 4
    for trial in range(25):
        ws = tmp_path / f"ws{trial}"
        ws.mkdir()
        start, done, wins = context.Barrier(contenders), context.Barrier(contenders), context.Value("i", 0)
        processes = [context.Process(target=_race, args=(ws, start, done, wins)) for _ in range(contenders)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=60)
        assert [process.exitcode for process in processes] == [0] * contenders
        assert wins.value == 1, f"trial {trial}: {wins.value} processes got the lock"


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
