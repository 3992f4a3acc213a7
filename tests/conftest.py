"""Shared fixtures: repository paths, GPU skipping, and a tiny random-weight Stable Diffusion model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]  # pytest.ini's pythonpath puts it on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Stable Diffusion model in the standard diffusers folder layout."""
    out = tmp_path_factory.mktemp("tiny-sd") / "model"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make-tiny-sd.py"), str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def toy_prior(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """train-toy-prior.py's model for its arguments after the output folder, trained once per session for each list
    of arguments (test_toy_prior resumes the VAE phase that test_toy_zero123 builds on). Copy a model to train it
    on. One torch thread, as in those modules: they compare weights with their own runs bit for bit."""
    import torch

    from nerf.toy_models import training

    models: dict[tuple[str, ...], Path] = {}

    def trained(*argv: str) -> Path:
        if argv not in models:
            out = tmp_path_factory.mktemp("toy-prior") / "model"
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                assert training.main([str(out), *argv]) == 0
            finally:
                torch.set_num_threads(threads)
            models[argv] = out
        return models[argv]

    return trained


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny networks: two threads on two busy cores run them many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
