"""How the suite runs its tasks. Run again in its folder, it evaluates finished runs without training them again,
unless anything that made them changed (an argument, the input, the learned token, the prior's weights) or --retrain
is given; its worker processes, and the stages they start, use one thread each."""

from __future__ import annotations

from pathlib import Path

import torch

from nerf.checkpoint import save_checkpoint
from nerf.evaluation.reconstruct import PriorRun
from nerf.evaluation.suite import finished_run, run_suite


def test_a_suite_run_again_evaluates_its_finished_runs_and_trains_what_changed(tmp_path, one_thread):
    def suite(*main_args: str, retrain: bool = False) -> tuple[dict, int]:
        result = run_suite(tmp_path, "reduced", torch.device("cpu"), families=["union"], modes=["prior_free"],
                           extra_args=["--iters", "6", *main_args], retrain=retrain)
        checkpoint = tmp_path / "runs" / "union-0" / "prior_free" / "checkpoints" / "latest.pth"
        return result["rows"][0], checkpoint.stat().st_mtime_ns

    first, trained = suite()
    again, kept = suite()
    assert "reused" not in first and again["reused"] and again["train_seconds"] is None and kept == trained
    assert again["report"]["input_view"] == first["report"]["input_view"]  # the same checkpoint, evaluated again
    other, retrained = suite("--lr", "0.002")  # another argument: another run
    forced, forced_mtime = suite("--lr", "0.002", retrain=True)
    assert "reused" not in other and retrained != kept and "reused" not in forced and forced_mtime != retrained


def test_a_finished_run_is_complete_only_with_its_record_iterations_and_inputs(tmp_path: Path) -> None:
    scene, workspace, model = tmp_path / "scene", tmp_path / "ws", tmp_path / "prior"
    for folder in (scene, model / "unet", model / ".cache"):
        folder.mkdir(parents=True)
    (scene / "rgba.png").write_bytes(b"input view")
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    (model / ".cache" / "step.pt").write_bytes(b"training state")
    (model / "README.md").write_text("card")
    token = tmp_path / "learned_embeds.bin"
    token.write_bytes(b"token")
    prior = PriorRun(model, learned_embeds=token)
    args = ["--image_path", str(scene / "rgba.png"), "--workspace", str(workspace), "--no_cuda_ray"]

    def stage():
        return finished_run(scene, workspace, args, 5, prior)

    save_checkpoint(workspace / "checkpoints" / "latest.pth", {"global_step": 5})
    assert not stage().record.is_file()  # trained by an older suite: the suite does not take it
    stage().write_record()
    assert stage().complete()
    (model / "README.md").write_text("another card")
    (model / ".cache" / "step.pt").write_bytes(b"more training")
    assert stage().complete()  # neither the card nor a hidden cache decides what the prior computes
    token.write_bytes(b"another token")
    assert not stage().complete()
    token.write_bytes(b"token")
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"other weights")
    assert not stage().complete()
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    save_checkpoint(workspace / "checkpoints" / "latest.pth", {"global_step": 4})  # interrupted before the end
    assert not stage().complete()


def test_a_worker_and_the_stages_it_starts_use_one_thread(monkeypatch) -> None:
    import logging
    import subprocess
    import sys

    from nerf.evaluation.suite import _quiet_worker

    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # restored after the test, as are the threads and the log level
    threads, level = torch.get_num_threads(), logging.getLogger("realfusion").level
    try:
        _quiet_worker()
        child = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                               capture_output=True, text=True, timeout=120)
        assert torch.get_num_threads() == 1 and child.stdout.strip() == "1"
    finally:
        torch.set_num_threads(threads)
        logging.getLogger("realfusion").setLevel(level)
