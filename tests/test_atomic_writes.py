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
