"""pyproject.toml: every console command points at a callable `main`, and the packages it installs are the ones
the code imports (nothing is reached through a path patch)."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_console_command_resolves_to_a_main():
    commands = PROJECT["project"]["scripts"]
    assert {"realfusion-train", "realfusion-reconstruct", "realfusion-textual-inversion",
            "realfusion-extract-mask"} <= set(commands)
    for target in commands.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def test_the_installed_packages_are_every_top_level_package_the_code_imports():
    included = set(PROJECT["tool"]["setuptools"]["packages"]["find"]["include"])
    packages = {path.parent.name for path in REPO.glob("*/__init__.py")} - {"tests"}
    assert packages <= {name.removesuffix(".*") for name in included}
