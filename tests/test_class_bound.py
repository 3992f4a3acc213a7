"""The class bound of a toy world: an instance scored as its own reconstruction is perfect, a class's own instances
score a held-out instance better than another class's, and a world without held-out instances is a one-line error."""

from __future__ import annotations

import json
from dataclasses import replace

from nerf.evaluation.image_metrics import PSNR_CAP
from nerf.evaluation.suite import SUITE_SIZES
from nerf.cli.evaluate import main as evaluate_main
from nerf.evaluation.class_bound import class_bound, ground_truth, score_as_reconstruction
from nerf.evaluation.suite import TrainedPrior

SMALL = replace(SUITE_SIZES["reduced"], view_size=16, views=4, gt_mesh_resolution=48)  # the suite's metrics


def test_an_instance_scored_as_its_own_reconstruction_is_perfect() -> None:
    truth = ground_truth("union:100", SMALL)
    score = score_as_reconstruction(truth, truth, SMALL)
    assert score["novel_psnr"] == PSNR_CAP and score["novel_iou"] == 1.0
    assert score["f_score_2"] > 0.99 and score["chamfer_l1"] < 0.01  # two samplings of one surface
    assert len(score["per_view_psnr"]) == SMALL.views - 1  # view 0 is the input camera, not a novel view


def test_a_class_tells_more_about_its_held_out_instance_than_another_class_does(tmp_path) -> None:
    def prior(held_out_word: str) -> TrainedPrior:
        return TrainedPrior(tmp_path, {"union:1": "robot", "union:2": "robot", "thin:1": "chair", "thin:2": "chair"},
                            {"union:100": held_out_word})

    own = class_bound(prior("robot"), SMALL, ["union"], 1)
    other = class_bound(prior("chair"), SMALL, ["union"], 1)  # the robot scored against the chairs instead
    mine, theirs = own["per_instance"]["union:100"], other["per_instance"]["union:100"]
    assert mine["instances"] == theirs["instances"] == 2 and mine["word"] == "robot"
    assert mine["mean"]["f_score_2"] > theirs["mean"]["f_score_2"] + 0.1
    assert mine["mean"]["novel_iou"] > theirs["mean"]["novel_iou"]
    assert mine["best"]["f_score_2"] >= mine["mean"]["f_score_2"]
    assert mine["best"]["chamfer_l1"] <= mine["mean"]["chamfer_l1"]
    assert own["per_family"]["union"]["mean"] == mine["mean"]  # one instance: the family's mean is its own


def test_a_world_without_held_out_instances_is_a_one_line_error(tmp_path, capsys) -> None:
    (tmp_path / "objects.json").write_text(json.dumps({"union:0": "robot"}))
    out = tmp_path / "class_bound.json"
    code = evaluate_main(["--suite", "synthetic", "--guidance", "toy", "--toy_prior", str(tmp_path), "--class_bound",
                          "--out", str(out)])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "held-out" in error and len(error.splitlines()) == 1 and not out.exists()
