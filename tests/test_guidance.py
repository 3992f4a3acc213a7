"""The prior: Stable Diffusion on the tiny random model (loading, the learned token, the SDS gradient), and the
registry that builds a prior by name (sd, oracle)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from nerf.cameras import direction_prompts, fixed_cameras
from nerf.data import RealView
from nerf.cuda_graphs import GraphedDifferentiable, GraphedInference
from nerf.errors import UserError
from nerf.scenes.raytrace import render_rgba
from nerf.scenes.procedural import make_scene
from nerf.guidance import GUIDANCES, Guidance, PriorContext, build_guidance
from nerf.guidance.frozen_calls import (
    frozen_layouts,
    half_precision_math_attention,
    posterior_moments,
    set_memory_layout,
)
from nerf.guidance.sds import SDSGuidance
from nerf.guidance.stable_diffusion import (
    StableDiffusionParts,
    add_learned_token,
    load_learned_embeds,
    load_stable_diffusion,
    replace_token_placeholder,
    resolve_model_name,
    resolve_prompts,
    resolve_token,
)
from nerf.guidance.surrogate import surrogate_loss
from nerf.options import DEFAULT_MODEL, PriorOptions
from tests.sds_replay import assert_replays_match_eager

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def parts(tiny_sd_dir: Path) -> StableDiffusionParts:
    """A fresh copy per test: adding tokens mutates the tokenizer and text encoder."""
    return load_stable_diffusion(str(tiny_sd_dir), CPU, fp16=False)


def text_states(parts: StableDiffusionParts, texts: list[str]) -> torch.Tensor:
    tok = parts.tokenizer
    ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return parts.text_encoder(ids.input_ids)[0]


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """float32 agreement relative to the tensor's largest entry (classifier-free guidance amplifies round-off)."""
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def sd15_alphas_cumprod() -> torch.Tensor:
    """SD 1.5's noise schedule written out: scaled_linear betas 0.00085..0.012 over 1000 steps."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


# ---------------------------------------------------------------- the tiny model script


def test_tiny_tokenizer_has_whole_word_tokens(parts):
    tok = parts.tokenizer
    ids = tok("a photo of a cat, an image of a dog").input_ids
    words = ["a", "photo", "of", "a", "cat", ",", "an", "image", "of", "a", "dog"]
    assert ids == [tok.bos_token_id] + [tok.convert_tokens_to_ids(w + "</w>") for w in words] + [tok.eos_token_id]
    assert tok.pad_token == tok.eos_token == "<|endoftext|>" and tok.model_max_length == 77
    # unknown words still encode, through shorter pieces, and decode back
    assert tok.decode(tok("zebra xylophone", add_special_tokens=False).input_ids) == "zebra xylophone"


def test_tiny_model_is_deterministic_by_seed(tmp_path):
    from nerf.toy_models import tiny_sd as script

    script.write_tokenizer_files(tmp_path)
    first, again, other = (script.build_pipeline(tmp_path, seed) for seed in (0, 0, 1))
    for name in ("unet", "vae", "text_encoder"):
        a, b, c = (getattr(p, name).state_dict() for p in (first, again, other))
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not all(torch.equal(a[k], c[k]) for k in a)


def test_tiny_model_shape(parts):
    assert parts.unet.config.cross_attention_dim == parts.text_encoder.config.hidden_size
    assert parts.vae.config.scaling_factor == pytest.approx(0.18215)
    assert type(parts.scheduler).__name__ == "PNDMScheduler"
    torch.testing.assert_close(parts.scheduler.alphas_cumprod.float(), sd15_alphas_cumprod())


# ---------------------------------------------------------------- loading


def test_load_from_folder_is_frozen_fp32_on_cpu(tiny_sd_dir):
    parts = load_stable_diffusion(str(tiny_sd_dir), CPU, fp16=True)  # fp16 applies on CUDA only
    assert parts.dtype == torch.float32 and parts.device == CPU
    for module in (parts.text_encoder, parts.vae, parts.unet):
        assert not module.training
        assert all(not p.requires_grad and p.dtype == torch.float32 for p in module.parameters())


def test_load_from_single_file_takes_the_weights_from_the_file(tiny_sd_dir, tmp_path):
    folder = tmp_path / "seed0"
    shutil.copytree(tiny_sd_dir, folder)
    single = folder / "other-weights.safetensors"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make-tiny-sd.py"), str(tmp_path / "seed1"), "--seed", "1",
                    "--single_file", str(single)], check=True, capture_output=True)
    from_file = load_stable_diffusion(str(single), CPU, fp16=False)
    seed1 = load_stable_diffusion(str(tmp_path / "seed1"), CPU, fp16=False)
    seed0 = load_stable_diffusion(str(folder), CPU, fp16=False)
    for name in ("unet", "vae", "text_encoder"):
        got, want, base = (getattr(p, name).state_dict() for p in (from_file, seed1, seed0))
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), name
        assert not all(torch.equal(got[k], base[k]) for k in base), name
    assert from_file.tokenizer.get_vocab() == seed0.tokenizer.get_vocab()


def test_hub_id_offline_is_a_one_line_user_error():
    with pytest.raises(UserError) as excinfo:
        load_stable_diffusion("no-such-org/no-such-model-7f3a", CPU, fp16=False)
    message = one_line_error(excinfo)
    assert "--pretrained_model_name_or_path" in message
    assert "hub id" in message and "diffusers folder" in message and ".safetensors/.ckpt" in message


@pytest.mark.parametrize("make", ["missing_file", "missing_folder", "not_a_model_folder", "corrupt_file"])
def test_bad_model_paths_are_user_errors(tmp_path, make):
    target = {"missing_file": tmp_path / "nope.safetensors", "missing_folder": tmp_path / "a" / "b" / "c",
              "not_a_model_folder": tmp_path, "corrupt_file": tmp_path / "bad.safetensors"}[make]
    if make == "corrupt_file":
        target.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError) as excinfo:
        load_stable_diffusion(str(target), CPU, fp16=False)
    assert "--pretrained_model_name_or_path" in one_line_error(excinfo)


def test_retired_model_id_is_mapped_with_a_notice(capsys):
    assert resolve_model_name("runwayml/stable-diffusion-v1-5") == DEFAULT_MODEL
    err = capsys.readouterr().err
    assert "runwayml/stable-diffusion-v1-5" in err and DEFAULT_MODEL in err
    assert resolve_model_name("some/other-model") == "some/other-model"
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- learned embeddings: files


def test_load_learned_embeds_formats(tmp_path):
    from safetensors.torch import save_file

    vec = torch.randn(32)
    torch.save({"_obj_": vec}, tmp_path / "a.bin")
    token, got = load_learned_embeds(str(tmp_path / "a.bin"))
    assert token == "_obj_" and torch.equal(got, vec)

    save_file({"<cat-toy>": vec[None].clone()}, str(tmp_path / "b.safetensors"))  # diffusers' [1, D] row
    token, got = load_learned_embeds(str(tmp_path / "b.safetensors"))
    assert token == "<cat-toy>" and torch.equal(got, vec)

    torch.save({"_half_": vec.half()}, tmp_path / "c.bin")
    token, got = load_learned_embeds(str(tmp_path / "c.bin"))
    assert got.dtype == torch.float32 and torch.equal(got, vec.half().float())


def test_load_learned_embeds_folder_prefers_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.save({"_from_bin_": torch.zeros(4)}, tmp_path / "learned_embeds.bin")
    assert load_learned_embeds(str(tmp_path))[0] == "_from_bin_"
    save_file({"_from_st_": torch.ones(4)}, str(tmp_path / "learned_embeds.safetensors"))
    token, got = load_learned_embeds(str(tmp_path))
    assert token == "_from_st_" and torch.equal(got, torch.ones(4))


def test_load_learned_embeds_picks_a_named_token(tmp_path):
    torch.save({"_a_": torch.zeros(4), "_b_": torch.ones(4)}, tmp_path / "two.bin")
    token, got = load_learned_embeds(str(tmp_path / "two.bin"), token="_b_")
    assert token == "_b_" and torch.equal(got, torch.ones(4))


class NotAllowed:
    """Any custom class: a weights-only load must refuse to build it."""


BAD_EMBEDS = {
    "missing": None,
    "empty_folder": None,
    "corrupt_bin": b"\x80\x02garbage",
    "corrupt_safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json",
    "empty_dict": {},
    "several_tokens": {"_a_": torch.zeros(4), "_b_": torch.zeros(4)},
    "not_a_dict": torch.zeros(4),
    "matrix": {"_a_": torch.zeros(2, 4)},
    "integer": {"_a_": torch.zeros(4, dtype=torch.long)},
    "not_a_tensor": {"_a_": [0.0, 1.0]},
    "unsafe_pickle": {"_a_": NotAllowed()},
}


@pytest.mark.parametrize("case", sorted(BAD_EMBEDS))
def test_load_learned_embeds_bad_inputs(tmp_path, case):
    content = BAD_EMBEDS[case]
    path = tmp_path / ("learned_embeds.safetensors" if case == "corrupt_safetensors" else "learned_embeds.bin")
    if case == "empty_folder":
        path = tmp_path
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(UserError) as excinfo:
        load_learned_embeds(str(path))
    assert str(tmp_path) in one_line_error(excinfo)
    if case == "integer":  # the problem is named: the numbers, not the shape
        assert "int64 numbers, not a float embedding" in one_line_error(excinfo)


def test_load_learned_embeds_token_not_found(tmp_path):
    torch.save({"_a_": torch.zeros(4)}, tmp_path / "x.bin")
    with pytest.raises(UserError) as excinfo:
        load_learned_embeds(str(tmp_path / "x.bin"), token="_b_")
    assert "_a_" in one_line_error(excinfo)


# ---------------------------------------------------------------- learned embeddings: the token


def test_learned_token_changes_the_prompt_only_at_its_position(parts):
    tok, te = parts.tokenizer, parts.text_encoder
    reference = "a photo of a cat, front view"
    cat_id = tok.convert_tokens_to_ids("cat</w>")
    vector = torch.randn(te.config.hidden_size)
    before = text_states(parts, [reference])[0]
    add_learned_token(parts, "_obj_", vector)
    prompt = replace_token_placeholder("a photo of a <token>, front view", "_obj_")
    assert prompt == "a photo of a _obj_, front view"

    ref_ids = tok(reference).input_ids
    ids = tok(prompt).input_ids
    position = ref_ids.index(cat_id)
    new_id = tok.convert_tokens_to_ids("_obj_")
    assert ids == ref_ids[:position] + [new_id] + ref_ids[position + 1:]

    # input embeddings: the learned vector at its position, the reference row everywhere else
    table = te.get_input_embeddings()
    emb, ref_emb = table(torch.tensor(ids)), table(torch.tensor(ref_ids))
    torch.testing.assert_close(emb[position], vector, rtol=0, atol=0)
    others = torch.arange(len(ids)) != position
    assert torch.equal(emb[others], ref_emb[others])

    # encoder output: CLIP attention is causal, so everything before the token is untouched; the token's own
    # position changes; and nothing else enters: with the row of "cat" the whole prompt encodes as "cat" does
    states = text_states(parts, [prompt])[0]
    assert torch.equal(states[:position], before[:position])
    assert not torch.allclose(states[position], before[position])
    with torch.no_grad():
        table.weight[new_id] = table.weight[cat_id]
    torch.testing.assert_close(text_states(parts, [prompt])[0], before, rtol=0, atol=0)


def test_readding_the_same_token_is_a_no_op_and_a_conflict_is_an_error(parts):
    vector = torch.randn(parts.text_encoder.config.hidden_size)
    add_learned_token(parts, "_obj_", vector)
    size = len(parts.tokenizer)
    add_learned_token(parts, "_obj_", vector.clone())
    assert len(parts.tokenizer) == size
    with pytest.raises(UserError) as excinfo:
        add_learned_token(parts, "_obj_", vector + 1)
    assert "_obj_" in one_line_error(excinfo)
    with pytest.raises(UserError):  # an ordinary vocabulary entry with its own row
        add_learned_token(parts, "cat</w>", vector)


def test_learned_token_of_the_wrong_width_is_an_error(parts):
    size = len(parts.tokenizer)
    for bad in (torch.randn(1024), torch.randn(2, parts.text_encoder.config.hidden_size)):
        with pytest.raises(UserError) as excinfo:
            add_learned_token(parts, "_obj_", bad)
        assert "--pretrained_model_name_or_path" in one_line_error(excinfo)
    assert len(parts.tokenizer) == size


def test_learned_token_embeddings_stay_frozen(parts):
    add_learned_token(parts, "_obj_", torch.randn(parts.text_encoder.config.hidden_size))
    assert not any(p.requires_grad for p in parts.text_encoder.parameters())


# ---------------------------------------------------------------- SDS


class ZeroUNet(torch.nn.Module):
    """A stand-in noise predictor returning `value` everywhere (cheap; for tests of the bookkeeping)."""

    def __init__(self, config, value: float = 0.0) -> None:
        super().__init__()
        self.config, self.value = config, value

    def forward(self, sample, timestep, encoder_hidden_states):
        return SimpleNamespace(sample=torch.full_like(sample, self.value))


VIEWS = ("front", "side", "back", "side", "overhead", "bottom")
PROMPTS = [(f"a photo of a cat, {view} view", "dark") for view in VIEWS]


def test_text_embeddings_are_negative_then_positive_per_bucket(parts):
    guidance = SDSGuidance(parts, PROMPTS)
    assert guidance.text_embeddings.shape == (6, 2, 77, parts.text_encoder.config.hidden_size)
    for k, (positive, negative) in enumerate(PROMPTS):
        torch.testing.assert_close(guidance.text_embeddings[k], text_states(parts, [negative, positive]))


def hand_sds(parts, image, post_noise, t, noise, prompt, weight, scale):
    """SDS written out from the formulas, independent of SDSGuidance: returns (latents, g)."""
    x = F.interpolate(image, size=(16, 16), mode="bilinear", align_corners=False) * 2 - 1
    posterior = parts.vae.encode(x).latent_dist
    latents = (posterior.mean + posterior.std * post_noise) * 0.18215
    abar = sd15_alphas_cumprod()[t]
    noisy = abar.sqrt() * latents.detach() + (1 - abar).sqrt() * noise
    emb = text_states(parts, [prompt[1], prompt[0]])
    with torch.no_grad():
        eps_u, eps_c = parts.unet(torch.cat([noisy, noisy]), torch.tensor([t, t]), encoder_hidden_states=emb).sample
    eps_hat = eps_u + scale * (eps_c - eps_u)
    return latents, weight * (1 - abar) * (eps_hat - noise)[None]


def test_sds_gradient_matches_the_hand_computation(parts):
    torch.manual_seed(0)
    image = torch.rand(1, 3, 12, 12, requires_grad=True)  # resized to the tiny model's 16 x 16
    t, weight, direction = 437, 0.7, 2
    noise = torch.randn(1, 4, 8, 8)
    guidance = SDSGuidance(parts, PROMPTS, guidance_scale=30.0)

    latents = guidance.encode(image, generator=torch.Generator().manual_seed(5))
    grad, t_used = guidance.sds_gradient(latents, direction, t=t, noise=noise)
    loss = weight * surrogate_loss(latents, grad)  # the objective's weight multiplies the unweighted loss
    (image_grad,) = torch.autograd.grad(loss, image)

    post_noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    hand_latents, hand_g = hand_sds(parts, image, post_noise, t, noise[0], PROMPTS[direction], weight, 30.0)
    (hand_image_grad,) = torch.autograd.grad(hand_latents, image, grad_outputs=hand_g)

    assert t_used == t
    torch.testing.assert_close(latents, hand_latents, rtol=1e-5, atol=1e-6)
    assert_close_to_scale(weight * grad, hand_g)
    assert_close_to_scale(image_grad, hand_image_grad)
    assert image_grad.abs().sum() > 0


def test_sds_call_draws_posterior_noise_then_t_then_eps(parts):
    torch.manual_seed(1)
    image = torch.rand(1, 3, 16, 16, requires_grad=True)
    guidance = SDSGuidance(parts, PROMPTS)
    loss, stats = guidance(image, 4, generator=torch.Generator().manual_seed(11))
    (image_grad,) = torch.autograd.grad(loss, image)

    replay = torch.Generator().manual_seed(11)
    post_noise = torch.randn(1, 4, 8, 8, generator=replay)
    t = int(torch.randint(20, 981, (1,), generator=replay))
    noise = torch.randn(1, 4, 8, 8, generator=replay)
    hand_latents, hand_g = hand_sds(parts, image, post_noise[0], t, noise[0], PROMPTS[4], 1.0, 100.0)
    (hand_image_grad,) = torch.autograd.grad(hand_latents, image, grad_outputs=hand_g)

    assert float(stats["t"]) == t and 20 <= t <= 980
    assert float(stats["sds_grad_norm"]) == pytest.approx(hand_g.abs().mean().item(), rel=1e-4)
    assert loss.item() == pytest.approx(0.5 * (hand_g**2).sum().item(), rel=1e-4)
    assert_close_to_scale(image_grad, hand_image_grad)


def test_single_prompt_serves_every_direction(parts):
    guidance = SDSGuidance(parts, PROMPTS[:1])
    latents = torch.randn(1, 4, 8, 8)
    noise = torch.randn(1, 4, 8, 8)
    g0, _ = guidance.sds_gradient(latents, 0, t=300, noise=noise)
    g5, _ = guidance.sds_gradient(latents, 5, t=300, noise=noise)
    assert torch.equal(g0, g5)


def test_t_covers_the_closed_range(parts):
    stand_in = dataclasses.replace(parts, unet=ZeroUNet(parts.unet.config))
    guidance = SDSGuidance(stand_in, PROMPTS[:1], t_range=(0.02, 0.0225))
    gen = torch.Generator().manual_seed(0)
    seen = {guidance.sds_gradient(torch.zeros(1, 4, 8, 8), 0, generator=gen)[1] for _ in range(40)}
    assert seen == {20, 21, 22}


def test_surrogate_gradient_is_exactly_g():
    latents = torch.randn(1, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    (grad,) = torch.autograd.grad(surrogate_loss(latents, g), latents)
    torch.testing.assert_close(grad.double(), g)


def test_nan_predictions_make_a_non_finite_loss_not_a_zero_one(parts):
    """A model that predicts NaN must not look like a prior with nothing to say (a zero gradient, sds=0): the loss is
    non-finite, so the trainer counts the iteration as a bad step and skips it."""
    guidance = SDSGuidance(dataclasses.replace(parts, unet=ZeroUNet(parts.unet.config, float("nan"))), PROMPTS[:1])
    latents = torch.zeros(1, 4, 8, 8)
    grad, _ = guidance.sds_gradient(latents, 0, t=500, noise=torch.zeros(1, 4, 8, 8))
    assert torch.isnan(grad).all() and not torch.isfinite(surrogate_loss(latents, grad))


def test_encode_path_gradcheck_float64(parts):
    parts.vae.double()
    guidance = SDSGuidance(parts, PROMPTS[:1])
    image = torch.rand(1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(1, 4, 8, 8, dtype=torch.float64)

    def projected(x: torch.Tensor) -> torch.Tensor:  # one output: one backward pass instead of 256
        return (guidance.encode(x, generator=torch.Generator().manual_seed(3)) * probe).sum()

    assert torch.autograd.gradcheck(projected, (image,), eps=1e-6, atol=1e-6)


class OracleUNet(torch.nn.Module):
    """Predicts exactly the noise that separates x_t from a known clean latent z*: the ideal denoiser for z*."""

    def __init__(self, config, alphas_cumprod: torch.Tensor, target: torch.Tensor) -> None:
        super().__init__()
        self.config, self.alphas_cumprod, self.target = config, alphas_cumprod, target

    def forward(self, sample, timestep, encoder_hidden_states):
        abar = self.alphas_cumprod[timestep].view(-1, 1, 1, 1)
        return SimpleNamespace(sample=(sample - abar.sqrt() * self.target) / (1 - abar).sqrt())


def test_sds_with_an_oracle_denoiser_pulls_the_image_to_the_target(parts):
    # The random VAE's posterior has std ~1, which would drown the signal; make it near-deterministic.
    with torch.no_grad():
        parts.vae.quant_conv.weight[4:] = 0
        parts.vae.quant_conv.bias[4:] = -12
    torch.manual_seed(0)
    target_image = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        target = parts.vae.encode(target_image * 2 - 1).latent_dist.mean * 0.18215
    oracle = OracleUNet(parts.unet.config, sd15_alphas_cumprod(), target)
    guidance = SDSGuidance(dataclasses.replace(parts, unet=oracle), PROMPTS[:1])

    # a random start: a constant image is a degenerate point of the random VAE's group norms
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)).requires_grad_()
    optimizer = torch.optim.Adam([image], lr=0.05)

    def distance() -> float:
        with torch.no_grad():
            return (parts.vae.encode(image * 2 - 1).latent_dist.mean * 0.18215 - target).norm().item()

    start = distance()
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        optimizer.zero_grad()
        loss, _ = guidance(image, 0, generator=generator)
        loss.backward()
        optimizer.step()
    assert distance() < 0.5 * start


def test_channels_last_weights_give_the_same_moments_gradient_and_noise(parts):
    """The layout lever changes where numbers sit in memory, not the maths: the VAE posterior, its gradient to the
    image and the UNet's prediction agree with the default layout's (the layout is forced on CPU tensors here)."""
    size = parts.unet.config.sample_size * 2 ** (len(parts.vae.config.block_out_channels) - 1)
    image = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    noisy = torch.randn(2, parts.unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    states = text_states(parts, ["", "a photo of a cat"])

    def evaluate() -> tuple[torch.Tensor, ...]:
        x = image.clone().requires_grad_(True)
        moments = posterior_moments(parts.vae, x, size, torch.float32)
        (grad,) = torch.autograd.grad((moments * moments.detach().sin()).sum(), x)
        with torch.no_grad():
            noise = parts.unet(noisy, torch.tensor([500, 500]), encoder_hidden_states=states).sample
        return moments.detach(), grad, noise

    convolutions = [m.weight for m in [*parts.vae.modules(), *parts.unet.modules()] if isinstance(m, torch.nn.Conv2d)]
    default = evaluate()
    set_memory_layout((parts.vae, parts.unet), torch.device("cuda"), channels_last=True)
    assert all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convolutions
               if w.shape[-1] > 1)
    for got, want in zip(evaluate(), default):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    set_memory_layout((parts.vae, parts.unet), torch.device("cuda"), channels_last=False)
    assert all(w.is_contiguous() for w in convolutions)
    set_memory_layout((parts.vae, parts.unet), CPU, channels_last=True)  # channels-last is for CUDA only
    assert all(w.is_contiguous() for w in convolutions)


def test_only_the_unet_goes_channels_last(parts):
    """The measured rule (README "Performance"): channels-last helps the UNet eager and compiled and slows the VAE
    encoder both ways, so the VAE keeps (or gets back) the default layout (the layout is forced on CPU tensors)."""
    unet_in, vae_in = parts.unet.conv_in.weight.clone(), parts.vae.encoder.conv_in.weight.clone()
    set_memory_layout((parts.vae,), torch.device("cuda"), channels_last=True)  # as a variant before might leave it
    frozen_layouts(parts.vae, parts.unet, torch.device("cuda"), channels_last=True)
    assert parts.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not parts.unet.conv_in.weight.is_contiguous()
    assert parts.vae.encoder.conv_in.weight.is_contiguous()
    frozen_layouts(parts.vae, parts.unet, torch.device("cuda"), channels_last=False)
    assert parts.unet.conv_in.weight.is_contiguous() and parts.vae.encoder.conv_in.weight.is_contiguous()
    assert torch.equal(parts.unet.conv_in.weight, unet_in) and torch.equal(parts.vae.encoder.conv_in.weight, vae_in)


def test_half_precision_math_attention_is_scoped():
    before = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    with pytest.raises(KeyError):
        with half_precision_math_attention():
            assert torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
            raise KeyError("leaves the context")
    assert torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed() == before


# ---------------------------------------------------------------- CUDA, half precision


@pytest.mark.gpu
def test_fp16_sds_on_cuda_matches_fp32_and_passes_through_the_grad_scaler(tiny_sd_dir):
    cuda = torch.device("cuda")
    half = load_stable_diffusion(str(tiny_sd_dir), cuda, fp16=True)
    full = load_stable_diffusion(str(tiny_sd_dir), cuda, fp16=False)
    assert half.dtype == torch.float16 and next(half.unet.parameters()).dtype == torch.float16
    image = torch.rand(1, 3, 12, 12, device=cuda, generator=torch.Generator(cuda).manual_seed(0))

    def image_grad(parts: StableDiffusionParts, scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
        x = image.clone().requires_grad_()
        loss, stats = SDSGuidance(parts, PROMPTS, guidance_scale=7.5)(
            x, 1, generator=torch.Generator(cuda).manual_seed(1))
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        if scaler is None:
            loss.backward()
            return x.grad
        optimizer = torch.optim.SGD([x], lr=0.0)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        return x.grad

    g_full, g_half = image_grad(full), image_grad(half)
    g_scaled = image_grad(half, torch.amp.GradScaler("cuda", init_scale=1024.0))
    assert torch.isfinite(g_half).all() and g_half.abs().sum() > 0
    cosine = F.cosine_similarity(g_half.flatten(), g_full.flatten(), dim=0)
    assert cosine > 0.99, cosine
    # the loss scale multiplies and divides the SDS term like any other loss: no net factor remains
    torch.testing.assert_close(g_scaled, g_half, rtol=1e-2, atol=1e-3 * g_half.abs().max().item())


@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [False, True])
def test_cuda_graph_replay_gives_the_eager_loss_and_image_gradient(tiny_sd_dir, fp16):
    """Replayed graphs run the eager kernels: same losses and image gradients over calls with new t, noise and
    prompt bucket (the first call captures, the later ones replay)."""
    cuda = torch.device("cuda")
    parts = load_stable_diffusion(str(tiny_sd_dir), cuda, fp16=fp16)
    eager = SDSGuidance(parts, PROMPTS, guidance_scale=7.5)
    graphed = SDSGuidance(parts, PROMPTS, guidance_scale=7.5, cuda_graph=True)
    images = torch.rand(4, 1, 3, 12, 12, device=cuda, generator=torch.Generator(cuda).manual_seed(0))

    def call(guidance, x, k):
        return guidance(x, k % len(PROMPTS), generator=torch.Generator(cuda).manual_seed(10 + k))

    assert_replays_match_eager(eager, graphed, call, images, "t")
    assert graphed.predict_noise.graph is not None and graphed.moments.graphed is not None


@pytest.mark.gpu
def test_channels_last_fp16_sds_on_cuda_matches_the_default_layout(tiny_sd_dir):
    """cuDNN's channels-last kernels (the UNet's, eager) against the default layout's, with the VAE's fp16 attention
    products: the same SDS loss and image gradient up to fp16 rounding."""
    cuda = torch.device("cuda")
    parts = load_stable_diffusion(str(tiny_sd_dir), cuda, fp16=True)
    images = torch.rand(1, 3, 12, 12, device=cuda, generator=torch.Generator(cuda).manual_seed(0))

    def loss_and_grad(channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        guidance = SDSGuidance(parts, PROMPTS, guidance_scale=7.5, channels_last=channels_last)
        x = images.clone().requires_grad_(True)
        loss, _ = guidance(x, 1, generator=torch.Generator(cuda).manual_seed(1))
        loss.backward()
        return loss.detach(), x.grad

    default, channels_last = loss_and_grad(False), loss_and_grad(True)
    assert parts.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert parts.vae.encoder.conv_in.weight.is_contiguous()  # an eager VAE encoder keeps the default layout
    torch.testing.assert_close(channels_last[0], default[0], rtol=2e-2, atol=1e-4)
    cosine = F.cosine_similarity(channels_last[1].flatten(), default[1].flatten(), dim=0)
    assert cosine > 0.999, cosine


@pytest.mark.gpu
def test_cuda_graph_capture_failure_falls_back_to_eager_with_a_warning(tiny_sd_dir, monkeypatch, caplog):
    cuda = torch.device("cuda")
    parts = load_stable_diffusion(str(tiny_sd_dir), cuda, fp16=True)

    def refuse(*args, **kwargs):
        raise RuntimeError("capture refused for the test")

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", refuse)
    monkeypatch.setattr(torch.cuda, "graph", refuse)
    guidance = SDSGuidance(parts, PROMPTS, cuda_graph=True)
    x = torch.rand(1, 3, 12, 12, device=cuda, requires_grad=True)
    with caplog.at_level("WARNING", logger="realfusion"):
        loss, _ = guidance(x, 0, generator=torch.Generator(cuda).manual_seed(0))
        loss.backward()
    assert torch.isfinite(loss) and x.grad.abs().sum() > 0
    assert sum("CUDA graph capture" in r.message for r in caplog.records) == 2  # VAE encoder and UNet, once each
    assert guidance.moments.failed and guidance.predict_noise.failed


@pytest.mark.gpu
@pytest.mark.parametrize("differentiable", [False, True])
def test_a_capture_broken_by_a_forbidden_cuda_call_leaves_the_process_usable(differentiable, caplog):
    """A synchronisation inside a capture invalidates it at the CUDA level (unlike an error raised before any CUDA
    call): the wrapper runs eagerly, and the caller's stream, random draws and later captures still work."""
    cuda = torch.device("cuda")

    def syncing(x):
        torch.cuda.synchronize()
        return x * 2

    wrapper = (GraphedDifferentiable if differentiable else GraphedInference)(syncing, "syncing call")
    x = torch.rand(4, device=cuda, requires_grad=differentiable)
    stream = torch.cuda.current_stream()
    with caplog.at_level("WARNING", logger="realfusion"):
        y = wrapper(x)
    assert wrapper.failed and "CUDA graph capture of the syncing call failed" in caplog.text
    torch.testing.assert_close(y, x * 2)
    assert torch.cuda.current_stream() == stream
    assert torch.randn(1000, device=cuda).std() > 0.5  # the default generator is out of capture mode
    noisy = GraphedInference(lambda z: z + torch.randn_like(z), "random call")
    first, second = noisy(torch.zeros(1000, device=cuda)).clone(), noisy(torch.zeros(1000, device=cuda))
    assert not noisy.failed and noisy.graph is not None and not torch.equal(first, second)


# ---------------------------------------------------------------- the prior by name: registry and builders


def test_import_of_the_package_does_not_import_diffusers():
    code = "import sys, nerf.guidance; assert 'diffusers' not in sys.modules, 'diffusers imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def context(image_path: str, fp16: bool = False) -> PriorContext:
    """A run's context for priors that read neither the input's pixels nor its camera."""
    view = RealView(torch.zeros(8, 8, 4), fixed_cameras(60.0, torch.zeros(1), 1.4, 50.0, 8))
    return PriorContext(view, device=CPU, fp16=fp16, image_path=image_path)


def test_every_registered_builder_resolves():
    assert set(GUIDANCES) == {"sd", "oracle", "zero123", "sd+zero123"}
    for target in GUIDANCES.values():
        module, name = target.split(":")
        assert callable(getattr(importlib.import_module(module), name))


def test_unknown_guidance_is_a_one_line_user_error():
    with pytest.raises(UserError) as excinfo:
        build_guidance(PriorOptions(guidance="nope"), context("x.png"))
    message = one_line_error(excinfo)
    assert "nope" in message and all(name in message for name in GUIDANCES)


def call_parameters(guidance: object) -> list[tuple[str, object]]:
    return [(p.name, p.kind) for p in inspect.signature(guidance).parameters.values()]


def assert_guidance_protocol(guidance: object) -> None:
    """Image and direction first, the camera by keyword, and no weight: the objective applies lambda_prior."""
    assert isinstance(guidance, Guidance)
    params = call_parameters(guidance)
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert params[:2] == [("image", positional), ("direction", positional)]
    assert ("camera", inspect.Parameter.KEYWORD_ONLY) in params
    assert "weight" not in dict(params)


def test_oracle_by_name_gives_the_unweighted_image_gradient():
    prior = PriorOptions(guidance="oracle", guidance_scene="union:3", oracle_strength=4.0)
    guidance = build_guidance(prior, context("unused.png"))
    assert_guidance_protocol(guidance)
    camera = fixed_cameras(60.0, torch.tensor([45.0]), 1.4, 50.0, 12)
    image = torch.rand(1, 3, 12, 12, requires_grad=True)
    loss, stats = guidance(image, 1, camera=camera)
    loss.backward()
    rgba = render_rgba(make_scene("union", 3), camera, 2)[0]  # the oracle's supersampling: 2
    target = (rgba[..., :3] * rgba[..., 3:] + 1 - rgba[..., 3:]).permute(2, 0, 1)[None]  # over white
    assert (target < 0.99).any()  # the object is in view
    torch.testing.assert_close(image.grad, 4.0 * (image.detach() - target) / (12 * 12))
    assert all(isinstance(v, torch.Tensor) for v in stats.values())


def test_oracle_scene_from_a_folder_or_its_json(tmp_path):
    scene = make_scene("thin", 1)
    conventions = {"pose_angle": 75.0, "radius": 1.8, "fovy": 55.0}
    (tmp_path / "scene.json").write_text(json.dumps({**scene.to_dict(), "conventions": conventions}))
    for spec in (str(tmp_path), str(tmp_path / "scene.json")):
        guidance = build_guidance(PriorOptions(guidance="oracle", guidance_scene=spec), context("unused.png"))
        assert guidance.scene.to_dict() == scene.to_dict()
    default_seed = build_guidance(PriorOptions(guidance="oracle", guidance_scene="thin", oracle_strength=2.5),
                                  context("unused.png"))
    assert default_seed.scene.to_dict() == make_scene("thin", 0).to_dict() and default_seed.strength == 2.5


@pytest.mark.parametrize("spec", [None, "", "sphere", "union:x", "union:-1", "no/such/folder", "EMPTY_FOLDER"])
def test_bad_guidance_scene_is_a_one_line_user_error(tmp_path, spec):
    spec = str(tmp_path) if spec == "EMPTY_FOLDER" else spec
    with pytest.raises(UserError) as excinfo:
        build_guidance(PriorOptions(guidance="oracle", guidance_scene=spec), context("unused.png"))
    message = one_line_error(excinfo)
    assert "--guidance_scene" in message and "FAMILY[:SEED]" in message and "make-synthetic-scene.py" in message


def test_sd_by_name_with_a_learned_token(tiny_sd_dir, tmp_path, caplog):
    parts = load_stable_diffusion(str(tiny_sd_dir), CPU, fp16=False)
    vector = torch.randn(parts.text_encoder.config.hidden_size)
    torch.save({"_obj_": vector}, tmp_path / "learned_embeds.bin")
    prior = PriorOptions(text="a photo of a <token>", negative="blurry <token>", learned_embeds_path=str(tmp_path),
                         pretrained_model_name_or_path=str(tiny_sd_dir), guidance_scale=12.0, dir_text=True,
                         suppress_face="face", cuda_graph=False)
    with caplog.at_level("INFO", logger="realfusion"):
        guidance = build_guidance(prior, context(str(tmp_path / "rgba.png"), fp16=True))
    assert_guidance_protocol(guidance)
    assert isinstance(guidance, SDSGuidance) and guidance.guidance_scale == 12.0
    assert (guidance.prompt, guidance.negative_prompt) == ("a photo of a _obj_", "blurry _obj_")
    assert any("a photo of a _obj_" in r.message and "blurry _obj_" in r.message for r in caplog.records)
    assert guidance.parts.dtype == torch.float32  # fp16 applies on CUDA only
    # the direction prompts, with the learned row in the text encoder
    add_learned_token(parts, "_obj_", vector)
    pairs = direction_prompts("a photo of a _obj_", "blurry _obj_", True, "face")
    assert len(pairs) == guidance.text_embeddings.shape[0] > 1
    for k, (positive, negative) in enumerate(pairs):
        torch.testing.assert_close(guidance.text_embeddings[k], text_states(parts, [negative, positive]))
    image = torch.rand(1, 3, 16, 16, requires_grad=True)
    loss, stats = guidance(image, 2, camera=None, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
    assert set(stats) == {"sds_grad_norm", "t"}


def test_a_learned_token_the_prompt_never_uses_is_warned_about(tmp_path, caplog):
    torch.save({"_thing_": torch.zeros(8)}, tmp_path / "learned_embeds.bin")
    prior = PriorOptions(text="a photo of a cat", negative="", dir_text=False,
                         learned_embeds_path=str(tmp_path / "learned_embeds.bin"))
    with caplog.at_level("WARNING", logger="realfusion"):
        prompts = resolve_prompts(prior, str(tmp_path / "rgba.png"))
    assert prompts.text == "a photo of a cat"
    assert any("learned token is not used" in r.getMessage() and "<token>" in r.getMessage() for r in caplog.records)


def test_sd_prompts_without_the_placeholder_need_no_token(tmp_path):
    prior = PriorOptions(text="a photo of a cat", negative="", dir_text=False)
    prompts = resolve_prompts(prior, str(tmp_path / "rgba.png"))
    assert (prompts.text, prompts.pairs, prompts.token, prompts.vector) == (
        "a photo of a cat", [("a photo of a cat", "")], None, None)


def test_token_from_autoinit_with_a_notice_else_a_user_error(tmp_path, caplog):
    prior = PriorOptions(text="a photo of a <token>", negative="", dir_text=False)
    image_path = str(tmp_path / "rgba.png")
    with pytest.raises(UserError) as excinfo:
        resolve_prompts(prior, image_path)
    message = one_line_error(excinfo)
    assert "--learned_embeds_path" in message and "token_autoinit.txt" in message
    (tmp_path / "token_autoinit.txt").write_text("teapot ceramic\n")
    with caplog.at_level("INFO", logger="realfusion"):
        assert resolve_token(prior, image_path) == ("teapot", None)
        prompts = resolve_prompts(prior, image_path)
    assert prompts.pairs == [("a photo of a teapot", "")] and prompts.vector is None
    assert any("teapot" in r.message and "token_autoinit.txt" in r.message for r in caplog.records)


def with_prediction_type(tiny_sd_dir: Path, folder: Path, prediction: str) -> Path:
    """A copy of the tiny model whose scheduler declares another prediction type (same weights)."""
    shutil.copytree(tiny_sd_dir, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "prediction_type": prediction}))
    return folder


def test_v_prediction_models_are_converted_to_noise(tiny_sd_dir, tmp_path):
    parts = load_stable_diffusion(str(with_prediction_type(tiny_sd_dir, tmp_path / "v", "v_prediction")), CPU,
                                  fp16=False)
    guidance = SDSGuidance(parts, PROMPTS, guidance_scale=20.0)
    torch.manual_seed(0)
    latents, noise, t, direction = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), 600, 1
    grad, _ = guidance.sds_gradient(latents, direction, t=t, noise=noise)
    abar = parts.scheduler.alphas_cumprod[t]
    noisy = abar.sqrt() * latents + (1 - abar).sqrt() * noise
    emb = text_states(parts, [PROMPTS[direction][1], PROMPTS[direction][0]])
    with torch.no_grad():
        v_u, v_c = parts.unet(torch.cat([noisy, noisy]), torch.tensor([t, t]), encoder_hidden_states=emb).sample
    v_hat = v_u + 20.0 * (v_c - v_u)
    eps_hat = abar.sqrt() * v_hat + (1 - abar).sqrt() * noisy[0]  # v = sqrt(abar) eps - sqrt(1 - abar) z_0
    assert torch.allclose(grad[0], (1 - abar) * (eps_hat - noise[0]), atol=1e-5)
    epsilon = SDSGuidance(load_stable_diffusion(str(tiny_sd_dir), CPU, fp16=False), PROMPTS, guidance_scale=20.0)
    assert not torch.allclose(epsilon.sds_gradient(latents, direction, t=t, noise=noise)[0], grad, atol=1e-3)


def test_a_prediction_type_sds_cannot_use_is_refused_at_load(tiny_sd_dir, tmp_path):
    with pytest.raises(UserError) as exc:
        load_stable_diffusion(str(with_prediction_type(tiny_sd_dir, tmp_path / "s", "sample")), CPU, fp16=False)
    assert "'sample'" in str(exc.value) and "v_prediction" in str(exc.value) and "\n" not in str(exc.value)


def test_t_range_sets_the_drawn_timesteps_as_zero123_does(parts):
    """--t_range is a fraction of the schedule's steps: the default is the original's 20..980 of 1000."""
    assert (SDSGuidance(parts, PROMPTS[:1]).min_step, SDSGuidance(parts, PROMPTS[:1]).max_step) == (20, 980)
    narrow = SDSGuidance(parts, PROMPTS[:1], t_range=(0.2, 0.6))
    assert (narrow.min_step, narrow.max_step) == (200, 600)
    assert (SDSGuidance(parts, PROMPTS[:1], t_range=(0.0, 1.0)).max_step) == len(narrow.alphas_cumprod) - 1
