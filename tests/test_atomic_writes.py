"""Atomic writes under a real SIGKILL: the target keeps its previous content, the killed write's partial file is
recognisable, and the next run removes it once it is stale (a write under way is never touched)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from nerf.fileio import PARTIAL, remove_stale_partials, write_atomic, write_text_atomic

WRITER = """
import sys, time
from nerf.fileio import write_atomic

def slow(tmp):
    with open(tmp, "wb") as f:
        f.write(b"new" * 1000)
        f.flush()
        print("writing", flush=True)
        time.sleep(60)

write_atomic(sys.argv[1], slow)
"""


def test_a_killed_write_leaves_the_old_file_and_a_partial_that_is_cleaned_later(tmp_path):
    target = tmp_path / "latest.pth"
    write_text_atomic(target, "old")
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    assert child.stdout.readline().strip() == "writing"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert target.read_text() == "old"
    partials = list(tmp_path.glob(f".*{PARTIAL}*"))
    assert len(partials) == 1 and partials[0].stat().st_size == 3000
    assert remove_stale_partials(tmp_path) == 0  # recent: could be a write under way
    old = time.time() - 3600
    os.utime(partials[0], (old, old))
    assert remove_stale_partials(tmp_path) == 3000 and not partials[0].exists()
    assert target.read_text() == "old"


def test_a_failed_writer_removes_its_partial_and_keeps_the_target(tmp_path):
    target = tmp_path / "options.json"
    write_text_atomic(target, "{}")

    def failing(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    try:
        write_atomic(target, failing)
    except OSError:
        pass
    assert target.read_text() == "{}" and not list(tmp_path.glob(f".*{PARTIAL}*"))


def test_a_checkpoint_write_on_a_full_disk_is_reported_as_a_full_disk(tmp_path, monkeypatch, capsys):
    """torch.save on a full disk fails with 'unexpected pos ...'; the run says the disk is full in one line and the
    previous checkpoint is left whole."""
    import shutil as shutil_module
    from collections import namedtuple

    import cv2
    import numpy as np
    import torch

    from nerf.cli import train as main_module
    import nerf.checkpoint

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (40, 90, 200, 255)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    args = ["--lambda_prior", "0", "--iters", "5", "--HW_real", "16", "--HW_synthetic", "16", "--num_rays", "128",
            "--occupancy_grid_size", "16", "--max_steps", "32", "--HW_vis", "8", "--no_cuda_ray", "--eval_interval",
            "1", "--image_path", str(tmp_path / "rgba.png"), "--workspace", str(tmp_path / "ws")]
    assert main_module.main(args) == 0
    good = (tmp_path / "ws" / "checkpoints" / "latest.pth").read_bytes()
    real_save = torch.save

    def disk_fills_up(obj, file, *rest, **kwargs):
        real_save(obj, file, *rest, **kwargs)
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 145344 vs 145240")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(nerf.checkpoint.torch, "save", disk_fills_up)
    monkeypatch.setattr(nerf.checkpoint.shutil, "disk_usage", lambda folder: usage(10**9, 10**9, 1024))
    assert nerf.checkpoint.shutil is shutil_module
    capsys.readouterr()
    assert main_module.main([*args, "--iters", "10"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the disk is full" in errors[0] and "latest.pth" in errors[0]
    assert (tmp_path / "ws" / "checkpoints" / "latest.pth").read_bytes() == good
    assert not list((tmp_path / "ws" / "checkpoints").glob(f".*{PARTIAL}*"))
