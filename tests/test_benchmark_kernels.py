"""Smoke test of `scripts/benchmark.py kernels` on the CPU: it runs, and its JSON holds a finite timing of both
backends for every row."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

OPS = {
    "hash grid fwd+bwd", "tiled grid fwd+bwd (--O field)", "tiled grid, 7-point stencil fwd+bwd",
    "SH encoding fwd+bwd", "frequency encoding fwd+bwd",
    "march+composite train fwd+bwd", "march+composite inference", "synthetic render fwd+bwd",
    "real-view render fwd+bwd",
}


def test_quick_cpu_run_writes_both_backends(repo, tmp_path):
    out = tmp_path / "kernels.json"
    cmd = [sys.executable, str(repo / "scripts" / "benchmark.py"), "kernels", "--device", "cpu", "--quick",
           "--out", str(out)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["info"]["card"] == "cpu" and result["info"]["quick"]
    rows = result["rows"]
    assert {row["op"] for row in rows} == OPS
    for row in rows:
        for key in ("cuda_ms", "torch_ms"):
            assert math.isfinite(row[key]) and row[key] > 0, row
        assert row["speedup"] == pytest.approx(row["torch_ms"] / row["cuda_ms"])
    assert set(result["columns"]) <= set(rows[0])
    assert "real-view render fwd+bwd" in done.stdout  # the table was printed


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a CUDA device")
def test_without_cuda_the_default_device_is_a_one_line_error(repo, tmp_path, capsys):
    from nerf.cli import benchmark as cli

    out = tmp_path / "kernels.json"
    assert cli.main(["kernels", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device cpu" in err
    assert not out.exists()
