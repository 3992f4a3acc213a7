"""One place turns expected failures into one line and exit status 2: `nerf.errors.one_line_errors`, on the main
of every command-line tool. A full disk or a folder that cannot be written is such a failure; other errors keep
their traceback."""

from __future__ import annotations

import ast
import builtins
import contextlib
import errno
import io
import os
from pathlib import Path

import pytest

from nerf.errors import UserError, one_line_errors
from tests.test_bad_input_tools import snapshot

REPO = Path(__file__).resolve().parents[1]
# The command lines: their modules in the package, and the scripts that are not thin entry points over one.
TOOLS = [*sorted((REPO / "nerf" / "cli").glob("*.py")), REPO / "nerf" / "textual_inversion" / "train.py",
         REPO / "nerf" / "textual_inversion" / "autoinit.py", *sorted((REPO / "scripts").glob("*.py"))]


@pytest.mark.parametrize("error, expected", [
    (UserError("--iters must be >= 1, got 0."), "error: --iters must be >= 1, got 0."),
    (OSError(errno.ENOSPC, "No space left on device", "/ws/report.html"), "error: the disk is full (writing /ws"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/ws/a.pth"), "error: the disk quota is used up (writing /ws/a.pth"),
    (OSError(errno.EFBIG, "File too large", "/ws/a.pth"), "error: the file would exceed the size limit"),
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

    from nerf.cli import train as main_module
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


@contextlib.contextmanager
def read_only(root: Path, monkeypatch):
    """`root` as a folder that cannot be written: real permissions when not running as root (whom they do not
    stop), else the operating system's answer, EACCES, from every way the code opens, creates or makes folders."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [root, *root.rglob("*")] if p.is_dir()}
        for folder in modes:
            folder.chmod(0o555)
        try:
            yield
        finally:
            for folder, mode in modes.items():
                folder.chmod(mode)
        return

    def denied(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and Path(os.path.abspath(path)).is_relative_to(root)

    def refuse(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    real_os_open, real_open, real_mkdir = os.open, io.open, Path.mkdir

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and denied(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and denied(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def mkdir(self, *args, **kwargs):
        if denied(self) and not self.is_dir():
            refuse(self)
        return real_mkdir(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", os_open)
        patch.setattr(io, "open", open_)
        patch.setattr(builtins, "open", open_)
        patch.setattr(Path, "mkdir", mkdir)
        yield


def test_a_read_only_folder_is_one_line_and_nothing_changes(tmp_path, monkeypatch, capsys):
    """main.py into a new workspace under a read-only folder, and --test on a trained workspace that became
    read-only: one line naming the folder, status 2, every byte as it was."""
    import cv2
    import numpy as np

    from nerf.cli import train as main_module

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (40, 90, 200, 255)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    args = ["--lambda_prior", "0", "--iters", "4", "--HW_real", "16", "--HW_synthetic", "16", "--num_rays", "128",
            "--occupancy_grid_size", "16", "--max_steps", "32", "--HW_vis", "8", "--no_cuda_ray", "--image_path",
            str(tmp_path / "rgba.png")]
    locked = tmp_path / "locked"
    (locked / "trained").mkdir(parents=True)
    assert main_module.main([*args, "--workspace", str(locked / "trained")]) == 0
    before = snapshot(locked)
    capsys.readouterr()
    for extra in (["--workspace", str(locked / "new")], ["--workspace", str(locked / "trained"), "--test"]):
        with read_only(locked, monkeypatch):
            assert main_module.main([*args, *extra]) == 2
        err = capsys.readouterr().err  # (progress lines such as "resumed from" may come first)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert "Traceback" not in err and len(errors) == 1, err
        assert errors[0].startswith("error: cannot write") and str(locked) in errors[0]
        assert snapshot(locked) == before


def test_textual_inversion_into_a_read_only_folder_is_one_line_and_writes_nothing(tiny_sd_dir, tmp_path,
                                                                                   monkeypatch, capsys):
    import cv2
    import numpy as np

    from nerf.textual_inversion import train as ti
    (tmp_path / "data").mkdir()
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (40, 90, 200, 255)
    cv2.imwrite(str(tmp_path / "data" / "rgba.png"), rgba)
    locked = tmp_path / "locked"
    locked.mkdir()
    argv = ["--pretrained_model_name_or_path", str(tiny_sd_dir), "--train_data_dir", str(tmp_path / "data"),
            "--placeholder_token", "_obj_", "--initializer_token", "cat", "--output_dir", str(locked / "out"),
            "--resolution", "16", "--max_train_steps", "1", "--only_save_embeds"]
    with read_only(locked, monkeypatch):
        assert ti.main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot write {locked / 'out'}")
    assert list(locked.iterdir()) == []


DENY_READING = """
import builtins, errno, io, os, runpy, sys
denied, tool = os.path.abspath(sys.argv[1]), sys.argv[2]
real_open = io.open

def open_(file, *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) == denied:
        raise PermissionError(errno.EACCES, "Permission denied", str(file))
    return real_open(file, *args, **kwargs)

builtins.open = io.open = open_
sys.argv = sys.argv[2:]
runpy.run_path(tool, run_name="__main__")
"""


@pytest.mark.parametrize("tool, args", [("main.py", ["--workspace", "{root}/ws"]),
                                        ("scripts/extract-mask.py", ["--output_dir", "{root}/out"])])
def test_a_photo_that_cannot_be_opened_is_named_as_such_not_as_unreadable(tmp_path, tool, args):
    """The tool as a real process, on a photo it may not open: the line says so (not "not a readable image" or
    "cannot read ... pass a PNG"). Permissions do not stop root, so as root the process is refused by the same
    EACCES from Python's open."""
    import subprocess
    import sys

    import cv2
    import numpy as np

    from tests.test_bad_input_tools import message_lines

    photo = tmp_path / "rgba.png"
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (40, 90, 200, 255)
    cv2.imwrite(str(photo), rgba)
    argv = ["--image_path", str(photo), *(arg.format(root=tmp_path) for arg in args)]
    if os.geteuid() == 0:
        command = [sys.executable, "-c", DENY_READING, str(photo), str(REPO / tool), *argv]
    else:
        photo.chmod(0)
        command = [sys.executable, str(REPO / tool), *argv]
    before = snapshot(tmp_path)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    lines = message_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("error: ") and f"{photo} cannot be opened: Permission denied" in lines[0]
    photo.chmod(0o644)
    assert snapshot(tmp_path) == before

