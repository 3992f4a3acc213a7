"""Learned image similarities, LPIPS and CLIP, used only when their weights can be loaded.

Loading follows the guidance's rules: a hub id is read from the local cache, or downloaded when the machine has
network access and HF_HUB_OFFLINE is not set; a local folder always works. When weights cannot be loaded the metric
is reported as None with a one-line notice, never replaced by a stand-in.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
LPIPS_BACKBONE_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet weights, which the lpips package loads


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


class PerceptualMetrics:
    """LPIPS (AlexNet) and CLIP image-embedding cosine similarity of [H, W, 3] images in [0, 1]."""

    def __init__(self, device: torch.device, clip_model: str = DEFAULT_CLIP_MODEL) -> None:
        self.device = device
        self.notices: list[str] = []
        self._lpips = self._load_lpips()
        self._clip = self._load_clip(clip_model)

    def _load_lpips(self):
        try:
            import lpips
        except ImportError:
            self.notices.append("LPIPS skipped: the lpips package is not installed (pip install lpips).")
            return None
        cached = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_FILE
        if _offline() and not cached.is_file():
            self.notices.append(f"LPIPS skipped: offline and torchvision's AlexNet weights are not in {cached.parent}.")
            return None
        try:
            return lpips.LPIPS(net="alex", verbose=False).to(self.device).eval()
        except Exception as exc:  # download or file errors of several types
            self.notices.append(f"LPIPS skipped: its weights could not be loaded ({_reason(exc)}).")
            return None

    def _load_clip(self, name: str):
        from transformers import CLIPVisionModelWithProjection

        try:
            return CLIPVisionModelWithProjection.from_pretrained(name).to(self.device).eval()
        except (OSError, ValueError) as exc:  # offline / not cached / not a CLIP vision checkpoint
            self.notices.append(f"CLIP similarity skipped: cannot load '{name}' ({_reason(exc)}).")
            return None

    @torch.no_grad()
    def lpips(self, pred: Tensor, target: Tensor) -> float | None:
        if self._lpips is None:
            return None
        to_net = lambda x: x.permute(2, 0, 1)[None].float().to(self.device) * 2 - 1  # noqa: E731
        return float(self._lpips(to_net(pred), to_net(target)).mean())

    @torch.no_grad()
    def _clip_embedding(self, image: Tensor) -> Tensor:
        from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

        size = self._clip.config.image_size
        x = image.permute(2, 0, 1)[None].float().to(self.device)
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        mean = x.new_tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
        return F.normalize(self._clip(pixel_values=(x - mean) / std).image_embeds.float(), dim=-1)[0]

    def clip_similarity(self, pred: Tensor, target: Tensor) -> float | None:
        if self._clip is None:
            return None
        return float(self._clip_embedding(pred) @ self._clip_embedding(target))
