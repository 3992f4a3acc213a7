"""Image metrics: PSNR, SSIM and mask IoU on [H, W, C] images with values in [0, 1]."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

PSNR_CAP = 100.0  # identical images: a finite value keeps reports valid JSON
SSIM_SIGMA, SSIM_RADIUS = 1.5, 5  # the usual 11-tap Gaussian window (Wang et al. 2004)
SSIM_K1, SSIM_K2 = 0.01, 0.03


def psnr(pred: Tensor, target: Tensor) -> float:
    """Peak signal-to-noise ratio in dB for data range 1 (capped at PSNR_CAP for identical images)."""
    mse = float(((pred.double() - target.double()) ** 2).mean())
    return PSNR_CAP if mse <= 10 ** (-PSNR_CAP / 10) else -10 * math.log10(mse)


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> Tensor:
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=dtype, device=device)
    w = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return w / w.sum()


def _blur(x: Tensor, w: Tensor) -> Tensor:
    """Separable Gaussian filter of [C, 1, H, W] without padding (only windows inside the image)."""
    x = F.conv2d(x, w.view(1, 1, -1, 1))
    return F.conv2d(x, w.view(1, 1, 1, -1))


def ssim_map(pred: Tensor, target: Tensor) -> Tensor:
    """Per-channel SSIM map [C, H-10, W-10] of [H, W, C] images (differentiable, any float dtype)."""
    if min(pred.shape[:2]) <= 2 * SSIM_RADIUS:
        raise ValueError(f"SSIM needs images larger than {2 * SSIM_RADIUS + 1} pixels, got {tuple(pred.shape[:2])}")
    x = pred.permute(2, 0, 1)[:, None]
    y = target.to(pred.dtype).permute(2, 0, 1)[:, None]
    w = _gaussian_window(pred.dtype, pred.device)
    mu_x, mu_y = _blur(x, w), _blur(y, w)
    var_x = _blur(x * x, w) - mu_x**2
    var_y = _blur(y * y, w) - mu_y**2
    cov = _blur(x * y, w) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return value[:, 0]


def ssim(pred: Tensor, target: Tensor) -> float:
    """Mean structural similarity over channels and window positions, data range 1."""
    return float(ssim_map(pred.double(), target.double()).mean())


def mask_iou(pred: Tensor, target: Tensor, threshold: float = 0.5) -> float:
    """Intersection over union of the two masks thresholded at `threshold` (1 when both are empty)."""
    a, b = pred > threshold, target > threshold
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union
