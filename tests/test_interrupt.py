"""Ctrl-C (in-process and a real SIGINT) says what it leaves: the intact last checkpoint to resume from, or nothing
when none was saved yet; exit status 130 and the workspace lock released either way. A restarted run ends exactly
where an uninterrupted one would."""

from __future__ import annotations

from functools import partial

import cv2
import numpy as np

from nerf.cli import train as main_module
from nerf import workspace_lock
from nerf.trainer import Trainer
from tests.two_cores import concurrently

TINY = ["--lambda_prior", "0", "--iters", "5", "--HW_real", "16", "--HW_synthetic", "16", "--num_rays", "128",
        "--occupancy_grid_size", "16", "--max_steps", "32", "--HW_vis", "8", "--no_cuda_ray", "--eval_interval", "1"]


def test_ctrl_c_names_what_is_left(tmp_path, monkeypatch, capsys):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (40, 90, 200, 255)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    args = [*TINY, "--image_path", str(tmp_path / "rgba.png"), "--workspace", str(tmp_path / "ws")]

    def interrupted(self):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "train", interrupted)
        assert main_module.main(args) == 130
    assert "nothing to resume" in capsys.readouterr().err
    assert not (tmp_path / "ws" / workspace_lock.LOCK_NAME).exists()

    assert main_module.main(args) == 0  # trains and saves
    monkeypatch.setattr(Trainer, "train", interrupted)
    assert main_module.main([*args, "--iters", "10"]) == 130
    assert "checkpoints/latest.pth is intact" in capsys.readouterr().err


def test_a_checkpoint_of_another_model_size_is_refused_naming_the_option(tmp_path, capsys):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (40, 90, 200, 255)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    args = [*TINY, "--image_path", str(tmp_path / "rgba.png"), "--workspace", str(tmp_path / "ws")]
    assert main_module.main([*args, "--grid_levels", "8", "--grid_levels_mask", "0"]) == 0
    record = (tmp_path / "ws" / "options.json").read_bytes()
    capsys.readouterr()
    assert main_module.main([*args, "--grid_levels", "4", "--grid_levels_mask", "0", "--iters", "10"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "trained with --grid_levels 8 (now 4)" in errors[0]
    assert (tmp_path / "ws" / "options.json").read_bytes() == record


def test_weights_that_become_non_finite_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, capsys):
    import pytest
    import torch

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (40, 90, 200, 255)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    args = [*TINY, "--image_path", str(tmp_path / "rgba.png"), "--workspace", str(tmp_path / "ws")]
    assert main_module.main(args) == 0
    good = (tmp_path / "ws" / "checkpoints" / "latest.pth").read_bytes()
    original_step = Trainer.train_step

    def poisoning_step(self):
        terms = original_step(self)
        with torch.no_grad():
            next(self.renderer.parameters()).fill_(float("inf"))  # finite loss, infinite weights
        return terms

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "train_step", poisoning_step)
        capsys.readouterr()
        assert main_module.main([*args, "--iters", "10"]) == 2  # the one-line error path of every failure
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "weights or the occupancy grid became non-finite" in errors[0]
    assert (tmp_path / "ws" / "checkpoints" / "latest.pth").read_bytes() == good


def test_a_run_interrupted_and_restarted_ends_bit_identical_to_an_uninterrupted_one(tmp_path, monkeypatch):
    """Ctrl-C at step 150 (the last checkpoint is at 100), then the same command: the final weights, optimiser
    state and occupancy grid are exactly those of a run that was never stopped."""
    import torch

    from nerf.checkpoint import load_checkpoint

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (40, 90, 200, 255)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    args = [*TINY, "--iters", "200", "--image_path", str(tmp_path / "rgba.png")]
    step = Trainer.train_step

    def ctrl_c_at_150(self):
        if self.global_step == 150:
            raise KeyboardInterrupt
        return step(self)

    def interrupted_then_resumed() -> None:
        with monkeypatch.context() as patch:
            patch.setattr(Trainer, "train_step", ctrl_c_at_150)
            assert main_module.main([*args, "--workspace", str(tmp_path / "resumed")]) == 130
        assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "latest.pth")["global_step"] == 100
        assert main_module.main([*args, "--workspace", str(tmp_path / "resumed")]) == 0

    # the uninterrupted run in another process meanwhile (a process of its own, so not patched)
    _, code = concurrently(interrupted_then_resumed,
                           partial(main_module.main, [*args, "--workspace", str(tmp_path / "straight")]))
    assert code == 0
    straight, resumed = (load_checkpoint(tmp_path / name / "checkpoints" / "latest.pth")
                         for name in ("straight", "resumed"))
    assert straight["global_step"] == resumed["global_step"] == 200
    assert straight["model"].keys() == resumed["model"].keys()
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])
    moments = [(s["exp_avg"], r["exp_avg"]) for s, r in zip(straight["optimizer"]["state"].values(),
                                                            resumed["optimizer"]["state"].values())]
    assert moments and all(torch.equal(s, r) for s, r in moments)


def test_a_real_sigint_stops_main_py_with_status_130_and_a_whole_checkpoint(tmp_path):
    """main.py in its own process, interrupted by SIGINT (Ctrl-C) after its first checkpoint: exit status 130, the
    message on stderr, a checkpoint that loads, no lock left behind; the same command then finishes the run."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from nerf.checkpoint import load_checkpoint

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (40, 90, 200, 255)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    ws = tmp_path / "ws"
    command = [sys.executable, str(Path(__file__).resolve().parents[1] / "main.py"), *TINY, "--iters", "250", "--image_path",
               str(tmp_path / "rgba.png"), "--workspace", str(ws)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # as from a terminal: a shell that starts jobs in the background (CI scripts, nohup) hands them SIGINT ignored,
    # and Python then installs no KeyboardInterrupt handler
    run = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    latest = ws / "checkpoints" / "latest.pth"
    deadline = time.time() + 240
    while not latest.exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert latest.exists() and run.poll() is None, "the run ended or stalled before its first checkpoint"
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "checkpoints/latest.pth is intact" in err
    assert err.rstrip("\n").split("\n")[-1].startswith("interrupted; ")  # a line of its own, not after the bar
    assert load_checkpoint(latest)["global_step"] in (100, 200)
    assert not (ws / workspace_lock.LOCK_NAME).exists()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_checkpoint(latest)["global_step"] == 250
