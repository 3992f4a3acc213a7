"""The calls of score distillation into its frozen networks, one recipe for every prior.

Each prior calls two frozen networks at every iteration with the same shapes: the VAE encoder (forward and backward
to the rendered image) and the denoising UNet (no gradient). Both are what a CUDA graph replays and what
`torch.compile` fuses, so a prior builds them once through `accelerated`, and Stable Diffusion and Zero-1-to-3 get the
same speed-ups from the same code.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from nerf.compilation import Compiled, Packaged
from nerf.cuda_graphs import GraphedDifferentiable, GraphedInference
from nerf.packaged_backward import PackagedDifferentiable


def half_autocast(dtype: torch.dtype, device: torch.device) -> AbstractContextManager:
    """fp16 autocast when the weights are fp16 (CUDA); a no-op in fp32.

    The cast cache is off: it would keep tensors alive across CUDA-graph capture and replay."""
    if dtype != torch.float16:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16, cache_enabled=False)


def frozen_layouts(vae: torch.nn.Module, unet: torch.nn.Module, device: torch.device, channels_last: bool) -> None:
    """With `channels_last` on CUDA: the UNet's weights channels-last; the VAE's stay in the default layout.

    Measured (README "Performance"): channels-last speeds up the UNet eager and compiled but slows the VAE encoder
    both ways. Eager group norm has no channels-last kernel, so each of its group norms transposes; compiled, the
    backward graph keeps eager's layouts, and the group norms' gradients reach every convolution's backward in the
    default layout, to be copied into channels-last (32 copies, 3.4 ms per fwd+bwd on an H100: 12.35 ms against
    10.95 ms in the default layout)."""
    set_memory_layout((unet,), device, channels_last)
    set_memory_layout((vae,), device, False)


def set_memory_layout(modules: Iterable[torch.nn.Module], device: torch.device, channels_last: bool) -> None:
    """The frozen convolutional networks' weights in channels-last layout on CUDA with `channels_last`, else in the
    default layout.

    Channels-last is the layout of cuDNN's fp16 tensor-core convolutions: with default-layout weights cuDNN
    transposes the input and output of every convolution (2.8 ms per compiled iteration in an H100's profile). Set
    both ways, at every build, as the benchmark's variants share one loaded model."""
    layout = torch.channels_last if channels_last and device.type == "cuda" else torch.contiguous_format
    for module in modules:
        module.to(memory_format=layout)


@contextmanager
def half_precision_math_attention() -> Iterator[None]:
    """Attention by PyTorch's math kernel, with fp16 products computed in fp16 (by default it casts them to fp32:
    2.1 ms of fp32 matrix products per iteration for the VAE's 4096-token attention on an H100).

    The VAE's one attention layer has a single 512-wide head: the fused attention kernels are slow at that width
    (their backward above all), plain matrix products are not. fp16 products with an fp32 softmax are what Stable
    Diffusion's VAE ran with in the original. Entered around a call of the VAE encoder, never inside a compiled
    function: a backend choice traced by dynamo keeps AOT autograd from caching the graph, so every process traced
    and partitioned the VAE's forward and backward again (1.5 s of a warm start on the CPU)."""
    allowed = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(allowed)


def posterior_moments(vae: Any, image: Tensor, size: int, dtype: torch.dtype) -> Tensor:
    """The VAE posterior's [mean, logvar] (at least fp32) of [B, 3, h, w] images in [0, 1], resized to `size`; called
    inside `half_precision_math_attention` (`encode_latents`)."""
    x = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)
    with half_autocast(dtype, x.device):
        moments = vae.encoder(x * 2 - 1)
        if vae.quant_conv is not None:
            moments = vae.quant_conv(moments)
    return moments.to(torch.promote_types(moments.dtype, torch.float32))


class PosteriorMoments(torch.nn.Module):
    """`posterior_moments` as a module of the VAE's encoder half (its encoder and quantisation convolution), so that
    the call and its backward can be compiled ahead of time (`nerf.packaged_backward`) with the live weights."""

    def __init__(self, vae: Any, size: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = vae.quant_conv
        self.size = size
        self.dtype = dtype

    def forward(self, image: Tensor) -> Tensor:
        return posterior_moments(self, image, self.size, self.dtype)


def encode_latents(moments: Callable[[Tensor], Tensor], image: Tensor, scaling_factor: float,
                   generator: torch.Generator | None = None) -> Tensor:
    """Scaled latents of `image` drawn from the VAE posterior that `moments` (a prior's accelerated
    `posterior_moments`) computes with its attention products in fp16; the one random draw of the encoding."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    with half_precision_math_attention():  # around the call, so that compiled and captured code see it too
        posterior = moments(image)
    return DiagonalGaussianDistribution(posterior).sample(generator) * scaling_factor


def timestep_bounds(t_range: tuple[float, float], steps: int) -> tuple[int, int]:
    """The closed range of training timesteps that score distillation draws from, given as fractions of `steps`
    (0.02 0.98 of SD's 1000 steps: 20..980)."""
    return int(t_range[0] * steps), min(int(t_range[1] * steps), steps - 1)


def accelerated(fn: Callable[..., Tensor], name: str, *, differentiable: bool, device: torch.device,
                cuda_graph: bool, compile: str, identity: dict[str, Any]) -> Callable[..., Tensor]:
    """`fn` compiled (`compile` "on" or "if_cached", `nerf.compilation`) and, on CUDA with `cuda_graph`, captured and
    replayed as a CUDA graph: with its backward when `differentiable`, else as a no-grad call.

    A call given as a module (its weights and per-run tensors its parameters and buffers) is compiled ahead of time,
    with its backward when `differentiable` (`Packaged`, `PackagedDifferentiable`: no tracing in later processes); a
    function by torch.compile."""
    if compile != "off" and isinstance(fn, torch.nn.Module):
        fn = (PackagedDifferentiable if differentiable else Packaged)(fn, name, compile, identity)
    elif compile != "off":
        fn = Compiled(fn, name, compile, identity)
    if cuda_graph and device.type == "cuda":
        fn = GraphedDifferentiable(fn, name) if differentiable else GraphedInference(fn, name)
    return fn
