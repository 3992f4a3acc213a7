"""The networks of textual inversion: Stable Diffusion with the placeholder token added, all its weights
frozen, the one trainable vector, and the frozen VAE encoder and UNet run as fast as the device allows.

Only the vector is a parameter (`TokenVector`): the embedding table and every other weight are never
written, so the optimiser keeps state for one row instead of 49,408.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch

from nerf.compilation import Compiled
from nerf.cuda_graphs import recover_from_failed_capture
from nerf.guidance.frozen_calls import accelerated
from nerf.errors import UserError, reason
from nerf.guidance.stable_diffusion import StableDiffusionParts, load_stable_diffusion, register_token


def choose_device(mixed_precision: str, local_rank: int = -1) -> tuple[torch.device, torch.dtype]:
    """The device, and the dtype of the frozen UNet and VAE (mixed precision applies on CUDA only)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("textual inversion runs as a single process; start it with python, not a multi-GPU launcher.")
    if not torch.cuda.is_available():
        if mixed_precision not in ("no", "auto"):
            print(f"note: --mixed_precision {mixed_precision} needs CUDA; training in float32 on the CPU")
        return torch.device("cpu"), torch.float32
    device = torch.device("cuda", max(local_rank, 0))
    precision = "fp16" if mixed_precision == "auto" else mixed_precision
    return device, {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


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
        """Forward hook of the embedding: the vector wherever the input is the placeholder's id."""
        where = (inputs[0] == self.token_id).unsqueeze(-1)
        return torch.where(where, self.vector.to(output.dtype), output)


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

    def __init__(self, vae: Any, unet: Any, dtype: torch.dtype, autocast: Callable[[], Any], graphs: bool,
                 compile: str = "off") -> None:
        """`compile`: "on", "off" or "if_cached", torch.compile of the VAE encoder and of the UNet's forward and
        backward (inside their graphs)."""
        self.vae, self.unet, self.dtype, self.autocast = vae, unet, dtype, autocast
        use = {"dtype": str(dtype), "use": "textual inversion"}
        self.encoder = accelerated(self._encode, "VAE encoder", differentiable=False, device=vae.device,
                                   cuda_graph=graphs, compile=compile, identity={"vae": dict(vae.config), **use})
        self.unet_call: Callable[..., torch.Tensor] = self._denoise
        if compile != "off":
            self.unet_call = Compiled(self._denoise, "UNet", compile, {"unet": dict(unet.config), **use})
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
        with torch.no_grad():
            return self.encoder(pixels)

    def denoise(self, noisy: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """The UNet's prediction; differentiable with respect to the text states only."""
        args = (noisy, t, states)
        shapes = tuple(a.shape for a in args)
        if self.graphs and self.denoiser is None:
            sample = (noisy.clone(), t.clone(), states.detach().clone().requires_grad_(states.requires_grad))
            stream = torch.cuda.current_stream() if noisy.is_cuda else None
            try:
                with warnings.catch_warnings():  # the warm-up's side stream is not the one the sample was made on
                    warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream does not match")
                    self.denoiser = (shapes, torch.cuda.make_graphed_callables(self.unet_call, sample))
            except (RuntimeError, AssertionError) as exc:
                recover_from_failed_capture(stream)
                print(f"note: CUDA graph capture of the UNet failed ({reason(exc)}); running it eagerly (slower). "
                      f"--no_cuda_graph skips the attempt.")
                self.graphs = False
        if self.denoiser is not None and self.denoiser[0] == shapes:
            return self.denoiser[1](*args)
        return self.unet_call(*args)


@dataclass
class Model:
    """What a step runs and trains, and what the outputs are written from."""

    parts: StableDiffusionParts
    token_id: int
    row: TokenVector
    nets: FrozenNetworks
    autocast: Callable[[], Any]  # the mixed-precision context of the text encoder, UNet and validation


def load_model(name_or_path: str, *, placeholder: str, initializer: str, device: torch.device,
               weight_dtype: torch.dtype, revision: str | None = None, tokenizer_name: str | None = None,
               gradient_checkpointing: bool = False, xformers: bool = False, cuda_graph: bool = True,
               compile: str = "off") -> Model:
    """Stable Diffusion with the placeholder token and its trainable vector, set up for training (CUDA graphs
    only where they can be captured: on CUDA, without gradient checkpointing or xformers; `compile` as
    `nerf.compilation.resolve` gives it)."""
    parts = load_stable_diffusion(name_or_path, device, fp16=False, revision=revision)
    if tokenizer_name is not None:
        parts.tokenizer = load_tokenizer(tokenizer_name, revision)
    token_id, initial = add_placeholder(parts, placeholder, initializer)
    row = TokenVector(parts.text_encoder.get_input_embeddings(), token_id, initial).to(device)
    prepare_networks(parts, device, weight_dtype, gradient_checkpointing=gradient_checkpointing, xformers=xformers)
    # No weight-cast cache: each autocast region calls a network once, and CUDA graphs cannot capture it.
    autocast = partial(torch.autocast, device.type, dtype=weight_dtype, enabled=weight_dtype != torch.float32,
                       cache_enabled=False)
    graphs = device.type == "cuda" and cuda_graph and not (gradient_checkpointing or xformers)
    nets = FrozenNetworks(parts.vae, parts.unet, weight_dtype, autocast, graphs, compile)
    return Model(parts=parts, token_id=token_id, row=row, nets=nets, autocast=autocast)


def load_tokenizer(name: str, revision: str | None) -> Any:
    """--tokenizer_name's CLIP tokenizer, in place of the model's own."""
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(name, revision=revision)
    except OSError as exc:
        raise UserError(f"cannot load --tokenizer_name {name}; give a hub id or a folder.") from exc


def prepare_networks(parts: StableDiffusionParts, device: torch.device, weight_dtype: torch.dtype, *,
                     gradient_checkpointing: bool, xformers: bool) -> None:
    """Precision, memory layout, training mode and attention backend of the frozen networks."""
    for module in (parts.unet, parts.vae):  # nn.Module casts: diffusers' .to(dtype) warns about fp32 modules
        {torch.float16: module.half, torch.bfloat16: module.bfloat16}.get(weight_dtype, module.float)()
    if device.type == "cuda":  # measured: the UNet is faster channels-last, the VAE encoder slower
        parts.unet.to(memory_format=torch.channels_last)
    parts.text_encoder.train()
    if gradient_checkpointing:
        parts.unet.train()  # diffusers checkpoints only in training mode
        parts.unet.enable_gradient_checkpointing()
        parts.text_encoder.gradient_checkpointing_enable()
    if xformers:
        if importlib.util.find_spec("xformers") is None:
            raise UserError("--enable_xformers_memory_efficient_attention needs xformers installed; without the flag "
                            "PyTorch's fused attention is used.")
        parts.unet.enable_xformers_memory_efficient_attention()
