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

from nerf.errors import UserError
from nerf.evaluation import image_metrics
from nerf.evaluation.geometry import F_SCORE_FRACTIONS, geometry_metrics
from nerf.evaluation.suite import SuiteSize, TrainedPrior
from nerf.mesh import Mesh
from nerf.options import Options
from nerf.scenes.files import Conventions, orbit_views, scene_mesh
from nerf.scenes.procedural import make_scene
from nerf.scenes.raytrace import over_background


@dataclass(frozen=True)
class GroundTruth:
    """An instance's files as the suite writes them: the orbit's RGBA views and the mesh."""

    views: list[torch.Tensor]  # [S, S, 4] each, view 0 at the input camera
    mesh: Mesh


def ground_truth(key: str, size: SuiteSize) -> GroundTruth:
    """The suite's ground truth of the instance `family:seed` at `size`."""
    family, _, seed = key.partition(":")
    scene = make_scene(family, int(seed))
    views = list(orbit_views(scene, Conventions.from_options(Options()), size.views, size.view_size))
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


def class_bound(prior: TrainedPrior, size: SuiteSize, families: Sequence[str], instances: int) -> dict[str, dict]:
    """For the held-out instances the suite reconstructs (the first `instances` of each family), the mean and the
    best of each score over the training instances with the same word, and the per-view PSNR of their mean; then
    the means per family. Needs a prior with held-out instances."""
    if not prior.held_out:
        raise UserError(f"{prior.model}/objects.json has no held-out instances; the class bound scores a class "
                        "against its held-out instances (train the prior with --held_out).")
    cache: dict[str, GroundTruth] = {}

    def truth_of(key: str) -> GroundTruth:
        if key not in cache:
            cache[key] = ground_truth(key, size)
        return cache[key]

    per_instance: dict[str, dict] = {}
    for family, seed in prior.scenes(families, instances):
        key = f"{family}:{seed}"
        word = prior.held_out[key]
        rows = [score_as_reconstruction(truth_of(other), truth_of(key), size)
                for other, other_word in prior.words.items() if other_word == word]
        if not rows:
            raise UserError(f"the prior {prior.model} has no training instance of {word!r} ({key}'s word).")
        per_instance[key] = {
            "word": word, "instances": len(rows),
            "mean": {name: float(np.mean([row[name] for row in rows])) for name in SCORES},
            "best": {name: (min if name == "chamfer_l1" else max)(row[name] for row in rows) for name in SCORES},
            "per_view_psnr": np.mean([row["per_view_psnr"] for row in rows], 0).tolist()}
    per_family: dict[str, dict] = {}
    for key, row in per_instance.items():
        per_family.setdefault(key.partition(":")[0], []).append(row)
    means = {family: {kind: {name: float(np.mean([row[kind][name] for row in rows])) for name in SCORES}
                      for kind in ("mean", "best")} for family, rows in per_family.items()}
    return {"per_instance": per_instance, "per_family": means}
