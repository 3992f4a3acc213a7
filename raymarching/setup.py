"""Prebuild the ray-marching kernels as `_raymarching`: `pip install --no-build-isolation ./raymarching`.

The build needs the installed torch (hence no build isolation) and nvcc. Without a prebuilt module the
package compiles the same sources the first time the CUDA backend is asked for.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

try:
    from nerf.cuda_ext import setup_extension
except ImportError as exc:
    raise SystemExit(f"{exc}: build with the project's torch: pip install --no-build-isolation ./{HERE.name}")

setup_extension("raymarching", HERE)
