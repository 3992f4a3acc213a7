"""Zero-1-to-3 as a prior's source: finding, checking and loading a model in the published diffusers layout.

A Zero-1-to-3 folder holds unet/ (8 input channels: the noisy latent and the input view's latent), vae/,
image_encoder/ (CLIP vision model with projection), feature_extractor/ (its input size and pixel statistics),
scheduler/ and cc_projection/ (the linear layer that joins the image embedding with the relative camera). The folder
is checked from its config files before any weight is read, so a wrong folder fails in a second with the file named.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nerf.errors import UserError, reason

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

FLAG = "--zero123_model"
PUBLISHED = "kxic/zero123-xl"  # the diffusers copy of Zero-1-to-3-XL
MODEL_FORMS = f"a hub id (e.g. {PUBLISHED}, cached or downloadable) or a local folder in its diffusers layout"
SUBFOLDERS = ("unet", "vae", "image_encoder", "feature_extractor", "scheduler", "cc_projection")
CAMERA_NUMBERS = 4  # polar, sin(azimuth), cos(azimuth), radius: the relative camera cc_projection reads
PROJECTION_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


@dataclass
class Zero123Parts:
    """The frozen pieces of Zero-1-to-3 that score distillation needs."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    image_encoder: CLIPVisionModelWithProjection
    cc_projection: torch.nn.Linear
    scheduler: Any  # the model's own sampling scheduler (DDIM for the published models)
    alphas_cumprod: torch.Tensor  # its noise schedule, fp32 on `device`
    clip_size: int  # CLIP's input side
    clip_mean: tuple[float, ...]  # RGB
    clip_std: tuple[float, ...]
    device: torch.device
    dtype: torch.dtype

    @property
    def image_size(self) -> int:
        """The model's native resolution: the UNet's latent side times the VAE's downsampling (256 for XL)."""
        return self.unet.config.sample_size * 2 ** (len(self.vae.config.block_out_channels) - 1)


def model_folder(name: str) -> Path:
    """The local folder of `name`: a folder given as a path, or the hub snapshot of a hub id (from the cache, or
    downloaded when the machine has network access)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise UserError(f"Zero-1-to-3 model folder {path} does not exist; set {FLAG} to {MODEL_FORMS}.")
    from huggingface_hub import snapshot_download

    patterns = ["model_index.json", *(f"{sub}/*.json" for sub in SUBFOLDERS),
                *(f"{sub}/*.safetensors" for sub in SUBFOLDERS)]
    try:
        return Path(snapshot_download(name, allow_patterns=patterns))
    except (OSError, ValueError) as exc:  # offline and not cached, no such repository, refused
        raise UserError(f"cannot fetch Zero-1-to-3 model '{name}' ({reason(exc)}); set {FLAG} to {MODEL_FORMS}.") from exc


def read_config(file: Path) -> dict[str, Any]:
    """A component's config.json, or a one-line error naming it."""
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise UserError(f"{file} is missing: not a Zero-1-to-3 folder in the published diffusers layout; "
                        f"set {FLAG} to {MODEL_FORMS}.") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{file} cannot be read ({type(exc).__name__}); set {FLAG} to {MODEL_FORMS}.") from None


def check_folder(folder: Path) -> dict[str, Any]:
    """Check the layout and the shapes that must agree, from the config files alone; returns cc_projection's config.

    The UNet must take 8 channels (4 noisy + 4 input-view latent channels); cc_projection must map CLIP's image
    embedding plus the 4 camera numbers to the UNet's cross-attention width."""
    for sub in SUBFOLDERS:
        if not (folder / sub).is_dir():
            what = (" (the linear layer that joins the image embedding with the relative camera)"
                    if sub == "cc_projection" else "")
            raise UserError(f"{folder} has no {sub}/{what}: not a Zero-1-to-3 folder in the published diffusers "
                            f"layout; set {FLAG} to {MODEL_FORMS}.")
    unet = read_config(folder / "unet" / "config.json")
    if unet.get("in_channels") != 8:
        raise UserError(f"{folder / 'unet' / 'config.json'}: the UNet takes {unet.get('in_channels')} input channels; "
                        f"Zero-1-to-3 needs 8 (the noisy latent and the input view's latent); set {FLAG} to "
                        f"{MODEL_FORMS}.")
    encoder = read_config(folder / "image_encoder" / "config.json")
    projection = read_config(folder / "cc_projection" / "config.json")
    width = encoder.get("projection_dim")
    expected = (width + CAMERA_NUMBERS if isinstance(width, int) else None, unet.get("cross_attention_dim"))
    found = (projection.get("in_channel"), projection.get("out_channel"))
    if found != expected:
        raise UserError(f"{folder / 'cc_projection' / 'config.json'}: maps {found[0]} -> {found[1]} numbers, but the "
                        f"image embedding plus the camera is {expected[0]} wide and the UNet attends to "
                        f"{expected[1]}; the folder's parts do not belong together.")
    if not any((folder / "cc_projection" / name).is_file() for name in PROJECTION_WEIGHTS):
        raise UserError(f"{folder / 'cc_projection'} has no weights ({' or '.join(PROJECTION_WEIGHTS)}); "
                        f"set {FLAG} to {MODEL_FORMS}.")
    return projection


def load_projection(folder: Path, config: dict[str, Any]) -> torch.nn.Linear:
    """cc_projection as a plain linear layer, read with a safe loader (its key prefix is ``projection.``)."""
    layer = torch.nn.Linear(config["in_channel"], config["out_channel"])
    safetensors, pickled = (folder / name for name in PROJECTION_WEIGHTS)
    try:
        if safetensors.is_file():
            from safetensors.torch import load_file

            state = load_file(str(safetensors))
        else:
            state = torch.load(pickled, map_location="cpu", weights_only=True)
        layer.load_state_dict({k.removeprefix("projection."): v for k, v in state.items()})
    except Exception as exc:  # truncated, foreign or unsafe content, wrong keys or shapes
        raise UserError(f"cannot read the weights in {folder} ({type(exc).__name__}); set {FLAG} to "
                        f"{MODEL_FORMS}.") from exc
    return layer


def clip_input(processor: dict[str, Any], file: Path) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """CLIP's input side and pixel mean and standard deviation, from the feature extractor's config."""
    try:
        crop = processor["crop_size"]
        side = int(crop["height"] if isinstance(crop, dict) else crop)
        mean, std = tuple(map(float, processor["image_mean"])), tuple(map(float, processor["image_std"]))
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{file} lacks crop_size, image_mean or image_std; set {FLAG} to {MODEL_FORMS}.") from None
    if len(mean) != 3 or len(std) != 3:
        raise UserError(f"{file}: image_mean and image_std need 3 numbers each (RGB).")
    return side, mean, std


def load_zero123(name_or_path: str, device: torch.device, fp16: bool) -> Zero123Parts:
    """Check, then load every part frozen; fp16 weights on CUDA only."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

    folder = model_folder(name_or_path)
    projection_config = check_folder(folder)
    processor = read_config(folder / "feature_extractor" / "preprocessor_config.json")
    scheduler_config = read_config(folder / "scheduler" / "scheduler_config.json")
    if scheduler_config.get("prediction_type", "epsilon") != "epsilon":
        raise UserError(f"{folder / 'scheduler' / 'scheduler_config.json'}: predicts "
                        f"'{scheduler_config['prediction_type']}'; Zero-1-to-3 predicts the noise (epsilon).")
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
        encoder = CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder")
        scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load Zero-1-to-3 model '{name_or_path}' ({reason(exc)}); set {FLAG} to "
                        f"{MODEL_FORMS}.") from exc
    projection = load_projection(folder / "cc_projection", projection_config)
    clip_size, clip_mean, clip_std = clip_input(processor, folder / "feature_extractor" / "preprocessor_config.json")
    dtype = torch.float16 if fp16 and device.type == "cuda" else torch.float32
    parts = Zero123Parts(
        unet=unet, vae=vae, image_encoder=encoder, cc_projection=projection, scheduler=scheduler,
        alphas_cumprod=scheduler.alphas_cumprod.to(device=device, dtype=torch.float32),
        clip_size=clip_size, clip_mean=clip_mean, clip_std=clip_std, device=device, dtype=dtype)
    for module in (unet, vae, encoder, projection):
        module.to(device).eval().requires_grad_(False)
        if dtype == torch.float16:
            module.half()
    return parts
