"""Loss terms of the reconstruction, each a plain function of rendered and target tensors (weights applied by
the Trainer, which evaluates the annealed lambdas)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def image_loss(pred_rgb: Tensor, gt_rgb: Tensor, gt_alpha: Tensor) -> Tensor:
    """Colour MSE inside the object: both sides multiplied by the input mask."""
    return F.mse_loss(pred_rgb * gt_alpha, gt_rgb * gt_alpha)


def mask_loss(weights_sum: Tensor, gt_alpha: Tensor) -> Tensor:
    """Rendered opacity against the input mask."""
    return F.mse_loss(weights_sum, gt_alpha)


def entropy_loss(weights_sum: Tensor, eps: float = 1e-5) -> Tensor:
    """Binary entropy (bits) of opacity: pushes every pixel to fully empty or fully solid."""
    a = weights_sum.clamp(eps, 1 - eps)
    return (-a * torch.log2(a) - (1 - a) * torch.log2(1 - a)).mean()


def opacity_loss(weights_sum: Tensor) -> Tensor:
    return (weights_sum**2).mean()


def smooth_2d_loss(normal_image: Tensor, kernel_size: int = 9) -> Tensor:
    """MSE between the composited normal map [B, 3, H, W] and its (detached) Gaussian blur."""
    from torchvision.transforms.functional import gaussian_blur  # here: importing torchvision takes about 1 s

    blurred = gaussian_blur(normal_image.detach(), kernel_size=kernel_size)
    return F.mse_loss(normal_image, blurred)
