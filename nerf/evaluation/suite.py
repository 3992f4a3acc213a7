"""The synthetic benchmark: for every scene family, a prior-free and an oracle-guided reconstruction of its input
view, each scored on the input view, the validation path and the ground-truth mesh.

The prior-free run sees only the front; the oracle-guided run is told the truth from every sampled camera. The
gap between them is the 3-D shape the guidance is responsible for, and the oracle's own score is what the rest of
the pipeline (field, renderer, losses, optimiser, mesh export) can reach when the guidance is perfect.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from nerf.evaluation.evaluate import EvaluationSettings, evaluate_workspace
from nerf.evaluation.oracle import DEFAULT_STRENGTH
from nerf.evaluation.reconstruct import MODES, reconstruct
from nerf.evaluation.report import format_table, lookup
from nerf.evaluation.scene_files import Conventions, write_scene
from nerf.evaluation.scenes import FAMILIES, make_scene
from nerf.options import Options

log = logging.getLogger("realfusion")


@dataclass(frozen=True)
class SuiteSize:
    """Training size (a key of reconstruct.SIZES), ground-truth file sizes and evaluation settings."""

    train: str
    input_size: int
    view_size: int
    gt_mesh_resolution: int
    evaluation: EvaluationSettings
    views: int = 8


SUITE_SIZES = {
    "reduced": SuiteSize("reduced", input_size=128, view_size=32, gt_mesh_resolution=128,
                         evaluation=EvaluationSettings(surface_points=20_000, voxel_resolution=64, perceptual=False)),
    "default": SuiteSize("default", input_size=512, view_size=128, gt_mesh_resolution=256,
                         evaluation=EvaluationSettings()),
}
SUITE_COLUMNS = (("input PSNR", ("input_view", "psnr")), ("input IoU", ("input_view", "mask_iou")),
                 ("novel PSNR", ("novel_views", "psnr")), ("Chamfer-L1", ("geometry", "chamfer_l1")),
                 ("F@2%", ("geometry", "fscore", "2%")), ("volume IoU", ("geometry", "volume_iou")))


def run_suite(work_dir: str | Path, size: str = "reduced", device: torch.device | None = None,
              families: Sequence[str] = FAMILIES, seed: int = 0, oracle_strength: float = DEFAULT_STRENGTH) -> dict:
    """Make every scene, train both modes on it, evaluate; returns {settings, rows, table}."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work_dir, spec = Path(work_dir), SUITE_SIZES[size]
    conventions = Conventions.from_options(Options())
    rows = []
    for family in families:
        name = f"{family}-{seed}"
        scene_dir = write_scene(make_scene(family, seed), work_dir / "scenes" / name, conventions, spec.input_size,
                                spec.view_size, spec.views, spec.gt_mesh_resolution)
        for mode in MODES:
            start = time.time()
            workspace = reconstruct(scene_dir, work_dir / "runs" / name / mode, mode, spec.train, device, seed,
                                    oracle_strength)
            seconds = time.time() - start
            report = evaluate_workspace(workspace, scene_dir / "mesh.ply", scene_dir / "views",
                                        settings=spec.evaluation, device=device)
            rows.append({"scene": name, "mode": mode, "train_seconds": seconds, "report": report})
            log.info("%s %s: F@2%% %s in %.0f s", name, mode, lookup(report, ("geometry", "fscore", "2%")), seconds)
    settings = {"size": size, "device": str(device), "seed": seed, "oracle_strength": oracle_strength,
                "torch": torch.__version__, "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    return {"settings": settings, "rows": rows, "table": suite_table(rows)}


def suite_table(rows: Sequence[dict]) -> str:
    header = ["scene", "mode", *(name for name, _ in SUITE_COLUMNS), "train s"]
    body = [[row["scene"], row["mode"], *(lookup(row["report"], path) for _, path in SUITE_COLUMNS),
             f"{row['train_seconds']:.0f}"] for row in rows]
    return format_table(header, body)
