"""The pipeline's stages are defined once: the one-command pipeline, a sweep job and the evaluation suite's
learned-token runs plan the same commands for the same input (no subprocess runs here)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nerf import pipeline
from nerf.checkpoint import FORMAT, LATEST
from nerf.cli import reconstruct, sweep
from nerf.evaluation.suite import SuiteTask, TrainedPrior


def write_input(folder: Path, word: str = "mug") -> Path:
    folder.mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 4), 200, np.uint8)).save(folder / "rgba.png")
    (folder / "token_autoinit.txt").write_text(word + "\n")
    return folder / "rgba.png"


def without(args: tuple[str, ...], *replacements: tuple[Path, str]) -> list[str]:
    """The arguments with the entry point's own folders replaced by names, so that only the recipe is compared."""
    out = []
    for arg in args:
        for path, name in replacements:
            arg = arg.replace(str(path), name)
        out.append(arg)
    return out


@pytest.fixture
def model(tmp_path: Path) -> str:
    return str(tmp_path / "hub-like-model-id")  # not a local folder: Stable Diffusion's 512 px


def test_three_entry_points_plan_the_same_stages(tmp_path: Path, model: str) -> None:
    main_args = ["--iters", "7", "--HW_real", "32"]
    # the one-command pipeline, after its input and initializer stages
    work = tmp_path / "reconstruct"
    rgba = write_input(work / "input")
    args, extra = reconstruct.parse_args([str(rgba), "--workspace", str(work), "--pretrained_model_name_or_path",
                                          model, "--", *main_args])
    token_r, nerf_r, mesh_r, evaluate_r = reconstruct.later_stages(args, extra, rgba)
    # one sweep job on the same photo
    inputs = tmp_path / "inputs"
    sweep_rgba = write_input(inputs / "mug")
    sweep_args, sweep_main = sweep.parse_args(["--inputs_dir", str(inputs), "--output_dir", str(tmp_path / "sweep"),
                                               "--pretrained_model_name_or_path", model, "--", *main_args])
    token_s, nerf_s = sweep.plan_job(sweep_rgba, sweep_args, sweep_main).stages
    # the suite's learned-token run (its own step count, seed and precision are settings of the same stage; one
    # token per scene, learned at seed 0 and shared by the scene's runs at every seed)
    scene = tmp_path / "scene"
    write_input(scene)
    prior = TrainedPrior(Path(model), {}, ti_steps=pipeline.TI_STEPS, ti_initializer="mug")
    task = SuiteTask("mug-0", scene, tmp_path / "suite" / "ws", "toy_ti", "reduced", "cpu", 3, 10.0, prior)
    token_e = prior.token_stage(task)

    token_r_args = without(token_r.args, (work / "token", "TOKEN"))
    assert token_r_args == without(token_s.args, (tmp_path / "sweep" / "mug" / "token", "TOKEN"))
    assert token_r_args + ["--seed=0", "--mixed_precision=no"] == without(token_e.args, (tmp_path / "suite" / "token",
                                                                                         "TOKEN"))
    assert token_r.program == token_s.program == token_e.program == pipeline.script("textual-inversion",
                                                                                     "textual_inversion.py")
    for flag in (*pipeline.TI_RECIPE, "--placeholder_token=_object_", "--initializer_token=mug", "--resolution=512",
                 "--max_train_steps=3000", "--learnable_property=object"):
        assert flag in token_r.args
    # the captions a token is learned in are a setting of the same stage, for the pipeline and the suite alike
    in_prompt = replace(prior, ti_templates="reconstruction").token_stage(task)
    assert without(in_prompt.args, (tmp_path / "suite" / "token", "TOKEN")) == [
        "--learnable_property=reconstruction" if arg == "--learnable_property=object" else arg
        for arg in without(token_e.args, (tmp_path / "suite" / "token", "TOKEN"))]
    args_p, extra_p = reconstruct.parse_args([str(rgba), "--workspace", str(work), "--pretrained_model_name_or_path",
                                              model, "--ti_templates", "reconstruction", "--", *main_args])
    token_p = reconstruct.later_stages(args_p, extra_p, rgba)[0]
    assert list(token_p.args) == ["--learnable_property=reconstruction" if arg == "--learnable_property=object" else arg
                            for arg in token_r.args]
    assert [copy[0] for copy in (*token_r.copies, *token_s.copies, *token_e.copies)] == [rgba, sweep_rgba,
                                                                                         scene / "rgba.png"]
    # the NeRF stage: same options, each entry point's own folders
    assert without(nerf_r.args, (work / "token", "TOKEN"), (work / "nerf", "NERF"), (rgba, "RGBA")) == without(
        nerf_s.args, (tmp_path / "sweep" / "mug" / "token", "TOKEN"), (tmp_path / "sweep" / "mug" / "nerf", "NERF"),
        (sweep_rgba, "RGBA"))
    assert nerf_r.program == nerf_s.program == pipeline.script("main.py") and nerf_r.min_steps == 7
    assert (mesh_r.name, evaluate_r.name) == ("mesh", "evaluate")


def test_each_stage_knows_when_it_is_complete(tmp_path: Path, model: str) -> None:
    rgba = write_input(tmp_path / "input")
    nerf = pipeline.reconstruct(rgba, tmp_path / "nerf", model=model, learned_embeds=None, main_args=["--iters", "7"])
    assert not nerf.complete()
    nerf.output.parent.mkdir(parents=True)
    torch.save({"format": FORMAT, "global_step": 5}, nerf.output)
    assert not nerf.complete()  # a run stopped early: the stage runs again and resumes from the checkpoint
    torch.save({"format": FORMAT, "global_step": 7}, nerf.output)
    assert nerf.complete() and nerf.output.name == LATEST
    assert pipeline.pick_initializer(rgba).complete()  # token_autoinit.txt is there
    assert not pipeline.export_mesh(tmp_path / "nerf").complete()


@pytest.mark.parametrize("runner", ["ensure", "run"])
def test_a_stage_with_relative_paths_runs_where_its_caller_runs(tmp_path: Path, monkeypatch, runner: str) -> None:
    """A relative path means the same file to the caller (its copies, its completion check) and to the stage's
    command: the suite's default workspace is relative, and its token stage once looked for its copied input
    photo under the repository instead."""
    monkeypatch.chdir(tmp_path)
    write_input(Path("input"))
    copy_then_write = ("import pathlib, shutil, sys; source, target = map(pathlib.Path, sys.argv[1:]); "
                       "shutil.copyfile(source, target) if source.is_file() else sys.exit(3)")
    stage = pipeline.Stage("copy", (sys.executable, "-c", copy_then_write), ("work/data/rgba.png", "work/out.png"),
                           Path("work/out.png"), copies=((Path("input/rgba.png"), Path("work/data/rgba.png")),))
    if runner == "ensure":
        assert pipeline.ensure(stage) == Path("work/out.png")
    else:
        assert pipeline.run(stage).returncode == 0
    assert (tmp_path / "work" / "out.png").read_bytes() == (tmp_path / "input" / "rgba.png").read_bytes()


def test_a_missing_initializer_word_and_bad_step_counts_are_user_errors(tmp_path: Path, model: str) -> None:
    rgba = write_input(tmp_path / "input")
    (rgba.parent / "token_autoinit.txt").write_text("\n")
    with pytest.raises(pipeline.UserError, match="token_autoinit.txt"):
        pipeline.initializer_word(rgba)
    with pytest.raises(pipeline.UserError, match="at least 1 step"):
        pipeline.learn_token(rgba, "mug", tmp_path / "token", pipeline.TokenSettings(model, steps=0))
