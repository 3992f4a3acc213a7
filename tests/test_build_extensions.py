"""The extension builds: the architecture list chosen from the GPU and the environment, the share of ninja jobs,
and the parallel builder's commands and its one-line answer without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gridencoder.cuda_build import cuda_arch_list
from nerf.cli.build_extensions import PACKAGES, build_command, jobs_per_build

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("capability, environ, expected", [
    ((9, 0), {}, "9.0"),
    ((8, 6), {"TORCH_CUDA_ARCH_LIST": ""}, "8.6"),
    ((9, 0), {"TORCH_CUDA_ARCH_LIST": "8.0;9.0+PTX"}, "8.0;9.0+PTX"),
    (None, {"TORCH_CUDA_ARCH_LIST": "7.5"}, "7.5"),
    (None, {}, None),
])
def test_the_architecture_list_is_the_user_s_else_the_present_gpu_s(capability, environ, expected) -> None:
    assert cuda_arch_list(capability, environ) == expected


@pytest.mark.parametrize("cpus, builds, expected", [(16, 4, 4), (2, 4, 1), (0, 4, 1), (64, 4, 16), (8, 0, 8)])
def test_ninja_jobs_are_shared_between_the_simultaneous_builds(cpus, builds, expected) -> None:
    assert jobs_per_build(cpus, builds) == expected


def test_each_package_has_a_jit_and_a_wheel_command(tmp_path) -> None:
    for name in PACKAGES:
        assert (ROOT / name / "setup.py").is_file()
        assert str(ROOT / name) == build_command(name, None)[-1]
        wheel = build_command(name, tmp_path)
        assert wheel[-1] == str(ROOT / name) and str(tmp_path) in wheel and "--no-build-isolation" in wheel


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the answer of a machine without a GPU")
@pytest.mark.parametrize("flags", [[], ["--jit"], ["--wheel"]])
def test_without_a_gpu_the_builder_answers_one_line_and_exit_2(flags) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TORCH_CUDA_ARCH_LIST"}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "build-extensions.py"), *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stdout == "" and done.stderr.startswith("error: no CUDA device") and done.stderr.count("\n") == 1
