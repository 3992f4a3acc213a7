"""Framing the object of a photo the way the reconstruction's input camera sees it, and saying when it cannot be.

main.py looks at the object from `--radius_rot` with the mean of `--fovy_range`, and the object has to fit in the
scene cube of half-side `--bound`. An object as large as the ball inside that cube fills `object_fraction` of the
frame, so recentring scales the mask's bounding box to that share of the square output, centred. Warnings name
inputs that recentring cannot fix: an object cut by the photo's edge, one too small or too large to have been
segmented reliably, or several separate objects.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image

from nerf.options import DataOptions, RenderOptions

SMALL_SHARE, LARGE_SHARE = 0.05, 0.70  # of the photo's area
PART_RATIO = 0.2  # a second component this large (relative to the largest) counts as another object


def object_fraction(radius: float | None = None, fovy: float | None = None, bound: float | None = None) -> float:
    """Share of the frame's side that a ball of radius `bound` spans, seen from `radius` with field of view `fovy`
    (degrees); main.py's defaults when not given (0.88 for radius 1.8, fovy 55, bound 0.75)."""
    data = DataOptions()
    radius = radius or data.orbit_radius
    fovy = fovy or data.default_fovy
    bound = bound or RenderOptions().bound
    return math.tan(math.asin(min(bound / radius, 1.0))) / math.tan(math.radians(fovy) / 2)


def recenter(image: np.ndarray, mask: np.ndarray, size: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """A `size` square with the mask's bounding box scaled to `fraction` of its side and centred; RGB outside the
    object is kept where it falls inside the square (the mask says what is object)."""
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    scale = fraction * size / max(bottom - top, right - left)
    out_image = np.zeros((size, size, 3), np.uint8)
    out_mask = np.zeros((size, size), np.uint8)
    crop_image, crop_mask = image[top:bottom, left:right], mask[top:bottom, left:right]
    height, width = max(1, round((bottom - top) * scale)), max(1, round((right - left) * scale))
    resized_image = np.asarray(Image.fromarray(crop_image).resize((width, height), Image.Resampling.BILINEAR))
    resized_mask = np.asarray(Image.fromarray(crop_mask).resize((width, height), Image.Resampling.BILINEAR))
    y0, x0 = (size - height) // 2, (size - width) // 2
    out_image[y0:y0 + height, x0:x0 + width] = resized_image
    out_mask[y0:y0 + height, x0:x0 + width] = resized_mask
    return out_image, out_mask


def framing_warnings(mask: np.ndarray) -> list[str]:
    """What makes a segmented photo a poor input, one sentence each (an empty list: nothing)."""
    binary = (mask > 127).astype(np.uint8)
    warnings = []
    edges = (binary[0].any(), binary[-1].any(), binary[:, 0].any(), binary[:, -1].any())
    if any(edges):
        warnings.append("the object touches the photo's edge, so part of it is probably cut off; take a photo with "
                        "the whole object inside the frame")
    share = float(binary.mean())
    if share < SMALL_SHARE:
        warnings.append(f"the object covers only {share:.0%} of the photo; its mask may be coarse, crop the photo "
                        "around it or take a closer one")
    elif share > LARGE_SHARE:
        warnings.append(f"the object covers {share:.0%} of the photo; check that the mask did not take in "
                        "background")
    count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    areas = np.sort(stats[1:, cv2.CC_STAT_AREA])[::-1]
    if count > 2 and areas[1] >= PART_RATIO * areas[0]:
        warnings.append(f"the mask has {int((areas >= PART_RATIO * areas[0]).sum())} large separate parts; a "
                        "reconstruction expects one object (pass --box or --mask_path to choose it)")
    return warnings
