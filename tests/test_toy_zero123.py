"""The toy Zero-1-to-3 (scripts/train-toy-zero123.py over nerf.toy_models.zero123_training) at its CPU size: it
learns (held-out denoising loss falls), its folder loads through --guidance zero123's loader and runs main.py,
resuming continues exactly, --max_minutes stops with a checkpoint, and bad input is one line, exit 2, nothing
written. The camera check of a trained model runs on the shipped model (examples/toy-zero123)."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nerf.toy_models import zero123_check, zero123_training
from nerf.toy_models.tiny_zero123 import write_model
from tests.two_cores import concurrently

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "examples" / "toy-zero123"
WORLD = ("--objects", "primitive:0=cup", "thin:0-1=chair", "--held_out", "thin:5")
STEPS, PART_STEPS = 60, 25
WEIGHTS = ("unet/diffusion_pytorch_model.safetensors", "image_encoder/model.safetensors",
           "cc_projection/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors")

pytestmark = pytest.mark.usefixtures("one_thread")


def train(out: Path, *extra: str, steps: int = STEPS) -> Path:
    assert zero123_training.main([str(out), "--size", "cpu", "--device", "cpu", "--steps", str(steps), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def prior(toy_prior) -> Path:
    """A toy Stable Diffusion prior after its VAE phase (the UNet is not needed here); read, never written."""
    return toy_prior("--size", "cpu", "--device", "cpu", "--steps", "20", "0", *WORLD)


@pytest.fixture(scope="module")
def runs(prior, tmp_path_factory) -> dict[str, Path]:
    """untrained (0 steps), resumed (0 -> PART_STEPS -> STEPS) and straight (STEPS at once), all on the prior."""
    root = tmp_path_factory.mktemp("zero123")
    resumed = train(root / "resumed", "--prior", str(prior), steps=0)
    untrained = shutil.copytree(resumed, root / "untrained", ignore=shutil.ignore_patterns(".cache"))
    train(resumed, "--resume", steps=PART_STEPS)
    train(resumed, "--resume")
    return {"untrained": untrained, "resumed": resumed, "straight": train(root / "straight", "--prior", str(prior))}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {f"{file}:{key}": value for file in WEIGHTS for key, value in load_file(folder / file).items()}


def test_training_lowers_the_held_out_denoising_loss(runs):
    before = zero123_check.camera_check(runs["untrained"], views=6, draws=3)["mean"]
    after = zero123_check.camera_check(runs["straight"], views=6, draws=3)["mean"]
    assert after["true camera"] < 0.8 * before["true camera"], (before, after)
    assert after["input, zero camera"] < 0.8 * before["input, zero camera"], (before, after)


def test_the_check_command_reports_every_loss_and_sample(runs, tmp_path, capsys):
    from nerf.toy_models import check

    assert check.main(["--zero123", str(runs["straight"]), "--views", "3", "--steps", "3", "--out",
                       str(tmp_path)]) == 0
    report = json.loads((tmp_path / "zero123.json").read_text())
    assert set(report["per_instance"]) == {"thin:5"}
    assert set(report["mean"]) == {"true camera", "wrong camera", "input, zero camera", "input, other cameras"}
    assert set(report["samples_psnr"]["thin:5"]) == {"0", "90", "180", "270"}
    assert "thin:5 samples, PSNR against the input view" in capsys.readouterr().out


def test_the_folder_is_the_published_layout_on_the_prior_s_vae_and_world(runs, prior):
    model = runs["straight"]
    index = json.loads((model / "model_index.json").read_text())
    assert index["image_encoder"] == ["transformers", "CLIPVisionModelWithProjection"]
    assert all(v.dtype == torch.float16 for v in weights(model).values())
    vae = "vae/diffusion_pytorch_model.safetensors"
    assert all(torch.equal(a, b) for a, b in zip(load_file(prior / vae).values(), load_file(model / vae).values()))
    assert json.loads((model / "objects.json").read_text()) == json.loads((prior / "objects.json").read_text())
    card = (model / "README.md").read_text()
    assert "| chair | thin:0, thin:1 | thin:5 |" in card and "not for real photos" in card
    assert f"cc_projection {STEPS}/{STEPS} steps" in card and "--held_out thin:5" in card


def test_the_folder_runs_main_py_with_guidance_zero123(runs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.test_reconstruction import shaded_sphere_rgba
    from tests.test_zero123 import run_main, small_run

    workspace = tmp_path / "ws"
    args = [*small_run(shaded_sphere_rgba(tmp_path / "rgba.png"), workspace), "--guidance", "zero123",
            "--zero123_model", str(runs["straight"])]
    assert run_main(args) == 0
    accumulator = EventAccumulator(str(next(workspace.rglob("events.out.tfevents.*")).parent),
                                   size_guidance={"scalars": 0})
    accumulator.Reload()
    norms = [event.value for event in accumulator.Scalars("train/zero123")]
    assert norms and all(torch.isfinite(torch.tensor(norms)))


def test_resuming_continues_the_step_count_exactly(runs):
    resumed, straight = weights(runs["resumed"]), weights(runs["straight"])
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in resumed)
    state = torch.load(runs["resumed"] / ".cache" / "checkpoint.pt", weights_only=True)
    assert (state["phase"], state["step"]) == ("unet", STEPS)
    assert not torch.equal(*(weights(runs[k])["unet/diffusion_pytorch_model.safetensors:conv_in.weight"]
                             for k in ("untrained", "straight")))


def test_views_keep_their_cameras_and_an_instance_starts_with_its_input_view():
    from nerf.guidance.zero123 import relative_camera
    from nerf.options import DataOptions
    from nerf.toy_models import world

    views = world.build_views(world.parse_objects("thin:0-1=chair"), 16, 12, 0, torch.device("cpu"))
    counts = torch.bincount(views.objects)
    starts = torch.cumsum(counts, 0) - counts
    first = views.cameras(starts)  # what the trainer takes as the input-camera view of each instance
    assert torch.allclose(first.theta, torch.full((2,), DataOptions().pose_angle)) and not first.phi.any()
    other = views.cameras(starts + 5)
    pose = relative_camera(other, first)
    assert torch.allclose(pose[:, 0], torch.deg2rad(other.theta - first.theta))
    assert torch.allclose(pose[:, 1], torch.sin(torch.deg2rad(other.phi)), atol=1e-6)
    assert torch.allclose(pose[:, 3], other.centers.norm(dim=-1) - DataOptions().orbit_radius, atol=1e-5)


def test_max_minutes_stops_with_a_checkpoint_and_resume_finishes(prior, tmp_path, capsys):
    out = train(tmp_path / "model", "--prior", str(prior), "--max_minutes", "1e-6")
    assert "--resume continues" in capsys.readouterr().out
    assert torch.load(out / ".cache" / "checkpoint.pt", weights_only=True)["step"] < STEPS
    train(out, "--resume", steps=3)
    assert torch.load(out / ".cache" / "checkpoint.pt", weights_only=True)["step"] == 3


def bad_cases(prior: Path, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    zero123 = write_model(tmp_path / "a-zero123")
    return {
        "not a prior": (["--prior", str(zero123)], "not a toy Stable Diffusion prior"),
        "no prior": (["--prior", str(tmp_path / "missing")], "not a toy Stable Diffusion prior"),
        "other resolution": (["--prior", str(prior), "--size", "gpu"], "works at 32 px, this size at 64 px"),
        "other world": (["--prior", str(prior), "--objects", "union:0=robot"], "trained on another world"),
        "negative steps": (["--prior", str(prior), "--steps", "-1"], "--steps must be >= 0"),
        "resume nothing": (["--resume"], "nothing to resume"),
    }


@pytest.mark.parametrize("case", ["not a prior", "no prior", "other resolution", "other world", "negative steps",
                                  "resume nothing"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(prior, tmp_path, capsys, case):
    extra, message = bad_cases(prior, tmp_path)[case]
    out = tmp_path / "model"
    argv = [str(out), "--size", "cpu", "--device", "cpu", *extra]
    capsys.readouterr()  # the folders made for the cases talk too
    assert zero123_training.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_an_existing_output_is_never_overwritten(runs, capsys):
    before = weights(runs["straight"])
    assert zero123_training.main([str(runs["straight"]), "--size", "cpu", "--device", "cpu"]) == 2
    assert "already exists" in capsys.readouterr().err
    after = weights(runs["straight"])
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_shipped_model_reproduces_the_input_at_the_zero_camera_and_knows_wrong_cameras():
    # Measured on all 16 held-out instances (24 views, README): the true camera scores below the wrong ones on 16 of
    # 16 (0.00921 against 0.01052), the input view at the zero camera below other cameras on 16 of 16 (0.00668 against
    # 0.00978); one sample per camera is noisy (the zero camera's is the closest on 8 of 16), its mean is not (15.6 dB
    # against 14.3, 13.8 and 15.1). The margins here sit between those and what an untrained model gives.
    check, samples = concurrently(partial(zero123_check.camera_check, SHIPPED, views=8, draws=4, per_class=1),
                                  partial(zero123_check.sample_check, SHIPPED, steps=50, per_class=1))
    losses = check["mean"]
    assert losses["true camera"] < 0.98 * losses["wrong camera"], losses
    assert losses["input, zero camera"] < 0.95 * losses["input, other cameras"], losses
    mean = {azimuth: np.mean([scores[azimuth] for scores in samples.values()]) for azimuth in ("0", "90", "180", "270")}
    zero = mean.pop("0")
    assert zero > max(mean.values()), (zero, mean)


def test_the_shipped_model_s_sds_pulls_a_wrong_render_towards_the_instance_it_is_shown():
    """Score distillation from the shipped model, at another object's render (nonconvex:100) seen from random training
    cameras: conditioned on the held-out union:100's input view it pulls the pixels towards union:100's render from
    that camera; conditioned on the rendered object's own input view it pulls away from it, and a random-weight UNet
    does not pull towards it. Measured over seeds 0-3 (4 views, 8 draws): 0.069 to 0.127; -0.092 to -0.055; -0.107
    to -0.006."""
    pull = {condition: zero123_check.sds_alignment(SHIPPED, "union:100", "nonconvex:100", condition, views=4, draws=8)
            for condition in zero123_check.CONDITIONS}
    assert pull["true"] > 0.04 and pull["wrong"] < 0 and pull["random unet"] < 0.03, pull
