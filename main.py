"""RealFusion reconstruction: fit a NeRF to one RGBA image, guided by Stable Diffusion and a learned token.

    python main.py --O --image_path examples/natural-images/cat/rgba.png --text "A high-resolution DSLR image of a <token>"

Data path: image -> cameras/rays -> field -> renderer -> losses (+ guidance) -> optimiser -> workspace outputs.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

import torch

from nerf.errors import UserError
from nerf.options import Options, default_workspace, parse, save_options

log = logging.getLogger("realfusion")
TOKEN_PLACEHOLDER = "<token>"


def setup_logging(workspace: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if workspace is not None:
        handlers.append(logging.FileHandler(workspace / "log.txt", encoding="utf-8"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        handlers=handlers, force=True)


def resolve_token(opt: Options) -> tuple[str, torch.Tensor | None]:
    """The word that replaces <token>: the learned token, or the one-word autoinit description next to the image."""
    if opt.learned_embeds_path:
        from nerf.guidance import load_learned_embeds

        return load_learned_embeds(opt.learned_embeds_path)
    autoinit = Path(opt.image_path).parent / "token_autoinit.txt"
    if autoinit.is_file() and autoinit.read_text(encoding="utf-8").strip():
        word = autoinit.read_text(encoding="utf-8").split()[0]
        log.info("no --learned_embeds_path: <token> becomes '%s' from %s", word, autoinit)
        return word, None
    raise UserError(f"the prompt contains {TOKEN_PLACEHOLDER} but there is no --learned_embeds_path and no "
                    f"{autoinit}; run textual inversion first or write the object's name in the prompt.")


def uses_prior(opt: Options) -> bool:
    from nerf.options import AnnealedValue

    return not opt.test and AnnealedValue(opt.lambda_prior, opt.iters).ever_nonzero()


def build_guidance(opt: Options, device: torch.device):
    """Stable Diffusion with the learned token and the view-dependent prompts (None when the prior is off)."""
    if not uses_prior(opt):
        return None, opt
    from nerf.cameras import direction_prompts
    from nerf.guidance import SDSGuidance, add_learned_token, load_stable_diffusion, replace_token_placeholder

    token, vector = (None, None)
    if TOKEN_PLACEHOLDER in opt.text + opt.negative or opt.learned_embeds_path:
        token, vector = resolve_token(opt)
    text, negative = opt.text, opt.negative
    if token is not None:
        text, negative = replace_token_placeholder(text, token), replace_token_placeholder(negative, token)
    parts = load_stable_diffusion(opt.pretrained_model_name_or_path, device, fp16=opt.fp16)
    if vector is not None:
        add_learned_token(parts, token, vector)
    prompts = direction_prompts(text, negative, opt.dir_text, opt.suppress_face)
    log.info("prompt: %s | negative: %s", text, negative or "(empty)")
    import dataclasses

    guidance = SDSGuidance(parts, prompts, guidance_scale=opt.guidance_scale, cuda_graph=opt.cuda_graph)
    return guidance, dataclasses.replace(opt, text=text, negative=negative)


def build_trainer(opt: Options):
    """Input view, prior, field, renderer and Trainer for resolved options; validates inputs before writing."""
    from nerf.checkpoint import find_checkpoint, load_checkpoint
    from nerf.data import RealView
    from nerf.renderer import build_renderer
    from nerf.trainer import Trainer, seed_everything

    workspace = Path(opt.workspace or default_workspace(opt))
    if opt.test and not (workspace / "checkpoints").is_dir() and not opt.ckpt.endswith((".pth", ".pt")):
        raise UserError(f"--test needs a trained workspace; {workspace} has no checkpoints (give --workspace).")
    seed_everything(opt.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    real_view = RealView.from_file(opt.image_path, opt.HW_real, opt.pose_angle, opt.orbit_radius, opt.default_fovy,
                                   left_handed=opt.uses("left_handed"))
    checkpoint = find_checkpoint(workspace, opt.ckpt)
    if checkpoint is not None:
        load_checkpoint(checkpoint)  # a corrupt or foreign file fails here, before anything is written
    guidance, opt = build_guidance(opt, device)

    workspace.mkdir(parents=True, exist_ok=True)
    setup_logging(workspace)
    save_options(opt, workspace / "options.json")
    log.info("workspace: %s | device: %s", workspace, device)
    renderer = build_renderer(opt, device)
    field = renderer.field
    log.info("backends: grid encoder %s, ray marching %s", field.encoder.backend_name, renderer.ops.name)
    trainer = Trainer(opt, renderer, real_view, guidance, workspace, device)
    trainer.restore()
    return trainer


def run(opt: Options) -> int:
    trainer = build_trainer(opt)
    opt = trainer.opt
    if not opt.test:
        trainer.train()
    with trainer.weights_for_outputs():
        if opt.test and opt.test_on_real_data:
            trainer.test_real_views()
        else:
            trainer.test()
        if opt.save_mesh:
            export_mesh(opt, trainer, trainer.workspace)
    return 0


def export_mesh(opt: Options, trainer, workspace: Path) -> None:
    from nerf.mesh import export_mesh as export

    field = trainer.field
    threshold = opt.mesh_threshold or trainer.renderer.occupancy_threshold
    with torch.no_grad():
        paths = export(lambda x: field.density(x)["sigma"], lambda x: field.density(x)["albedo"], opt.bound,
                       workspace / "mesh", resolution=opt.mesh_resolution, threshold=threshold,
                       decimate_target=opt.mesh_decimate_target or None, device=trainer.device)
    log.info("mesh written: %s", ", ".join(str(p) for p in paths.values()))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        opt = parse(argv)
        return run(opt)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130


if __name__ == "__main__":
    from nerf.trainer import TrainingDiverged

    try:
        sys.exit(main())
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
