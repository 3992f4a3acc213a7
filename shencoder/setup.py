"""Prebuild the spherical-harmonics encoder kernels as `_shencoder`: `pip install --no-build-isolation ./shencoder`.

The build needs the installed torch (hence no build isolation) and nvcc. Without a prebuilt module the
package compiles the same sources on first use.
"""

from pathlib import Path

try:
    from cuda_build import setup_extension  # the sibling file: setup.py runs with its own folder on sys.path
except ImportError as exc:  # usually torch missing from an isolated build environment
    raise SystemExit(f"{exc}: build with the project's torch: pip install --no-build-isolation ./shencoder")

setup_extension("shencoder", Path(__file__).resolve().parent)
