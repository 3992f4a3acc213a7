"""The Zero-1-to-3 prior on a random-weight model in the published diffusers layout: loading (local folder, hub id),
the relative camera, camera conditioning, classifier-free guidance, the joined prior's weighted terms, bad folders
and options, and a short --O-style run on the CPU with both priors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from nerf.cameras import CameraBatch, fixed_cameras
from nerf.data import RealView
from nerf.errors import UserError
from nerf.guidance import prior_members, prior_weights
from nerf.guidance.joint import JointGuidance
from nerf.guidance.zero123 import Zero123Guidance, relative_camera
from nerf.guidance.zero123_model import check_folder, load_zero123
from nerf.toy_models.tiny_zero123 import write_model
from tests.sds_replay import assert_replays_match_eager

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def zero123_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("tiny-zero123") / "model")


@pytest.fixture(scope="module")
def parts(zero123_dir: Path):
    return load_zero123(str(zero123_dir), CPU, fp16=False)


def camera(theta: float, phi: float, radius: float = 1.8) -> CameraBatch:
    return fixed_cameras(theta, torch.tensor([phi]), radius, 55.0, 16)


def view(seed: int = 0) -> RealView:
    rgba = torch.rand(24, 24, 4, generator=torch.Generator().manual_seed(seed))
    return RealView(rgba, camera(75.0, 0.0))


def test_the_writer_gives_the_published_layout(zero123_dir: Path) -> None:
    index = json.loads((zero123_dir / "model_index.json").read_text())
    assert index["image_encoder"] == ["transformers", "CLIPVisionModelWithProjection"]
    assert json.loads((zero123_dir / "unet" / "config.json").read_text())["in_channels"] == 8
    projection = json.loads((zero123_dir / "cc_projection" / "config.json").read_text())
    encoder = json.loads((zero123_dir / "image_encoder" / "config.json").read_text())
    assert projection["in_channel"] == encoder["projection_dim"] + 4
    assert (zero123_dir / "cc_projection" / "diffusion_pytorch_model.safetensors").is_file()
    with pytest.raises(UserError, match="already exists"):
        write_model(zero123_dir)


def test_loads_a_local_folder(parts) -> None:
    assert parts.unet.config.in_channels == 8 and parts.image_size == 16 and parts.clip_size == 32
    assert parts.cc_projection.in_features == 36 and parts.cc_projection.out_features == 32
    assert not any(p.requires_grad for p in parts.unet.parameters())


def test_a_hub_id_is_fetched_as_a_snapshot(zero123_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    asked = {}

    def snapshot(repo_id: str, allow_patterns: list[str]) -> str:
        asked.update(repo_id=repo_id, patterns=allow_patterns)
        return str(zero123_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    loaded = load_zero123("someone/zero123-model", CPU, fp16=False)
    assert asked["repo_id"] == "someone/zero123-model" and "cc_projection/*.safetensors" in asked["patterns"]
    assert loaded.unet.config.in_channels == 8


def test_an_uncached_hub_id_offline_is_one_line_naming_the_option() -> None:
    with pytest.raises(UserError, match="--zero123_model") as error:
        load_zero123("nobody-zz/not-a-zero123-model", CPU, fp16=False)
    assert "\n" not in str(error.value)


def test_relative_camera_in_zero123s_convention() -> None:
    reference = camera(75.0, 0.0, 1.8)
    assert torch.allclose(relative_camera(reference, reference), torch.tensor([[0.0, 0.0, 1.0, 0.0]]), atol=1e-6)
    pose = relative_camera(camera(60.0, 90.0, 2.0), reference)[0]
    assert torch.allclose(pose, torch.tensor([math.radians(-15.0), 1.0, 0.0, 0.2]), atol=1e-5)


def test_the_camera_conditions_the_prediction(parts) -> None:
    guidance = Zero123Guidance(parts, view())
    noisy = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    front = guidance.predict_noise(noisy, 500, camera(75.0, 0.0))
    assert torch.equal(front, guidance.predict_noise(noisy, 500, camera(75.0, 0.0)))
    assert (front - guidance.predict_noise(noisy, 500, camera(75.0, 120.0))).abs().max() > 1e-3


def test_classifier_free_guidance_zeroes_image_and_latent(parts) -> None:
    noisy = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    side = camera(60.0, 90.0)

    def predict(scale: float, seed: int = 0, cam: CameraBatch = side) -> torch.Tensor:
        return Zero123Guidance(parts, view(seed), guidance_scale=scale).predict_noise(noisy, 400, cam)

    unconditional = predict(0.0)
    # The unconditional branch sees neither the input view nor the camera.
    assert torch.allclose(unconditional, predict(0.0, seed=5), atol=1e-6)
    assert torch.allclose(unconditional, predict(0.0, cam=camera(75.0, 200.0)), atol=1e-6)
    conditional = predict(1.0)
    assert (conditional - unconditional).abs().max() > 1e-3
    assert (conditional - predict(1.0, seed=5)).abs().max() > 1e-3
    assert torch.allclose(predict(5.0), unconditional + 5.0 * (conditional - unconditional), atol=1e-4)


def test_sds_reaches_the_rendered_image(parts) -> None:
    guidance = Zero123Guidance(parts, view(), t_range=(0.2, 0.6))
    image = torch.rand(1, 3, 32, 32, requires_grad=True)
    loss, stats = guidance(image, 0, camera=camera(70.0, 45.0), generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert 200 <= stats["zero123_t"] <= 600 and stats["zero123_grad_norm"] > 0


class ConstantPrior:
    """A prior whose surrogate loss is a fixed multiple of the image mean."""

    def __init__(self, term: str, scale: float) -> None:
        self.term, self.scale = term, scale

    def __call__(self, image, direction, *, camera):
        return self.scale * image.mean(), {}


def test_joined_priors_are_weighted_apart() -> None:
    from nerf.objective import Objective
    from nerf.options import ObjectiveOptions
    from nerf.option_checks import parse

    joint = JointGuidance((ConstantPrior("sds", 1.0), ConstantPrior("zero123", 3.0)))
    assert prior_members(joint) == joint.members and prior_weights("sd+zero123") == ("prior", "prior_zero123")
    assert prior_weights("zero123") == ("prior_zero123",) and prior_weights("sd") == ("prior",)

    class Views:  # one fixed synthetic view, albedo shading
        def view(self, step):
            from types import SimpleNamespace

            return SimpleNamespace(camera=camera(70.0, 30.0), ray_noise=0.0, direction=0)

        def shading(self, step):
            return "albedo", 1.0

    from nerf.build import build_renderer

    opt = parse(["--no_cuda_ray", "--occupancy_grid_size", "16", "--lambda_orient", "0", "--lambda_smooth_2d", "0",
                 "--lambda_entropy", "0", "--lambda_prior", "2", "--lambda_prior_zero123", "5"])
    renderer = build_renderer(opt, CPU)
    objective = Objective(opt.objective, iters=10, renderer=renderer, views=Views(), real_view=None, guidance=joint,
                          num_rays=16, generator=torch.Generator().manual_seed(0),
                          prior_weights=prior_weights("sd+zero123"))
    terms = objective(0).terms
    assert set(terms) == {"sds", "zero123"}
    assert torch.allclose(terms["zero123"], terms["sds"] * 3.0 * 5.0 / 2.0)
    off = Objective(ObjectiveOptions(lambda_prior=[0.0], lambda_prior_zero123=[5.0]), iters=10, renderer=renderer,
                    views=Views(), real_view=None, guidance=joint, num_rays=16,
                    generator=torch.Generator().manual_seed(0), prior_weights=prior_weights("sd+zero123"))
    assert set(off(0).terms) >= {"zero123"} and "sds" not in off(0).terms


def broken_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_bad_folders_are_one_line_naming_the_file(zero123_dir: Path, tmp_path: Path) -> None:
    no_projection = broken_copy(zero123_dir, tmp_path / "no-projection")
    shutil.rmtree(no_projection / "cc_projection")
    with pytest.raises(UserError, match="no cc_projection/"):
        check_folder(no_projection)
    four_channels = broken_copy(zero123_dir, tmp_path / "four-channels")
    config = four_channels / "unet" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "in_channels": 4}))
    with pytest.raises(UserError, match=r"unet/config.json: the UNet takes 4 input channels; Zero-1-to-3 needs 8"):
        check_folder(four_channels)
    mismatched = broken_copy(zero123_dir, tmp_path / "mismatched")
    config = mismatched / "cc_projection" / "config.json"
    config.write_text(json.dumps({"in_channel": 772, "out_channel": 768}))
    with pytest.raises(UserError, match="cc_projection/config.json: maps 772 -> 768"):
        check_folder(mismatched)
    with pytest.raises(UserError, match="does not exist; set --zero123_model"):
        load_zero123(str(tmp_path / "missing"), CPU, fp16=False)


def run_main(args: list[str]) -> int:
    from nerf.cli import train as main_module

    return main_module.main(args)


def small_run(image: Path, workspace: Path) -> list[str]:
    return ["--O", "--no_cuda_ray", "--image_path", str(image), "--workspace", str(workspace), "--iters", "4",
            "--HW_synthetic", "16", "--HW_real", "16", "--num_rays", "64", "--HW_vis", "8", "--occupancy_grid_size",
            "16", "--max_steps", "32", "--grid_levels", "4", "--grid_levels_mask", "0", "--log2_hashmap_size", "12",
            "--eval_interval", "100", "--seed", "0", "--text", "a photo of a cat"]


def test_bad_input_through_main_exits_2_and_writes_nothing(zero123_dir: Path, tmp_path: Path, capsys) -> None:
    from tests.test_reconstruction import shaded_sphere_rgba

    image = shaded_sphere_rgba(tmp_path / "rgba.png")
    no_projection = broken_copy(zero123_dir, tmp_path / "no-projection")
    shutil.rmtree(no_projection / "cc_projection")
    cases = {"no-model": ["--guidance", "sd+zero123"],
             "no-projection": ["--guidance", "zero123", "--zero123_model", str(no_projection)]}
    for name, extra in cases.items():
        workspace = tmp_path / f"ws-{name}"
        assert run_main([*small_run(image, workspace), *extra]) == 2
        message = capsys.readouterr().err.strip().splitlines()
        assert len(message) == 1 and ("--zero123_model" in message[0] or "cc_projection" in message[0])
        assert not workspace.exists()


def test_short_run_with_both_priors_logs_each_term(tiny_sd_dir: Path, zero123_dir: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.test_reconstruction import shaded_sphere_rgba

    image = shaded_sphere_rgba(tmp_path / "rgba.png")
    workspace = tmp_path / "ws"
    args = [*small_run(image, workspace), "--guidance", "sd+zero123", "--pretrained_model_name_or_path",
            str(tiny_sd_dir), "--zero123_model", str(zero123_dir), "--lambda_prior", "0.01",
            "--lambda_prior_zero123", "0.4"]
    assert run_main(args) == 0
    events = next(workspace.rglob("events.out.tfevents.*")).parent
    accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
    accumulator.Reload()
    logged = set(accumulator.Tags()["scalars"])
    assert {"train/sds", "train/zero123"} <= logged
    assert json.loads((workspace / "options.json").read_text())["prior"]["guidance"] == "sd+zero123"


def test_reconstruct_plans_the_chosen_prior(tmp_path: Path) -> None:
    from nerf.cli import reconstruct
    from tests.test_pipeline_stages import write_input

    rgba = write_input(tmp_path / "input")
    plans = {}
    for prior in ("zero123", "sd+zero123"):
        args, extra = reconstruct.parse_args([str(rgba), "--workspace", str(tmp_path / prior), "--prior", prior,
                                              "--zero123_model", "someone/zero123", "--", "--iters", "7"])
        plans[prior] = reconstruct.later_stages(args, extra, rgba)
    assert [stage.name for stage in plans["zero123"]] == ["nerf", "mesh", "evaluate"]
    assert [stage.name for stage in plans["sd+zero123"]] == ["token", "nerf", "mesh", "evaluate"]
    nerf = " ".join(plans["zero123"][0].args)
    assert "--guidance zero123 --zero123_model someone/zero123" in nerf and "--learned_embeds_path" not in nerf
    assert "--guidance sd+zero123" in " ".join(plans["sd+zero123"][1].args)


def test_reconstruct_refuses_a_zero123_prior_without_its_model(tmp_path: Path, capsys) -> None:
    from nerf.cli import reconstruct
    from tests.test_pipeline_stages import write_input

    rgba = write_input(tmp_path / "input")
    workspace = tmp_path / "w"
    assert reconstruct.main([str(rgba), "--workspace", str(workspace), "--prior", "sd+zero123"]) == 2
    assert "--zero123_model" in capsys.readouterr().err and not workspace.exists()


def test_the_report_names_the_prior() -> None:
    from nerf.option_checks import parse
    from nerf.report import prior_summary

    assert prior_summary(parse(["--guidance", "zero123", "--zero123_model", "m"])) == \
        "prior: zero123 | Zero-1-to-3 model: m"
    joint = prior_summary(parse(["--guidance", "sd+zero123", "--zero123_model", "m", "--text", "a cat"]))
    assert joint == "prior: sd+zero123 | Zero-1-to-3 model: m | prompt: a cat"
    assert prior_summary(parse(["--text", "a cat"])) == "prior: sd | prompt: a cat"


def test_benchmark_variants_naming_zero123_get_a_model(zero123_dir: Path) -> None:
    from argparse import Namespace

    from nerf.benchmarks.recon import zero123_flags

    args = Namespace(zero123_dir=zero123_dir)  # already built: reused as it is
    assert zero123_flags("--guidance sd+zero123", args) == f"--guidance sd+zero123 --zero123_model {zero123_dir}"
    assert zero123_flags("--no_cuda_graph", args) == "--no_cuda_graph"
    assert zero123_flags("--guidance zero123 --zero123_model m", args) == "--guidance zero123 --zero123_model m"


def test_the_builder_passes_the_run_s_compile_and_graph_settings_to_both_networks(zero123_dir: Path) -> None:
    from nerf.compilation import Packaged
    from nerf.guidance import PriorContext
    from nerf.guidance.zero123 import build
    from nerf.options import PriorOptions
    from nerf.packaged_backward import PackagedDifferentiable

    prior = PriorOptions(guidance="zero123", zero123_model=str(zero123_dir), cuda_graph=True)
    guidance = build(prior, PriorContext(view(), device=CPU, fp16=False, image_path="rgba.png", compile="if_cached"))
    assert isinstance(guidance.moments, PackagedDifferentiable) and isinstance(guidance.both_branches, Packaged)
    assert guidance.moments.mode == guidance.both_branches.mode == "if_cached"  # on the CPU: no graph wrappers
    off = build(prior, PriorContext(view(), device=CPU, fp16=False, image_path="rgba.png", compile="off"))
    assert off.moments is off.moment_encoder and off.both_branches is off.branches


@pytest.mark.slow
def test_one_package_serves_input_views_of_every_run(parts, tmp_path, monkeypatch) -> None:
    """The UNet call is compiled once; a later run with another input view loads the package with its own view's
    embedding and latent (the module's buffers), and predicts what its eager module predicts."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    noisy = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    predictions = []
    for seed, mode in ((0, "on"), (1, "if_cached")):
        guidance = Zero123Guidance(parts, view(seed), guidance_scale=3.0, compile=mode)
        side = camera(70.0, 45.0)
        packaged = guidance.predict_noise(noisy, 400, side)
        assert guidance.both_branches.runner is not None and not guidance.both_branches.failed
        eager = Zero123Guidance(parts, view(seed), guidance_scale=3.0).predict_noise(noisy, 400, side)
        torch.testing.assert_close(packaged, eager, rtol=1e-4, atol=1e-5)
        predictions.append(packaged)
    assert (predictions[0] - predictions[1]).abs().max() > 1e-3  # two views, two predictions


def test_sampled_views_follow_the_camera(parts) -> None:
    from nerf.guidance.zero123_sampling import sample_view

    guidance = Zero123Guidance(parts, view())

    def sample(cam: CameraBatch) -> torch.Tensor:
        return sample_view(guidance, cam, steps=4, generator=torch.Generator().manual_seed(3))

    front = sample(camera(75.0, 0.0))
    assert front.shape == (1, 3, 16, 16) and 0 <= front.min() and front.max() <= 1
    assert torch.equal(front, sample(camera(75.0, 0.0)))
    assert (front - sample(camera(75.0, 150.0))).abs().max() > 1e-4


@pytest.mark.gpu
def test_the_fp16_cuda_path_predicts_what_the_fp32_cpu_path_does() -> None:
    """The shipped toy model (trained weights: a real range of activations) on CUDA in fp16 against the CPU in fp32,
    on the same noisy latents: fp16 rounding is about 1e-3 of the prediction, a wrong cast or scale is far more."""
    from nerf.toy_models.world import input_camera
    from nerf.scenes.procedural import make_scene
    from nerf.scenes.raytrace import render_rgba

    model = Path(__file__).resolve().parents[1] / "examples" / "toy-zero123"
    front = input_camera(64)
    reference = RealView(render_rgba(make_scene("union", 100), front)[0].cpu(), front)
    noisy = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    side = fixed_cameras(60.0, torch.tensor([90.0, 200.0]), 1.8, 55.0, 64)
    predictions = []
    for device, fp16 in ((CPU, False), (torch.device("cuda"), True)):
        guidance = Zero123Guidance(load_zero123(str(model), device, fp16=fp16), reference)
        predictions.append(guidance.predict_noise(noisy.to(device), 500, side.to(device)).float().cpu())
    error = (predictions[1] - predictions[0]).norm() / predictions[0].norm()
    assert error < 0.02, float(error)


@pytest.mark.gpu
@pytest.mark.parametrize(("fp16", "compile"), [(False, "off"), (True, "off"), (True, "on")])
def test_cuda_graph_replay_gives_the_eager_loss_and_image_gradient(zero123_dir: Path, fp16: bool, compile: str) -> None:
    """Zero-1-to-3's UNet call and VAE encoder replayed as CUDA graphs (of compiled code with `compile` on) give the
    eager losses and image gradients over calls with new cameras, t and noise (the first call captures, the later
    ones replay); compiled code differs from eager kernels by rounding only."""
    cuda = torch.device("cuda")
    parts = load_zero123(str(zero123_dir), cuda, fp16=fp16)
    eager = Zero123Guidance(parts, view())
    graphed = Zero123Guidance(parts, view(), cuda_graph=True, compile=compile)
    images = torch.rand(4, 1, 3, 16, 16, device=cuda, generator=torch.Generator(cuda).manual_seed(0))

    def call(guidance, x, k):
        return guidance(x, 0, camera=camera(70.0 + 5 * k, 40.0 * k).to(cuda),
                        generator=torch.Generator(cuda).manual_seed(10 + k))

    assert_replays_match_eager(eager, graphed, call, images, "zero123_t", rtol=1e-2 if compile == "on" else 1e-3)
    assert graphed.both_branches.graph is not None and graphed.moments.graphed is not None
    assert not graphed.both_branches.failed and not graphed.moments.failed
    if compile == "on":  # the graph replays the UNet's package
        assert not graphed.both_branches.fn.failed and graphed.both_branches.fn.runner is not None
