"""One place turns expected failures into one line and exit status 2: `nerf.errors.one_line_errors`, on the main
of every command-line tool. A full disk or a folder that cannot be written is such a failure; other errors keep
their traceback."""

from __future__ import annotations

import ast
import errno
from pathlib import Path

import pytest

from nerf.errors import UserError, one_line_errors

REPO = Path(__file__).resolve().parents[1]
TOOLS = [REPO / "main.py", *sorted((REPO / "scripts").glob("*.py")), *sorted((REPO / "textual-inversion").glob("*.py"))]


@pytest.mark.parametrize("error, expected", [
    (UserError("--iters must be >= 1, got 0."), "error: --iters must be >= 1, got 0."),
    (OSError(errno.ENOSPC, "No space left on device", "/ws/report.html"), "error: the disk is full (writing /ws"),
    (PermissionError(errno.EACCES, "Permission denied", "/ws/options.json"), "error: cannot write /ws/options.json"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/x"), "error: cannot write /ro/x: Read-only file system"),
])
def test_expected_failures_are_one_line_and_status_2(error, expected, capsys):
    @one_line_errors
    def tool() -> int:
        raise error

    assert tool() == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1


def test_other_errors_keep_their_traceback_and_success_is_0():
    @one_line_errors
    def broken() -> int:
        raise FileNotFoundError(errno.ENOENT, "No such file", "x")  # not a condition the tools expect here

    with pytest.raises(FileNotFoundError):
        broken()
    assert one_line_errors(lambda: None)() == 0


def test_every_command_line_tool_uses_the_one_place():
    tools = 0
    for file in TOOLS:
        tree = ast.parse(file.read_text(encoding="utf-8"))
        mains = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main"]
        for node in mains:
            tools += 1
            assert any(getattr(d, "id", None) == "one_line_errors" for d in node.decorator_list), file.name
            handlers = [h for h in ast.walk(node) if isinstance(h, ast.ExceptHandler)
                        and getattr(h.type, "id", None) == "UserError"]
            assert not handlers, f"{file.name}'s main catches UserError itself; leave it to one_line_errors"
    assert tools >= 10


def test_a_full_disk_while_writing_the_report_is_one_line_and_keeps_the_old_one(tmp_path, monkeypatch, capsys):
    import cv2
    import numpy as np

    import main as main_module
    import nerf.report

    image = tmp_path / "rgba.png"
    disk = np.zeros((32, 32), np.uint8)
    disk[8:24, 8:24] = 255
    cv2.imwrite(str(image), np.dstack([disk, disk // 2, disk // 3, disk]))
    args = ["--lambda_prior", "0", "--iters", "10", "--HW_real", "16", "--HW_synthetic", "16", "--num_rays", "256",
            "--occupancy_grid_size", "16", "--max_steps", "32", "--HW_vis", "8", "--no_cuda_ray", "--image_path",
            str(image), "--workspace", str(tmp_path / "ws")]
    assert main_module.main(args) == 0
    before = (tmp_path / "ws" / "report.html").read_bytes()

    def full_disk(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(nerf.report, "write_text_atomic", full_disk)
    capsys.readouterr()
    assert main_module.main([*args, "--test"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the disk is full" in errors[0] and "report.html" in errors[0]
    assert (tmp_path / "ws" / "report.html").read_bytes() == before
