"""The reconstruction benchmark runs the real Trainer loop end to end (CPU, tiny model, tiny sizes)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = "--HW_synthetic 16 --HW_real 16 --num_rays 256 --occupancy_grid_size 16 --update_extra_interval 2"


def test_recon_benchmark_reports_every_stage(tiny_sd_dir, tmp_path):
    out = tmp_path / "recon.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "recon", "--model", str(tiny_sd_dir),
         "--warmup", "1", "--steps", "3", "--split_steps", "2", "--variants", "default", "--main_args", SMALL,
         "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert row["ms_per_iter"] > 0 and row["it_per_s"] > 0
    for stage in ("real_render", "synthetic_render", "vae_encode", "unet", "backward", "optimizer_grid"):
        assert row[f"{stage}_ms"] > 0, stage
    assert report["info"]["card"] == "cpu"
    assert "ms_per_iter" in result.stdout
