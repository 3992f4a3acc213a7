"""What a run keeps in --output_dir and reads back: the embeddings, resumable checkpoints (with every
random generator's state, so a resumed run draws what the uninterrupted one would have), the pipeline.

Every file is written atomically and the pipeline is swapped in once complete, so a run killed at any
moment leaves complete files only and resumes from its latest checkpoint.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nerf.errors import UserError
from nerf.fileio import write_file_atomic
from nerf.guidance.stable_diffusion import StableDiffusionParts

if TYPE_CHECKING:
    from ti_dataset import ResumableSampler
    from ti_model import Model, TokenVector
    from ti_step import Optimisation


def rng_state() -> dict[str, Any]:
    """Every generator the run draws from, in a form torch.load(weights_only=True) reads back."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the generators saved by `rng_state`: a resumed run draws what an uninterrupted one would."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_embeds(path: Path, token: str, vector: torch.Tensor) -> None:
    """{token: tensor[D]} as a pickle-free torch file (.bin) or safetensors (.safetensors), atomically."""
    data = {token: vector.detach().float().cpu().clone()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        write_file_atomic(path, lambda file: file.write(save(data)))
    else:
        write_file_atomic(path, lambda file: torch.save(data, file))


def list_checkpoints(output_dir: Path) -> list[Path]:
    """checkpoint-N/state.pt files, oldest first."""
    found = [p for p in output_dir.glob("checkpoint-*/state.pt") if p.parent.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.parent.name.split("-", 1)[1]))


def check_output_dir(output_dir: Path, token: str) -> None:
    """Refuse an --output_dir that is a file, or that holds another token's result and nothing to resume (its
    learned_embeds would be overwritten); before anything is loaded or written."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output_dir {output_dir} is a file; give a folder (it is created if missing).")
    if not output_dir.is_dir() or list_checkpoints(output_dir):
        return
    from nerf.guidance.stable_diffusion import load_learned_embeds

    for name in ("learned_embeds.safetensors", "learned_embeds.bin"):
        if (output_dir / name).is_file():
            try:
                held = load_learned_embeds(str(output_dir / name))[0]
            except UserError:
                held = "an unreadable token"
            if held != token:
                raise UserError(f"--output_dir {output_dir} already holds the result of another token ({held}, "
                                f"{name}); choose another --output_dir or delete that file.")


def checkpoint_to_resume(choice: str | None, output_dir: Path) -> Path | None:
    """The state.pt that --resume_from_checkpoint names (`choice`); by default the latest one, so a rerun continues."""
    existing = list_checkpoints(output_dir)
    if choice is None or choice == "latest":
        if existing:
            print(f"resuming from {existing[-1].parent} (delete {output_dir} to start over)")
            return existing[-1]
        if choice == "latest":
            print(f"no checkpoint in {output_dir}; starting a new run")
        return None
    for candidate in (Path(choice), output_dir / Path(choice).name):
        file = candidate / "state.pt" if candidate.is_dir() else candidate
        if file.is_file():
            return file
    raise UserError(f"--resume_from_checkpoint {choice} not found (neither a path nor a checkpoint in {output_dir}); "
                    f"use 'latest' or an existing checkpoint-N.")


def save_checkpoint(output_dir: Path, step: int, token: str, row: TokenVector, optimizer: torch.optim.Optimizer,
                    lr_scheduler: Any, scaler: torch.amp.GradScaler, limit: int | None, data_seed: int) -> None:
    """checkpoint-{step}/state.pt, after removing the oldest ones beyond --checkpoints_total_limit."""
    existing = list_checkpoints(output_dir)
    if limit is not None:
        for old in existing[: max(len(existing) - limit + 1, 0)]:
            shutil.rmtree(old.parent)
    state = {"step": step, "token": token, "vector": row.vector.detach().cpu().clone(),
             "optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
             "scaler": scaler.state_dict(), "rng": rng_state(), "data_seed": data_seed}
    write_file_atomic(output_dir / f"checkpoint-{step}" / "state.pt", lambda file: torch.save(state, file))


def load_checkpoint(file: Path, token: str, row: TokenVector, optimizer: torch.optim.Optimizer, lr_scheduler: Any,
                    scaler: torch.amp.GradScaler, sampler: ResumableSampler) -> int:
    """Restore a checkpoint into the run; returns its step."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file
        raise UserError(f"cannot read checkpoint {file} ({type(exc).__name__}); delete it or pick another.") from exc
    if state.get("token") != token or state["vector"].shape != row.vector.shape:
        raise UserError(f"checkpoint {file} belongs to token '{state.get('token')}' with shape "
                        f"{tuple(state['vector'].shape)}, not this run's; use another --output_dir.")
    with torch.no_grad():
        row.vector.copy_(state["vector"])
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    if state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    restore_rng(state["rng"])
    if "data_seed" in state:  # checkpoints of earlier versions resume with this run's data seed
        sampler.seed = int(state["data_seed"])
    return int(state["step"])


def resume(choice: str | None, output_dir: Path, token: str, row: TokenVector, opt: Optimisation,
           sampler: ResumableSampler) -> int:
    """The step to start from: 0, or that of the checkpoint `choice` selects (restored into `row`, `opt`,
    `sampler`)."""
    file = checkpoint_to_resume(choice, output_dir)
    if file is None:
        return 0
    step = load_checkpoint(file, token, row, opt.optimizer, opt.lr_scheduler, opt.scaler, sampler)
    for group in opt.optimizer.param_groups:  # this run's device decides, not the checkpoint's
        group["fused"] = opt.fused
    return step


def save_pipeline(parts: StableDiffusionParts, output_dir: Path) -> None:
    """The whole model with the new token, swapped into --output_dir folder by folder once complete."""
    from diffusers import StableDiffusionPipeline

    parts.unet.to(memory_format=torch.contiguous_format)  # safetensors stores contiguous tensors only
    pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                   unet=parts.unet, scheduler=parts.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    staging = Path(tempfile.mkdtemp(prefix=".pipeline-", dir=output_dir))
    try:
        pipe.save_pretrained(staging)
        for entry in staging.iterdir():
            target = output_dir / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass(frozen=True)
class HubUpload:
    """--push_to_hub's destination: --hub_model_id (default: the output folder's name) and --hub_token."""

    repo_id: str | None = None
    token: str | None = None


def push_to_hub(output_dir: Path, hub: HubUpload) -> None:
    """Upload --output_dir (without checkpoints) to the hub repository, as the original's --push_to_hub did."""
    from huggingface_hub import HfApi

    repo_id = hub.repo_id or output_dir.name
    try:
        api = HfApi(token=hub.token)
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(output_dir), commit_message="End of training",
                          ignore_patterns=["step_*", "epoch_*", "checkpoint-*", ".*"])
    except Exception as exc:  # network, authentication or permission failures of the hub
        raise UserError(f"uploading {output_dir} to the hub repository {repo_id} failed ({exc}); check --hub_token "
                        f"and --hub_model_id, or upload the folder later.") from exc


def write_outputs(model: Model, output_dir: Path, token: str, *, whole_pipeline: bool,
                  hub: HubUpload | None = None) -> Path:
    """The learned token in every output form of the run (the whole model too with `whole_pipeline`, and uploaded
    when `hub` is given); returns the path of learned_embeds.bin."""
    parts, vector = model.parts, model.row.vector
    with torch.no_grad():
        parts.text_encoder.get_input_embeddings().weight[model.token_id] = vector.to(parts.text_encoder.dtype)
    if hub is not None or whole_pipeline:
        save_pipeline(parts, output_dir)
    save_embeds(output_dir / "learned_embeds.safetensors", token, vector)
    save_embeds(output_dir / "learned_embeds.bin", token, vector)
    if hub is not None:
        push_to_hub(output_dir, hub)
    print(f"learned token {token} written to {output_dir / 'learned_embeds.bin'}")
    return output_dir / "learned_embeds.bin"
