"""The mesh-export benchmark times every stage of the real export on an analytic density (CPU, small sizes)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mesh_benchmark_splits_the_export_by_stage(tmp_path):
    out = tmp_path / "mesh.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "mesh", "--scenes", "union:0", "--resolution", "48",
         "--decimate_target", "2000", "--texture_size", "64", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["scene"] == "union:0" and 0 < row["faces"] <= 2000
    stages = [row[f"{stage}_s"] for stage in ("sample_grid", "extract_surface", "keep_main_components", "decimate",
                                              "unwrap", "bake_albedo")]
    assert all(seconds > 0 for seconds in stages)
    assert row["files_s"] > 0 and abs(row["total_s"] - sum(stages) - row["files_s"]) < 1e-6
    assert "unwrap_s" in result.stdout


def test_mesh_benchmark_rejects_an_unknown_scene(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "mesh", "--scenes", "teapot:1",
                             "--out", str(tmp_path / "mesh.json")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "teapot:1" in result.stderr
    assert not (tmp_path / "mesh.json").exists()
