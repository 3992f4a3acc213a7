#!/usr/bin/env python
"""Stage one of RealFusion: learn a new text token for the object of one photo (textual inversion).

    python textual-inversion/textual_inversion.py --train_data_dir DIR --placeholder_token _my_object_ \\
        --initializer_token cat --output_dir OUT [--use_augmentations ...]

Runs from any directory. The flags, their names and defaults are those of the original script (the
diffusers textual-inversion example plus ``--use_augmentations``); the model defaults to
``stable-diffusion-v1-5/stable-diffusion-v1-5`` and may be a hub id, a local diffusers folder or a
single .safetensors/.ckpt file (the same loader as the reconstruction stage).

What is learned: one vector, the placeholder token's input embedding, initialised from the
initializer token's row. It is substituted for the placeholder's embedding in every forward pass and
optimised by AdamW; every other row of the embedding table and every other weight stay frozen and are
never written. This is the original's trajectory exactly (it gave the whole table to AdamW and
restored all other rows after each step; Adam is elementwise, so the placeholder row evolves the
same), without the optimiser state for 49,408 rows.

Outputs in --output_dir (written atomically): ``learned_embeds-steps-{N}.bin`` every --save_steps,
and at the end ``learned_embeds.bin`` ({token: tensor[D]}, the original's format, read by
``main.py --learned_embeds_path``) and ``learned_embeds.safetensors`` (the same, readable by
diffusers' ``load_textual_inversion``); unless --only_save_embeds, the whole pipeline with the new
token; ``checkpoint-{N}/state.pt`` every --checkpointing_steps (vector, optimiser, LR schedule, loss
scaler and RNG states); tensorboard logs under --logging_dir.

Resuming: a run whose output folder already holds checkpoints continues from the latest one (a
notice says so), as does ``--resume_from_checkpoint latest``; a path or ``checkpoint-N`` name picks
one. Delete the folder to start over.

Differences from the original (see the README): images are the image files of --train_data_dir only,
RGBA composited on white (``ti_dataset.py``); heavy augmentations reach the VAE in [-1, 1]
(``--augment_range_01`` restores [0, 1]); one process only (no multi-GPU); trackers are tensorboard
and wandb. The LR scheduler is built, like the original's, with warm-up and total counts multiplied
by --gradient_accumulation_steps and is stepped once per optimisation step.

Speed (same loss, same steps; ``scripts/benchmark.py ti`` measures it): the micro-batches of one
optimisation step go through the networks as one batch (each sample keeps its own VAE sample, noise and
timestep, drawn in the original's order; the step's loss is still the mean of the micro-batch losses);
on CUDA the frozen VAE encoder and UNet are replayed from CUDA graphs (``--no_cuda_graph`` turns
this off), the UNet runs channels-last, the augmentations run in DataLoader worker processes, the
optimiser is the fused AdamW, and losses are read back from the GPU every few steps, not every step.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import shutil
import sys
import tempfile
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE.parent):  # the repository's nerf package and this folder's modules
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from nerf.errors import UserError  # noqa: E402
from nerf.cuda_graphs import GraphedInference  # noqa: E402
from nerf.fileio import write_atomic  # noqa: E402
from nerf.guidance import DEFAULT_MODEL, StableDiffusionParts, load_stable_diffusion, register_token  # noqa: E402
from ti_dataset import TextualInversionDataset, load_images  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Learn a text token for the object of one photo (textual inversion).")
    p.add_argument("--save_steps", type=int, default=500, help="save learned_embeds-steps-{N}.bin every N steps")
    p.add_argument("--only_save_embeds", action="store_true", help="do not save the whole pipeline at the end")
    p.add_argument("--pretrained_model_name_or_path", default=DEFAULT_MODEL,
                   help="hub id, local diffusers folder, or single .safetensors/.ckpt file")
    p.add_argument("--revision", default=None, help="branch, tag or commit of a hub model")
    p.add_argument("--tokenizer_name", default=None, help="tokenizer to use instead of the model's")
    p.add_argument("--train_data_dir", required=True, help="folder holding the training photo(s)")
    p.add_argument("--placeholder_token", required=True, help="the new token, e.g. _cat_statue_")
    p.add_argument("--initializer_token", required=True, help="an existing one-token word to start from")
    p.add_argument("--learnable_property", choices=["object", "style"], default="object", help="caption templates")
    p.add_argument("--repeats", type=int, default=100, help="dataset length = images x repeats")
    p.add_argument("--output_dir", default="text-inversion-model", help="where results and checkpoints go")
    p.add_argument("--seed", type=int, default=None, help="seed of Python, NumPy and torch")
    p.add_argument("--resolution", type=int, default=512, help="training image size")
    p.add_argument("--center_crop", action="store_true", help="crop the centre square before resizing")
    p.add_argument("--train_batch_size", type=int, default=16, help="images per micro-batch")
    p.add_argument("--num_train_epochs", type=int, default=100, help="recomputed from --max_train_steps")
    p.add_argument("--max_train_steps", type=int, default=5000, help="optimisation steps")
    p.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per step")
    p.add_argument("--gradient_checkpointing", action="store_true", help="trade compute for memory")
    p.add_argument("--learning_rate", type=float, default=1e-4, help="base learning rate")
    p.add_argument("--scale_lr", action="store_true", help="lr *= gradient_accumulation_steps * train_batch_size")
    p.add_argument("--lr_scheduler", default="constant",
                   help="diffusers schedule: linear, cosine, cosine_with_restarts, polynomial, constant, "
                        "constant_with_warmup")
    p.add_argument("--lr_warmup_steps", type=int, default=500, help="warm-up steps (times accumulation)")
    p.add_argument("--dataloader_num_workers", type=int, default=None,
                   help="data loading processes (default: none on the CPU; on CUDA enough to keep the GPU busy)")
    p.add_argument("--adam_beta1", type=float, default=0.9)
    p.add_argument("--adam_beta2", type=float, default=0.999)
    p.add_argument("--adam_weight_decay", type=float, default=1e-2)
    p.add_argument("--adam_epsilon", type=float, default=1e-8)
    p.add_argument("--push_to_hub", action="store_true", help="upload --output_dir to the Hugging Face hub")
    p.add_argument("--hub_token", default=None, help="token for --push_to_hub")
    p.add_argument("--hub_model_id", default=None, help="hub repository (default: the output folder's name)")
    p.add_argument("--logging_dir", default="logs", help="tracker folder, relative to --output_dir")
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="no",
                   help="UNet and VAE in this precision with autocast (CUDA only)")
    p.add_argument("--allow_tf32", action="store_true", help="TF32 matmuls on Ampere or newer GPUs")
    p.add_argument("--report_to", choices=["tensorboard", "wandb", "comet_ml", "all"], default="tensorboard")
    p.add_argument("--validation_prompt", default=None, help="sample this prompt every --validation_steps")
    p.add_argument("--num_validation_images", type=int, default=4)
    p.add_argument("--validation_steps", type=int, default=100)
    p.add_argument("--validation_epochs", type=int, default=None,
                   help="deprecated: sets --validation_steps to this times the dataset length")
    p.add_argument("--local_rank", type=int, default=-1, help="GPU index (the LOCAL_RANK variable wins)")
    p.add_argument("--checkpointing_steps", type=int, default=500, help="save a resumable checkpoint every N steps")
    p.add_argument("--checkpoints_total_limit", type=int, default=None, help="keep at most this many checkpoints")
    p.add_argument("--resume_from_checkpoint", default=None, help="'latest', a checkpoint-N name, or a path")
    p.add_argument("--enable_xformers_memory_efficient_attention", action="store_true")
    p.add_argument("--use_augmentations", action="store_true", help="RealFusion's heavy single-image augmentation")
    p.add_argument("--no_cuda_graph", action="store_true",
                   help="run the frozen VAE encoder and UNet eagerly instead of replaying CUDA graphs")
    p.add_argument("--augment_range_01", action="store_true",
                   help="feed augmented images to the VAE in [0, 1] as the original did (default [-1, 1])")
    args = p.parse_args(argv)
    args.local_rank = int(os.environ.get("LOCAL_RANK", args.local_rank))
    for name in ("save_steps", "repeats", "resolution", "train_batch_size", "max_train_steps",
                 "gradient_accumulation_steps", "checkpointing_steps", "validation_steps", "num_validation_images"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.dataloader_num_workers is not None and args.dataloader_num_workers < 0:
        raise UserError(f"--dataloader_num_workers must be 0 or more, got {args.dataloader_num_workers}.")
    if not args.placeholder_token.strip():
        raise UserError("--placeholder_token is empty; give a new word such as _my_object_.")
    return args


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every generator the run draws from, in a form torch.load(weights_only=True) reads back."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def choose_device(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """The device, and the dtype of the frozen UNet and VAE (mixed precision applies on CUDA only)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("textual inversion runs as a single process; start it with python, not a multi-GPU launcher.")
    if not torch.cuda.is_available():
        if args.mixed_precision != "no":
            print(f"note: --mixed_precision {args.mixed_precision} needs CUDA; training in float32 on the CPU")
        return torch.device("cpu"), torch.float32
    device = torch.device("cuda", max(args.local_rank, 0))
    return device, {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.mixed_precision]


def add_placeholder(parts: StableDiffusionParts, placeholder: str, initializer: str) -> tuple[int, torch.Tensor]:
    """Add the placeholder token; returns its id and the initializer's embedding row."""
    tokenizer = parts.tokenizer
    if placeholder in tokenizer.get_vocab():
        raise UserError(f"the placeholder token '{placeholder}' is already in the tokenizer's vocabulary; "
                        f"pick a new string such as _{placeholder.strip('_')}_object_.")
    init_ids = tokenizer.encode(initializer, add_special_tokens=False)
    if len(init_ids) != 1:
        raise UserError(f"--initializer_token '{initializer}' is {len(init_ids)} tokens, not one; pick a single common "
                        f"word (textual-inversion/autoinit.py suggests one).")
    token_id = register_token(tokenizer, parts.text_encoder, placeholder)
    table = parts.text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        table[token_id] = table[init_ids[0]]
    return token_id, table[init_ids[0]].detach().clone()


class TokenVector(torch.nn.Module):
    """The one trainable vector, substituted for the placeholder's embedding in every forward pass."""

    def __init__(self, embedding: torch.nn.Embedding, token_id: int, initial: torch.Tensor) -> None:
        super().__init__()
        self.token_id = token_id
        self.vector = torch.nn.Parameter(initial.detach().float().clone())
        embedding.register_forward_hook(self.substitute)

    def substitute(self, module: torch.nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
        where = (inputs[0] == self.token_id).unsqueeze(-1)
        return torch.where(where, self.vector.to(output.dtype), output)


class Trackers:
    """Scalar and image logging to tensorboard and/or wandb."""

    def __init__(self, report_to: str, log_dir: Path, config: dict[str, Any]) -> None:
        import importlib.util

        wanted = {"all": ["tensorboard", "wandb"], "comet_ml": ["comet_ml"]}.get(report_to, [report_to])
        if "comet_ml" in wanted:
            raise UserError("--report_to comet_ml is not supported; use tensorboard or wandb.")
        if report_to == "all" and importlib.util.find_spec("wandb") is None:
            wanted = ["tensorboard"]
        self.writer = self.wandb = None
        if "tensorboard" in wanted:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir))
        if "wandb" in wanted:
            if importlib.util.find_spec("wandb") is None:
                raise UserError("--report_to wandb needs the wandb package (pip install wandb); or use tensorboard.")
            import wandb

            self.wandb = wandb.init(project="textual_inversion", config=config, dir=str(log_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def images(self, tag: str, images: list, caption: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_images(tag, np.stack([np.asarray(im) for im in images]), step, dataformats="NHWC")
        if self.wandb is not None:
            import wandb

            pictures = [wandb.Image(im, caption=f"{i}: {caption}") for i, im in enumerate(images)]
            self.wandb.log({tag: pictures}, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def save_embeds(path: Path, token: str, vector: torch.Tensor) -> None:
    """{token: tensor[D]} as a pickle-free torch file (.bin) or safetensors (.safetensors), atomically."""
    data = {token: vector.detach().float().cpu().clone()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        write_atomic(path, lambda tmp: save_file(data, str(tmp)))
    else:
        write_atomic(path, lambda tmp: torch.save(data, tmp))


def list_checkpoints(output_dir: Path) -> list[Path]:
    """checkpoint-N/state.pt files, oldest first."""
    found = [p for p in output_dir.glob("checkpoint-*/state.pt") if p.parent.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.parent.name.split("-", 1)[1]))


def checkpoint_to_resume(args: argparse.Namespace, output_dir: Path) -> Path | None:
    existing = list_checkpoints(output_dir)
    choice = args.resume_from_checkpoint
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
                    lr_scheduler: Any, scaler: torch.amp.GradScaler, limit: int | None) -> None:
    existing = list_checkpoints(output_dir)
    if limit is not None:
        for old in existing[: max(len(existing) - limit + 1, 0)]:
            shutil.rmtree(old.parent)
    state = {"step": step, "token": token, "vector": row.vector.detach().cpu().clone(),
             "optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
             "scaler": scaler.state_dict(), "rng": rng_state()}
    write_atomic(output_dir / f"checkpoint-{step}" / "state.pt", lambda tmp: torch.save(state, tmp))


def load_checkpoint(file: Path, token: str, row: TokenVector, optimizer: torch.optim.Optimizer, lr_scheduler: Any,
                    scaler: torch.amp.GradScaler) -> int:
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
    return int(state["step"])


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


def push_to_hub(args: argparse.Namespace, output_dir: Path) -> None:
    from huggingface_hub import HfApi

    repo_id = args.hub_model_id or output_dir.name
    try:
        api = HfApi(token=args.hub_token)
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(output_dir), commit_message="End of training",
                          ignore_patterns=["step_*", "epoch_*", "checkpoint-*", ".*"])
    except Exception as exc:  # network, authentication or permission failures of the hub
        raise UserError(f"uploading {output_dir} to the hub repository {repo_id} failed ({exc}); check --hub_token "
                        f"and --hub_model_id, or upload the folder later.") from exc


def validation_images(parts: StableDiffusionParts, args: argparse.Namespace, autocast: Any) -> list:
    """Samples of --validation_prompt with 25 DPM-Solver steps (the current vector is in the text encoder)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    sampler = DPMSolverMultistepScheduler.from_config(parts.scheduler.config)
    pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                   unet=parts.unet, scheduler=sampler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    generator = None if args.seed is None else torch.Generator(parts.device).manual_seed(args.seed)
    with torch.no_grad(), autocast():
        return [pipe(args.validation_prompt, num_inference_steps=25, generator=generator).images[0]
                for _ in range(args.num_validation_images)]


# Micro-batches of one optimisation step share a forward pass up to this many samples (more would
# need more memory than the original's one-micro-batch-at-a-time loop by a larger factor). At the
# README settings on an H100: 132 -> 76 ms per step, peak memory 4.1 -> 6.0 GiB.
FUSED_SAMPLES = 4
# Losses are read back from the GPU (a wait for the GPU) once every this many steps.
LOG_EVERY = 10
# What `train(on_phase=...)` reports, in the order the phases end within a step.
PHASES = ("data", "vae_encode", "text_encoder", "unet_forward", "backward", "optimizer", "logging")


class FrozenNetworks:
    """The frozen VAE encoder and UNet of the loss, replayed from CUDA graphs when enabled.

    Launching these networks' thousands of small kernels from Python takes the CPU longer than the GPU
    needs to run them, so an eager step waits on the CPU. A CUDA graph records the kernels of one call
    and replays them with a single launch: the same kernels on the same weights, so the same values.
    Graphs need fixed shapes: the shape of the first call is captured and any other (an epoch's last,
    smaller batch) runs eagerly; if capturing fails, a notice says why and the network runs eagerly.
    The encoder uses the reconstruction stage's inference wrapper; the UNet, whose gradient flows to
    one of its three inputs, is captured forward and backward by ``make_graphed_callables``.
    """

    def __init__(self, vae: Any, unet: Any, dtype: torch.dtype, autocast: Callable[[], Any], graphs: bool) -> None:
        self.vae, self.unet, self.dtype, self.autocast = vae, unet, dtype, autocast
        self.encoder = GraphedInference(self._encode, "VAE encoder") if graphs else None
        self.graphs = graphs  # False once the UNet's capture failed
        self.denoiser: tuple[tuple[torch.Size, ...], Callable[..., torch.Tensor]] | None = None

    def _encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.vae.encode(pixels).latent_dist
        return dist.mean, dist.std

    def _denoise(self, noisy: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.unet(noisy, t, states).sample

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of the VAE's latent distribution (no gradient; the graph's
        buffers when replayed, which the next call overwrites)."""
        if self.encoder is not None:
            return self.encoder(pixels)
        with torch.no_grad():
            return self._encode(pixels)

    def denoise(self, noisy: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """The UNet's prediction; differentiable with respect to the text states only."""
        args = (noisy, t, states)
        shapes = tuple(a.shape for a in args)
        if self.graphs and self.denoiser is None:
            sample = (noisy.clone(), t.clone(), states.detach().clone().requires_grad_(states.requires_grad))
            try:
                with warnings.catch_warnings():  # the warm-up's side stream is not the one the sample was made on
                    warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream does not match")
                    self.denoiser = (shapes, torch.cuda.make_graphed_callables(self._denoise, sample))
            except (RuntimeError, AssertionError) as exc:
                reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                print(f"note: CUDA graph capture of the UNet failed ({reason}); running it eagerly (slower). "
                      f"--no_cuda_graph skips the attempt.")
                self.graphs = False
        if self.denoiser is not None and self.denoiser[0] == shapes:
            return self.denoiser[1](*args)
        return self._denoise(*args)


def fuse(micro_batches: list[dict[str, torch.Tensor]], limit: int) -> list[list[dict[str, torch.Tensor]]]:
    """Consecutive micro-batches grouped for one forward pass each, at most `limit` samples per group
    (a micro-batch larger than that forms a group of its own)."""
    groups: list[list[dict[str, torch.Tensor]]] = []
    size = limit
    for batch in micro_batches:
        n = len(batch["input_ids"])
        if groups and size + n <= limit:
            groups[-1].append(batch)
            size += n
        else:
            groups.append([batch])
            size = n
    return groups


def no_mark(phase: str) -> None:
    """The default phase hook of `train`: nothing."""


def denoising_loss(parts: StableDiffusionParts, nets: FrozenNetworks, noise_scheduler: Any,
                   micro_batches: list[dict[str, torch.Tensor]], accumulation: int, autocast: Callable[[], Any],
                   mark: Callable[[str], None] = no_mark) -> torch.Tensor:
    """Sum over `micro_batches` of each one's denoising loss / `accumulation`, from one batched pass.

    Each micro-batch's loss is the original's: the mean squared error between the UNet's prediction
    and the noise (or velocity) over its samples. Its random draws -- VAE sample, noise, timesteps --
    are made micro-batch after micro-batch in the original's order and shapes, so each sample keeps
    its own (on CUDA, where the data's randomness lives on the CPU generator, the very numbers of the
    one-at-a-time loop). Every sample goes through the networks independently of the others in its
    batch, so the sum's gradient is the accumulated gradient of the original up to rounding.
    """
    device = parts.device
    pixels = torch.cat([b["pixel_values"].to(device, non_blocking=True) for b in micro_batches]).to(nets.dtype)
    ids = torch.cat([b["input_ids"].to(device, non_blocking=True) for b in micro_batches])
    mark("data")
    mean, std = (x.contiguous() for x in nets.encode(pixels))
    sizes = [len(b["input_ids"]) for b in micro_batches]
    latents, noise, t = [], [], []
    for part_mean, part_std in zip(mean.split(sizes), std.split(sizes)):
        # randn of an explicit shape: randn_like follows its argument's memory layout, which depends on
        # the convolution backend (channels-last on some CPU paths), and would place the numbers elsewhere
        shape, dtype = part_mean.shape, part_mean.dtype
        latents.append((part_mean + part_std * torch.randn(shape, device=device, dtype=dtype))
                       * parts.vae.config.scaling_factor)
        noise.append(torch.randn(shape, device=device, dtype=dtype))
        t.append(torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(part_mean),), device=device))
    latents, noise, t = torch.cat(latents), torch.cat(noise), torch.cat(t)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    mark("vae_encode")
    with autocast():
        states = parts.text_encoder(ids)[0].to(nets.dtype)
    mark("text_encoder")
    predicted = nets.denoise(noisy, t, states)
    epsilon = noise_scheduler.config.prediction_type == "epsilon"
    target = noise if epsilon else noise_scheduler.get_velocity(latents, noise, t)
    losses = [F.mse_loss(p.float(), q.float()) for p, q in zip(predicted.split(sizes), target.split(sizes))]
    loss = torch.stack(losses).sum() / accumulation
    mark("unet_forward")
    return loss


def endless(loader: Iterable[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
    """The loader's micro-batches epoch after epoch (accumulation runs across epoch boundaries)."""
    while True:
        yield from loader


def loader_workers(args: argparse.Namespace, device: torch.device) -> int:
    """--dataloader_num_workers, or by default none on the CPU and, on CUDA, enough worker processes for
    the augmentations (tens of milliseconds of CPU per image) to keep ahead of the GPU."""
    if args.dataloader_num_workers is not None:
        return args.dataloader_num_workers
    return 0 if device.type != "cuda" else max(1, min(6, (os.cpu_count() or 1) - 2))


class StepLog:
    """Loss and learning rate of every step for the trackers and the progress bar.

    The loss stays on the GPU until `LOG_EVERY` steps have gathered: reading it makes the CPU wait for
    the GPU, and doing so every step would keep the CPU from queueing the next step's work meanwhile.
    """

    def __init__(self, trackers: Trackers, bar: Any) -> None:
        self.trackers, self.bar = trackers, bar
        self.pending: list[tuple[int, torch.Tensor, float]] = []

    def add(self, step: int, loss: torch.Tensor, lr: float) -> None:
        self.pending.append((step, loss.detach(), lr))
        if len(self.pending) >= LOG_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        losses = torch.stack([loss for _, loss, _ in self.pending]).tolist()
        for (step, _, lr), loss in zip(self.pending, losses):
            self.trackers.scalars({"loss": loss, "lr": lr}, step)
        self.bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{self.pending[-1][2]:.2e}")
        self.pending.clear()


def train(args: argparse.Namespace, on_phase: Callable[[str], None] = no_mark) -> Path:
    """The whole run; returns the path of learned_embeds.bin.

    `on_phase(name)` is called as each phase of a step (`PHASES`) ends -- a hook for timing the real loop.
    """
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    output_dir = Path(args.output_dir).expanduser().resolve()
    images = load_images(args.train_data_dir)  # fail before the slow model load
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.seed is not None:
        seed_everything(args.seed)
    device, weight_dtype = choose_device(args)
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True

    parts = load_stable_diffusion(args.pretrained_model_name_or_path, device, fp16=False, revision=args.revision)
    if args.tokenizer_name is not None:
        from transformers import CLIPTokenizer

        try:
            parts.tokenizer = CLIPTokenizer.from_pretrained(args.tokenizer_name, revision=args.revision)
        except OSError as exc:
            raise UserError(f"cannot load --tokenizer_name {args.tokenizer_name}; give a hub id or a folder.") from exc
    token_id, initial = add_placeholder(parts, args.placeholder_token, args.initializer_token)
    row = TokenVector(parts.text_encoder.get_input_embeddings(), token_id, initial).to(device)
    for module in (parts.unet, parts.vae):  # nn.Module casts: diffusers' .to(dtype) warns about fp32 modules
        {torch.float16: module.half, torch.bfloat16: module.bfloat16}.get(weight_dtype, module.float)()
    if device.type == "cuda":  # measured: the UNet is faster channels-last, the VAE encoder slower
        parts.unet.to(memory_format=torch.channels_last)
    parts.text_encoder.train()
    if args.gradient_checkpointing:
        parts.unet.train()  # diffusers checkpoints only in training mode
        parts.unet.enable_gradient_checkpointing()
        parts.text_encoder.gradient_checkpointing_enable()
    if args.enable_xformers_memory_efficient_attention:
        import importlib.util

        if importlib.util.find_spec("xformers") is None:
            raise UserError("--enable_xformers_memory_efficient_attention needs xformers installed; without the flag "
                            "PyTorch's fused attention is used.")
        parts.unet.enable_xformers_memory_efficient_attention()

    dataset = TextualInversionDataset(images, parts.tokenizer, args.placeholder_token, args.resolution,
                                      args.repeats, args.learnable_property, args.center_crop,
                                      args.use_augmentations, args.augment_range_01)
    workers = loader_workers(args, device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.train_batch_size, shuffle=True,
                                         num_workers=workers, persistent_workers=workers > 0,
                                         pin_memory=device.type == "cuda")
    if args.validation_epochs is not None:
        print("note: --validation_epochs is deprecated; use --validation_steps")
        args.validation_steps = args.validation_epochs * len(dataset)
    accumulation = args.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(loader) / accumulation)
    args.num_train_epochs = math.ceil(args.max_train_steps / steps_per_epoch)
    learning_rate = args.learning_rate * (accumulation * args.train_batch_size if args.scale_lr else 1)

    fused = device.type == "cuda"  # one kernel, and it takes the loss scaler's inf check without a host sync
    optimizer = torch.optim.AdamW([row.vector], lr=learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon, fused=fused)
    try:
        lr_scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps * accumulation,
                                     num_training_steps=args.max_train_steps * accumulation)
    except ValueError as exc:
        raise UserError(f"--lr_scheduler {args.lr_scheduler} is not a diffusers schedule; use constant, linear, "
                        f"cosine, cosine_with_restarts, polynomial or constant_with_warmup.") from exc
    scaler = torch.amp.GradScaler(device.type, enabled=weight_dtype == torch.float16)
    noise_scheduler = DDPMScheduler.from_config(parts.scheduler.config)
    if noise_scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
        raise UserError(f"the model predicts '{noise_scheduler.config.prediction_type}'; textual inversion supports "
                        f"epsilon and v_prediction.")
    # No weight-cast cache: each autocast region calls a network once, and CUDA graphs cannot capture it.
    autocast = partial(torch.autocast, device.type, dtype=weight_dtype, enabled=weight_dtype != torch.float32,
                       cache_enabled=False)
    graphs = device.type == "cuda" and not (args.no_cuda_graph or args.gradient_checkpointing
                                            or args.enable_xformers_memory_efficient_attention)
    nets = FrozenNetworks(parts.vae, parts.unet, weight_dtype, autocast, graphs)
    fuse_limit = 1 if args.gradient_checkpointing else FUSED_SAMPLES

    step = 0
    resume = checkpoint_to_resume(args, output_dir)
    if resume is not None:
        step = load_checkpoint(resume, args.placeholder_token, row, optimizer, lr_scheduler, scaler)
        for group in optimizer.param_groups:  # this run's device decides, not the checkpoint's
            group["fused"] = fused
    trackers = Trackers(args.report_to, output_dir / args.logging_dir, vars(args))
    print(f"textual inversion: {len(dataset)} items, {args.num_train_epochs} epochs, batch {args.train_batch_size} "
          f"x {accumulation} accumulation, {args.max_train_steps} steps, lr {learning_rate:g}, on {device}")

    bar = tqdm(total=args.max_train_steps, initial=step, desc="textual inversion")
    log = StepLog(trackers, bar)
    stream = endless(loader)
    while step < args.max_train_steps:
        step_loss = torch.zeros((), device=device)
        for group in fuse(list(itertools.islice(stream, accumulation)), fuse_limit):
            loss = denoising_loss(parts, nets, noise_scheduler, group, accumulation, autocast, on_phase)
            scaler.scale(loss).backward()
            step_loss += loss.detach()
            on_phase("backward")
        scaler.step(optimizer)
        scaler.update()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        on_phase("optimizer")
        bar.update(1)
        log.add(step, step_loss, lr_scheduler.get_last_lr()[0])
        if step % args.save_steps == 0:
            save_embeds(output_dir / f"learned_embeds-steps-{step}.bin", args.placeholder_token, row.vector)
        if step % args.checkpointing_steps == 0:
            save_checkpoint(output_dir, step, args.placeholder_token, row, optimizer, lr_scheduler, scaler,
                            args.checkpoints_total_limit)
        if args.validation_prompt is not None and step % args.validation_steps == 0:
            trackers.images("validation", validation_images(parts, args, autocast), args.validation_prompt, step)
        on_phase("logging")
    log.flush()
    bar.close()
    trackers.close()

    with torch.no_grad():
        parts.text_encoder.get_input_embeddings().weight[token_id] = row.vector.to(parts.text_encoder.dtype)
    if args.push_to_hub or not args.only_save_embeds:
        save_pipeline(parts, output_dir)
    save_embeds(output_dir / "learned_embeds.safetensors", args.placeholder_token, row.vector)
    save_embeds(output_dir / "learned_embeds.bin", args.placeholder_token, row.vector)
    if args.push_to_hub:
        push_to_hub(args, output_dir)
    print(f"learned token {args.placeholder_token} written to {output_dir / 'learned_embeds.bin'}")
    return output_dir / "learned_embeds.bin"


def main(argv: list[str] | None = None) -> int:
    try:
        train(parse_args(argv))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
