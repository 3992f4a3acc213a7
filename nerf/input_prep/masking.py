"""Object masks for single-image inputs: load, segment, clean up, pad to a square, write.

Stage two takes a square RGBA image whose alpha marks the object. This module turns a photo (and
optionally an existing mask) into that input. The default segmenter is OpenCV's GrabCut seeded from
a prior (border = background, interior = probably object), which runs offline on a CPU; `rembg` is
used only when asked for and installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nerf.input_prep.framing import framing_warnings, recenter
from nerf.errors import UserError
from nerf.fileio import write_atomic
from nerf.mask_levels import two_level_object_value

OUTPUT_NAMES = ("image.png", "mask.png", "rgba.png")

# GrabCut labels, named for readability.
BACKGROUND, FOREGROUND = cv2.GC_BGD, cv2.GC_FGD
PROBABLY_BACKGROUND, PROBABLY_FOREGROUND = cv2.GC_PR_BGD, cv2.GC_PR_FGD


def load_rgb(path: str | Path) -> np.ndarray:
    """Read any PIL-readable photo as uint8 RGB [H, W, 3], honouring its EXIF orientation."""
    image = _open_image(path, "image")
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def load_mask(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Read a mask as 8-bit grey [H, W] whatever its bit depth or scale (0/1, 0/255, 16-bit, a two-level label
    map, or held in the alpha channel); it must match the photo's size `shape` = (H, W) and mark both object and
    background, as main.py reads the alpha of its input (`nerf.mask_levels`)."""
    image = _open_image(path, "mask")
    if image.mode in ("RGBA", "LA", "PA") and image.getextrema()[-1][0] < 255:  # not all opaque: alpha is the mask
        image = image.getchannel("A")
    values = np.asarray(image if image.mode.startswith(("I", "F")) else image.convert("L"), np.float64)
    if values.ndim == 3:
        values = values[..., 0]
    if values.shape != tuple(shape):
        raise UserError(
            f"mask {path} is {values.shape[1]}x{values.shape[0]} but the image is {shape[1]}x{shape[0]}: "
            "pass a mask of the same size as the image"
        )
    top = values.max()
    if top <= 0:
        raise UserError(f"mask {path} is empty (no object); pass a mask whose object pixels are non-zero")
    full = 1.0 if top <= 1 else 255.0 if top <= 255 else 65535.0  # 0/1, 8-bit or 16-bit masks
    if two_level_object_value(values, full) is not None:  # a label map's 0/3: binary
        values = np.where(values > 0, full, 0.0)
    mask = np.clip(np.round(values / full * 255), 0, 255).astype(np.uint8)
    if mask.max() < 128:
        raise UserError(f"mask {path} has no value at half intensity or more (its values go up to {top:g}; a label "
                        f"map of several values?); pass a mask with background 0 and the object at full intensity")
    if mask.min() >= 128:
        raise UserError(f"mask {path} covers the whole image (no background); pass a mask with background at zero")
    return mask


def _open_image(path: str | Path, what: str) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}; check the path")
    try:
        image = Image.open(path)
        image.load()
    except PermissionError as error:
        raise UserError(f"{what} {path} cannot be opened: {error.strerror}; fix its permissions") from None
    except Image.DecompressionBombError as error:
        raise UserError(f"{what} {path} is too large to read ({error}); pass a photo of a few megapixels") from None
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"cannot read {what} {path} ({error}); pass a PNG or JPEG file") from error
    return image


def border_seeds(shape: tuple[int, int], margin: float = 0.03) -> np.ndarray:
    """Generic prior: a thin border ring is background, everything inside may be the object."""
    h, w = shape
    seeds = np.full((h, w), PROBABLY_FOREGROUND, np.uint8)
    b = max(1, round(margin * min(h, w)))
    seeds[:b], seeds[-b:], seeds[:, :b], seeds[:, -b:] = BACKGROUND, BACKGROUND, BACKGROUND, BACKGROUND
    return seeds


def box_seeds(shape: tuple[int, int], box: Sequence[int]) -> np.ndarray:
    """Prior from a user box (x0, y0, x1, y1), in pixels: outside is background, inside may be the object."""
    h, w = shape
    x0, y0, x1, y1 = (int(v) for v in box)
    x0, x1 = max(0, x0), min(w, x1)
    y0, y1 = max(0, y0), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        raise UserError(f"box {tuple(box)} does not overlap the {w}x{h} image; give x0 y0 x1 y1 inside it")
    if (x1 - x0) * (y1 - y0) == h * w:
        raise UserError("box covers the whole image, leaving no background to learn from; draw it tighter")
    seeds = np.full((h, w), BACKGROUND, np.uint8)
    seeds[y0:y1, x0:x1] = PROBABLY_FOREGROUND
    return seeds


def grabcut_mask(
    image: np.ndarray, seeds: np.ndarray | None = None, iterations: int = 8, max_side: int = 640, seed: int = 0
) -> np.ndarray:
    """Segment `image` (uint8 RGB) with GrabCut started from `seeds` (GrabCut labels, default border prior).

    Large photos are segmented at `max_side` and the mask is upsampled: GrabCut's cost grows with the
    pixel count and the mask only needs to be as sharp as the 512-pixel output. Returns bool [H, W].
    """
    h, w = image.shape[:2]
    if seeds is None:
        seeds = border_seeds((h, w))
    labels = set(np.unique(seeds).tolist())
    if not labels & {BACKGROUND, PROBABLY_BACKGROUND} or not labels & {FOREGROUND, PROBABLY_FOREGROUND}:
        raise UserError("the GrabCut prior needs both background and object pixels; use a smaller box")
    scale = min(1.0, max_side / max(h, w))
    small = (max(1, round(w * scale)), max(1, round(h * scale)))
    work = cv2.resize(image, small, interpolation=cv2.INTER_AREA) if scale < 1 else image
    labels_work = cv2.resize(seeds, small, interpolation=cv2.INTER_NEAREST) if scale < 1 else seeds.copy()
    cv2.setRNGSeed(seed)  # GrabCut's GMM initialisation uses OpenCV's global RNG (k-means)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(
        np.ascontiguousarray(work[..., ::-1]), labels_work, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK
    )
    fg = np.isin(labels_work, (FOREGROUND, PROBABLY_FOREGROUND)).astype(np.float32)
    if scale < 1:
        fg = cv2.resize(fg, (w, h), interpolation=cv2.INTER_LINEAR)
    return fg >= 0.5


def rembg_mask(image: np.ndarray) -> np.ndarray:
    """Salient-object alpha from `rembg` (the original's extractor); needs the package and its model."""
    try:
        import rembg
    except ImportError as error:
        raise UserError("rembg is not installed: pip install rembg, or use --method grabcut") from error
    try:
        session = rembg.new_session()
    except Exception as error:  # the model download/loading can fail in many library-specific ways
        raise UserError(
            f"rembg could not load its model ({type(error).__name__}: {error}); "
            "connect to the internet once or use --method grabcut"
        ) from error
    rgba = rembg.remove(Image.fromarray(image), session=session)
    return np.asarray(rgba.convert("RGBA"))[..., 3]


def cleanup_mask(
    mask: np.ndarray, keep_ratio: float = 0.2, hole_ratio: float = 0.02, smooth_px: int = 2
) -> np.ndarray:
    """Keep the main object: drop specks, keep components at least `keep_ratio` of the largest, fill holes.

    Holes smaller than `hole_ratio` of the object's area are filled (segmentation noise); larger ones
    are real openings (a mug's handle) and stay. Returns bool [H, W].
    """
    binary = np.asarray(mask, bool).astype(np.uint8)
    if smooth_px > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * smooth_px + 1, 2 * smooth_px + 1))
        binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel)
        binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count <= 1:
        return np.zeros(mask.shape, bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= keep_ratio * areas.max()) + 1
    kept = np.isin(labels, keep)
    # Label 0 is the object itself; every other label is a connected piece of background.
    _, labels, stats, _ = cv2.connectedComponentsWithStats((~kept).astype(np.uint8), connectivity=4)
    h, w = kept.shape
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    right, bottom = left + stats[:, cv2.CC_STAT_WIDTH], top + stats[:, cv2.CC_STAT_HEIGHT]
    enclosed = (left > 0) & (top > 0) & (right < w) & (bottom < h)
    small = stats[:, cv2.CC_STAT_AREA] < hole_ratio * kept.sum()
    holes = np.flatnonzero(enclosed & small)
    return kept | np.isin(labels, holes[holes > 0])


def expand_to_size(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad the shorter side to a square (floor of the difference / 2 before, the rest after), resize.

    The image is resized bilinearly, the mask with nearest neighbour so it keeps its values; an input
    already `size`x`size` is returned unchanged.
    """
    h, w = mask.shape
    if (h, w) == (size, size):
        return image, mask
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    square_image = np.zeros((side, side, 3), np.uint8)
    square_mask = np.zeros((side, side), np.uint8)
    square_image[top : top + h, left : left + w] = image
    square_mask[top : top + h, left : left + w] = mask
    if side == size:
        return square_image, square_mask
    resized_image = Image.fromarray(square_image).resize((size, size), Image.Resampling.BILINEAR)
    resized_mask = Image.fromarray(square_mask).resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(resized_image), np.asarray(resized_mask)


def existing_outputs(out_dir: str | Path) -> list[Path]:
    """The outputs that a run into `out_dir` would overwrite."""
    return [Path(out_dir) / name for name in OUTPUT_NAMES if (Path(out_dir) / name).exists()]


def write_outputs(out_dir: str | Path, image: np.ndarray, mask: np.ndarray) -> dict[str, Path]:
    """Write image.png (RGB), mask.png (grey) and the square rgba.png, each atomically."""
    out_dir = Path(out_dir)
    rgba = np.concatenate([image, mask[..., None]], axis=-1)
    arrays = dict(zip(OUTPUT_NAMES, (image, mask, rgba)))
    return {
        name: write_atomic(out_dir / name, lambda tmp, a=array: Image.fromarray(a).save(tmp, format="PNG"))
        for name, array in arrays.items()
    }


def make_input(
    image: np.ndarray,
    mask: np.ndarray | None,
    size: int = 512,
    method: str = "grabcut",
    seeds: np.ndarray | None = None,
    fraction: float | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Photo (+ optional mask) -> square `size` image, 8-bit mask and framing warnings; extracts the object if no
    mask is given. `fraction`: recentre the object to span that share of the square (None: pad the photo)."""
    if size < 1:
        raise UserError(f"--size must be positive, got {size}")
    if mask is None:
        if method == "grabcut":
            mask = cleanup_mask(grabcut_mask(image, seeds)).astype(np.uint8) * 255
        elif method == "rembg":
            mask = rembg_mask(image)
        else:
            raise UserError(f"unknown masking method {method!r}; use grabcut or rembg")
    if not mask.any():
        raise UserError("the mask is empty (no object found); pass --mask_path or a --box around the object")
    warnings = framing_warnings(mask)
    if fraction is None:
        square_image, square_mask = expand_to_size(image, mask, size)
    else:
        square_image, square_mask = recenter(image, mask, size, fraction)
    return square_image, square_mask, warnings
