"""Orbit figures: each reconstruction rendered along the ground truth's circular path, one row per workspace, the
ground-truth views as the last row, so hidden sides can be compared at a glance."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from nerf.errors import UserError
from nerf.evaluation.workspace import TrainedField
from nerf.scenes.files import Conventions, read_rgba_png
from nerf.scenes.raytrace import over_background
from nerf.visualize import save_png


def orbit_rows(workspaces: Sequence[Path], gt_views: Path, device: torch.device) -> list[torch.Tensor]:
    """[H, N*W, 3] rows: every workspace's renders of the N views of `gt_views`' path, then the ground truth."""
    files = sorted(Path(gt_views).glob("*.png"))
    if len(files) < 2:
        raise UserError(f"--gt_views {gt_views} needs at least two RGBA PNGs of the circular path.")
    truth = [over_background(read_rgba_png(f)) for f in files]
    size = truth[0].shape[0]
    rows = []
    for workspace in workspaces:
        field = TrainedField.load(workspace, device)
        orbit = Conventions.from_options(field.opt).orbit(len(files), size, left_handed=field.opt.uses("left_handed"))
        rows.append(torch.cat([field.render(orbit, k)["image"] for k in range(len(files))], dim=1))
    rows.append(torch.cat(truth, dim=1))
    return rows


def orbit_figure(workspaces: Sequence[Path], gt_views: Path, out: Path, device: torch.device) -> Path:
    """The rows of `orbit_rows` stacked into one PNG (row order: the workspaces as given, ground truth last)."""
    return save_png(out, torch.cat(orbit_rows(workspaces, gt_views, device), dim=0))
