"""With fp16 on the GPU, non-finite iterations are skipped on the device and counted without a per-step host read."""

import pytest
import torch

from nerf import losses
from nerf.build import build_run
from nerf.option_checks import parse
from nerf.trainer import LOG_EVERY, TrainingDiverged
from tests.test_reconstruction import shaded_sphere_rgba

SMALL = ["--O", "--lambda_prior", "0", "--HW_real", "32", "--num_rays", "1024", "--occupancy_grid_size", "32",
         "--HW_vis", "8", "--seed", "0", "--iters", "100"]


@pytest.mark.gpu
def test_fp16_non_finite_steps_leave_the_weights_untouched_and_stop_the_run(tmp_path, monkeypatch):
    image = shaded_sphere_rgba(tmp_path / "sphere.png")
    trainer = build_run(parse(
        ["--image_path", str(image), "--workspace", str(tmp_path / "ws"), "--max_bad_steps", "3", *SMALL])).trainer
    assert trainer.scaler.is_enabled()
    trainer.renderer.train()
    for _ in range(5):  # healthy steps first: the weights move
        trainer.train_step()
    before = [p.detach().clone() for p in trainer.field.parameters()]
    real_mask_loss = losses.mask_loss
    monkeypatch.setattr(losses, "mask_loss", lambda ws, alpha: real_mask_loss(ws, alpha) * float("nan"))
    with pytest.raises(TrainingDiverged, match="consecutive"):
        for _ in range(2 * LOG_EVERY):
            trainer.train_step()
    assert trainer.global_step == LOG_EVERY  # detected at the first read-back after the third bad step
    assert trainer.skipped_steps == LOG_EVERY - 5 and trainer.bad_steps == LOG_EVERY - 5
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, trainer.field.parameters()))
    assert not (tmp_path / "ws" / "checkpoints" / "latest.pth").exists()
