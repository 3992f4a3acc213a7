"""Evaluation: metrics against hand-computed values, ground-truth scenes and renders, the oracle guidance, and a
tiny oracle-guided reconstruction that recovers more shape than a prior-free one."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import pytest
import torch
import trimesh

from nerf.cameras import fixed_cameras
from nerf.errors import UserError
from nerf.evaluation import geometry, image_metrics
from nerf.evaluation.evaluate import EvaluationSettings, evaluate_workspace
from nerf.guidance.oracle import OracleGuidance
from nerf.evaluation.perceptual import PerceptualMetrics
from nerf.scenes.raytrace import HIT_EPS, render_rgba, trace
from nerf.evaluation.reconstruct import reconstruct
from nerf.scenes.files import Conventions, load_scene, read_rgba_png, write_scene
from nerf.scenes.procedural import EXTENT, FAMILIES, Part, Scene, make_scene
from nerf.options import Options
from tests.two_cores import concurrently


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread in this file: on a 2-core machine shared with another busy process, two OpenMP threads made
    the two tiny reconstructions below about eight times slower (413 s against 48 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def icosphere(radius: float, offset: float = 0.0) -> geometry.Mesh:
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=radius)
    return geometry.Mesh(np.asarray(sphere.vertices) + [offset, 0.0, 0.0], np.asarray(sphere.faces))


def ball(center=(0.0, 0.0, 0.0), radius=0.3, colour=(0.8, 0.2, 0.1)) -> Scene:
    return Scene("test", 0, [Part("sphere", (radius,), center, 0.0, 0.0, (colour, colour), (1.0, 0.0, 0.0))])


# --- image metrics ---------------------------------------------------------------------------------------------
def test_psnr_of_a_known_error():
    target = torch.rand(16, 16, 3, dtype=torch.float64) * 0.8
    assert image_metrics.psnr(target + 0.1, target) == pytest.approx(20.0, abs=1e-9)  # MSE 0.01
    assert image_metrics.psnr(target, target) == image_metrics.PSNR_CAP


def test_ssim_of_flat_images_has_the_closed_form_and_matches_scikit_image():
    from skimage.metrics import structural_similarity

    a, b = 0.3, 0.6  # flat images: no variance, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    c1 = 0.01**2
    flat = image_metrics.ssim(torch.full((16, 16, 3), a), torch.full((16, 16, 3), b))
    assert flat == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(24, 20, 3, generator=generator)
    y = (x + 0.2 * torch.rand(24, 20, 3, generator=generator)).clamp(0, 1)
    expected = structural_similarity(x.numpy(), y.numpy(), gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=1.0, channel_axis=-1)
    assert image_metrics.ssim(x, y) == pytest.approx(expected, abs=1e-6)
    assert image_metrics.ssim(x, x) == pytest.approx(1.0, abs=1e-12)


def test_ssim_gradient_passes_gradcheck():
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(12, 13, 1, dtype=torch.float64, generator=generator, requires_grad=True)
    y = torch.rand(12, 13, 1, dtype=torch.float64, generator=generator)
    assert torch.autograd.gradcheck(lambda v: image_metrics.ssim_map(v, y).mean(), (x,))


def test_mask_iou_of_two_known_rectangles():
    a, b = torch.zeros(10, 12), torch.zeros(10, 12)
    a[2:6, 2:8] = 1  # 24 pixels
    b[4:8, 5:10] = 1  # 20 pixels, overlap rows 4-5 x cols 5-7 = 6
    assert image_metrics.mask_iou(a, b) == pytest.approx(6 / 38)
    assert image_metrics.mask_iou(torch.zeros(4, 4), torch.zeros(4, 4)) == 1.0


# --- geometry metrics ------------------------------------------------------------------------------------------
R, D = 0.5, 0.1  # two spheres of radius R, centres D apart


def sphere_to_sphere_distances(samples: int = 2_000_001) -> tuple[np.ndarray, np.ndarray]:
    """Distance from a point of sphere A to sphere B as a function of u = cos(angle to the offset axis); u is
    uniform for area-uniform points (Archimedes), so means over u are surface means."""
    u = np.linspace(-1, 1, samples)
    return u, np.abs(np.sqrt(R * R + D * D - 2 * R * D * u) - R)


def test_chamfer_of_two_offset_spheres():
    u, distance = sphere_to_sphere_distances()
    expected = np.trapezoid(distance, u) / 2  # both directions are equal by symmetry
    pred = geometry.sample_surface(icosphere(R, D), 60_000, seed=0)
    gt = geometry.sample_surface(icosphere(R), 60_000, seed=1)
    assert geometry.chamfer_l1(pred, gt) == pytest.approx(expected, rel=0.03)


def test_fscore_at_thresholds_either_side_of_the_offset():
    pred = geometry.sample_surface(icosphere(R, D), 60_000, seed=0)
    gt = geometry.sample_surface(icosphere(R), 60_000, seed=1)
    assert geometry.fscore(pred, gt, 1.3 * D) == pytest.approx(1.0)  # every distance is at most D
    tau = 0.5 * D  # within tau where (R - tau)^2 < R^2 + D^2 - 2RDu < (R + tau)^2
    u_low = (R * R + D * D - (R + tau) ** 2) / (2 * R * D)
    u_high = (R * R + D * D - (R - tau) ** 2) / (2 * R * D)
    share = (min(u_high, 1) - max(u_low, -1)) / 2  # precision = recall = F by symmetry
    assert geometry.fscore(pred, gt, tau) == pytest.approx(share, abs=0.02)
    assert share < 0.9


def test_volume_iou_of_two_offset_spheres_and_an_exact_box():
    lens = math.pi * (4 * R + D) * (2 * R - D) ** 2 / 12  # intersection volume of two balls
    ball_volume = 4 / 3 * math.pi * R**3
    expected = lens / (2 * ball_volume - lens)
    assert geometry.volume_iou(icosphere(R, D), icosphere(R), resolution=96) == pytest.approx(expected, rel=0.02)
    box = trimesh.creation.box(extents=(0.4, 0.6, 0.8))
    mesh = geometry.Mesh(np.asarray(box.vertices), np.asarray(box.faces))
    grid = geometry.enclosing_grid([mesh], 44)  # 40 voxels across the longest side: 0.02 per voxel
    assert geometry.voxelize(mesh, grid).sum() == 20 * 30 * 40


def test_unreadable_mesh_is_a_user_error(tmp_path):
    bad = tmp_path / "mesh.ply"
    bad.write_bytes(b"not a mesh at all")
    with pytest.raises(UserError, match="mesh"):
        geometry.load_mesh(bad)
    with pytest.raises(UserError, match="does not exist"):
        geometry.load_mesh(tmp_path / "missing.obj")


# --- scenes and ground-truth renders ----------------------------------------------------------------------------
def test_scenes_are_deterministic_distinct_and_inside_the_scene_cube():
    for family in FAMILIES:
        scene = make_scene(family, 3)
        assert scene.to_dict() == make_scene(family, 3).to_dict()
        assert scene.to_dict() != make_scene(family, 4).to_dict()
        assert Scene.from_dict(json.loads(json.dumps(scene.to_dict()))).to_dict() == scene.to_dict()
        axis = torch.linspace(-0.74, 0.74, 40)
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        inside = grid[scene.sdf(grid) < 0]
        assert len(inside) > 100 and inside.abs().max() <= EXTENT
    with pytest.raises(UserError, match="unknown scene family"):
        make_scene("teapot")


def test_sphere_tracing_hits_a_sphere_where_the_ray_sphere_formula_says():
    center, radius = torch.tensor([0.1, -0.05, 0.2]), 0.35
    camera = fixed_cameras(75.0, torch.tensor([30.0]), 1.8, 55.0, 24)
    rays_o, rays_d, _ = camera.rays()
    rays_o, rays_d = rays_o[0], rays_d[0]
    hit, points = trace(ball(tuple(center.tolist()), radius), rays_o, rays_d)
    oc = rays_o - center
    b = (oc * rays_d).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - radius**2)
    expected_hit = disc > 0
    t = -b - disc.clamp(min=0).sqrt()
    margin = disc.abs() > 1e-3  # rays grazing the silhouette may go either way
    assert torch.equal(hit[margin], expected_hit[margin])
    both = hit & expected_hit & margin
    assert both.sum() > 50
    assert ((points[both] - center).norm(dim=-1) - radius).abs().max() < HIT_EPS  # stops at the surface...
    error = (points[both] - (rays_o + t[:, None] * rays_d)[both]).norm(dim=-1)
    assert error.median() < 2 * HIT_EPS and error.max() < 0.05  # ...of the first crossing (grazing rays stop short)


def test_renders_are_right_handed_world_plus_x_on_the_viewers_right():
    # The input camera looks from +z towards the origin with y up, so world +x is on the right of its image.
    rgba = render_rgba(ball((0.4, 0.0, 0.0), 0.15), Conventions(75.0, 1.8, 55.0).input_camera(32))[0]
    columns = torch.arange(32, dtype=torch.float32)
    centroid = float((rgba[..., 3].sum(0) * columns).sum() / rgba[..., 3].sum())
    assert centroid > 20


def test_scene_folder_round_trip_and_script(repo, tmp_path):
    from nerf.cli import make_synthetic_scene as script

    args = ["--family", "union", "--seed", "2", "--input_size", "48", "--view_size", "16", "--views", "3",
            "--mesh_resolution", "48"]
    assert script.main([str(tmp_path / "a"), *args]) == 0
    assert script.main([str(tmp_path / "b"), *args]) == 0
    for name in ("rgba.png", "mesh.ply", "views/000.png", "views/002.png", "scene.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    scene, conventions = load_scene(tmp_path / "a")
    assert scene.to_dict() == make_scene("union", 2).to_dict()
    defaults = Options().data
    assert conventions == Conventions(defaults.pose_angle, defaults.orbit_radius, defaults.default_fovy)
    # view 0 of the validation path is the input camera
    view0 = read_rgba_png(tmp_path / "a" / "views" / "000.png")
    assert torch.allclose(view0, render_rgba(scene, conventions.input_camera(16))[0], atol=1 / 255)
    mesh = geometry.load_mesh(tmp_path / "a" / "mesh.ply")
    assert mesh.vertices.min() >= -EXTENT - 0.05 and mesh.vertices.max() <= EXTENT + 0.05
    assert script.main([str(tmp_path / "c"), "--family", "thin", "--views", "0"]) == 2


# --- oracle guidance ---------------------------------------------------------------------------------------------
def test_oracle_gradient_pulls_the_render_towards_the_ground_truth():
    scene = ball(colour=(0.2, 0.7, 0.3))
    camera = fixed_cameras(60.0, torch.tensor([120.0]), 1.4, 50.0, 16)
    oracle = OracleGuidance(scene, strength=3.0, supersample=1)
    image = torch.rand(1, 3, 16, 16, requires_grad=True)
    loss, stats = oracle(image, 1, camera=camera)
    (0.5 * loss).backward()  # the objective's weight (lambda_prior) multiplies the loss
    # ground truth by hand: hit pixels carry the lit albedo, the rest is the white background
    rays_o, rays_d, _ = camera.rays()
    hit, points = trace(scene, rays_o[0], rays_d[0])
    normal = torch.nn.functional.normalize(points, dim=-1)
    light = torch.nn.functional.normalize(torch.tensor([0.35, 0.8, 0.55]), dim=0)
    shade = 0.35 + 0.65 * (normal @ light).clamp(min=0)
    colour = torch.tensor([0.2, 0.7, 0.3]) * shade[:, None]
    target = torch.where(hit[:, None], colour, torch.ones_like(colour)).reshape(16, 16, 3).permute(2, 0, 1)[None]
    expected = 0.5 * 3.0 * (image.detach() - target) / 256
    assert torch.allclose(image.grad, expected, atol=1e-5)
    assert float(stats["oracle_mse"]) == pytest.approx(float(((image.detach() - target) ** 2).mean()), rel=1e-4)


# --- learned metrics ---------------------------------------------------------------------------------------------
def test_clip_similarity_with_a_local_model_and_a_notice_when_weights_are_missing(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=16)
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "clip")
    metrics = PerceptualMetrics(torch.device("cpu"), str(tmp_path / "clip"))
    x, y = torch.rand(40, 40, 3), torch.rand(40, 40, 3)
    assert metrics.clip_similarity(x, x) == pytest.approx(1.0, abs=1e-5)
    assert metrics.clip_similarity(x, y) < 0.9999
    offline = PerceptualMetrics(torch.device("cpu"), "no-such-org/no-such-clip")
    assert offline.clip_similarity(x, y) is None
    assert any(n.startswith("CLIP similarity skipped") for n in offline.notices)
    assert (offline.lpips(x, y) is None) == any(n.startswith("LPIPS skipped") for n in offline.notices)


# --- reconstructions ---------------------------------------------------------------------------------------------
TINY = ["--iters", "150", "--HW_real", "32", "--HW_synthetic", "16", "--num_rays", "512", "--max_steps", "64",
        "--occupancy_grid_size", "32", "--HW_vis", "8", "--eval_interval", "100", "--lambda_orient", "0",
        "--lambda_smooth_2d", "0"]
TINY_EVAL = EvaluationSettings(mesh_resolution=48, surface_points=10_000, voxel_resolution=48, perceptual=False)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    scene_dir = write_scene(make_scene("union", 0), root / "scene", Conventions.from_options(Options()),
                            input_size=64, view_size=32, views=4, mesh_resolution=96)
    prior_free, oracle = (partial(reconstruct, scene_dir, root / mode, mode, "reduced", torch.device("cpu"),
                                  extra_args=TINY) for mode in ("prior_free", "oracle"))
    runs = dict(zip(("prior_free", "oracle"), concurrently(prior_free, oracle)))
    return scene_dir, runs


def test_oracle_guided_run_recovers_more_shape_than_a_prior_free_run(tiny_runs):
    scene_dir, runs = tiny_runs
    scores = {mode: evaluate_workspace(ws, scene_dir / "mesh.ply", scene_dir / "views", settings=TINY_EVAL,
                                       device=torch.device("cpu")) for mode, ws in runs.items()}
    f = {mode: report["geometry"]["fscore"]["2%"] for mode, report in scores.items()}
    viou = {mode: report["geometry"]["volume_iou"] for mode, report in scores.items()}
    print(f"\nF@2%: {f}, volume IoU: {viou}")
    assert f["oracle"] > f["prior_free"] + 0.15
    assert viou["oracle"] > viou["prior_free"]
    assert scores["oracle"]["novel_views"]["psnr"] > scores["prior_free"]["novel_views"]["psnr"]


def test_evaluate_script_report_compare_and_errors(repo, tiny_runs, tmp_path):
    scene_dir, runs = tiny_runs
    def evaluate(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(repo / "scripts" / "evaluate.py"), *args], capture_output=True,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})  # run two at a time

    common = ["--gt_mesh", str(scene_dir / "mesh.ply"), "--gt_views", str(scene_dir / "views"), "--device", "cpu",
              "--mesh_resolution", "32", "--surface_points", "4000", "--voxel_resolution", "32"]
    out, compare, folder = tmp_path / "report.json", tmp_path / "compare.json", tmp_path / "not-a-workspace"
    folder.mkdir()
    with ThreadPoolExecutor(2) as pool:  # three independent processes, two at a time
        done, compared, refused = pool.map(lambda args: evaluate(*args), [
            (str(runs["oracle"]), *common, "--out", str(out)),
            ("--compare", str(runs["prior_free"]), str(runs["oracle"]), *common, "--no_perceptual", "--out",
             str(compare)),
            (str(folder), "--device", "cpu")])
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["step"] == 150 and report["novel_views"]["count"] == 3
    assert set(report["geometry"]["fscore"]) == {"1%", "2%", "5%"}
    # a learned metric whose weights did not load is absent, not invented, and the reason is printed
    assert report["novel_views"]["clip_similarity"] is None  # offline: the default hub model is not cached
    for key, notice in (("clip_similarity", "CLIP similarity skipped"), ("lpips", "LPIPS skipped")):
        assert (report["novel_views"][key] is None) == (notice in done.stderr)
    assert "| input PSNR" in done.stdout
    assert compared.returncode == 0, compared.stderr
    header = compared.stdout.splitlines()[0]
    assert str(runs["prior_free"]) in header and str(runs["oracle"]) in header
    assert set(json.loads(compare.read_text())["reports"]) == {str(runs["prior_free"]), str(runs["oracle"])}
    assert refused.returncode == 2 and "not a reconstruction workspace" in refused.stderr


@pytest.mark.slow
def test_reduced_suite_on_one_scene(tmp_path):
    from nerf.evaluation.suite import run_suite

    result = run_suite(tmp_path, "reduced", torch.device("cpu"), families=["union"])
    print("\n" + result["table"])
    f = {row["mode"]: row["report"]["geometry"]["fscore"]["2%"] for row in result["rows"]}
    assert f["oracle"] >= 0.85 and f["oracle"] > f["prior_free"] + 0.1
    kept = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert sorted(row["mode"] for row in kept) == sorted(f)  # each run's row was kept as it finished


@pytest.mark.parametrize("device_type", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_ground_truth_renders_ignore_mixed_precision(device_type):
    """The oracle renders inside main.py --O's autocast; the ray tracer must stay fp32 (it once failed there with
    'Index put requires the source and destination dtypes match')."""
    if device_type == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    scene, camera = make_scene("union", 0), Conventions(75.0, 1.8, 55.0).input_camera(16).to(torch.device(device_type))
    plain = render_rgba(scene, camera)
    dtype = torch.float16 if device_type == "cuda" else torch.bfloat16
    with torch.autocast(device_type, dtype=dtype):
        mixed = render_rgba(scene, camera)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)
