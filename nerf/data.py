"""The input view: the RGBA photograph, its mask and the camera it is assumed to be taken from."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from nerf.cameras import CameraBatch, fixed_cameras
from nerf.errors import UserError
from nerf.mask_levels import two_level_object_value

log = logging.getLogger("realfusion")
EXTRACT_MASK_HINT = "run scripts/extract-mask.py --image_path IMAGE --output_dir DIR to make a square RGBA input"


def pad_square(raw: np.ndarray) -> np.ndarray:
    """The image centred on a square of transparent pixels (side = its longer side)."""
    height, width = raw.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    return cv2.copyMakeBorder(raw, top, side - height - top, left, side - width - left, cv2.BORDER_CONSTANT,
                              value=(0, 0, 0, 0))


def load_rgba(path: str | Path, size: int, pad_to_square: bool = False) -> Tensor:
    """Read an RGBA PNG (8 or 16 bit), resize it to size x size with area filtering; [size, size, 4] in [0, 1].

    Unlike the original, a non-square image is refused rather than squashed (or, `pad_to_square`, padded with
    transparent borders), and an image without a usable alpha channel is refused rather than failing later in the
    mask loss.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--image_path {path} is a folder; give the RGBA PNG inside it ({EXTRACT_MASK_HINT}).")
    if not path.is_file():
        raise UserError(f"--image_path {path} does not exist; give an RGBA PNG ({EXTRACT_MASK_HINT}).")
    try:
        open(path, "rb").close()  # cv2 says only "nothing read"; the operating system says why
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except PermissionError as exc:
        raise UserError(f"--image_path {path} cannot be opened: {exc.strerror}; fix its permissions.") from None
    except cv2.error as exc:  # e.g. a header claiming more pixels than OpenCV reads (2^30)
        raise UserError(f"--image_path {path} cannot be read by OpenCV ({exc.err}); give an RGBA PNG of a few "
                        f"megapixels at most ({EXTRACT_MASK_HINT}).") from None
    if raw is None:
        raise UserError(f"--image_path {path} is not a readable image; give an RGBA PNG ({EXTRACT_MASK_HINT}).")
    if raw.ndim != 3 or raw.shape[2] != 4:
        raise UserError(f"--image_path {path} has no alpha channel (the object mask); {EXTRACT_MASK_HINT}.")
    full = np.iinfo(raw.dtype).max if np.issubdtype(raw.dtype, np.integer) else 1.0
    object_value = two_level_object_value(raw[..., 3], full)
    if object_value is not None:
        log.info("--image_path %s: its alpha holds only 0 and %g, read as a binary mask (object = %g)", path,
                 object_value, object_value)
        raw = raw.copy()
        raw[..., 3] = np.where(raw[..., 3] > 0, full, 0).astype(raw.dtype)
    height, width = raw.shape[:2]
    if height != width and pad_to_square:
        raw = pad_square(raw)
        height = width = raw.shape[0]
    if height != width:
        raise UserError(f"--image_path {path} is {width}x{height}, not square; add --pad_to_square, or "
                        f"{EXTRACT_MASK_HINT} (it pads to a square).")
    rgba = cv2.cvtColor(raw, cv2.COLOR_BGRA2RGBA).astype(np.float32) / float(full)
    if not np.isfinite(rgba).all():
        raise UserError(f"--image_path {path} has NaN or infinite pixels; save it again as an 8- or 16-bit RGBA PNG.")
    if size != height:
        interpolation = cv2.INTER_AREA if size < height else cv2.INTER_LINEAR
        rgba = cv2.resize(rgba, (size, size), interpolation=interpolation)
    rgba = np.clip(rgba, 0.0, 1.0)
    alpha = rgba[..., 3]
    if alpha.max() < 0.5:
        raise UserError(f"--image_path {path} has an empty alpha channel (no pixel at half opacity or more: no "
                        f"object; a label map of several values?); give alpha 0 for background and full for the "
                        f"object, {EXTRACT_MASK_HINT}.")
    if alpha.min() > 0.5:
        raise UserError(f"--image_path {path} has a fully opaque alpha channel (no background); {EXTRACT_MASK_HINT}.")
    return torch.from_numpy(np.ascontiguousarray(rgba))


@dataclass
class RealView:
    """The input image with the camera of the original's convention (phi = 0, theta = pose_angle)."""

    rgba: Tensor  # [H, W, 4], straight (not premultiplied) colour, alpha = mask
    camera: CameraBatch

    @classmethod
    def from_file(cls, path: str | Path, size: int, pose_angle: float, radius: float, fovy: float,
                  left_handed: bool = False, pad_to_square: bool = False) -> "RealView":
        rgba = load_rgba(path, size, pad_to_square)
        camera = fixed_cameras(pose_angle, torch.zeros(1), radius, fovy, size, left_handed=left_handed)
        return cls(rgba, camera)

    @property
    def size(self) -> int:
        return self.rgba.shape[0]

    def to(self, device: torch.device | str) -> "RealView":
        return RealView(self.rgba.to(device), self.camera.to(device))

    def sample(self, num_rays: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Random pixels (with replacement): rays_o, rays_d [1, N, 3] and their RGBA [1, N, 4]."""
        rays_o, rays_d, inds = self.camera.rays(num_rays, generator)
        return rays_o, rays_d, self.rgba.reshape(1, -1, 4)[:, inds]

    def full(self) -> tuple[Tensor, Tensor, Tensor]:
        """All pixels: rays_o, rays_d [1, H*W, 3] and the image [1, H, W, 4]."""
        rays_o, rays_d, _ = self.camera.rays()
        return rays_o, rays_d, self.rgba[None]
