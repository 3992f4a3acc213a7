"""The toy prior (scripts/train-toy-prior.py over nerf.toy_models) at its CPU size: a standard SD folder that SDS and the project's
loader accept, that learns (held-out denoising loss falls), reproducibly, resumably, and that refuses bad input
with one line and exit status 2 before touching anything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from nerf.cameras import direction_prompts, random_cameras
from nerf.scenes.procedural import make_scene
from nerf.scenes.raytrace import over_background, render_rgba
from nerf.guidance.sds import SDSGuidance
from nerf.guidance.stable_diffusion import load_stable_diffusion
from nerf.options import DataOptions
from nerf.toy_models import training, world

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
VAE_STEPS, UNET_STEPS, PART_STEPS = 20, 30, 12
WEIGHT_FILES = ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                "text_encoder/model.safetensors")


# Two small classes and a held-out instance: the CPU size renders 24 views of each training instance.
WORLD = ("--objects", "primitive:0=cup", "thin:0-1=chair", "--held_out", "thin:5")


@pytest.fixture(scope="module")
def script():
    return training


pytestmark = pytest.mark.usefixtures("one_thread")


def train(script, out: Path, *extra: str, steps: tuple[int, int] = (VAE_STEPS, UNET_STEPS)) -> Path:
    argv = [str(out), "--size", "cpu", "--device", "cpu", "--steps", *map(str, steps), *WORLD, *extra]
    assert script.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def straight(script, tmp_path_factory) -> Path:
    return train(script, tmp_path_factory.mktemp("straight") / "model")


@pytest.fixture(scope="module")
def resumed(script, toy_prior, tmp_path_factory) -> tuple[Path, Path]:
    """(the model after the VAE phase only, the same run resumed to PART_STEPS and then to UNET_STEPS)."""
    vae_phase = toy_prior("--size", "cpu", "--device", "cpu", "--steps", str(VAE_STEPS), "0", *WORLD)
    out = shutil.copytree(vae_phase, tmp_path_factory.mktemp("resumed") / "model")  # the shared model stays as it is
    before = shutil.copytree(out, out.parent / "before", ignore=shutil.ignore_patterns(".cache"))
    train(script, out, "--resume", steps=(VAE_STEPS, PART_STEPS))
    train(script, out, "--resume", steps=(VAE_STEPS, UNET_STEPS))
    return before, out


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {f"{file}:{key}": value for file in WEIGHT_FILES for key, value in load_file(folder / file).items()}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_folder_is_a_stable_diffusion_model(straight):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(straight, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    assert type(pipe.scheduler).__name__ == "PNDMScheduler" and pipe.scheduler.config.skip_prk_steps
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.text_encoder.config.max_position_embeddings == pipe.tokenizer.model_max_length == 77
    assert pipe.unet.dtype == pipe.text_encoder.dtype == torch.float32  # fp16 on disk, fp32 when loaded
    assert all(v.dtype == torch.float16 for v in weights(straight).values())
    assert pipe.vae.config.scaling_factor != pytest.approx(0.18215)  # set from the data's latents
    assert pipe.unet.config.sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 32
    card = (straight / "README.md").read_text()
    assert "| chair | thin:0, thin:1 | thin:5 |" in card and "not for real photos" in card and "--size cpu" in card
    assert json.loads((straight / "objects.json").read_text()) == {
        "objects": {"primitive:0": "cup", "thin:0": "chair", "thin:1": "chair"}, "held_out": {"thin:5": "chair"}}
    assert world.load_world(straight) == ({"primitive:0": "cup", "thin:0": "chair", "thin:1": "chair"},
                                          {"thin:5": "chair"})


def test_sds_on_the_toy_prior_gives_a_finite_gradient(straight):
    parts = load_stable_diffusion(str(straight), CPU, fp16=False)
    prompts = direction_prompts("A high-resolution DSLR image of a cup", "", True, None)
    guidance = SDSGuidance(parts, prompts)
    image = torch.rand(1, 3, 48, 48, requires_grad=True)
    loss, info = guidance(image, 1, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
    assert torch.isfinite(info["sds_grad_norm"])


def heldout_loss(folder: Path) -> float:
    """Denoising loss on views the training never drew (other cameras), with fixed noise and timesteps."""
    parts = load_stable_diffusion(str(folder), CPU, fp16=False)
    data, gen = DataOptions(), torch.Generator().manual_seed(1234)
    images, texts = [], []
    for family, word in (("primitive", "cup"), ("thin", "chair")):
        cams = random_cameras(4, 32, radius_range=data.radius_range, fovy_range=data.fovy_range,
                              uniform_sphere_rate=data.uniform_sphere_rate, angle_overhead=data.angle_overhead,
                              angle_front=data.angle_front, generator=gen)
        images.append(over_background(render_rgba(make_scene(family, 0), cams)).permute(0, 3, 1, 2))
        prompts = direction_prompts(f"A high-resolution DSLR image of a {word}", "", True, None)
        texts += [prompts[int(d)][0] for d in cams.directions]
    ids = parts.tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        latents = parts.vae.encode(torch.cat(images) * 2 - 1).latent_dist.mean * parts.vae.config.scaling_factor
        latents = latents.repeat(4, 1, 1, 1)
        t = torch.tensor([100, 300, 500, 700]).repeat_interleave(len(texts))
        noise = torch.randn(latents.shape, generator=gen)
        noisy = parts.scheduler.add_noise(latents, noise, t)
        states = parts.text_encoder(ids.repeat(4, 1))[0]
        return F.mse_loss(parts.unet(noisy, t, encoder_hidden_states=states).sample, noise).item()


def test_denoising_loss_falls_on_held_out_views(resumed, straight):
    before, _ = resumed  # the same VAE (same seed and VAE steps) with the untrained UNet and text encoder
    vae = "vae/diffusion_pytorch_model.safetensors"
    assert all(torch.equal(a, b) for a, b in zip(load_file(before / vae).values(), load_file(straight / vae).values()))
    first, last = heldout_loss(before), heldout_loss(straight)
    assert last < 0.8 * first, (first, last)


def test_same_seed_gives_the_same_weights(script, straight, tmp_path):
    again = train(script, tmp_path / "again")
    assert_same_weights(straight, again)
    other = train(script, tmp_path / "other", "--seed", "1", steps=(2, 0))
    assert not torch.equal(*(load_file(f / WEIGHT_FILES[1])["encoder.conv_in.weight"] for f in (straight, other)))


def test_resuming_continues_exactly(resumed, straight):
    assert_same_weights(resumed[1], straight)
    assert "UNet and text encoder 30/30" in (resumed[1] / "README.md").read_text()


SQUARE = (16, 16, 4)


def write_renders(folder: Path, shapes=(SQUARE,) * 3, frames=None) -> Path:
    """A renders folder of random images (height, width, channels) and its cameras.json: one frame per image,
    azimuths 0, 90, 180 degrees, unless `frames` is given (False: no cameras.json)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k, shape in enumerate(shapes):
        cv2.imwrite(str(folder / f"{k:03d}.png"), rng.integers(0, 255, shape, dtype=np.uint8))
    if frames is None:
        frames = [{"file": f"{k:03d}.png", "theta": 75.0, "phi": 90.0 * k, "radius": 1.8, "fovy": 55.0}
                  for k in range(len(shapes))]
    if frames is not False:
        (folder / "cameras.json").write_text(json.dumps({"frames": frames}))
    return folder


def test_renders_folder_gives_views_and_directions(tmp_path):
    obj = world.parse_renders(f"{write_renders(tmp_path / 'r')}=ball")
    images, directions, side = world.load_renders(obj, 32)
    assert side == 16
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    assert directions.tolist() == [0, 1, 2]  # front, side, back by azimuth


def coloured_views(colours: list[tuple[int, int, int]]) -> torch.Tensor:
    """One 8x8 view per colour pair: the first colour on half the view, the second on a quarter, white elsewhere."""
    images = torch.full((len(colours), 3, 8, 8), 255, dtype=torch.uint8)
    for k, (first, second) in enumerate(colours):
        images[k, :, :4] = torch.tensor(first, dtype=torch.uint8)[:, None, None]
        images[k, :, 4:6] = torch.tensor(second, dtype=torch.uint8)[:, None, None]
    return images


def test_colour_words_name_the_main_hues_most_frequent_first():
    red, blue, yellow, grey = (200, 30, 30), (30, 60, 200), (210, 200, 40), (120, 120, 120)
    assert world.colour_words(coloured_views([(red, blue)])) == ("red", "blue")
    assert world.colour_words(coloured_views([(blue, yellow)])) == ("blue", "yellow")
    assert world.colour_words(coloured_views([(red, grey)])) == ("red",)  # grey has no hue
    assert world.colour_words(torch.full((1, 3, 8, 8), 255, dtype=torch.uint8)) == ()
    assert world.described("robot", ("red", "blue")) == "red and blue robot"


def test_captions_mix_the_three_contexts_and_the_colours_in_their_shares():
    from nerf.toy_models.sd_parts import load_tokenizer, write_tokenizer_files

    write_tokenizer_files(folder := Path(__import__("tempfile").mkdtemp()))
    tokenizer = load_tokenizer(folder)
    objects = [world.ToyObject("cup", "primitive", 0), world.ToyObject("chair", "thin", 0),
               world.ToyObject("chair", "thin", 1)]
    red, blue, green = (200, 30, 30), (30, 60, 200), (40, 190, 60)
    views = world.Views(coloured_views([(red, blue), (red, blue), (green, green), (green, green), (blue, red),
                                        (blue, red)]),
                        torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 0, 2, 4, 1]))
    texts = world.caption_ids(tokenizer, objects, views, colour_share=0.5)
    picked = torch.arange(6).repeat(2000)
    ids = texts.draw(picked, torch.Generator().manual_seed(0))
    decoded = [t.replace(" - ", "-").replace(" ,", ",") for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    names = ["red and blue cup", "green chair", "blue and red chair"]
    name = [names[int(views.objects[i])] for i in picked]
    words = [objects[int(views.objects[i])].word for i in picked]
    prompt = [t.startswith("a high-resolution dslr image of a") for t in decoded]
    empty = [t == "" for t in decoded]
    template = [not (p or e) for p, e in zip(prompt, empty)]
    for share, flags in ((world.CAPTION_SHARES["prompt"], prompt), (world.CAPTION_SHARES["empty"], empty),
                         (world.CAPTION_SHARES["template"], template)):
        assert abs(np.mean(flags) - share) < 0.02
    with_colours = [name[k] in t for k, t in enumerate(decoded) if not empty[k]]
    assert abs(np.mean(with_colours) - 0.5) < 0.02  # each instance's own colours
    plain = world.caption_ids(tokenizer, objects, views).draw(picked, torch.Generator().manual_seed(0))
    assert not any(n in t for n, t in zip(name, tokenizer.batch_decode(plain, skip_special_tokens=True)))
    templates = {t.lower() for n in (*names, "cup", "chair") for t in world.template_captions(n)}
    assert all(t in templates and words[k] in t for k, t in enumerate(decoded) if template[k])
    sides = {t.split(", ")[-1] for k, t in enumerate(decoded) if prompt[k] and picked[k] == 4}
    assert sides == {"overhead view"}  # main.py's prompt keeps the view's direction


def test_several_renders_folders_make_one_class(tmp_path):
    objects = [world.parse_renders(f"{write_renders(tmp_path / name)}=ball") for name in ("a", "b")]
    views = world.build_views(objects, 32, 4, 0, torch.device("cpu"))
    assert views.objects.tolist() == [0, 0, 0, 1, 1, 1] and world.class_words(objects) == ["ball"]


def test_renders_of_one_word_must_share_a_size(script, tmp_path, capsys):
    small, large = write_renders(tmp_path / "a"), write_renders(tmp_path / "b", ((32, 32, 4),) * 3)
    out = tmp_path / "model"
    assert_one_line_error(script, [str(out), "--size", "cpu", "--objects", "--renders", f"{small}=ball",
                                   f"{large}=ball"], capsys)
    assert not out.exists()


ONE_FRAME = [{"file": "000.png", "theta": 75.0, "phi": 0.0, "radius": 1.8, "fovy": 55.0}]
BAD_RENDERS = {  # case: (image shapes, frames, word)
    "no cameras.json": ((SQUARE,), False, "ball"),
    "image without entry": ((SQUARE, SQUARE), ONE_FRAME, "ball"),
    "entry without image": ((), ONE_FRAME, "ball"),
    "not RGBA": (((16, 16, 3),), None, "ball"),
    "not square": (((16, 8, 4),), None, "ball"),
    "mixed sizes": ((SQUARE, (32, 32, 4)), None, "ball"),
    "word of several tokens": ((SQUARE,), None, "zebra"),
}
BAD = {
    "unknown family": ["--objects", "cube:0=cup"],
    "word of several tokens": ["--objects", "primitive:0=zebra"],
    "malformed object": ["--objects", "primitive=cup"],
    "same instance twice": ["--objects", "primitive:0-2=cup", "primitive:2=ball"],
    "held-out seed also trained": ["--objects", "primitive:0-2=cup", "--held_out", "primitive:1"],
    "held-out family without a word": ["--objects", "primitive:0=cup", "--held_out", "union:1"],
    "malformed seeds": ["--objects", "primitive:0-x=cup"],
    "nothing to resume": ["--resume"],
    "no objects": ["--objects"],
    "colour share above 1": ["--colour_share", "1.5"],
}
def assert_one_line_error(script, argv: list[str], capsys) -> None:
    capsys.readouterr()
    assert script.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err


@pytest.mark.parametrize("case", BAD)
def test_bad_options_fail_with_one_line(script, tmp_path, capsys, case):
    out = tmp_path / "model"
    assert_one_line_error(script, [str(out), "--size", "cpu", *BAD[case]], capsys)
    assert not out.exists()


@pytest.mark.parametrize("case", BAD_RENDERS)
def test_bad_renders_folders_fail_with_one_line(script, tmp_path, capsys, case):
    shapes, frames, word = BAD_RENDERS[case]
    folder, out = write_renders(tmp_path / "renders", shapes, frames), tmp_path / "model"
    assert_one_line_error(script, [str(out), "--size", "cpu", "--objects", "--renders", f"{folder}={word}"], capsys)
    assert not out.exists()


def test_existing_output_is_never_overwritten(script, tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_one_line_error(script, [str(out), "--size", "cpu"], capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_resume_refuses_other_settings(script, straight, capsys):
    before = weights(straight)
    assert_one_line_error(script, [str(straight), "--resume", "--seed", "5"], capsys)
    assert_one_line_error(script, [str(straight), "--resume", "--steps", "3", str(UNET_STEPS)], capsys)
    after = weights(straight)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_contexts_check_names_the_instance_by_its_own_and_by_other_colours():
    from nerf.toy_models import check

    texts = check.context_texts("robot", ["cake"], torch.tensor([0, 2]), ("red", "blue"))
    assert texts["prompt/true colours"] == [world.captions("red and blue robot")[d] for d in (0, 2)]
    other = check.other_colours(("red", "blue"))
    assert len(other) == 2 and not set(other) & {"red", "blue"} and set(other) <= set(world.HUE_WORDS)
    assert texts["prompt/other colours"][0] == world.captions(world.described("robot", other))[0]
    assert "prompt/true colours" not in check.context_texts("robot", ["cake"], torch.tensor([0]))


def test_init_starts_from_a_prior_and_trains_it_on(script, resumed, straight, tmp_path, capsys):
    copy = train(script, tmp_path / "copy", "--init", str(straight), steps=(0, 0))
    assert_same_weights(straight, copy)  # every weight comes from --init (fp16 on disk both ways)
    before, _ = resumed  # the VAE phase only: untrained UNet and text encoder
    tuned = train(script, tmp_path / "tuned", "--init", str(before), "--colour_share", "0.5", steps=(0, UNET_STEPS))
    vae = "vae/diffusion_pytorch_model.safetensors"
    assert all(torch.equal(a, b) for a, b in zip(load_file(before / vae).values(), load_file(tuned / vae).values()))
    assert heldout_loss(tuned) < 0.8 * heldout_loss(before)
    card = (tuned / "README.md").read_text()
    assert f"--init {before}" in card and "--colour_share 0.5" in card and "main colours" in card
    for argv in (["--steps", "3", "5", "--init", str(before), *WORLD],  # --init has no VAE phase
                 ["--steps", "0", "5", "--init", str(before), "--objects", "primitive:0=cup"],  # another world
                 ["--steps", "0", "5", "--init", str(tmp_path), *WORLD]):  # not a prior
        assert_one_line_error(script, [str(tmp_path / "bad"), "--size", "cpu", *argv], capsys)
        assert not (tmp_path / "bad").exists()
