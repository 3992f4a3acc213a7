"""The evaluation suite's runs with a trained prior: the main.py flags of a word run and of a learned-token run, the
prior's words, and the textual-inversion stage at the prior's own resolution."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from nerf.errors import UserError
from nerf.evaluation.reconstruct import TOY_LAMBDA_MASK, TOY_PRIOR_WEIGHT, PriorRun, reconstruction_args
from nerf.evaluation.suite import SuiteTask, TrainedPrior
from nerf.option_checks import parse
from nerf.pipeline import PLACEHOLDER, TokenSettings, ensure, learn_token, training_resolution
from tests.test_reconstruction import shaded_sphere_rgba


def test_a_word_run_prompts_with_the_word_and_a_token_run_with_the_learned_token(tmp_path):
    model = tmp_path / "prior"
    word = parse(reconstruction_args(tmp_path, tmp_path / "ws", "toy", "reduced", cuda=False,
                                     prior=PriorRun(model, 7.5, word="cup")))
    assert word.prior.guidance == "sd" and word.prior.pretrained_model_name_or_path == str(model)
    assert word.prior.text == "A high-resolution DSLR image of a cup" and word.prior.guidance_scale == 7.5
    assert word.prior.learned_embeds_path is None
    # the settings measured for a small prior: its own SDS weight, albedo renders throughout
    assert word.objective.lambda_prior == [TOY_PRIOR_WEIGHT] and word.objective.albedo
    token = parse(reconstruction_args(tmp_path, tmp_path / "ws", "toy_ti", "reduced", cuda=False,
                                      prior=PriorRun(model, learned_embeds=tmp_path / "e.bin")))
    assert token.prior.text == "A high-resolution DSLR image of a <token>"
    assert token.prior.learned_embeds_path == str(tmp_path / "e.bin")
    prior_free = parse(reconstruction_args(tmp_path, tmp_path / "ws", "prior_free", "reduced", cuda=False))
    assert prior_free.objective.lambda_prior == [0.0]
    with pytest.raises(ValueError):
        reconstruction_args(tmp_path, tmp_path / "ws", "toy", "reduced")


def test_the_prior_s_words_come_from_its_objects_json(tmp_path):
    with pytest.raises(UserError, match="objects.json"):
        TrainedPrior.load(tmp_path)
    (tmp_path / "objects.json").write_text(json.dumps({"union:0": "robot"}))
    prior = TrainedPrior.load(tmp_path, guidance_scale=10.0)
    task = SuiteTask("union-0", tmp_path, tmp_path / "ws", "toy", "reduced", "cpu", 0, 10.0, prior)
    assert prior.run(task, "union:0").word == "robot"
    with pytest.raises(UserError, match="does not know the scene thin:0"):
        prior.run(task, "thin:0")


def test_word_runs_and_token_runs_each_guide_at_their_own_scale(tmp_path, monkeypatch):
    from nerf import pipeline
    from nerf.cli.evaluate import parse_args
    from nerf.evaluation.reconstruct import TOY_GUIDANCE_SCALE, TOY_TI_GUIDANCE_SCALE

    (tmp_path / "objects.json").write_text(json.dumps({"union:0": "robot"}))
    monkeypatch.setattr(pipeline, "ensure", lambda stage: tmp_path / "learned_embeds.bin")  # no token is learned
    prior = TrainedPrior.load(tmp_path, guidance_scale=20.0, ti_guidance_scale=7.5)
    runs = {mode: prior.run(SuiteTask("union-0", tmp_path, tmp_path / "ws", mode, "reduced", "cpu", 0, 1.0, prior),
                            "union:0") for mode in ("toy", "toy_ti")}
    assert runs["toy"].guidance_scale == 20.0 and runs["toy_ti"].guidance_scale == 7.5
    defaults = parse_args(["--suite", "synthetic", "--guidance", "toy"])
    assert (defaults.guidance_scale, defaults.ti_guidance_scale) == (TOY_GUIDANCE_SCALE, TOY_TI_GUIDANCE_SCALE)


def test_textual_inversion_stage_learns_a_token_at_the_model_resolution(tiny_sd_dir, tmp_path):
    assert training_resolution(str(tiny_sd_dir)) == 16 and training_resolution("org/hub-model") == 512
    image = shaded_sphere_rgba(tmp_path / "rgba.png", size=32)
    stage = learn_token(image, "dog", tmp_path / "token", TokenSettings(str(tiny_sd_dir), steps=2))
    assert "--resolution=16" in stage.args
    embeds = ensure(stage)
    learned = torch.load(embeds, weights_only=True)
    assert list(learned) == [PLACEHOLDER] and torch.isfinite(learned[PLACEHOLDER]).all()
    assert sorted(p.name for p in (tmp_path / "token" / "data").iterdir()) == ["rgba.png"]
    before = embeds.stat().st_mtime_ns
    assert stage.complete() and ensure(stage) == embeds and embeds.stat().st_mtime_ns == before  # reused


def test_a_failing_textual_inversion_stage_says_why(tiny_sd_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_sd_dir, model)
    image = shaded_sphere_rgba(tmp_path / "rgba.png", size=32)
    with pytest.raises(UserError, match="stage token: .*initializer"):
        ensure(learn_token(image, "two words", tmp_path / "token", TokenSettings(str(model), steps=1)))
    (model / "unet" / "config.json").unlink()
    with pytest.raises(UserError, match="not a readable diffusers model folder"):
        training_resolution(str(model))


def test_every_run_with_a_trained_prior_weights_the_input_silhouette_alike_unless_told_otherwise(tmp_path):
    from nerf.evaluation.suite import task_args

    (tmp_path / "objects.json").write_text(json.dumps({"union:0": "robot"}))
    prior = TrainedPrior.load(tmp_path)

    def lambda_mask(mode: str, prior_: TrainedPrior | None, main_args: tuple[str, ...] = ()) -> list[float]:
        task = SuiteTask("union-0", tmp_path, tmp_path / "ws", mode, "reduced", "cpu", 0, 10.0, prior_, main_args)
        return parse(reconstruction_args(tmp_path, tmp_path / "ws", "prior_free", "reduced", cuda=False,
                                         extra_args=task_args(task))).objective.lambda_mask

    assert lambda_mask("prior_free", prior) == lambda_mask("toy", prior) == [TOY_LAMBDA_MASK] != [0.5]
    assert lambda_mask("prior_free", prior, ("--lambda_mask", "0.5")) == [0.5]  # --main_args win
    assert lambda_mask("prior_free", None) == [0.5]  # without a trained prior: main.py's (the original's) weight


def test_a_class_prior_is_evaluated_on_its_held_out_instances(tmp_path):
    world = {"objects": {"union:0": "robot", "union:1": "robot", "thin:0": "chair"},
             "held_out": {"union:100": "robot", "union:101": "robot", "union:102": "robot", "thin:100": "chair"}}
    (tmp_path / "objects.json").write_text(json.dumps(world))
    prior = TrainedPrior.load(tmp_path)
    assert prior.scenes(["union", "thin"], 2) == [("union", 100), ("union", 101), ("thin", 100)]
    task = SuiteTask("union-101", tmp_path, tmp_path / "runs" / "union-101" / "toy", "toy", "reduced", "cpu", 0, 1.0,
                     prior)
    assert prior.run(task, "union:101").word == "robot"  # the class word names the instance it never saw
    with pytest.raises(UserError, match="no instance of primitive"):
        prior.scenes(["primitive"], 2)


def test_the_summary_averages_instances_and_seeds_per_family_and_mode():
    from nerf.evaluation.suite import summary_table

    def row(scene: str, mode: str, f: float) -> dict:
        return {"scene": scene, "mode": mode, "report": {"geometry": {"fscore": {"2%": f}}}}

    rows = [row("union-100", "toy", 0.2), row("union-101", "toy", 0.4), row("union-100", "prior_free", 0.1),
            row("thin-100", "toy", 0.9)]
    lines = {tuple(c.strip() for c in line.split("|")[1:4]): line for line in summary_table(rows).splitlines()[2:]}
    assert "0.3000" in lines["union", "toy", "2"] and "0.1000" in lines["union", "prior_free", "1"]
    assert "0.9000" in lines["thin", "toy", "1"]


def test_a_suite_run_again_in_its_folder_sets_the_earlier_rows_aside(tmp_path):
    from nerf.evaluation.suite import set_aside

    rows = tmp_path / "rows.jsonl"
    assert set_aside(rows) is None
    rows.write_text('{"scene": "union-100"}\n')
    first = set_aside(rows)
    rows.write_text('{"scene": "thin-100"}\n')
    second = set_aside(rows)
    assert not rows.exists() and first != second
    assert first.read_text() == '{"scene": "union-100"}\n' and second.read_text() == '{"scene": "thin-100"}\n'
