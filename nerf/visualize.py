"""Turning render buffers into images and videos on disk (always written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import imageio.v2 as imageio
import numpy as np
import torch
from torch import Tensor

from nerf.fileio import atomic_path

VIDEO_FPS = 25


def to_uint8(image: Tensor) -> np.ndarray:
    """[H, W, C] (C = 1 or 3) in [0, 1] -> uint8 RGB array."""
    array = image.detach().float().clamp(0, 1).cpu().numpy()
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return (array * 255 + 0.5).astype(np.uint8)


def depth_to_image(depth: Tensor, weights_sum: Tensor, near: float, far: float) -> Tensor:
    """Absolute depth [H, W] mapped to [0, 1] over [near, far]; pixels without content stay black."""
    scaled = ((depth / weights_sum.clamp(min=1e-6)) - near) / max(far - near, 1e-6)
    return torch.where(weights_sum > 1e-3, 1 - scaled.clamp(0, 1), torch.zeros_like(depth))[..., None]


def normals_to_image(normal_image: Tensor, weights_sum: Tensor) -> Tensor:
    """Composited normals in [-1, 1] shown as (n + 1) / 2, blended onto white where there is no content."""
    return (normal_image + 1) / 2 * weights_sum[..., None] + (1 - weights_sum[..., None])


def grid(rows: Sequence[Sequence[Tensor]]) -> Tensor:
    """Tile [H, W, 3|1] images into one [rows*H, cols*W, 3] image."""
    expanded = [[img.expand(*img.shape[:2], 3) if img.shape[-1] == 1 else img for img in row] for row in rows]
    return torch.cat([torch.cat([img.detach().float().cpu() for img in row], dim=1) for row in expanded], dim=0)


def save_png(path: str | Path, image: Tensor) -> Path:
    with atomic_path(path) as tmp:
        imageio.imwrite(tmp, to_uint8(image), format="png")
    return Path(path)


def ffmpeg_available() -> bool:
    """Whether imageio can run an ffmpeg binary (imageio-ffmpeg's own, or $IMAGEIO_FFMPEG_EXE)."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return False
    return True


def save_video(path: str | Path, frames: Sequence[np.ndarray], fps: int = VIDEO_FPS) -> Path:
    """H.264 through imageio's ffmpeg; where no ffmpeg binary is installed, MPEG-4 through OpenCV's own FFmpeg
    build (OpenCV is a dependency anyway), so a machine without ffmpeg still gets its videos."""
    frames = list(frames)
    with atomic_path(path) as tmp:
        if ffmpeg_available():
            imageio.mimwrite(tmp, frames, fps=fps, quality=8, macro_block_size=1, format="FFMPEG")
        else:
            write_video_with_opencv(tmp, frames, fps)
    return Path(path)


def write_video_with_opencv(path: Path, frames: list[np.ndarray], fps: int) -> None:
    import cv2

    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"neither ffmpeg nor OpenCV can write {path.suffix} videos here; install imageio-ffmpeg "
                           "(pip install imageio-ffmpeg).")
    try:
        for frame in frames:  # [H, W, 3] uint8 RGB, as `to_uint8` makes them; OpenCV wants BGR
            writer.write(np.ascontiguousarray(frame[..., ::-1]))
    finally:
        writer.release()
