"""Finding a compiled CUDA extension: a prebuilt module, else a JIT build, else the reason why not.

Every extension package (`gridencoder`, `shencoder`, `freqencoder`, `raymarching`) has a `src/` folder of
CUDA/C++ sources. `pip install --no-build-isolation ./<package>` prebuilds them as the top-level module
`_<package>`; without that, the first use compiles them with ninja into a per-user cache. When neither works
the caller falls back to the PyTorch reference, and the user is told once per extension why.

This file is canonical in `gridencoder/` and copied verbatim into the other packages (tests/test_copies.py
keeps the copies equal), so that each package and its `setup.py` stand alone: no relative imports here.
"""

from __future__ import annotations

import importlib
import logging
import os
import types
import warnings
from pathlib import Path
from typing import Mapping

import torch

BACKENDS = ("auto", "cuda", "torch")
BUILD_ROOT = Path(os.environ.get("REALFUSION_EXTENSIONS_DIR", Path.home() / ".cache" / "realfusion" / "torch_extensions"))
# No -std flag: torch adds the standard its headers need (C++17 for older releases, C++20 for e.g. 2.14).
HOST_FLAGS = ["-O3"]
CUDA_FLAGS = [
    "-O3",
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_HALF2_OPERATORS__",
]

_log = logging.getLogger(__name__)
_loaded: dict[str, tuple[types.ModuleType | None, str]] = {}
_reported: set[str] = set()


def _nvcc() -> Path | None:
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        return None
    nvcc = Path(cpp_extension.CUDA_HOME) / "bin" / ("nvcc.exe" if os.name == "nt" else "nvcc")
    return nvcc if nvcc.exists() else None


def cuda_arch_list(capability: tuple[int, int] | None, environ: Mapping[str, str]) -> str | None:
    """The TORCH_CUDA_ARCH_LIST to build with: the user's when set, else the present GPU's architecture alone
    (e.g. "9.0" for an H100; no PTX copy and no other architecture to compile), None without a GPU (torch's
    default list)."""
    if environ.get("TORCH_CUDA_ARCH_LIST", "").strip():
        return environ["TORCH_CUDA_ARCH_LIST"]
    if capability is None:
        return None
    return f"{capability[0]}.{capability[1]}"


def use_present_architecture() -> None:
    """Set TORCH_CUDA_ARCH_LIST for this process's builds by `cuda_arch_list` (the user's value is kept)."""
    capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    arch = cuda_arch_list(capability, os.environ)
    if arch is not None:
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch


def _sources(package_dir: Path) -> list[Path]:
    return sorted(p for pattern in ("*.cu", "*.cpp") for p in (package_dir / "src").glob(pattern))


def setup_extension(name: str, package_dir: Path) -> None:
    """`setup()` of `<package>/setup.py`: builds the top-level module `_<name>` from `src/` with BuildExtension."""
    from setuptools import setup
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    package_dir = Path(package_dir)
    sources = [str(p.relative_to(package_dir)) for p in _sources(package_dir)]
    use_present_architecture()
    setup(
        name=f"realfusion-{name}",
        version="1.0.0",
        description=f"compiled CUDA kernels of the RealFusion {name} package",
        ext_modules=[
            CUDAExtension(f"_{name}", sources=sources, extra_compile_args={"cxx": HOST_FLAGS, "nvcc": CUDA_FLAGS})
        ],
        cmdclass={"build_ext": BuildExtension},
    )


def _jit_build(module_name: str, package_dir: Path) -> tuple[types.ModuleType | None, str]:
    from torch.utils import cpp_extension

    sources = [str(p) for p in _sources(package_dir)]
    if not sources:
        return None, f"no sources in {package_dir / 'src'}"
    build_dir = BUILD_ROOT / module_name
    build_dir.mkdir(parents=True, exist_ok=True)
    use_present_architecture()
    try:
        module = cpp_extension.load(
            name=module_name,
            sources=sources,
            extra_cflags=HOST_FLAGS,
            extra_cuda_cflags=CUDA_FLAGS,
            build_directory=str(build_dir),
            verbose=False,
        )
    except Exception as exc:  # the compiler's output is in the exception text; keep it for the user
        log = build_dir / "build-error.log"
        log.write_text(f"{type(exc).__name__}: {exc}\n", encoding="utf-8")
        return None, f"build error (log: {log})"
    return module, f"built in {build_dir}"


def load_extension(name: str, package_dir: Path) -> tuple[types.ModuleType | None, str]:
    """Return (`_<name>` module, how it was found) or (None, why not); the outcome is cached per process.

    Each package's copy of this file has its own cache, so ask the copy of the package that `name` belongs to.
    """
    if name not in _loaded:
        module_name = f"_{name}"
        try:
            _loaded[name] = (importlib.import_module(module_name), "prebuilt")
        except ImportError:
            if not torch.cuda.is_available():
                _loaded[name] = (None, "no CUDA device")
            elif _nvcc() is None:
                _loaded[name] = (None, "no nvcc: install the CUDA toolkit or set CUDA_HOME")
            else:
                _loaded[name] = _jit_build(module_name, Path(package_dir))
    return _loaded[name]


def resolve_backend(requested: str, name: str, package_dir: Path) -> types.ModuleType | None:
    """The compiled module to use for `requested` ("auto" | "cuda" | "torch"), or None for the reference.

    ValueError for an unknown name; RuntimeError when "cuda" is forced but cannot be loaded.
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r} for {name}: use one of {', '.join(BACKENDS)}")
    if requested == "torch":
        return None
    module, how = load_extension(name, package_dir)
    if module is None and requested == "cuda":
        raise RuntimeError(f"the CUDA {name} extension is unavailable ({how}); fix that or use the torch backend")
    if name not in _reported:
        _reported.add(name)
        if module is None:
            warnings.warn(f"{name}: CUDA extension unavailable ({how}); using the PyTorch reference", stacklevel=3)
        else:
            _log.info("%s: using the CUDA extension (%s)", name, how)
    return module


def use_compiled(module: types.ModuleType | None, requested: str, tensor: torch.Tensor) -> bool:
    """Whether a call on `tensor` goes to the compiled kernels: they need CUDA tensors."""
    if module is None:
        return False
    if not tensor.is_cuda:
        if requested == "cuda":
            raise ValueError("the cuda backend needs CUDA tensors; move the inputs to the GPU")
        return False
    return True
