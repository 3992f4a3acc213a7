"""--wandb: the scalars and validation images go to Weights & Biases too when wandb is installed; without it the
run is refused with one line before anything is written."""

from __future__ import annotations

import importlib.util
import sys
import types

import torch

from nerf.cli import train as main_module
from nerf.run_log import RunLog
from tests.test_reconstruction import shaded_sphere_rgba


class FakeWandb(types.ModuleType):
    """Records what the project hands to wandb (the package itself is optional and not installed in CI)."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.inits: list[dict] = []
        self.logged: list[tuple[dict, int]] = []

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return self

    def log(self, values: dict, step: int) -> None:
        self.logged.append((values, step))

    class Image:
        def __init__(self, array) -> None:
            self.shape = array.shape


def test_scalars_and_images_reach_both_writers(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    log = RunLog(tmp_path / "ws", wandb_config={"seed": 3})
    log.scalars({"train/loss": 0.5}, step=10)
    log.image("validation/orbit", torch.rand(8, 16, 3), step=10)
    assert fake.inits == [{"project": "realfusion", "name": "ws", "dir": str(tmp_path / "ws"), "config": {"seed": 3}}]
    assert fake.logged[0] == ({"train/loss": 0.5}, 10)
    assert fake.logged[1][0]["validation/orbit"].shape == (8, 16, 3) and fake.logged[1][1] == 10
    assert list((tmp_path / "ws" / "tensorboard").iterdir())


def test_without_wandb_the_run_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    image = shaded_sphere_rgba(tmp_path / "rgba.png")
    workspace = tmp_path / "ws"
    assert main_module.main(["--image_path", str(image), "--lambda_prior", "0", "--workspace", str(workspace),
                             "--wandb"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install wandb" in err and len(err.splitlines()) == 1 and not workspace.exists()
