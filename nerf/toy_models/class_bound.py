"""What a class can tell about its held-out instances, before any prior is trained.

A prior that knows a class, but not the instance, can at best imagine some instance of that class on the hidden side.
So every training instance of a class is scored as if it were the reconstruction of each held-out instance of the
class: its ground-truth views of the suite's orbit (k >= 1, the novel views) and its mesh against the held-out
instance's, with the suite's own metrics and sizes. The mean over the class's training instances is what "imagining
the class" scores; set beside a prior-free reconstruction, it bounds what the class word can add to it in this
world, and so whether the suite's targets for the class word can be met at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from nerf.evaluation import image_metrics
from nerf.evaluation.geometry import F_SCORE_FRACTIONS, geometry_metrics
from nerf.evaluation.suite import SuiteSize
from nerf.mesh import Mesh
from nerf.options import Options
from nerf.scenes.files import Conventions, scene_mesh
from nerf.scenes.procedural import make_scene
from nerf.scenes.raytrace import over_background, render_rgba


@dataclass(frozen=True)
class GroundTruth:
    """An instance's files as the suite writes them: the orbit's RGBA views and the mesh."""

    views: list[torch.Tensor]  # [S, S, 4] each, view 0 at the input camera
    mesh: Mesh


def ground_truth(key: str, size: SuiteSize) -> GroundTruth:
    """The suite's ground truth of the instance `family:seed` at `size`."""
    family, _, seed = key.partition(":")
    scene = make_scene(family, int(seed))
    orbit = Conventions.from_options(Options()).orbit(size.views, size.view_size)
    views = [render_rgba(scene, orbit.select(k, k + 1))[0] for k in range(size.views)]
    return GroundTruth(views, scene_mesh(scene, size.gt_mesh_resolution))


def score_as_reconstruction(imagined: GroundTruth, truth: GroundTruth, size: SuiteSize) -> dict[str, float | list]:
    """The suite's novel-view and geometry scores of `imagined` taken as the reconstruction of `truth`."""
    novel = range(1, len(truth.views))
    psnr = [image_metrics.psnr(over_background(imagined.views[k]), over_background(truth.views[k])) for k in novel]
    iou = [image_metrics.mask_iou(imagined.views[k][..., 3], truth.views[k][..., 3]) for k in novel]
    settings = size.evaluation
    geometry = geometry_metrics(imagined.mesh, truth.mesh, settings.surface_points, F_SCORE_FRACTIONS,
                                settings.voxel_resolution, settings.seed)
    return {"novel_psnr": float(np.mean(psnr)), "novel_iou": float(np.mean(iou)),
            "chamfer_l1": geometry["chamfer_l1"], "f_score_2": geometry["fscore"]["2%"], "per_view_psnr": psnr}


SCORES = ("novel_psnr", "novel_iou", "chamfer_l1", "f_score_2")


def class_bound(words: dict[str, str], held_out: dict[str, str], size: SuiteSize,
                families: Sequence[str] | None = None, instances: int = 2) -> dict[str, dict]:
    """Per held-out instance (the first `instances` of each family, as the suite picks them): the mean and the best
    of each score over the training instances with the same word, and the per-view PSNR of their mean."""
    chosen: dict[str, list[str]] = {}
    for key in held_out:
        family = key.partition(":")[0]
        if families is None or family in families:
            chosen.setdefault(family, []).append(key)
    cache: dict[str, GroundTruth] = {}

    def truth_of(key: str) -> GroundTruth:
        if key not in cache:
            cache[key] = ground_truth(key, size)
        return cache[key]

    report = {}
    for keys in chosen.values():
        for key in keys[:instances]:
            rows = [score_as_reconstruction(truth_of(other), truth_of(key), size)
                    for other, word in words.items() if word == held_out[key]]
            if not rows:
                continue
            best = {name: (min if name == "chamfer_l1" else max)(row[name] for row in rows) for name in SCORES}
            report[key] = {"word": held_out[key], "instances": len(rows),
                           "mean": {name: float(np.mean([row[name] for row in rows])) for name in SCORES},
                           "best": best,
                           "per_view_psnr": np.mean([row["per_view_psnr"] for row in rows], 0).tolist()}
    return report
