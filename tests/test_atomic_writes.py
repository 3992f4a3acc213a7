"""Atomic writes under a real SIGKILL: the target keeps its previous content, the killed write's partial file is
recognisable, and the next run removes it once it is stale (a write under way is never touched)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from nerf.fileio import PARTIAL, remove_stale_partials, write_atomic, write_text_atomic

REPO = Path(__file__).resolve().parents[1]

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


TINY_RUN = ["--lambda_prior", "0", "--iters", "5", "--HW_real", "16", "--HW_synthetic", "16", "--num_rays", "128",
            "--occupancy_grid_size", "16", "--max_steps", "32", "--HW_vis", "8", "--no_cuda_ray", "--eval_interval",
            "1"]


def _file_size_limit(limit: int) -> Callable[[], None]:
    """For a child process: writes past `limit` bytes fail with EFBIG (instead of the signal that would kill it)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_file_size_limit_on_the_checkpoint_is_one_line_naming_it_and_leaves_no_partial(tmp_path):
    """A write limit with free disk space (torch.save's own error would be 'unexpected pos'): main.py, as a real
    process, reports the limit for checkpoints/latest.pth in one line, status 2, and leaves neither a partial file
    nor its lock."""
    import cv2
    import numpy as np

    from tests.test_bad_input_tools import message_lines

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (40, 90, 200, 255)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    ws = tmp_path / "ws"
    result = subprocess.run([sys.executable, str(REPO / "main.py"), *TINY_RUN, "--image_path",
                             str(tmp_path / "rgba.png"), "--workspace", str(ws)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600, preexec_fn=_file_size_limit(2**20))  # checkpoints are ~29 MB
    lines = message_lines(result.stderr)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[-1] == (f"error: the file would exceed the size limit (ulimit -f, or the file system's largest file) "
                         f"(writing {ws / 'checkpoints' / 'latest.pth'}); raise the limit or write to another file "
                         f"system and run again. Files are replaced only once written whole, so what was there "
                         f"before is intact.")
    assert sum("error:" in line for line in lines) == 1
    assert not (ws / "checkpoints" / "latest.pth").exists() and not (ws / ".lock").exists()
    assert not [p for p in ws.rglob("*") if PARTIAL in p.name]


def test_stale_partials_go_from_every_folder_and_an_alpha_of_0_and_1_is_a_binary_mask(tmp_path):
    """main.py as a real process on a workspace whose earlier run was killed mid-write in each of its folders: the
    stale partial files are gone after the run (a recent one, perhaps a write under way, stays). Its input's alpha
    is 0/1 (a mask saved without scaling), which is read as background/object, as extract-mask.py reads it."""
    import cv2
    import numpy as np

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (40, 90, 200, 1)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    ws = tmp_path / "ws"
    old = time.time() - 3600
    stale = [ws / folder / f".{name}{PARTIAL}killed{Path(name).suffix}" for folder, name in
             [(".", "options.json"), ("checkpoints", "latest.pth"), ("validation", "df_ep0001.png"),
              ("results", "df_test_rgb.mp4"), ("mesh", "mesh.glb"), ("results/df_real", "0000.png")]]
    for file in stale:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(b"half")
        os.utime(file, (old, old))
    recent = ws / "mesh" / f".mesh.obj{PARTIAL}writing.obj"
    recent.write_bytes(b"under way")
    result = subprocess.run([sys.executable, str(REPO / "main.py"), *TINY_RUN, "--image_path",
                             str(tmp_path / "rgba.png"), "--workspace", str(ws)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [file for file in stale if file.exists()] == [] and recent.exists()
    log = (ws / "log.txt").read_text()
    assert "removed 0.0 MiB of partial files" in log
    assert "its alpha holds only 0 and 1, read as a binary mask (object = 1)" in log


def test_a_full_disk_inside_torch_save_is_the_os_error_named_after_the_target(tmp_path):
    """torch.save turns the operating system's ENOSPC into a RuntimeError raised while handling it; the writer
    reports the ENOSPC, for the target's name, and any other RuntimeError stays what it is."""
    import errno

    import pytest

    from nerf.fileio import write_file_atomic

    def full(file):
        try:
            file.write(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    with pytest.raises(OSError) as caught:
        write_file_atomic(tmp_path / "latest.pth", full)
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(tmp_path / "latest.pth"))

    def broken(file):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        write_file_atomic(tmp_path / "latest.pth", broken)
    assert list(tmp_path.iterdir()) == []
