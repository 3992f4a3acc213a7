"""One assembly of a run (nerf.build): main.py, the evaluation suite, the evaluation of a workspace and the
benchmark build identical runs from the same options: same parameters, same first-iteration losses at a fixed
seed, and `--legacy left_handed` honoured by each of them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import nerf.build
from nerf import outputs
from nerf.cli import train as main_module
from nerf.evaluation.reconstruct import reconstruct, reconstruction_args
from nerf.scenes.files import Conventions, write_scene
from nerf.scenes.procedural import make_scene
from nerf.evaluation.workspace import TrainedField
from nerf.option_checks import parse
from nerf.options import Options
from nerf.trainer import Trainer

TINY = ["--iters", "1", "--HW_real", "16", "--HW_synthetic", "16", "--num_rays", "128", "--occupancy_grid_size",
        "16", "--max_steps", "64", "--grid_levels", "4", "--grid_levels_mask", "0", "--log2_hashmap_size", "12",
        "--HW_vis", "8"]
EXTRA = [*TINY, "--legacy", "left_handed"]


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scene")
    return write_scene(make_scene("union", 0), root / "union", Conventions.from_options(Options()), 32, 16, 2, 32)


@pytest.fixture
def first_iteration(monkeypatch):
    """Record every run that nerf.build assembles and the loss terms of its single training iteration; skip
    the videos (they do not depend on how the run was assembled)."""
    runs: list = []
    original_build = nerf.build.build_run

    def recording_build(*args, **kwargs):
        runs.append({"run": original_build(*args, **kwargs)})
        runs[-1]["params"] = [p.detach().clone() for p in runs[-1]["run"].renderer.parameters()]
        return runs[-1]["run"]

    original_step = Trainer.train_step

    def recording_step(self):
        terms = original_step(self)
        runs[-1].setdefault("terms", {k: float(v) for k, v in terms.items()})
        return terms

    for module in (nerf.build, __import__("nerf.evaluation.workspace", fromlist=["build_run"])):  # open_run: nerf.build
        monkeypatch.setattr(module, "build_run", recording_build)
    monkeypatch.setattr(Trainer, "train_step", recording_step)
    monkeypatch.setattr(outputs, "render_videos", lambda *a, **k: {})
    return runs


def assert_same_run(a: dict, b: dict) -> None:
    assert len(a["params"]) == len(b["params"]) > 0
    for x, y in zip(a["params"], b["params"]):
        assert torch.equal(x, y)
    assert a["terms"].keys() == b["terms"].keys()
    for key in a["terms"]:
        assert a["terms"][key] == pytest.approx(b["terms"][key], rel=1e-6, abs=1e-9), key


@pytest.mark.parametrize("mode", ["prior_free", "oracle"])
def test_main_and_the_evaluation_suite_build_the_same_run(mode, scene_dir, tmp_path, first_iteration):
    args = reconstruction_args(scene_dir, tmp_path / "main", mode, "reduced", extra_args=EXTRA, cuda=False)
    assert main_module.main(args) == 0
    reconstruct(scene_dir, tmp_path / "suite", mode, "reduced", device=torch.device("cpu"), extra_args=EXTRA)
    from_main, from_suite = first_iteration
    assert_same_run(from_main, from_suite)
    if mode == "oracle":
        assert "oracle" in from_main["terms"] and "sds" not in from_main["terms"]  # the term names its prior
        assert type(from_main["run"].guidance).__name__ == "OracleGuidance"
    for built in (from_main["run"], from_suite["run"]):
        assert built.opt.uses("left_handed") and built.frames.orbit.left_handed
        assert built.trainer.objective.views.left_handed


def test_left_handed_changes_the_cameras_everywhere(scene_dir, tmp_path):
    args = reconstruction_args(scene_dir, tmp_path / "ws", "prior_free", "reduced", extra_args=TINY, cuda=False)
    right = nerf.build.build_run(parse(args))
    left = nerf.build.build_run(parse([*args, "--legacy", "left_handed"]))
    assert not torch.allclose(right.real_view.camera.poses, left.real_view.camera.poses)
    device = torch.device("cpu")
    assert not torch.allclose(right.frames.orbit.cameras(2, 8, device).poses, left.frames.orbit.cameras(2, 8, device).poses)


def test_evaluation_of_a_workspace_restores_the_trained_run(scene_dir, tmp_path, first_iteration):
    args = reconstruction_args(scene_dir, tmp_path / "ws", "prior_free", "reduced", extra_args=EXTRA, cuda=False)
    assert main_module.main(args) == 0
    trained = first_iteration[0]["run"]
    loaded = TrainedField.load(tmp_path / "ws", torch.device("cpu"))
    assert loaded.opt.uses("left_handed") and loaded.step == 1
    with trained.trainer.ema.averaged():
        for x, y in zip(trained.renderer.state_dict().values(), loaded.renderer.state_dict().values()):
            assert torch.equal(x, y)
    assert not (tmp_path / "ws" / "results").exists() or not any((tmp_path / "ws" / "results").iterdir())


def test_the_kernel_benchmark_builds_main_py_s_run(tmp_path, first_iteration):
    from nerf.benchmarks import kernels

    sizes = dataclasses.replace(kernels.QUICK, field_options=(*kernels.QUICK.field_options, "--iters", "1"))
    trainers = kernels.fitted_trainers(torch.device("cpu"), sizes, iters=1, workdir=tmp_path / "bench")
    assert main_module.main(kernels.field_args(sizes, tmp_path / "main")) == 0
    from_bench, _, from_main = first_iteration  # the benchmark builds a second, reference-backend run
    assert_same_run(from_bench, from_main)
    assert trainers["cuda"].renderer is from_bench["run"].renderer
