"""The class bound of a toy world: an instance scored as its own reconstruction is perfect, a class's own instances
score a held-out instance better than another class's, and a world without held-out instances is a one-line error."""

from __future__ import annotations

import json
from dataclasses import replace

from nerf.evaluation.image_metrics import PSNR_CAP
from nerf.evaluation.suite import SUITE_SIZES
from nerf.toy_models.check import main as check_main
from nerf.toy_models.class_bound import class_bound, ground_truth, score_as_reconstruction

SMALL = replace(SUITE_SIZES["reduced"], view_size=16, views=4, gt_mesh_resolution=48)  # the suite's metrics


def test_an_instance_scored_as_its_own_reconstruction_is_perfect() -> None:
    truth = ground_truth("union:100", SMALL)
    score = score_as_reconstruction(truth, truth, SMALL)
    assert score["novel_psnr"] == PSNR_CAP and score["novel_iou"] == 1.0
    assert score["f_score_2"] > 0.99 and score["chamfer_l1"] < 0.01  # two samplings of one surface
    assert len(score["per_view_psnr"]) == SMALL.views - 1  # view 0 is the input camera, not a novel view


def test_a_class_tells_more_about_its_held_out_instance_than_another_class_does() -> None:
    words = {"union:1": "robot", "union:2": "robot", "thin:1": "chair", "thin:2": "chair"}
    own = class_bound(words, {"union:100": "robot"}, SMALL)["union:100"]
    other = class_bound(words, {"union:100": "chair"}, SMALL)["union:100"]  # scored against the chairs instead
    assert own["instances"] == other["instances"] == 2 and own["word"] == "robot"
    assert own["mean"]["f_score_2"] > other["mean"]["f_score_2"] + 0.1
    assert own["mean"]["novel_iou"] > other["mean"]["novel_iou"]
    assert own["best"]["f_score_2"] >= own["mean"]["f_score_2"] and own["best"]["chamfer_l1"] <= own["mean"]["chamfer_l1"]


def test_a_world_without_held_out_instances_is_a_one_line_error(tmp_path, capsys) -> None:
    (tmp_path / "objects.json").write_text(json.dumps({"union:0": "robot"}))
    assert check_main([str(tmp_path), "--class_bound", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert "held-out" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "out").exists()
