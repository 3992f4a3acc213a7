"""Textual inversion and autoinit on tiny random models (CPU)."""

from __future__ import annotations

import json
import subprocess
import re
import sys
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from nerf.guidance.stable_diffusion import load_learned_embeds, load_stable_diffusion
from nerf.textual_inversion import autoinit
from nerf.textual_inversion import dataset as ti_dataset
from nerf.textual_inversion.args import parse_args
from nerf.textual_inversion.loop import loader_workers
from nerf.textual_inversion.model import FrozenNetworks, TokenVector, add_placeholder
from nerf.textual_inversion.state import save_pipeline
from nerf.textual_inversion.step import FUSED_SAMPLES, denoising_loss, fuse
from nerf.textual_inversion.train import main as ti_main

CPU = torch.device("cpu")
TI_DIR = Path(__file__).resolve().parents[1] / "textual-inversion"


def eager(parts) -> "FrozenNetworks":
    return FrozenNetworks(parts.vae, parts.unet, torch.float32, nullcontext, graphs=False)


def write_rgba(path: Path, size: tuple[int, int] = (24, 20), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    pixels[..., 3] = rng.choice([0, 128, 255], size=(size[1], size[0])).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGBA").save(path)
    return pixels


def ti_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--pretrained_model_name_or_path", str(model), "--train_data_dir", str(data),
            "--placeholder_token", "_obj_", "--initializer_token", "cat", "--output_dir", str(out),
            "--resolution", "16", "--train_batch_size", "2", "--learning_rate", "5e-2", "--seed", "0",
            "--lr_warmup_steps", "0", "--preset", "diffusers", *extra]  # the example's mechanics, made small


@pytest.fixture(scope="module")
def trained(tiny_sd_dir, tmp_path_factory) -> Path:
    """A short run with augmentations, checkpoints and the full pipeline saved."""
    root = tmp_path_factory.mktemp("ti")
    write_rgba(root / "data" / "rgba.png")
    (root / "data" / "notes.txt").write_text("not an image")
    (root / "data" / "learned_embeds.bin").write_bytes(b"not an image either")
    code = ti_main(ti_args(tiny_sd_dir, root / "data", root / "out", "--max_train_steps", "4", "--save_steps", "2",
                           "--checkpointing_steps", "2", "--checkpoints_total_limit", "1", "--use_augmentations",
                           "--gradient_accumulation_steps", "2"))
    assert code == 0
    return root / "out"


# ---------------------------------------------------------------- training


def test_only_the_new_row_changes(trained, tiny_sd_dir):
    base = load_stable_diffusion(str(tiny_sd_dir), CPU, fp16=False)
    after = load_stable_diffusion(str(trained), CPU, fp16=False)
    token, vector = load_learned_embeds(str(trained / "learned_embeds.bin"))
    assert token == "_obj_"
    new_id = after.tokenizer.convert_tokens_to_ids("_obj_")
    assert new_id == len(base.tokenizer) and len(after.tokenizer) == len(base.tokenizer) + 1

    table, old_table = after.text_encoder.get_input_embeddings().weight, base.text_encoder.get_input_embeddings().weight
    assert torch.equal(table[:new_id], old_table)
    assert torch.equal(table[new_id], vector)
    cat_row = old_table[base.tokenizer.convert_tokens_to_ids("cat</w>")]
    assert not torch.allclose(vector, cat_row)  # it learned something from its initializer
    for name in ("unet", "vae"):
        new, old = getattr(after, name).state_dict(), getattr(base, name).state_dict()
        assert all(torch.equal(new[k], old[k]) for k in old), name
    old_te = {k: v for k, v in base.text_encoder.state_dict().items() if "token_embedding" not in k}
    new_te = after.text_encoder.state_dict()
    assert all(torch.equal(new_te[k], v) for k, v in old_te.items())


def test_outputs_and_checkpoint_limit(trained):
    names = {p.name for p in trained.iterdir()}
    assert {"learned_embeds-steps-2.bin", "learned_embeds-steps-4.bin", "learned_embeds.bin",
            "learned_embeds.safetensors", "model_index.json", "logs"} <= names
    assert [p.name for p in trained.glob("checkpoint-*")] == ["checkpoint-4"]
    assert not [p for p in trained.iterdir() if p.name.startswith(".")]  # no staging leftovers
    _, final = load_learned_embeds(str(trained / "learned_embeds.bin"))
    _, last = load_learned_embeds(str(trained / "learned_embeds-steps-4.bin"))
    assert torch.equal(final, last)


def test_saved_embedding_round_trips(trained, tiny_sd_dir):
    token, vector = load_learned_embeds(str(trained / "learned_embeds.bin"))
    assert load_learned_embeds(str(trained))[0] == token  # folder: the .safetensors file
    torch.testing.assert_close(load_learned_embeds(str(trained / "learned_embeds.safetensors"))[1], vector)

    from diffusers import StableDiffusionPipeline

    for name in ("learned_embeds.safetensors", "learned_embeds.bin"):
        pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd_dir), safety_checker=None)
        pipe.load_textual_inversion(str(trained / name))
        new_id = pipe.tokenizer.convert_tokens_to_ids(token)
        torch.testing.assert_close(pipe.text_encoder.get_input_embeddings().weight[new_id], vector)


def test_single_vector_follows_the_full_table_adamw_trajectory(tiny_sd_dir):
    """Ours: AdamW on one vector. Original: AdamW on the whole table, other rows restored after each step."""
    from diffusers import DDPMScheduler

    def setup():
        parts = load_stable_diffusion(str(tiny_sd_dir), CPU, fp16=False)
        token_id, initial = add_placeholder(parts, "_obj_", "cat")
        scheduler = DDPMScheduler.from_config(parts.scheduler.config)
        ids = parts.tokenizer(["a photo of a _obj_", "a rendering of a _obj_"], padding="max_length",
                              max_length=77, return_tensors="pt").input_ids
        return parts, token_id, initial, scheduler, ids

    hyper = dict(lr=0.05, betas=(0.9, 0.999), weight_decay=0.1, eps=1e-8)
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1

    parts, token_id, initial, scheduler, ids = setup()
    row = TokenVector(parts.text_encoder.get_input_embeddings(), token_id, initial)
    optimizer = torch.optim.AdamW([row.vector], **hyper)
    for k in range(3):
        torch.manual_seed(k)
        denoising_loss(parts, eager(parts), scheduler, [{"pixel_values": pixels, "input_ids": ids}], 1,
                          nullcontext).backward()
        optimizer.step()
        optimizer.zero_grad()

    parts, token_id, _, scheduler, ids = setup()
    table = parts.text_encoder.get_input_embeddings().weight
    table.requires_grad_(True)
    original = table.detach().clone()
    keep = torch.arange(len(table)) != token_id
    optimizer = torch.optim.AdamW([table], **hyper)
    for k in range(3):
        torch.manual_seed(k)
        denoising_loss(parts, eager(parts), scheduler, [{"pixel_values": pixels, "input_ids": ids}], 1,
                          nullcontext).backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            table[keep] = original[keep]

    assert not torch.allclose(row.vector, initial)
    torch.testing.assert_close(row.vector, table[token_id].detach(), rtol=1e-5, atol=1e-6)


def test_resume_continues_from_the_latest_checkpoint(tiny_sd_dir, tmp_path, capsys):
    write_rgba(tmp_path / "data" / "rgba.png")
    args = ti_args(tiny_sd_dir, tmp_path / "data", tmp_path / "out", "--only_save_embeds", "--checkpointing_steps",
                   "2", "--save_steps", "100")
    assert ti_main(args + ["--max_train_steps", "2"]) == 0
    checkpoint = torch.load(tmp_path / "out" / "checkpoint-2" / "state.pt", weights_only=True)
    capsys.readouterr()
    assert ti_main(args + ["--max_train_steps", "2"]) == 0  # nothing left to do: the checkpoint's vector
    assert "resuming from" in capsys.readouterr().out
    assert torch.equal(load_learned_embeds(str(tmp_path / "out" / "learned_embeds.bin"))[1], checkpoint["vector"])
    assert ti_main(args + ["--max_train_steps", "4"]) == 0
    assert (tmp_path / "out" / "checkpoint-4" / "state.pt").is_file()
    assert not torch.equal(load_learned_embeds(str(tmp_path / "out" / "learned_embeds.bin"))[1], checkpoint["vector"])


@pytest.mark.parametrize("loader", [[], ["--dataloader_num_workers", "2", "--gradient_accumulation_steps", "2",
                                     "--repeats", "5"]], ids=["in-process", "workers-accumulation-short-epochs"])
def test_a_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tiny_sd_dir, tmp_path, loader):
    """Stopped after 2 of 4 steps (mid-epoch; with 5 items in batches of 2 the epochs end on a short batch) and
    resumed, the token is exactly that of a run that was never stopped: same items, augmentations, noise."""
    write_rgba(tmp_path / "data" / "rgba.png")
    extra = ["--only_save_embeds", "--checkpointing_steps", "2", "--save_steps", "100", "--use_augmentations", *loader]
    straight = ti_args(tiny_sd_dir, tmp_path / "data", tmp_path / "straight", *extra)
    resumed = ti_args(tiny_sd_dir, tmp_path / "data", tmp_path / "resumed", *extra)
    assert ti_main(straight + ["--max_train_steps", "4"]) == 0
    assert ti_main(resumed + ["--max_train_steps", "2"]) == 0
    assert ti_main(resumed + ["--max_train_steps", "4"]) == 0
    first = load_learned_embeds(str(tmp_path / "straight" / "learned_embeds.bin"))[1]
    second = load_learned_embeds(str(tmp_path / "resumed" / "learned_embeds.bin"))[1]
    halfway = torch.load(tmp_path / "resumed" / "checkpoint-2" / "state.pt", weights_only=True)["vector"]
    assert not torch.equal(first, halfway)  # the second half of the resumed run did train
    assert torch.equal(first, second)


def test_every_step_is_logged(trained):
    """Losses are read from the device in blocks; every step still reaches tensorboard with its number."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained / "logs"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]
    assert all(np.isfinite(e.value) and e.value > 0 for e in events.Scalars("loss"))
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([5e-2] * 4)


# ---------------------------------------------------------------- speed: same maths, fewer passes


def micro_batches(tokenizer, sizes: list[int], resolution: int = 16, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    captions = ["a photo of a _obj_", "a rendering of a _obj_", "the photo of a _obj_", "a photo of my _obj_"]
    return [{"pixel_values": torch.rand(n, 3, resolution, resolution, generator=generator) * 2 - 1,
             "input_ids": tokenizer([captions[(k + i) % 4] for i in range(n)], padding="max_length", max_length=77,
                                    return_tensors="pt").input_ids} for k, n in enumerate(sizes)]


def original_accumulation(parts, scheduler, batches: list[dict[str, torch.Tensor]]) -> None:
    """The original loop, one micro-batch at a time, each loss divided by the accumulation count.

    The noise is drawn for the latents' shape: randn_like would follow the memory layout of the CPU
    convolution's output (channels-last for some batch sizes) and put the numbers in other places.
    """
    for batch in batches:
        with torch.no_grad():
            latents = parts.vae.encode(batch["pixel_values"]).latent_dist.sample() * parts.vae.config.scaling_factor
        noise = torch.randn(latents.shape)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),))
        predicted = parts.unet(scheduler.add_noise(latents, noise, t), t, parts.text_encoder(batch["input_ids"])[0]).sample
        target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
        (F.mse_loss(predicted, target) / len(batches)).backward()


@pytest.mark.parametrize(("sizes", "prediction"), [([1, 1, 1, 1], "epsilon"), ([2, 1, 2], "v_prediction")])
def test_fused_micro_batches_give_the_accumulated_update(tiny_sd_dir, sizes, prediction):
    from diffusers import DDPMScheduler

    updates, gradients = [], []
    for fused in (False, True):
        parts = load_stable_diffusion(str(tiny_sd_dir), CPU, fp16=False)
        token_id, initial = add_placeholder(parts, "_obj_", "cat")
        row = TokenVector(parts.text_encoder.get_input_embeddings(), token_id, initial)
        optimizer = torch.optim.AdamW([row.vector], lr=0.05, weight_decay=0.1)
        scheduler = DDPMScheduler.from_config(parts.scheduler.config, prediction_type=prediction)
        batches = micro_batches(parts.tokenizer, sizes)
        torch.manual_seed(3)
        if fused:
            groups = fuse(batches, FUSED_SAMPLES)
            assert len(groups) < len(batches)
            for group in groups:
                denoising_loss(parts, eager(parts), scheduler, group, len(batches), nullcontext).backward()
        else:
            original_accumulation(parts, scheduler, batches)
        gradients.append(row.vector.grad.clone())
        optimizer.step()
        updates.append(row.vector.detach() - initial)
    assert gradients[0].abs().max() > 0
    torch.testing.assert_close(gradients[1], gradients[0], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(updates[1], updates[0], rtol=1e-4, atol=1e-7)


def test_fuse_groups_consecutive_micro_batches_up_to_the_limit():
    def sizes(groups):
        return [[len(b["input_ids"]) for b in group] for group in groups]

    def batches(*ns):
        return [{"input_ids": torch.zeros(n, 77, dtype=torch.long)} for n in ns]

    assert sizes(fuse(batches(1, 1, 1, 1), 4)) == [[1, 1, 1, 1]]
    assert sizes(fuse(batches(1, 1, 1, 1, 1), 4)) == [[1, 1, 1, 1], [1]]
    assert sizes(fuse(batches(2, 1, 2), 4)) == [[2, 1], [2]]
    assert sizes(fuse(batches(16, 16), 4)) == [[16], [16]]
    assert sizes(fuse(batches(2, 2), 1)) == [[2], [2]]


def test_unet_graph_captures_one_shape_and_falls_back(tiny_sd_dir, monkeypatch, capsys):
    """Which UNet calls replay the graph (the first shape only), and the eager fallback when capture fails."""
    parts = load_stable_diffusion(str(tiny_sd_dir), CPU, fp16=False)
    replays = []

    def fake_capture(fn, args):
        shapes = tuple(a.shape for a in args)
        return lambda *inputs: replays.append(shapes) or fn(*inputs)

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", fake_capture)
    nets = FrozenNetworks(parts.vae, parts.unet, torch.float32, nullcontext, graphs=True)
    two = (torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 77, 32))
    one = (torch.randn(1, 4, 8, 8), torch.tensor([700]), torch.randn(1, 77, 32))
    for args in (two, one, two):
        torch.testing.assert_close(nets.denoise(*args), eager(parts).denoise(*args))
    assert replays == [tuple(a.shape for a in two)] * 2
    pixels = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(nets.encode(pixels), eager(parts).encode(pixels))  # CPU tensors: eager

    def broken(fn, args):
        raise RuntimeError("capture failed\ndetails")

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", broken)
    nets = FrozenNetworks(parts.vae, parts.unet, torch.float32, nullcontext, graphs=True)
    capsys.readouterr()
    torch.testing.assert_close(nets.denoise(*two), eager(parts).denoise(*two))
    assert capsys.readouterr().out == ("note: CUDA graph capture of the UNet failed (capture failed); running it "
                                       "eagerly (slower). --no_cuda_graph skips the attempt.\n")
    assert not nets.graphs
    nets.denoise(*two)  # no second attempt, no second notice
    assert capsys.readouterr().out == ""


def test_pipeline_saves_from_a_channels_last_unet(tiny_sd_dir, tmp_path):
    parts = load_stable_diffusion(str(tiny_sd_dir), CPU, fp16=False)
    parts.unet.to(memory_format=torch.channels_last)
    save_pipeline(parts, tmp_path)
    saved, original = load_stable_diffusion(str(tmp_path), CPU, fp16=False).unet.state_dict(), parts.unet.state_dict()
    assert saved.keys() == original.keys() and all(torch.equal(saved[k], original[k]) for k in original)


def test_loader_workers(tiny_sd_dir, tmp_path):
    argv = ti_args(tiny_sd_dir, tmp_path, tmp_path / "out")
    default = parse_args(argv).dataloader_num_workers
    assert loader_workers(default, CPU) == 0
    assert loader_workers(parse_args(argv + ["--dataloader_num_workers", "3"]).dataloader_num_workers, CPU) == 3
    assert 1 <= loader_workers(default, torch.device("cuda")) <= 6


# ---------------------------------------------------------------- data


def test_rgba_is_composited_on_white(tmp_path):
    pixels = write_rgba(tmp_path / "x.png")
    rgb = np.asarray(ti_dataset.load_rgb(tmp_path / "x.png")).astype(np.float64)
    alpha = pixels[..., 3:].astype(np.float64) / 255
    expected = pixels[..., :3] * alpha + 255 * (1 - alpha)
    assert np.abs(rgb - expected).max() <= 1.0
    assert (rgb[pixels[..., 3] == 0] == 255).all()
    assert (rgb[pixels[..., 3] == 255] == pixels[pixels[..., 3] == 255][:, :3]).all()


def test_dataset_reads_image_files_only(tmp_path, tiny_sd_dir):
    write_rgba(tmp_path / "b.png", seed=1)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a.jpg")
    (tmp_path / "learned_embeds.bin").write_bytes(b"\x00")
    (tmp_path / "readme.txt").write_text("x")
    assert [p.name for p in ti_dataset.list_images(tmp_path)] == ["a.jpg", "b.png"]
    parts = load_stable_diffusion(str(tiny_sd_dir), CPU, fp16=False)
    dataset = ti_dataset.TextualInversionDataset(ti_dataset.load_images(tmp_path), parts.tokenizer, "_obj_",
                                                 size=16, repeats=3)
    assert len(dataset) == 6
    item = dataset[0]
    assert item["input_ids"].shape == (77,)
    captions = [t.format("_obj_") for t in ti_dataset.OBJECT_TEMPLATES]
    encoded = parts.tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert (encoded == item["input_ids"]).all(dim=1).any()


@pytest.mark.parametrize("range_01", [False, True])
def test_augmentation_keeps_size_and_range_and_is_seeded(tmp_path, tiny_sd_dir, range_01):
    write_rgba(tmp_path / "rgba.png", size=(40, 30))
    tokenizer = load_stable_diffusion(str(tiny_sd_dir), CPU, fp16=False).tokenizer
    dataset = ti_dataset.TextualInversionDataset(ti_dataset.load_images(tmp_path), tokenizer, "_obj_", size=32,
                                                 repeats=8, use_augmentations=True, augment_range_01=range_01)

    def draw(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return torch.stack([dataset[i]["pixel_values"] for i in range(8)])

    first, again, other = draw(0), draw(0), draw(1)
    assert first.shape == (8, 3, 32, 32) and first.dtype == torch.float32
    low = 0.0 if range_01 else -1.0
    assert first.min() >= low and first.max() <= 1.0
    assert first.min() < low + 0.5 and first.max() > 0.5  # the whole range is used, not squeezed
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert len({tuple(x.flatten()[:64].tolist()) for x in first}) > 1  # items differ from each other


def spec_pipeline(size: int, heavy: bool) -> T.Compose:
    """The augmentation exactly as the spec lists it, applied to the photo each time."""
    if not heavy:
        return T.Compose([T.Resize((size, size), interpolation=InterpolationMode.BICUBIC), T.RandomHorizontalFlip()])
    big = int(1.25 * size)
    return T.Compose([
        T.Resize(big), T.CenterCrop(big),
        T.RandomApply([T.RandomRotation(10, interpolation=InterpolationMode.NEAREST, fill=255),
                       T.CenterCrop(int(size * 5 / 6)), T.Resize(size)], p=0.75),
        T.RandomResizedCrop(size, scale=(0.85, 1.15)),
        T.RandomApply([T.ColorJitter(0.04, 0.04, 0.04, 0.04)], p=0.75),
        T.RandomGrayscale(p=0.1),
        T.RandomApply([T.GaussianBlur(5, (0.1, 2))], p=0.1),
        T.RandomHorizontalFlip(),
    ])


@pytest.mark.parametrize(("heavy", "range_01"), [(True, False), (True, True), (False, False)])
def test_dataset_items_equal_the_per_item_pipeline(tmp_path, tiny_sd_dir, heavy, range_01):
    """Framing once per image, captions tokenised once and the NumPy conversion change no value."""
    write_rgba(tmp_path / "rgba.png", size=(48, 40))
    images = ti_dataset.load_images(tmp_path)
    tokenizer = load_stable_diffusion(str(tiny_sd_dir), CPU, fp16=False).tokenizer
    dataset = ti_dataset.TextualInversionDataset(images, tokenizer, "_obj_", size=32, repeats=12,
                                                 use_augmentations=heavy, augment_range_01=range_01)
    pipeline = spec_pipeline(32, heavy)
    for seed in range(12):
        torch.manual_seed(seed)
        pixels = T.functional.to_tensor(pipeline(images[0]))
        caption = ti_dataset.OBJECT_TEMPLATES[int(torch.randint(27, ()))].format("_obj_")
        torch.manual_seed(seed)
        item = dataset[seed]
        assert torch.equal(item["pixel_values"], pixels if range_01 else pixels * 2 - 1)
        assert torch.equal(item["input_ids"], tokenizer(caption, padding="max_length", max_length=77,
                                                        return_tensors="pt").input_ids[0])


def test_templates():
    assert len(ti_dataset.OBJECT_TEMPLATES) == 27 and len(ti_dataset.STYLE_TEMPLATES) == 19
    assert all(t.count("{}") == 1 for t in ti_dataset.OBJECT_TEMPLATES + ti_dataset.STYLE_TEMPLATES)


def test_reconstruction_captions_are_the_prompt_main_py_gives_the_input_view(tmp_path, tiny_sd_dir):
    """--learnable_property reconstruction: the token is learned in the caption that score distillation later uses
    at the input (front) view, with main.py's default prompt and a learned token."""
    from nerf.cameras import FRONT
    from nerf.guidance.stable_diffusion import resolve_prompts
    from nerf.options import PriorOptions

    torch.save({"_obj_": torch.zeros(8)}, tmp_path / "learned_embeds.bin")
    prompts = resolve_prompts(PriorOptions(learned_embeds_path=str(tmp_path / "learned_embeds.bin")),
                              str(tmp_path / "rgba.png"))
    assert [t.format("_obj_") for t in ti_dataset.TEMPLATES["reconstruction"]] == [prompts.pairs[FRONT][0]]
    parts = load_stable_diffusion(str(tiny_sd_dir), CPU, fp16=False)
    write_rgba(tmp_path / "data" / "rgba.png", seed=1)
    dataset = ti_dataset.TextualInversionDataset(ti_dataset.load_images(tmp_path / "data"), parts.tokenizer, "_obj_",
                                                 size=16, repeats=3, learnable_property="reconstruction")
    expected = parts.tokenizer(prompts.pairs[FRONT][0], padding="max_length", max_length=77,
                               return_tensors="pt").input_ids[0]
    assert all(torch.equal(dataset[i]["input_ids"], expected) for i in range(len(dataset)))
    assert parse_args(["--train_data_dir", "d", "--placeholder_token", "_o_", "--initializer_token", "mug",
                       "--learnable_property", "reconstruction"]).learnable_property == "reconstruction"


# ---------------------------------------------------------------- bad inputs


def one_error_line(stderr: str) -> str:
    """The message: exactly one 'error:' line, printed last (progress bars may precede it)."""
    lines = stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:]
    return lines[-1]


def run_error(capsys, argv: list[str]) -> str:
    assert ti_main(argv) == 2
    return one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("initializer", ["high-resolution", "zebra", ""])
def test_initializer_must_be_one_token(tiny_sd_dir, tmp_path, capsys, initializer):
    write_rgba(tmp_path / "data" / "rgba.png")
    argv = ti_args(tiny_sd_dir, tmp_path / "data", tmp_path / "out")
    argv[argv.index("cat")] = initializer
    assert "--initializer_token" in run_error(capsys, argv)


def test_placeholder_already_in_vocabulary(trained, tmp_path, capsys):
    write_rgba(tmp_path / "data" / "rgba.png")
    message = run_error(capsys, ti_args(trained, tmp_path / "data", tmp_path / "out"))  # trained model knows _obj_
    assert "_obj_" in message and "vocabulary" in message


@pytest.mark.parametrize("case", ["missing", "empty", "no_images", "corrupt"])
def test_bad_data_folders(tiny_sd_dir, tmp_path, capsys, case):
    data = tmp_path / "data"
    if case != "missing":
        data.mkdir()
    if case == "no_images":
        (data / "learned_embeds.bin").write_bytes(b"\x00")
    if case == "corrupt":
        (data / "rgba.png").write_bytes(b"\x89PNG not really")
    assert "--train_data_dir" in run_error(capsys, ti_args(tiny_sd_dir, data, tmp_path / "out"))


@pytest.mark.parametrize("case", ["a file", "another token's result"])
def test_output_folder_that_would_be_damaged_is_refused(tiny_sd_dir, tmp_path, capsys, case):
    write_rgba(tmp_path / "data" / "rgba.png")
    out = tmp_path / "out"
    if case == "a file":
        out.write_text("keep")
    else:
        out.mkdir()
        torch.save({"_other_": torch.ones(8)}, out / "learned_embeds.bin")
    before = out.read_bytes() if out.is_file() else (out / "learned_embeds.bin").read_bytes()
    assert "--output_dir" in run_error(capsys, ti_args(tiny_sd_dir, tmp_path / "data", out))
    after = out.read_bytes() if out.is_file() else (out / "learned_embeds.bin").read_bytes()
    assert after == before


def test_an_output_folder_in_use_is_refused_and_a_refused_run_creates_nothing(tiny_sd_dir, tmp_path, capsys):
    from nerf import workspace_lock
    from tests.test_workspace_lock import held_by_another_process

    write_rgba(tmp_path / "data" / "rgba.png")
    out = tmp_path / "out"
    bad_model = ti_args(tmp_path / "no-model", tmp_path / "data", out)
    assert run_error(capsys, bad_model) and not out.exists()  # refused before the folder is made
    with held_by_another_process(out) as owner:
        message = run_error(capsys, ti_args(tiny_sd_dir, tmp_path / "data", out, "--max_train_steps", "1"))
    assert f"in use by another run (pid {owner.pid}" in message and "--output_dir" in message
    assert sorted(p.name for p in out.iterdir()) == [workspace_lock.LOCK_NAME]
    # the owner is gone: its lock is taken over, and this run's own lock goes when it ends
    assert ti_main(ti_args(tiny_sd_dir, tmp_path / "data", out, "--max_train_steps", "1", "--only_save_embeds")) == 0
    assert (out / "learned_embeds.bin").is_file() and not (out / workspace_lock.LOCK_NAME).exists()


def test_ctrl_c_names_the_last_checkpoint_and_a_vocabulary_word_as_token_is_warned_about(tiny_sd_dir, tmp_path):
    """textual_inversion.py in its own process with the token 'cat' (a word of the vocabulary: warned, as it takes
    that word's place in every prompt), into a folder where an earlier run was killed mid-write (its stale partial
    files are removed), interrupted by SIGINT after a checkpoint: exit status 130 and, on a line of its own, the one
    line naming the last checkpoint; no lock left behind."""
    import os
    import signal
    import subprocess
    import time

    from nerf import workspace_lock
    from nerf.fileio import PARTIAL

    write_rgba(tmp_path / "data" / "rgba.png")
    out = tmp_path / "out"
    stale = [out / f".learned_embeds.bin{PARTIAL}killed.bin", out / "checkpoint-7" / f".state.pt{PARTIAL}killed.pt"]
    for file in stale:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(b"half")
        os.utime(file, (time.time() - 3600,) * 2)
    argv = ti_args(tiny_sd_dir, tmp_path / "data", out, "--max_train_steps", "100000", "--checkpointing_steps", "2",
                   "--only_save_embeds")
    argv[argv.index("cat")] = "dog"  # the initializer
    argv[argv.index("_obj_")] = "cat"  # the token
    run = subprocess.Popen([sys.executable, str(TI_DIR / "textual_inversion.py"), *argv], stderr=subprocess.PIPE,
                           stdout=subprocess.DEVNULL, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 240
    while not list(out.glob("checkpoint-*/state.pt")) and run.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert run.poll() is None, "the run ended or stalled before its first checkpoint"
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130 and "Traceback" not in err, err[-3000:]
    last = max((state.parent for state in out.glob("checkpoint-*/state.pt")), key=lambda p: int(p.name.split("-")[1]))
    assert err.rstrip("\n").split("\n")[-1] == (f"interrupted; the last checkpoint {last} is intact: run the same "
                                                f"command to resume from it.")
    assert "the token 'cat' is spelled like a word of the vocabulary" in err
    assert not (out / workspace_lock.LOCK_NAME).exists()
    assert not [file for file in stale if file.exists()]


# ---------------------------------------------------------------- autoinit


@pytest.fixture(scope="module")
def tiny_clip(tiny_sd_dir, tmp_path_factory) -> Path:
    """A random CLIP model (text + vision towers) using the tiny SD tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tiny_sd_dir / "tokenizer"))
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}), tokenizer=tok)
    folder = tmp_path_factory.mktemp("clip")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_autoinit_embeds_every_noun_token(tiny_clip, tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    file = autoinit.save_embeddings(tmp_path / "emb.pth", str(tiny_clip), CPU)
    data = torch.load(file, weights_only=True)
    processor, model = CLIPProcessor.from_pretrained(tiny_clip), CLIPModel.from_pretrained(tiny_clip)

    nouns = set(re.findall(r"^[a-z]+$", autoinit.NOUN_LIST.read_text(), flags=re.M))
    vocab = processor.tokenizer.get_vocab()
    expected = sorted(i for t, i in vocab.items() if t.endswith("</w>") and t[:-4] in nouns)
    assert data["idx"] == expected and {"cat</w>", "dog</w>", "teapot</w>"} <= {
        processor.tokenizer.convert_ids_to_tokens(i) for i in expected}
    assert data["emb"].shape == (len(expected), 16)

    position = data["idx"].index(vocab["dog</w>"])
    with torch.no_grad():
        out = model.get_text_features(**processor(text=["an image of a dog"], return_tensors="pt"))
    feature = out if isinstance(out, torch.Tensor) else out.pooler_output
    torch.testing.assert_close(data["emb"][position], (feature / feature.norm())[0], rtol=1e-4, atol=1e-5)


def test_autoinit_ranks_a_planted_token_first(tiny_clip, tmp_path, capsys):
    from transformers import CLIPModel, CLIPProcessor

    file = autoinit.save_embeddings(tmp_path / "emb.pth", str(tiny_clip), CPU)
    data = torch.load(file, weights_only=True)
    image = tmp_path / "photo" / "rgba.png"
    write_rgba(image, size=(40, 40))
    processor, model = CLIPProcessor.from_pretrained(tiny_clip), CLIPModel.from_pretrained(tiny_clip)
    rgb = Image.open(image).convert("RGBA")
    white = Image.alpha_composite(Image.new("RGBA", rgb.size, (255, 255, 255, 255)), rgb).convert("RGB")
    with torch.no_grad():
        out = model.get_image_features(**processor(images=white, return_tensors="pt"))
    feature = (out if isinstance(out, torch.Tensor) else out.pooler_output)[0]
    planted = data["idx"].index(processor.tokenizer.get_vocab()["teapot</w>"])
    data["emb"][planted] = feature / feature.norm()
    torch.save(data, file)

    capsys.readouterr()
    assert autoinit.main(["get_initialization", str(image), "--text_emb_file", str(file),
                          "--clip_model", str(tiny_clip), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Top tokens:" and lines[1].split()[0] == "teapot</w>" and len(lines) >= 6
    scores = [float(line.split()[1]) for line in lines[1:6]]
    assert scores == sorted(scores, reverse=True)
    assert (image.parent / "token_autoinit.txt").read_text() == "teapot\n"


def test_autoinit_makes_the_noun_embeddings_once_per_machine(tiny_clip, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    image = tmp_path / "photo" / "rgba.png"
    write_rgba(image, size=(40, 40))
    command = ["get_initialization", str(image), "--clip_model", str(tiny_clip), "--device", "cpu", "--no_save"]
    cached = autoinit.noun_embeddings_file(str(tiny_clip))
    assert cached.parent == tmp_path / "cache" / "realfusion" and not cached.exists()
    assert autoinit.main(command) == 0
    first = capsys.readouterr().out
    assert "making the noun embeddings" in first and cached.is_file()
    made = cached.stat().st_mtime_ns
    assert autoinit.main(command) == 0
    again = capsys.readouterr().out
    assert "making" not in again and cached.stat().st_mtime_ns == made
    assert again.splitlines()[1] == first.splitlines()[first.splitlines().index("Top tokens:") + 1]


@pytest.mark.parametrize("case", ["no_embeddings", "no_image", "no_model"])
def test_autoinit_errors(tiny_clip, tmp_path, capsys, case):
    emb = tmp_path / "emb.pth"
    if case != "no_embeddings":
        torch.save({"idx": [1, 2], "emb": torch.zeros(2, 16)}, emb)
    image = tmp_path / "x.png"
    if case != "no_image":
        write_rgba(image)
    clip = str(tmp_path / "no-clip-here") if case == "no_model" else str(tiny_clip)
    code = autoinit.main(["get_initialization", str(image), "--text_emb_file", str(emb), "--clip_model", clip,
                          "--device", "cpu"])
    assert code == 2
    one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "token_autoinit.txt").exists()


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "compile"), [(torch.float32, "off"), (torch.float16, "off"), (torch.float16, "on")])
def test_cuda_graphs_give_the_eager_loss_and_gradient(tiny_sd_dir, dtype, compile):
    """Graphs (of the compiled VAE encoder and UNet with `compile` on) give the eager loss and token gradient."""
    from diffusers import DDPMScheduler

    cuda = torch.device("cuda")
    parts = load_stable_diffusion(str(tiny_sd_dir), cuda, fp16=False)
    token_id, initial = add_placeholder(parts, "_obj_", "cat")
    row = TokenVector(parts.text_encoder.get_input_embeddings(), token_id, initial).to(cuda)
    parts.unet.to(dtype)
    parts.vae.to(dtype)
    scheduler = DDPMScheduler.from_config(parts.scheduler.config)
    autocast = partial(torch.autocast, "cuda", dtype=dtype, enabled=dtype != torch.float32, cache_enabled=False)
    graphed = FrozenNetworks(parts.vae, parts.unet, dtype, autocast, graphs=True, compile=compile)
    eager_nets = FrozenNetworks(parts.vae, parts.unet, dtype, autocast, graphs=False)
    tolerance = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-3)
    for seed in range(3):  # replays with new inputs and new draws
        batches = micro_batches(parts.tokenizer, [1, 1, 1, 1], resolution=32, seed=seed)
        results = []
        for nets in (graphed, eager_nets):
            torch.manual_seed(seed)
            loss = denoising_loss(parts, nets, scheduler, batches, 4, autocast)
            results.append((loss.detach(), torch.autograd.grad(loss, row.vector)[0]))
        assert graphed.denoiser is not None and graphed.encoder.graph is not None and not graphed.encoder.failed
        torch.testing.assert_close(results[0][0], results[1][0], **tolerance)
        torch.testing.assert_close(results[0][1], results[1][1], **tolerance)
        assert results[0][1].abs().max() > 0


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_on_cuda(tiny_sd_dir, tmp_path, precision):
    write_rgba(tmp_path / "data" / "rgba.png")
    argv = ti_args(tiny_sd_dir, tmp_path / "data", tmp_path / "out", "--max_train_steps", "3", "--only_save_embeds",
                   "--mixed_precision", precision, "--use_augmentations", "--validation_prompt", "a photo of a _obj_",
                   "--validation_steps", "3", "--num_validation_images", "1")
    assert ti_main(argv) == 0
    _, vector = load_learned_embeds(str(tmp_path / "out" / "learned_embeds.bin"))
    base = load_stable_diffusion(str(tiny_sd_dir), CPU, fp16=False)
    cat_row = base.text_encoder.get_input_embeddings().weight[base.tokenizer.convert_tokens_to_ids("cat</w>")]
    assert torch.isfinite(vector).all() and not torch.allclose(vector, cat_row)


def test_defaults_are_the_realfusion_recipe_and_the_diffusers_preset_stays_reachable(tmp_path):
    argv = ["--train_data_dir", str(tmp_path), "--placeholder_token", "_x_", "--initializer_token", "cat"]
    recipe = parse_args(argv)
    assert (recipe.train_batch_size, recipe.gradient_accumulation_steps, recipe.max_train_steps) == (1, 4, 3000)
    assert (recipe.learning_rate, recipe.scale_lr, recipe.lr_scheduler, recipe.lr_warmup_steps) == (5e-4, True,
                                                                                                      "constant", 0)
    assert recipe.use_augmentations and recipe.mixed_precision == "auto"
    example = parse_args([*argv, "--preset", "diffusers"])
    assert (example.train_batch_size, example.max_train_steps, example.learning_rate) == (16, 5000, 1e-4)
    assert not example.scale_lr and not example.use_augmentations and example.mixed_precision == "no"
    given = parse_args([*argv, "--train_batch_size", "2", "--no-use_augmentations", "--no-scale_lr"])
    assert given.train_batch_size == 2 and not given.use_augmentations and not given.scale_lr
    assert given.max_train_steps == 3000  # the rest keeps the preset's values
