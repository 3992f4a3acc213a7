"""Evaluate one trained workspace: the input view, novel views against ground-truth renders, geometry against a
ground-truth mesh. Returns a JSON-ready report; what cannot be measured is None, with a notice saying why."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nerf.data import load_rgba
from nerf.errors import UserError
from nerf.evaluation import image_metrics
from nerf.evaluation.geometry import F_SCORE_FRACTIONS, geometry_metrics, load_mesh
from nerf.evaluation.perceptual import DEFAULT_CLIP_MODEL, PerceptualMetrics
from nerf.scenes.raytrace import over_background
from nerf.scenes.files import Conventions, read_rgba_png
from nerf.evaluation.workspace import TrainedField


@dataclass
class EvaluationSettings:
    """How finely geometry is measured, and which learned metrics to try."""

    mesh_resolution: int | None = None  # None: the workspace's --mesh_resolution
    surface_points: int = 100_000
    voxel_resolution: int = 128
    perceptual: bool = True
    clip_model: str = DEFAULT_CLIP_MODEL
    seed: int = 0


def _image_scores(render: dict[str, torch.Tensor], rgba: torch.Tensor) -> dict[str, float]:
    target = over_background(rgba)
    return {"psnr": image_metrics.psnr(render["image"], target), "ssim": image_metrics.ssim(render["image"], target),
            "mask_iou": image_metrics.mask_iou(render["opacity"], rgba[..., 3])}


def _mean(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def input_view(field: TrainedField, image_path: str | Path) -> dict[str, float]:
    """The final render of the input camera against the input RGBA (at the resolution it was trained with)."""
    opt = field.opt
    rgba = load_rgba(image_path, opt.data.HW_real, opt.data.pad_to_square)
    camera = Conventions.from_options(opt).input_camera(opt.data.HW_real, left_handed=opt.uses("left_handed"))
    return _image_scores(field.render(camera), rgba)


def novel_views(field: TrainedField, views_dir: str | Path, perceptual: PerceptualMetrics | None) -> dict:
    """Every view k of the circular path (azimuth k/N * 360) against its ground truth; means over k >= 1
    (view 0 is the input camera)."""
    files = sorted(Path(views_dir).glob("*.png"))
    if len(files) < 2:
        raise UserError(f"--gt_views {views_dir} needs at least two RGBA PNGs (views of the circular path, "
                        "the first at the input camera); make them with scripts/make-synthetic-scene.py.")
    views = [read_rgba_png(f) for f in files]
    size = views[0].shape[0]
    if any(v.shape[:2] != (size, size) for v in views):
        raise UserError(f"--gt_views {views_dir}: every view must be square and of the same size.")
    opt = field.opt
    orbit = Conventions.from_options(opt).orbit(len(views), size, left_handed=opt.uses("left_handed"))
    per_view = []
    for k, rgba in enumerate(views):
        render = field.render(orbit, k)
        scores = _image_scores(render, rgba)
        if perceptual is not None:
            target = over_background(rgba)
            scores["lpips"] = perceptual.lpips(render["image"], target)
            scores["clip_similarity"] = perceptual.clip_similarity(render["image"], target)
        per_view.append({"file": files[k].name, "azimuth": float(orbit.phi[k]), **scores})
    novel = per_view[1:]
    keys = [key for key in per_view[0] if key not in ("file", "azimuth")]
    return {"count": len(novel), **{key: _mean([v[key] for v in novel]) for key in keys}, "per_view": per_view}


def evaluate_workspace(workspace: str | Path, gt_mesh: str | Path | None = None, gt_views: str | Path | None = None,
                       image_path: str | Path | None = None, settings: EvaluationSettings | None = None,
                       device: torch.device | None = None) -> dict:
    """The full report of one workspace (see the module docstring)."""
    settings = settings or EvaluationSettings()
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    field = TrainedField.load(workspace, device)
    report: dict = {"workspace": str(workspace), "step": field.step, "notices": []}
    report["input_view"] = input_view(field, image_path or field.opt.data.image_path)
    if gt_views is not None:
        perceptual = PerceptualMetrics(device, settings.clip_model) if settings.perceptual else None
        report["novel_views"] = novel_views(field, gt_views, perceptual)
        report["notices"] += perceptual.notices if perceptual else ["LPIPS and CLIP similarity not requested."]
    if gt_mesh is not None:
        truth = load_mesh(gt_mesh)
        try:
            mesh = field.density_mesh(settings.mesh_resolution)
        except UserError as exc:  # an empty or full field has no surface: geometry cannot be scored
            report["geometry"] = None
            report["notices"].append(f"geometry skipped: {exc}")
        else:
            report["geometry"] = geometry_metrics(mesh, truth, settings.surface_points, F_SCORE_FRACTIONS,
                                                  settings.voxel_resolution, settings.seed)
            report["geometry"]["mesh_faces"] = int(len(mesh.faces))
    return report
