"""Mask extraction: padding/resizing rules, GrabCut on a synthetic photo, cleanup, the CLI and its errors."""

from __future__ import annotations

import json
import math

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "extract-mask.py"
from nerf.cli import extract_mask as cli
from nerf.errors import UserError
from nerf.input_prep import masking


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def disk_photo(h: int = 90, w: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A red disk on a noisy blue-grey background, and its true mask."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:h, 0:w]
    truth = (rows - h / 2) ** 2 + (cols - w / 2) ** 2 <= (0.3 * h) ** 2
    photo = rng.normal([70, 90, 120], 12, size=(h, w, 3))
    photo[truth] = rng.normal([200, 60, 40], 12, size=(truth.sum(), 3))
    return np.clip(photo, 0, 255).astype(np.uint8), truth


def save_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


# --- padding and resizing -------------------------------------------------------------------------

@pytest.mark.parametrize("h, w", [(2, 5), (5, 2), (3, 6)])
def test_expand_pads_floor_before_ceil_after(h: int, w: int) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(1, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.integers(1, 256, (h, w), dtype=np.uint8)
    side = max(h, w)
    before, after = (side - min(h, w)) // 2, (side - min(h, w)) - (side - min(h, w)) // 2
    pad = ((before, after), (0, 0)) if h < w else ((0, 0), (before, after))
    out_image, out_mask = masking.expand_to_size(image, mask, side)
    np.testing.assert_array_equal(out_image, np.pad(image, pad + ((0, 0),)))
    np.testing.assert_array_equal(out_mask, np.pad(mask, pad))


def test_expand_resizes_image_bilinear_and_mask_nearest() -> None:
    image = np.zeros((4, 8, 3), np.uint8)
    image[..., 0] = np.arange(8, dtype=np.uint8)[None] * 30
    mask = np.zeros((4, 8), np.uint8)
    mask[:, 4:] = 200
    out_image, out_mask = masking.expand_to_size(image, mask, 16)
    assert out_image.shape == (16, 16, 3) and out_mask.shape == (16, 16)
    assert set(np.unique(out_mask)) <= {0, 200}  # nearest keeps the mask's values
    # Rows 4..11 hold the photo (2 padded rows per side, scaled by 2); columns ramp smoothly left to right.
    np.testing.assert_array_equal(out_mask[:4], 0)
    np.testing.assert_array_equal(out_mask[12:], 0)
    np.testing.assert_array_equal(out_mask[4:12, :8], 0)
    np.testing.assert_array_equal(out_mask[4:12, 8:], 200)
    ramp = out_image[8, :, 0].astype(int)
    assert (np.diff(ramp) >= 0).all() and len(np.unique(ramp)) > 8  # interpolated, not repeated


def test_expand_keeps_an_input_of_the_right_size() -> None:
    image, truth = disk_photo(32, 32)
    mask = truth.astype(np.uint8) * 255
    out_image, out_mask = masking.expand_to_size(image, mask, 32)
    assert out_image is image and out_mask is mask


# --- segmentation and cleanup ---------------------------------------------------------------------

def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def test_grabcut_border_prior_finds_a_centred_object() -> None:
    photo, truth = disk_photo()
    found = masking.cleanup_mask(masking.grabcut_mask(photo))
    assert iou(found, truth) > 0.95


def test_grabcut_large_photo_is_segmented_downscaled() -> None:
    photo, truth = disk_photo(90, 120)
    big = np.repeat(np.repeat(photo, 4, 0), 4, 1)
    found = masking.grabcut_mask(big, max_side=160)
    assert found.shape == big.shape[:2]
    assert iou(found, np.repeat(np.repeat(truth, 4, 0), 4, 1)) > 0.93


def test_grabcut_box_prior_excludes_a_second_object() -> None:
    photo, truth = disk_photo(90, 160)
    shifted = np.roll(photo, 50, axis=1)  # a second disk: the box picks the left one only
    both = np.where(np.roll(truth, 50, axis=1)[..., None], shifted, photo)
    seeds = masking.box_seeds(truth.shape, (40, 10, 120, 80))
    found = masking.cleanup_mask(masking.grabcut_mask(both, seeds))
    assert iou(found, truth & (np.mgrid[0:90, 0:160][1] < 120)) > 0.9
    assert not found[:, 125:].any()


def test_cleanup_drops_specks_fills_small_holes_keeps_big_ones() -> None:
    rows, cols = np.mgrid[0:100, 0:100]
    body = (np.abs(rows - 50) < 30) & (np.abs(cols - 40) < 30)  # 59 x 59 square
    opening = (np.abs(rows - 50) < 10) & (np.abs(cols - 40) < 10)  # big hole: 361 px > 2 % of the body
    pinhole = (rows == 30) & (cols == 30)  # 1 px hole
    speck = (np.abs(rows - 50) < 2) & (np.abs(cols - 90) < 2)  # 3 x 3 blob far away
    mask = (body & ~opening & ~pinhole) | speck
    cleaned = masking.cleanup_mask(mask, smooth_px=0)
    np.testing.assert_array_equal(cleaned, body & ~opening)


def test_cleanup_keeps_two_large_parts() -> None:
    rows, cols = np.mgrid[0:60, 0:100]
    left = (np.abs(rows - 30) < 15) & (np.abs(cols - 25) < 15)
    right = (np.abs(rows - 30) < 12) & (np.abs(cols - 75) < 12)  # 64 % of the left one: kept
    np.testing.assert_array_equal(masking.cleanup_mask(left | right, smooth_px=0), left | right)


def test_box_outside_image_is_a_user_error() -> None:
    with pytest.raises(UserError, match="box"):
        masking.box_seeds((10, 10), (20, 20, 30, 30))


# --- command line ---------------------------------------------------------------------------------

def test_cli_combines_image_and_mask_into_square_rgba(tmp_path: Path) -> None:
    photo, truth = disk_photo(40, 60)
    mask = truth.astype(np.uint8) * 255
    out = tmp_path / "out"
    result = run_cli("--image_path", str(save_png(tmp_path / "photo.png", photo)),
                     "--mask_path", str(save_png(tmp_path / "m.png", mask)),
                     "--output_dir", str(out), "--size", "60", "--no-recenter")
    assert result.returncode == 0, result.stderr
    rgba = np.asarray(Image.open(out / "rgba.png"))
    assert rgba.shape == (60, 60, 4)
    np.testing.assert_array_equal(rgba[10:50, :, :3], photo)  # 20 padded rows: 10 above, 10 below
    np.testing.assert_array_equal(rgba[10:50, :, 3], mask)
    np.testing.assert_array_equal(rgba[:10], 0)
    np.testing.assert_array_equal(rgba[50:], 0)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "image.png")), rgba[..., :3])
    np.testing.assert_array_equal(np.asarray(Image.open(out / "mask.png")), rgba[..., 3])


def test_cli_extracts_the_object_without_a_mask(tmp_path: Path) -> None:
    photo, truth = disk_photo(60, 60)
    assert cli.main(["--image_path", str(save_png(tmp_path / "p.png", photo)),
                     "--output_dir", str(tmp_path), "--size", "60", "--no-recenter"]) == 0
    alpha = np.asarray(Image.open(tmp_path / "rgba.png"))[..., 3]
    assert iou(alpha > 127, truth) > 0.95


def error_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    photo, truth = disk_photo(40, 60)
    image = str(save_png(tmp_path / "photo.png", photo))
    (tmp_path / "broken.png").write_text("not an image")
    wrong = str(save_png(tmp_path / "wrong.png", np.zeros((40, 61), np.uint8)))
    empty = str(save_png(tmp_path / "empty.png", np.zeros((40, 60), np.uint8)))
    full = str(save_png(tmp_path / "full.png", np.full((40, 60), 255, np.uint8)))
    flat = str(save_png(tmp_path / "flat.png", np.full((40, 60, 3), 128, np.uint8)))
    return {
        "no separable object": (["--image_path", flat], "no object found"),

        "full mask": (["--image_path", image, "--mask_path", full], "whole image"),
        "bad fraction": (["--image_path", image, "--mask_path", str(save_png(tmp_path / "m.png",
                                                                               truth.astype(np.uint8) * 255)),
                          "--object_fraction", "1.5"], "--object_fraction"),
        "missing": (["--image_path", str(tmp_path / "nope.png")], "not found"),
        "unreadable": (["--image_path", str(tmp_path / "broken.png")], "cannot read"),
        "mask size": (["--image_path", image, "--mask_path", wrong], "same size"),
        "empty mask": (["--image_path", image, "--mask_path", empty], "empty"),
    }


@pytest.mark.parametrize("case", ["missing", "unreadable", "mask size", "empty mask", "full mask", "bad fraction",
                                  "no separable object"])
def test_cli_errors_exit_2_with_one_line_and_write_nothing(tmp_path: Path, case: str) -> None:
    args, expected = error_cases(tmp_path)[case]
    out = tmp_path / "out"
    result = run_cli(*args, "--output_dir", str(out))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and expected in result.stderr
    assert not out.exists()


def test_cli_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    photo, truth = disk_photo(40, 60)
    args = ["--image_path", str(save_png(tmp_path / "p.png", photo)),
            "--mask_path", str(save_png(tmp_path / "m.png", truth.astype(np.uint8) * 255)),
            "--output_dir", str(tmp_path / "out"), "--size", "32"]
    assert cli.main(args) == 0
    (tmp_path / "out" / "mask.png").write_bytes(b"keep me")
    with pytest.raises(UserError, match="--overwrite"):
        cli.run(cli.parse_args(args))
    assert (tmp_path / "out" / "mask.png").read_bytes() == b"keep me"
    assert cli.main(args + ["--overwrite"]) == 0
    assert np.asarray(Image.open(tmp_path / "out" / "mask.png")).shape == (32, 32)


def test_rembg_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rembg", None)  # makes `import rembg` raise ImportError
    with pytest.raises(UserError, match="pip install rembg"):
        masking.rembg_mask(np.zeros((8, 8, 3), np.uint8))


def test_rembg_model_failure_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setitem(sys.modules, "rembg", types.SimpleNamespace(new_session=no_network))
    with pytest.raises(UserError, match="could not load its model"):
        masking.rembg_mask(np.zeros((8, 8, 3), np.uint8))


def test_rembg_alpha_becomes_the_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    photo, truth = disk_photo(30, 30)

    def remove(image: Image.Image, session: object) -> Image.Image:
        assert session == "session"
        rgba = np.dstack([np.asarray(image), truth.astype(np.uint8) * 255])
        return Image.fromarray(rgba)

    fake = types.SimpleNamespace(new_session=lambda: "session", remove=remove)
    monkeypatch.setitem(sys.modules, "rembg", fake)
    _, mask, _ = masking.make_input(photo, None, 30, "rembg")
    np.testing.assert_array_equal(mask, truth.astype(np.uint8) * 255)


# --- bundled examples -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, word", [("cat", "cat"), ("coffee_cup", "cup"), ("rocket", "rocket")])
def test_bundled_examples_are_square_rgba_with_an_object(name: str, word: str) -> None:
    folder = REPO / "examples" / "natural-images" / name
    rgba = np.asarray(Image.open(folder / "rgba.png"))
    assert rgba.shape == (512, 512, 4)
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "image.png")), rgba[..., :3])
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "mask.png")), rgba[..., 3])
    coverage = (rgba[..., 3] > 127).mean()
    assert 0.03 < coverage < 0.7
    assert (folder / "token_autoinit.txt").read_text().split() == [word]


# --- framing --------------------------------------------------------------------------------------

def test_recentring_scales_the_object_as_the_input_camera_sees_the_scene(tmp_path: Path) -> None:
    photo, truth = disk_photo(40, 60)
    out = tmp_path / "out"
    result = run_cli("--image_path", str(save_png(tmp_path / "photo.png", photo)),
                     "--mask_path", str(save_png(tmp_path / "m.png", truth.astype(np.uint8) * 255)),
                     "--output_dir", str(out), "--size", "100", "--object_fraction", "0.5")
    assert result.returncode == 0, result.stderr
    alpha = np.asarray(Image.open(out / "rgba.png"))[..., 3] > 127
    ys, xs = np.nonzero(alpha)
    extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    assert abs(extent - 50) <= 2  # half of the side
    assert abs((ys.min() + ys.max()) / 2 - 49.5) <= 1.5 and abs((xs.min() + xs.max()) / 2 - 49.5) <= 1.5
    framing = json.loads((out / "framing.json").read_text())
    assert framing["recentered"] and framing["object_fraction"] == 0.5 and framing["warnings"] == []


def test_default_fraction_follows_the_input_camera() -> None:
    from nerf.input_prep.framing import object_fraction

    expected = math.tan(math.asin(0.75 / 1.8)) / math.tan(math.radians(27.5))
    assert object_fraction() == pytest.approx(expected) and 0.85 < expected < 0.9
    assert object_fraction(radius=3.0) < object_fraction()


def test_poor_framing_is_warned_about(tmp_path: Path) -> None:
    from nerf.input_prep.framing import framing_warnings

    cut = np.zeros((100, 100), np.uint8)
    cut[:40, 30:70] = 255  # touches the top edge
    tiny = np.zeros((100, 100), np.uint8)
    tiny[48:52, 48:52] = 255
    two = np.zeros((100, 100), np.uint8)
    two[20:40, 20:40] = 255
    two[60:80, 60:80] = 255
    assert any("edge" in w for w in framing_warnings(cut))
    assert any("only" in w for w in framing_warnings(tiny))
    assert any("2 large separate parts" in w for w in framing_warnings(two))
    centred = np.zeros((100, 100), np.uint8)
    centred[30:70, 30:70] = 255
    assert framing_warnings(centred) == []
    photo = np.full((100, 100, 3), 128, np.uint8)
    result = run_cli("--image_path", str(save_png(tmp_path / "p.png", photo)),
                     "--mask_path", str(save_png(tmp_path / "cut.png", cut)), "--output_dir", str(tmp_path / "o"))
    assert result.returncode == 0 and "warning: the object touches the photo's edge" in result.stderr
    assert json.loads((tmp_path / "o" / "framing.json").read_text())["warnings"]


@pytest.mark.parametrize("scale,dtype", [(1, np.uint8), (255, np.uint8), (65535, np.uint16)])
def test_masks_of_any_scale_become_8_bit(tmp_path: Path, scale: int, dtype: type) -> None:
    photo, truth = disk_photo(40, 60)
    mask_file = tmp_path / "m.png"
    Image.fromarray((truth * scale).astype(dtype)).save(mask_file)
    mask = masking.load_mask(mask_file, truth.shape)
    np.testing.assert_array_equal(mask, truth.astype(np.uint8) * 255)


@pytest.mark.parametrize("kind", ["label map 0/3", "alpha only"])
def test_a_two_level_label_map_or_an_alpha_only_mask_is_read_as_binary(tmp_path: Path, kind: str) -> None:
    """The CLI as a real process: such masks become the 0/255 mask main.py reads the same way (its alpha)."""
    photo, truth = disk_photo(40, 40)
    if kind == "label map 0/3":
        mask = truth.astype(np.uint8) * 3
    else:  # colour says nothing, the alpha channel is the mask
        mask = np.dstack([np.zeros((40, 40, 3), np.uint8), truth.astype(np.uint8) * 255])
    out = tmp_path / "out"
    result = run_cli("--image_path", str(save_png(tmp_path / "photo.png", photo)),
                     "--mask_path", str(save_png(tmp_path / "m.png", mask)), "--output_dir", str(out),
                     "--size", "40", "--no-recenter")
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.asarray(Image.open(out / "mask.png")), truth.astype(np.uint8) * 255)


def test_cli_output_folder_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    photo, truth = disk_photo(40, 60)
    out = tmp_path / "out"
    out.write_text("keep")
    result = run_cli("--image_path", str(save_png(tmp_path / "p.png", photo)), "--output_dir", str(out))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "is a file" in result.stderr
    assert out.read_text() == "keep"
