"""--compile: the rule of auto, the marker cache, the fallback on a failed compilation, and compiled score
distillation against the eager one (tiny random Stable Diffusion; CPU, and on a GPU inside the CUDA graphs)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nerf.compilation as compilation
from nerf.compilation import AUTO_MIN_ITERS, Compiled, Packaged, marker_path, package_path, resolve
from nerf.guidance.sds import SDSGuidance
from nerf.guidance.stable_diffusion import load_stable_diffusion

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
PROMPTS = [("a photo of a cat", "")]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    """Every test compiles into (and reads markers from) a cache folder of its own."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    return tmp_path / "inductor"


@pytest.mark.parametrize("mode, device, iters, expected", [
    ("off", CUDA, 5000, "off"), ("on", CPU, 10, "on"), ("auto", CPU, 5000, "off"),
    ("auto", CUDA, AUTO_MIN_ITERS - 1, "off"), ("auto", CUDA, AUTO_MIN_ITERS, "if_cached")])
def test_the_rule_of_auto(mode, device, iters, expected) -> None:
    assert resolve(mode, device, iters) == expected


def test_the_help_states_the_rule_s_threshold() -> None:
    from tests.test_help_lines import help_of

    assert re.search(rf"at least {AUTO_MIN_ITERS} iterations", help_of("compile"))


def test_textual_inversion_s_compile_flag_states_the_same_rule_and_reaches_its_encoder_and_unet(tiny_sd_dir) -> None:
    import argparse

    from nerf.textual_inversion.args import add_feature_flags
    from nerf.textual_inversion.model import load_model

    parser = argparse.ArgumentParser()
    add_feature_flags(parser)
    help_text = " ".join(parser.format_help().split())
    assert re.search(rf"at least {AUTO_MIN_ITERS} steps", help_text)
    model = load_model(str(tiny_sd_dir), placeholder="_obj_", initializer="cat", device=CPU,
                       weight_dtype=torch.float32, compile="on")
    assert isinstance(model.nets.encoder, Compiled) and model.nets.encoder.mode == "on"
    assert isinstance(model.nets.unet_call, Compiled) and model.nets.unet_call.mode == "on"
    eager = load_model(str(tiny_sd_dir), placeholder="_obj_", initializer="cat", device=CPU, weight_dtype=torch.float32)
    assert eager.nets.encoder == eager.nets._encode and eager.nets.unet_call == eager.nets._denoise


def test_the_cache_folder_is_the_user_s_when_set_and_persistent_otherwise(monkeypatch, own_cache) -> None:
    assert compilation.cache_dir() == own_cache
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert compilation.cache_dir() == Path.home() / ".cache" / "realfusion" / "inductor"


def double(x: torch.Tensor) -> torch.Tensor:
    return 2 * x


def recording_compile(monkeypatch) -> list:
    """torch.compile replaced by a stand-in that records what it compiles and returns it unchanged."""
    compiled: list = []

    def fake(fn, **kwargs):
        compiled.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", fake)
    return compiled


def test_if_cached_compiles_only_what_an_earlier_compiled_run_left_a_marker_for(monkeypatch, caplog) -> None:
    compiled = recording_compile(monkeypatch)
    x = torch.ones(3)
    cold = Compiled(double, "doubler", "if_cached", {"model": 1})
    assert torch.equal(cold(x), 2 * x) and compiled == []  # no marker: eager, no cold compilation
    assert not marker_path("doubler", {"model": 1}, (x,)).exists()
    with caplog.at_level("INFO", logger="realfusion"):
        caplog.clear()  # what the eager call said, where an earlier test left the logger at INFO
        Compiled(double, "doubler", "on", {"model": 1})(x)  # an explicit --compile on leaves the marker
        assert compiled == [double] and marker_path("doubler", {"model": 1}, (x,)).is_file()
        warm = Compiled(double, "doubler", "if_cached", {"model": 1})
        assert torch.equal(warm(x), 2 * x) and compiled == [double, double]
    said = [r.getMessage().split(" in ")[0] for r in caplog.records]  # each first call's time, cold then warm
    assert said == ["compiled the doubler", "traced the doubler and loaded its compiled code"]
    other_shape = Compiled(double, "doubler", "if_cached", {"model": 1})
    other_shape(torch.ones(4))
    other_model = Compiled(double, "doubler", "if_cached", {"model": 2})
    other_model(x)
    assert len(compiled) == 2  # another shape or model is not in the cache


@pytest.mark.parametrize("error", [RuntimeError("no compiler for the test\nmore"), AssertionError()],
                         ids=["message", "bare"])  # dynamo raises bare assertions too (guards it cannot save)
def test_a_failed_compilation_warns_once_and_runs_eagerly(monkeypatch, caplog, error) -> None:
    def broken(fn, **kwargs):
        def run(*args):
            raise error
        return run

    monkeypatch.setattr(torch, "compile", broken)
    wrapped = Compiled(double, "doubler", "on", {})
    with caplog.at_level("WARNING", logger="realfusion"):
        assert torch.equal(wrapped(torch.ones(2)), torch.full((2,), 2.0))
        assert torch.equal(wrapped(torch.ones(2)), torch.full((2,), 2.0))
    warned = [r.getMessage() for r in caplog.records if "torch.compile of the doubler failed" in r.message]
    assert wrapped.failed and len(warned) == 1
    assert f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else type(error).__name__})" in warned[0]


class Scaled(torch.nn.Module):
    """A frozen layer and a per-run buffer: what a packaged call's weights look like."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)
        self.register_buffer("offset", torch.arange(3.0))
        self.register_buffer("unused", torch.ones(2))  # not read: not in the package

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.layer(x)) * 2 + self.offset


class Shifted(Scaled):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) + self.offset


def packages(cache: Path) -> list[Path]:
    return sorted((cache / compilation.PACKAGES).glob("*.pt2"))


@pytest.fixture
def aoti_ready() -> None:
    """Skip where AOTInductor cannot build a shared library (no C++ compiler)."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as exc:
        pytest.skip(f"AOTInductor cannot build code here ({type(exc).__name__})")


def refuse_export(monkeypatch) -> None:
    def refused(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(torch.export, "export", refused)


PACKAGE_LOAD = """
import torch
from torch._dynamo.utils import counters
from nerf.compilation import Packaged
from tests.test_compile import Scaled

torch.export.export = None  # a load that exported again would fail
import torch._inductor.cpu_vec_isa
torch._inductor.cpu_vec_isa.valid_vec_isa_list = None  # nor one that probed the compiler for the instruction set
module = Scaled()  # another model of the same configuration, as a later run loads it
with torch.no_grad():
    module.offset.fill_(-1.0)
x = torch.linspace(-1, 1, 20).reshape(5, 4)
warm = Packaged(module, "scaler", "if_cached", {"model": 1})
out = warm(x)
assert warm.runner is not None and not warm.failed
torch.testing.assert_close(out, module(x))
print(counters["stats"]["unique_graphs"])
"""


def test_a_packaged_call_compiles_once_and_a_later_process_loads_it_with_its_own_weights(
        aoti_ready, monkeypatch, own_cache) -> None:
    x = torch.linspace(-1, 1, 20).reshape(5, 4)
    first = Scaled()
    cold = Packaged(first, "scaler", "on", {"model": 1})
    torch.testing.assert_close(cold(x), first(x))
    assert cold.runner is not None and len(packages(own_cache)) == 1
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(own_cache)}
    done = subprocess.run([sys.executable, "-c", PACKAGE_LOAD], env=env, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) == 0  # loaded, not traced: dynamo saw no graph in that process
    refuse_export(monkeypatch)
    for other in (Shifted(), Scaled().half()):  # another forward, other weight dtypes: not this package
        stale = Packaged(other, "scaler", "if_cached", {"model": 1})
        assert torch.equal(stale(x.to(other.offset.dtype)), other(x.to(other.offset.dtype))) and stale.runner is None


def test_a_package_key_names_the_host_processor(monkeypatch) -> None:
    x = torch.ones(2, 4)
    here = package_path("scaler", {"model": 1}, (x,))
    other = "AVX512" if torch.backends.cpu.get_cpu_capability() != "AVX512" else "AVX2"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: other)
    assert package_path("scaler", {"model": 1}, (x,)) != here


def test_if_cached_runs_a_module_eagerly_without_its_package(aoti_ready, monkeypatch) -> None:
    refuse_export(monkeypatch)
    module, x = Scaled(), torch.ones(2, 4)
    cold = Packaged(module, "scaler", "if_cached", {"model": 1})
    assert torch.equal(cold(x), module(x)) and cold.runner is None and not cold.failed


def test_a_failed_ahead_of_time_compilation_warns_once_and_runs_eagerly(monkeypatch, caplog, own_cache) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no exporter here")

    monkeypatch.setattr(torch.export, "export", broken)
    module, x = Scaled(), torch.ones(2, 4)
    wrapped = Packaged(module, "scaler", "on", {})
    with caplog.at_level("WARNING", logger="realfusion"):
        outs = [wrapped(x), wrapped(x)]
    assert all(torch.equal(out, module(x)) for out in outs) and wrapped.failed
    warned = [r.getMessage() for r in caplog.records if "compilation of the scaler failed" in r.message]
    assert len(warned) == 1 and "(RuntimeError: no exporter here)" in warned[0]
    assert packages(own_cache) == []


class Encoder(torch.nn.Module):
    """A frozen convolution, group norm and activation: the layers of the VAE encoder whose backward is packaged."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, 8)
        self.out = torch.nn.Conv2d(8, 4, 3, padding=1)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.nn.functional.silu(self.norm(self.conv(x * 2 - 1))))


def output_and_input_gradient(fn, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    (out * weight).sum().backward()
    return out.detach(), x.grad


def test_a_differentiable_call_is_packaged_with_its_backward_and_loaded_without_tracing(
        aoti_ready, monkeypatch, own_cache) -> None:
    from nerf.packaged_backward import PackagedDifferentiable

    x, weight = torch.rand(1, 3, 8, 8), torch.randn(1, 4, 8, 8)
    first = Encoder()
    cold = PackagedDifferentiable(first, "encoder", "on", {"model": 1})
    for got, want in zip(output_and_input_gradient(cold, x, weight), output_and_input_gradient(first, x, weight)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert cold.forward_runner is not None and len(list(own_cache.rglob("*.pt2"))) == 2
    refuse_export(monkeypatch)
    monkeypatch.setattr("functorch.compile.aot_function", None)  # a load that traced again would fail
    second = Encoder()  # other weights, the same configuration: the packages hold no weights
    warm = PackagedDifferentiable(second, "encoder", "if_cached", {"model": 1})
    for got, want in zip(output_and_input_gradient(warm, x, weight), output_and_input_gradient(second, x, weight)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert warm.forward_runner is not None and not warm.failed

    def broken_backward(*args):
        raise RuntimeError("no backward here")

    warm.backward_runner = broken_backward  # a failure inside autograd's backward: the module's own gradient
    for got, want in zip(output_and_input_gradient(warm, x, weight), output_and_input_gradient(second, x, weight)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert warm.failed and warm.forward_runner is None


def test_a_differentiable_call_without_packages_or_with_a_failing_compiler_runs_eagerly(
        monkeypatch, caplog) -> None:
    from nerf.packaged_backward import PackagedDifferentiable

    module, x, weight = Encoder(), torch.rand(1, 3, 8, 8), torch.randn(1, 4, 8, 8)
    refuse_export(monkeypatch)
    uncached = PackagedDifferentiable(module, "encoder", "if_cached", {})
    assert torch.equal(uncached(x), module(x)) and uncached.forward_runner is None and not uncached.failed
    broken = PackagedDifferentiable(module, "encoder", "on", {})
    with caplog.at_level("WARNING", logger="realfusion"):
        outs = [output_and_input_gradient(broken, x, weight) for _ in range(2)]
    want = output_and_input_gradient(module, x, weight)
    assert all(torch.equal(a, b) for out in outs for a, b in zip(out, want)) and broken.failed
    assert sum("compilation of the encoder failed" in r.message for r in caplog.records) == 1


def sds_losses(guidance: SDSGuidance, device: torch.device, calls: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(loss, image gradient) of a few SDS calls on fixed images, t and noise. Copies: a replayed CUDA graph hands
    back its own buffers, which the next call overwrites."""
    results = []
    for k in range(calls):
        image = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(k)).to(device).requires_grad_()
        loss, _ = guidance(image, 0, generator=torch.Generator(device).manual_seed(10 + k))
        loss.backward()
        results.append((loss.detach().clone(), image.grad.clone()))
    return results


def test_compile_off_is_the_eager_code_path(tiny_sd_dir) -> None:
    parts = load_stable_diffusion(str(tiny_sd_dir), CPU, fp16=False)
    off = SDSGuidance(parts, PROMPTS, guidance_scale=7.5, compile="off")
    assert off.moments is off.moment_encoder and off.predict_noise is off.noise_predictor
    before = SDSGuidance(parts, PROMPTS, guidance_scale=7.5)
    for (loss_a, grad_a), (loss_b, grad_b) in zip(sds_losses(off, CPU), sds_losses(before, CPU)):
        assert torch.equal(loss_a, loss_b) and torch.equal(grad_a, grad_b)


@pytest.fixture
def cpu_parts(tiny_sd_dir):
    """The tiny model on the CPU, for tests that compile (skipped where torch.compile cannot build code)."""
    try:
        torch.compile(lambda x: torch.sin(x) + 1, dynamic=False)(torch.ones(4))
    except Exception as exc:
        pytest.skip(f"torch.compile cannot build code here ({type(exc).__name__}: "
                    f"{str(exc).strip().splitlines()[0][:120]})")
    return load_stable_diffusion(str(tiny_sd_dir), CPU, fp16=False)


@pytest.mark.slow
def test_compile_on_gives_the_eager_loss_on_the_cpu(cpu_parts) -> None:
    """... and a later guidance of the same model loads both networks' packages without tracing anything."""
    from torch._dynamo.utils import counters

    parts = cpu_parts
    eager = sds_losses(SDSGuidance(parts, PROMPTS, guidance_scale=7.5), CPU)
    compiled_guidance = SDSGuidance(parts, PROMPTS, guidance_scale=7.5, compile="on")
    compiled = sds_losses(compiled_guidance, CPU)
    assert not compiled_guidance.moments.failed and not compiled_guidance.predict_noise.failed
    assert compiled_guidance.predict_noise.runner is not None  # the UNet's package, loaded
    assert compiled_guidance.moments.forward_runner is not None  # the VAE encoder's, forward and backward
    counters.clear()
    warm = SDSGuidance(parts, PROMPTS, guidance_scale=7.5, compile="if_cached")  # a later run: packages loaded
    for (loss_w, grad_w), (loss_c, grad_c) in zip(sds_losses(warm, CPU), compiled):
        assert torch.equal(loss_w, loss_c) and torch.equal(grad_w, grad_c)
    assert warm.moments.forward_runner is not None and counters["stats"]["unique_graphs"] == 0  # nothing traced
    for (loss_e, grad_e), (loss_c, grad_c) in zip(eager, compiled):
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(grad_c, grad_e, rtol=1e-3, atol=1e-4 * grad_e.abs().max().item())


@pytest.mark.slow
def test_textual_inversion_s_compiled_unet_gives_the_eager_loss_and_token_gradient_on_the_cpu(cpu_parts) -> None:
    from diffusers import DDPMScheduler

    from nerf.textual_inversion.model import FrozenNetworks, TokenVector, add_placeholder
    from nerf.textual_inversion.step import denoising_loss
    from tests.test_textual_inversion import micro_batches

    parts = cpu_parts
    token_id, initial = add_placeholder(parts, "_obj_", "cat")
    row = TokenVector(parts.text_encoder.get_input_embeddings(), token_id, initial)
    scheduler = DDPMScheduler.from_config(parts.scheduler.config)
    results = []
    for compile in ("off", "on"):
        nets = FrozenNetworks(parts.vae, parts.unet, torch.float32, contextlib.nullcontext, graphs=False,
                              compile=compile)
        torch.manual_seed(0)
        loss = denoising_loss(parts, nets, scheduler, micro_batches(parts.tokenizer, [1, 1]), 2, contextlib.nullcontext)
        results.append((loss.detach(), torch.autograd.grad(loss, row.vector)[0]))
        if compile == "on":
            assert nets.unet_call.compiled is not None and not nets.unet_call.failed
    (loss_e, grad_e), (loss_c, grad_c) = results
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_c, grad_e, rtol=1e-3, atol=1e-4 * grad_e.abs().max().item())
    assert grad_e.abs().max() > 0


@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [False, True])
def test_compiled_networks_inside_the_cuda_graphs_give_the_eager_loss(tiny_sd_dir, fp16) -> None:
    parts = load_stable_diffusion(str(tiny_sd_dir), CUDA, fp16=fp16)
    eager = sds_losses(SDSGuidance(parts, PROMPTS, guidance_scale=7.5), CUDA, calls=4)
    both = SDSGuidance(parts, PROMPTS, guidance_scale=7.5, cuda_graph=True, compile="on")
    compiled = sds_losses(both, CUDA, calls=4)
    assert not both.predict_noise.failed and not both.moments.failed  # the graphs captured the compiled code
    assert not both.predict_noise.fn.failed and not both.moments.fn.failed
    assert both.predict_noise.fn.runner is not None  # the graphs replay the UNet's package
    assert both.moments.fn.forward_runner is not None  # ... and the VAE encoder's, forward and backward
    for (loss_e, grad_e), (loss_c, grad_c) in zip(eager, compiled):
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-2 if fp16 else 1e-3, atol=1e-5)
        torch.testing.assert_close(grad_c, grad_e, rtol=1e-2, atol=1e-2 * grad_e.abs().max().item())


TRACED_RUN = """
import sys, torch
from torch._dynamo.utils import counters
from nerf.compilation import Compiled

class Doubler:
    def __init__(self):
        self.linear = torch.nn.Linear(4, 4)
        torch.nn.init.constant_(self.linear.weight, 0.5)
        torch.nn.init.constant_(self.linear.bias, 0.25)

    def call(self, x):
        return torch.nn.functional.gelu(self.linear(x)) * 2

doubler = Doubler()
x = torch.arange(8.0).reshape(2, 4)
with torch.no_grad():
    out = Compiled(doubler.call, "doubler", "on", {})(x)
    torch.testing.assert_close(out, doubler.call(x))
print(counters["stats"]["unique_graphs"], counters["dynamo_cache"]["dynamo_cache_hit"])
"""


def test_traced_frames_are_saved_only_under_torch_s_precompile_variable(monkeypatch) -> None:
    import torch._dynamo.config as dynamo_config
    from torch._dynamo.utils import counters

    compiled = recording_compile(monkeypatch)
    saved: list = []
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: saved.append(1))
    monkeypatch.setitem(counters["dynamo_cache"], "dynamo_cache_miss", 1)  # this process traced something new
    for precompile in (False, True):
        monkeypatch.setattr(dynamo_config, "caching_precompile", precompile)
        wrapped = Compiled(double, "doubler", "on", {"precompile": precompile})
        wrapped(torch.ones(2))
        wrapped(torch.ones(2))
        assert len(saved) == int(precompile)  # once, after the first compiled call
    monkeypatch.setitem(counters["dynamo_cache"], "dynamo_cache_miss", 0)  # everything came from the cache
    Compiled(double, "doubler", "on", {"precompile": "loaded"})(torch.ones(2))
    assert len(saved) == 1 and len(compiled) == 3


def test_a_second_process_loads_the_saved_frames_instead_of_tracing(own_cache) -> None:
    """Under TORCH_CACHING_PRECOMPILE=1 the first process traces and saves its frame, the next one loads it (no
    trace) and gives the eager result."""
    def run() -> tuple[int, int]:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(own_cache), "TORCH_CACHING_PRECOMPILE": "1"}
        done = subprocess.run([sys.executable, "-c", TRACED_RUN], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        traced, hits = map(int, done.stdout.split()[-2:])
        return traced, hits

    assert run() == (1, 0) and any((own_cache / "dynamo").iterdir())
    assert run() == (0, 1)
