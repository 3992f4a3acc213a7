"""The input view: RGBA loading and every bad input of main.py (one-line error, exit code 2, nothing written)."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from nerf.cli import train as main_module
from nerf.data import RealView, load_rgba
from nerf.errors import UserError


def write_rgba(path, size=(40, 40), dtype=np.uint8, alpha=None):
    h, w = size
    top = np.iinfo(dtype).max
    image = np.zeros((h, w, 4), dtype)
    image[..., 2] = top  # red in BGRA
    image[..., 3] = 0 if alpha is None else alpha
    if alpha is None:
        image[h // 4: 3 * h // 4, w // 4: 3 * w // 4, 3] = top
    cv2.imwrite(str(path), image)
    return path


def test_load_8_and_16_bit(tmp_path):
    for dtype in (np.uint8, np.uint16):
        rgba = load_rgba(write_rgba(tmp_path / f"x{dtype.__name__}.png", dtype=dtype), 20)
        assert rgba.shape == (20, 20, 4) and rgba.dtype == torch.float32
        assert torch.allclose(rgba[..., 0], torch.ones(20, 20))  # red channel first
        assert float(rgba[..., 3].mean()) == pytest.approx(0.25, abs=0.02)
        assert 0 <= float(rgba.min()) and float(rgba.max()) <= 1


def test_area_resize_keeps_mask_fraction(tmp_path):
    rgba = load_rgba(write_rgba(tmp_path / "x.png", size=(256, 256)), 32)
    assert float(rgba[..., 3].mean()) == pytest.approx(0.25, abs=1e-3)


def test_real_view_camera_and_sampling(tmp_path):
    view = RealView.from_file(write_rgba(tmp_path / "x.png"), 16, 75.0, 1.8, 55.0)
    assert torch.allclose(view.camera.centers[0], torch.tensor([0.0, 0.4659, 1.7387]), atol=1e-4)
    rays_o, rays_d, rgba = view.sample(100, torch.Generator().manual_seed(0))
    assert rays_o.shape == rays_d.shape == (1, 100, 3) and rgba.shape == (1, 100, 4)
    full_o, full_d, image = view.full()
    assert full_d.shape == (1, 256, 3) and image.shape == (1, 16, 16, 4)


@pytest.fixture
def bad_inputs(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb)
    (tmp_path / "garbage.png").write_bytes(b"not a png at all")
    return {
        "missing": (tmp_path / "nope.png", "does not exist"),
        "unreadable": (tmp_path / "garbage.png", "not a readable image"),
        "no_alpha": (tmp_path / "rgb.png", "no alpha channel"),
        "empty_alpha": (write_rgba(tmp_path / "empty.png", alpha=0), "empty alpha"),
        "full_alpha": (write_rgba(tmp_path / "full.png", alpha=255), "fully opaque"),
        "not_square": (write_rgba(tmp_path / "wide.png", size=(30, 40)), "not square"),
        "folder": (tmp_path, "is a folder"),
    }


@pytest.mark.parametrize("case", ["missing", "unreadable", "no_alpha", "empty_alpha", "full_alpha", "not_square",
                                  "folder"])
def test_bad_images(case, bad_inputs, tmp_path, capsys):
    path, fragment = bad_inputs[case]
    with pytest.raises(UserError, match=fragment):
        load_rgba(path, 16)
    workspace = tmp_path / "ws-out"
    code = main_module.main(["--image_path", str(path), "--lambda_prior", "0", "--workspace", str(workspace)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and fragment in err and len(err.splitlines()) == 1
    assert "extract-mask.py" in err or case in ("missing", "unreadable")
    assert not workspace.exists()


@pytest.mark.parametrize("args,fragment", [
    (["--fovy_range", "70", "40"], "--fovy_range"),
    (["--iters", "-5"], "--iters"),
    (["--lambda_mask", "1", "2", "3"], "--lambda_mask"),
])
def test_invalid_option_values_exit_2(args, fragment, tmp_path, capsys):
    workspace = tmp_path / "ws"
    assert main_module.main(args + ["--workspace", str(workspace)]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and not workspace.exists()


def test_cli_process_exit_codes(tmp_path, repo):
    unknown = subprocess.run([sys.executable, str(repo / "main.py"), "--not_an_option"], capture_output=True,
                             text=True, cwd=tmp_path)
    assert unknown.returncode == 2
    missing = subprocess.run([sys.executable, str(repo / "main.py"), "--image_path", "missing.png",
                              "--lambda_prior", "0", "--workspace", "ws"], capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip().startswith("error:")
    assert "Traceback" not in missing.stderr and not (tmp_path / "ws").exists()


def test_pad_to_square_centres_a_wide_input_on_transparent_borders(tmp_path):
    path = write_rgba(tmp_path / "wide.png", size=(30, 40))  # 30 rows, 40 columns
    padded = load_rgba(path, 40, pad_to_square=True)
    assert padded.shape == (40, 40, 4)
    assert torch.all(padded[:5, :, 3] == 0) and torch.all(padded[35:, :, 3] == 0)  # 5 transparent rows each side
    wide = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA).astype(np.float32) / 255
    assert torch.allclose(padded[5:35], torch.from_numpy(wide))


def test_non_finite_pixels_are_refused(tmp_path):
    image = np.zeros((8, 8, 4), dtype=np.float32)
    image[2:6, 2:6] = 1.0
    image[3, 3, 0] = np.nan
    assert cv2.imwrite(str(tmp_path / "nan.tiff"), image)
    with pytest.raises(UserError, match="NaN"):
        load_rgba(tmp_path / "nan.tiff", 8)
