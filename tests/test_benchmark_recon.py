"""The reconstruction benchmark runs the real Trainer loop end to end, its variants in one process, and a complete
run through main.main (CPU, tiny model, tiny sizes)."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = "--HW_synthetic 16 --HW_real 16 --num_rays 256 --occupancy_grid_size 16 --update_extra_interval 2"
JOINT = "--guidance sd+zero123"


@pytest.fixture(scope="module")
def bench(tiny_sd_dir, tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    """One benchmark process for the tests below (each would pay for importing torch and loading the model): three
    variants, the joint one with a tiny Zero-1-to-3, and the complete run through main.main."""
    from nerf.toy_models.tiny_zero123 import write_model

    root = tmp_path_factory.mktemp("bench-recon")
    zero123 = write_model(root / "zero123")
    out = root / "recon.json"
    tiny_run = f"{SMALL} --iters 5 --HW_vis 8 --mesh_resolution 16 --max_steps 32"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "recon", "--model", str(tiny_sd_dir),
         "--zero123_dir", str(zero123), "--warmup", "1", "--steps", "3", "--split_steps", "2",
         "--variants", f"default,--normal_type pred,{JOINT}", "--main_args", tiny_run, "--full", "--window", "2",
         "--trace", str(root / "trace.json.gz"), "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    return result, json.loads(out.read_text()), root


def row_of(report: dict, variant: str) -> dict:
    (row,) = [row for row in report["rows"] if row["variant"] == variant]
    return row


def test_recon_benchmark_reports_every_stage(bench):
    result, report, _ = bench
    row = row_of(report, "default")
    assert row["ms_per_iter"] > 0 and row["it_per_s"] > 0 and row["back_to_back_ms"] > 0
    for stage in ("real_render", "synthetic_render", "vae_encode", "unet", "backward", "optimizer_grid"):
        assert row[f"{stage}_ms"] > 0, stage
    assert report["info"]["card"] == "cpu"
    assert "ms_per_iter" in result.stdout
    # both views' sample buffers: at least the marchers' alignment, at most every ray's max_steps (+ the ladder's 1/16
    # of padding): 256 input-view rays and 16² synthetic ones, 32 steps
    assert 128 <= row["sample_rows_k"] * 1000 <= (256 + 16 * 16) * 32 * 17 / 16


def test_recon_benchmark_variants_in_one_process_and_the_full_run_split(bench):
    result, report, _ = bench
    assert [row["variant"] for row in report["rows"]] == ["default", "--normal_type pred", JOINT]
    assert all(row["load_s"] > 0 and row["warmup_s"] > 0 for row in report["rows"])
    assert report["settings"]["stable_diffusion_loads"] == 1  # the variants shared one model
    full = report["full_run"]
    assert full["exit_code"] == 0 and full["iters"] == 5
    assert [(w["from"], w["to"]) for w in full["windows"]] == [(0, 2), (2, 4), (4, 5)]
    for phase in ("load_s", "prior_load_s", "validate_s", "checkpoint_s", "videos_s", "video_encoding_s", "mesh_s"):
        assert full[phase] > 0, phase
    assert full["load_s"] >= full["prior_load_s"] and full["videos_s"] >= full["video_encoding_s"]
    assert 0 < full["loop_s"] < full["wall_s"] - full["videos_s"] - full["mesh_s"]
    assert full["default_run_s"] == pytest.approx(full["wall_s"] - full["load_s"] - full["mesh_s"])
    assert f"default run (loading and --save_mesh's export apart): {full['default_run_s']:.1f} s" in result.stdout
    assert "iterations 3-4:" in result.stdout and "mesh export" in result.stdout
    assert all(w["sample_rows_k"] > 0 for w in full["windows"]) and "k sample rows per iteration" in result.stdout
    stages = [full[f"mesh_{stage}_s"] for stage in ("sample_grid", "extract_surface", "decimate", "unwrap",
                                                    "bake_albedo")]
    assert all(spent > 0 for spent in stages) and sum(stages) < full["mesh_s"]
    assert "  mesh export: sample_grid" in result.stdout
    split = full["iterations"]  # iterations 1-4 stamped without synchronising (5 ends the loop: no next stamp)
    assert split["grid_update_every"] == 2
    assert split["grid_update_mean_ms"] > 0 and split["other_mean_ms"] > 0 and split["median_ms"] > 0
    assert min(split["grid_update_mean_ms"], split["other_mean_ms"]) <= split["mean_ms"]
    assert "per iteration: median" in result.stdout
    slowest = [ms for _, ms in split["slowest"]]
    assert slowest == sorted(slowest, reverse=True) and slowest[0] >= split["mean_ms"] >= slowest[-1]
    assert 0 < len(slowest) <= 4 and all(1 <= step <= 4 for step, _ in split["slowest"])
    assert "  slowest iterations: #" in result.stdout


def test_recon_benchmark_splits_both_priors_of_a_joint_variant(bench):
    row = row_of(bench[1], JOINT)
    for stage in ("vae_encode", "unet"):  # both priors' encoders and UNets are timed
        assert row[f"{stage}_ms"] > 0, stage


def test_compile_break_even_pairs_each_compiled_variant_with_its_eager_twin():
    from nerf.benchmarks.recon import compile_break_even

    rows = [{"variant": "default", "ms_per_iter": 60.0, "warmup_s": 5.0},
            {"variant": "--compile on", "ms_per_iter": 52.0, "warmup_s": 85.0},
            {"variant": "--normal_type pred", "ms_per_iter": 55.0, "warmup_s": 2.0},
            {"variant": "--compile on --normal_type pred", "ms_per_iter": 56.0, "warmup_s": 12.0},
            {"variant": "--compile on --no_cuda_graph", "ms_per_iter": 40.0, "warmup_s": 9.0}]
    even = compile_break_even(rows)
    assert set(even) == {"--compile on", "--compile on --normal_type pred"}  # the third has no eager twin
    assert even["--compile on"] == {"extra_warmup_s": 80.0, "saved_ms_per_iter": 8.0, "break_even_iters": 10000.0}
    assert even["--compile on --normal_type pred"]["break_even_iters"] == float("inf")  # slower: never pays back

    # an explicit `--compile off` twin is preferred: under `auto`, a variant may compile what an earlier one cached
    rows += [{"variant": "--compile off", "ms_per_iter": 62.0, "warmup_s": 4.0}]
    assert compile_break_even(rows)["--compile on"]["saved_ms_per_iter"] == 10.0


def test_gpu_busy_time_is_the_union_of_kernel_intervals():
    import random

    from nerf.benchmarks.recon import covered_ms

    rng = random.Random(0)
    for _ in range(50):
        intervals = []
        for _ in range(rng.randint(0, 12)):
            start = rng.randint(0, 200)
            intervals.append((float(start), float(start + rng.randint(0, 40))))
        timeline = [False] * 260  # one slot per microsecond, marked where some interval runs
        for start, end in intervals:
            for t in range(int(start), int(end)):
                timeline[t] = True
        assert covered_ms(intervals) == sum(timeline) / 1000


def test_recon_benchmark_profiles_each_variant_with_a_trace_file(bench):
    _, report, root = bench
    for k, row in enumerate(report["rows"]):
        assert "Self CPU" in row["profile"], row["variant"]  # the profiler's table
        with gzip.open(root / f"{k}-trace.json.gz", "rt") as trace:
            events = json.load(trace)["traceEvents"]
        assert any("train_step" in e.get("name", "") or "aten::" in e.get("name", "") for e in events)
