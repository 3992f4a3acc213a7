"""The suite's Zero-1-to-3 rows: the main.py flags of the zero123 and joint modes, the world both priors must
share, the one-line refusal of a mode without its model, and a short suite run of both modes with tiny models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from nerf.errors import UserError
from nerf.evaluation.reconstruct import (TOY_PRIOR_WEIGHT, TOY_ZERO123_GUIDANCE_SCALE, TOY_ZERO123_WEIGHT, PriorRun,
                                         Zero123Run, reconstruction_args)
from nerf.evaluation.suite import SuiteTask, TrainedPrior
from nerf.option_checks import parse
from nerf.toy_models.tiny_zero123 import write_model

WORLD = {"objects": {"union:0": "robot"}, "held_out": {"union:100": "robot"}}


def with_world(folder: Path, world: dict = WORLD) -> Path:
    (folder / "objects.json").write_text(json.dumps(world))
    return folder


@pytest.fixture(scope="module")
def models(tiny_sd_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A tiny SD and a tiny Zero-1-to-3 (random weights), both knowing one robot and one held-out robot."""
    root = tmp_path_factory.mktemp("suite-models")
    prior = with_world(Path(shutil.copytree(tiny_sd_dir, root / "sd")))
    return prior, with_world(write_model(root / "zero123"))


def test_zero123_runs_condition_on_the_input_and_joint_runs_add_the_word(tmp_path):
    zero123 = Zero123Run(tmp_path / "z")
    alone = parse(reconstruction_args(tmp_path, tmp_path / "ws", "zero123", "reduced", cuda=False,
                                      prior=PriorRun(None, zero123=zero123)))
    assert alone.prior.guidance == "zero123" and alone.prior.zero123_model == str(tmp_path / "z")
    assert alone.prior.zero123_guidance_scale == TOY_ZERO123_GUIDANCE_SCALE and alone.objective.albedo
    assert alone.objective.lambda_prior_zero123 == [TOY_ZERO123_WEIGHT]
    joint = parse(reconstruction_args(tmp_path, tmp_path / "ws", "joint", "reduced", cuda=False,
                                      prior=PriorRun(tmp_path / "sd", word="robot", zero123=zero123)))
    assert joint.prior.guidance == "sd+zero123" and joint.prior.text == "A high-resolution DSLR image of a robot"
    assert joint.prior.pretrained_model_name_or_path == str(tmp_path / "sd")
    # each prior keeps its own weight
    assert joint.objective.lambda_prior == [TOY_PRIOR_WEIGHT]
    assert joint.objective.lambda_prior_zero123 == [TOY_ZERO123_WEIGHT]


def test_the_modes_need_a_zero123_of_the_same_world(models, tmp_path):
    prior_dir, zero123_dir = models
    without = TrainedPrior.load(prior_dir)
    task = SuiteTask("union-100", tmp_path, tmp_path / "ws", "zero123", "reduced", "cpu", 0, 1.0, without)
    with pytest.raises(UserError, match="needs a toy Zero-1-to-3"):
        without.run(task, "union:100")
    prior = TrainedPrior.load(prior_dir, zero123=Zero123Run(zero123_dir))
    assert prior.run(task, "union:100") == PriorRun(None, zero123=Zero123Run(zero123_dir))
    joint = prior.run(SuiteTask("union-100", tmp_path, tmp_path / "ws", "joint", "reduced", "cpu", 0, 1.0, prior),
                      "union:100")
    assert joint.word == "robot" and joint.zero123 == Zero123Run(zero123_dir) and joint.model == prior_dir
    other = with_world(Path(shutil.copytree(zero123_dir, tmp_path / "other")),
                       {"objects": {"union:0": "robot", "union:100": "robot"}, "held_out": {}})
    with pytest.raises(UserError, match="trained on another world"):
        TrainedPrior.load(prior_dir, zero123=Zero123Run(other))


def test_the_command_line_refuses_a_mode_without_its_model_in_one_line(models, tmp_path, capsys):
    from nerf.cli import evaluate

    prior_dir, zero123_dir = models
    work = tmp_path / "suite"
    base = ["--suite", "synthetic", "--guidance", "toy", "--toy_prior", str(prior_dir), "--work_dir", str(work),
            "--device", "cpu"]
    for modes in (["zero123"], ["prior_free", "joint"]):
        assert evaluate.main([*base, "--modes", *modes]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "needs --toy_zero123" in err[0], err
    assert evaluate.main([*base, "--modes", "zero123", "--toy_zero123", str(prior_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --toy_zero123: ") and "not a Zero-1-to-3 folder" in err[0], err
    assert not work.exists()
    _, modes = evaluate.suite_prior(evaluate.parse_args([*base, "--toy_zero123", str(zero123_dir)]))
    assert modes == ["prior_free", "toy", "toy_ti", "zero123", "joint", "oracle"]
    _, modes = evaluate.suite_prior(evaluate.parse_args(base))
    assert modes == ["prior_free", "toy", "toy_ti", "oracle"]
    # prior-free runs alone still reconstruct the prior's held-out instances, as beside the prior's runs
    prior, modes = evaluate.suite_prior(evaluate.parse_args([*base, "--modes", "prior_free"]))
    assert modes == ["prior_free"] and prior.scenes(["union"], 1) == [("union", 100)]


SHORT = ["--iters", "6", "--num_rays", "256", "--max_steps", "32", "--HW_synthetic", "16", "--eval_interval", "100"]


def test_a_short_suite_runs_both_zero123_modes_on_the_held_out_instance(models, tmp_path, one_thread):
    from nerf.evaluation.suite import run_suite

    prior_dir, zero123_dir = models
    prior = TrainedPrior.load(prior_dir, zero123=Zero123Run(zero123_dir))
    result = run_suite(tmp_path, "reduced", torch.device("cpu"), families=["union"], prior=prior,
                       modes=["zero123", "joint"], extra_args=SHORT, instances=1)
    assert [(row["scene"], row["mode"]) for row in result["rows"]] == [("union-100", "zero123"),
                                                                        ("union-100", "joint")]
    for mode, guidance in (("zero123", "zero123"), ("joint", "sd+zero123")):
        options = json.loads((tmp_path / "runs" / "union-100" / mode / "options.json").read_text())
        assert options["prior"]["guidance"] == guidance and options["prior"]["zero123_model"] == str(zero123_dir)
    assert result["settings"]["prior"]["zero123"]["model"] == str(zero123_dir)
    assert all(row["report"]["input_view"]["psnr"] > 0 for row in result["rows"])
