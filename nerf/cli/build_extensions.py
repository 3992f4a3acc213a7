"""Build the four CUDA extensions at once, for the present GPU only, and say how long each took.

    python scripts/build-extensions.py           # JIT builds into the per-user cache (what first use would do)
    python scripts/build-extensions.py --wheel   # prebuilt wheels in dist/ (pip install dist/realfusion_*.whl)

Built one after another on first use the four take minutes; here each compiles in its own process at the same
time, with ninja's parallel jobs (MAX_JOBS, unless set) shared out between them, and for the architecture of
the GPU present (TORCH_CUDA_ARCH_LIST, unless set; see `cuda_build.cuda_arch_list`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nerf.errors import ArgumentParser, UserError, one_line_errors

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gridencoder", "raymarching", "shencoder", "freqencoder")
JIT_BUILD = ("import sys; from pathlib import Path; from {name}.cuda_build import load_extension; "
             "module, how = load_extension('{name}', Path(sys.argv[1])); print(how); sys.exit(0 if module else 1)")


def jobs_per_build(cpus: int, builds: int) -> int:
    """ninja's parallel jobs for each of `builds` simultaneous builds on `cpus` cores (at least one)."""
    return max(1, cpus // max(1, builds))


def build_command(name: str, wheel_dir: Path | None) -> list[str]:
    """The command that builds package `name`: a JIT build into the cache, or a wheel into `wheel_dir`."""
    package_dir = ROOT / name
    if wheel_dir is None:
        return [sys.executable, "-c", JIT_BUILD.format(name=name), str(package_dir)]
    return [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(wheel_dir),
            str(package_dir)]


def check_toolchain(wheel: bool) -> None:
    """A UserError when nothing can be built here: no GPU to build for (a wheel may name TORCH_CUDA_ARCH_LIST
    instead), or no nvcc."""
    import torch

    if not torch.cuda.is_available() and not (wheel and os.environ.get("TORCH_CUDA_ARCH_LIST")):
        raise UserError("no CUDA device: the extensions are built for the GPU that runs them (for a wheel without "
                        "one, set TORCH_CUDA_ARCH_LIST, e.g. 9.0).")
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        raise UserError("no CUDA toolkit found (nvcc): install it or set CUDA_HOME.")


def _timed_run(command: list[str], env: dict[str, str]) -> tuple[int, float, str]:
    began = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, time.perf_counter() - began, lines[-1] if lines else ""


def build_all(names: tuple[str, ...], wheel_dir: Path | None, cpus: int) -> dict[str, tuple[int, float, str]]:
    """Run every build at once; {name: (exit status, seconds, last line of its output)}."""
    from gridencoder.cuda_build import use_present_architecture

    use_present_architecture()
    env = dict(os.environ)
    env.setdefault("MAX_JOBS", str(jobs_per_build(cpus, len(names))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with ThreadPoolExecutor(len(names)) as pool:  # threads wait; the compilers run in their own processes
        futures = {name: pool.submit(_timed_run, build_command(name, wheel_dir), env) for name in names}
        return {name: future.result() for name, future in futures.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--jit", action="store_true", help="build into the per-user JIT cache (the default)")
    mode.add_argument("--wheel", action="store_true", help="build prebuilt wheels into --dist")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="where --wheel writes the wheels")
    return parser.parse_args(argv)


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_toolchain(args.wheel)
    began = time.perf_counter()
    results = build_all(PACKAGES, args.dist if args.wheel else None, os.cpu_count() or 1)
    print(f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')}, MAX_JOBS per build "
          f"{os.environ.get('MAX_JOBS') or jobs_per_build(os.cpu_count() or 1, len(PACKAGES))}")
    for name, (code, seconds, last) in results.items():
        print(f"{name:12s} {'ok' if code == 0 else 'FAILED':6s} {seconds:6.1f} s  {last}")
    print(f"all four: {time.perf_counter() - began:.1f} s wall")
    return 0 if all(code == 0 for code, _, _ in results.values()) else 1
