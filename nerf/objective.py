"""The loss of one iteration: the prior on a synthetic view plus its regularisers, and the input-view terms.

Every weight is applied here, the priors' included (a guidance returns the unweighted surrogate loss; each prior's
term has its weight, `lambda_prior` or its own such as `lambda_prior_zero123`), each evaluated at the current step
from its annealing spec.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from torch import Tensor

from nerf import losses
from nerf.anneal import AnnealedValue
from nerf.cameras import CameraBatch, offset_rays, ray_noise
from nerf.data import RealView
from nerf.guidance import Guidance, prior_members
from nerf.guidance.joint import JointGuidance
from nerf.options import FP16_INITIAL_LOSS_SCALE, ObjectiveOptions
from nerf.renderer import Marched, Renderer, RenderSettings, flat_rays
from nerf.synthetic_views import SyntheticView, SyntheticViews

TERMS = ("prior", "prior_zero123", "image", "mask", "entropy", "opacity", "orient", "smooth", "smooth_2d",
         "normal_pred")


class LossWeights:
    """The annealed lambda of every loss term, read at a step."""

    def __init__(self, objective: ObjectiveOptions, iters: int, legacy_anneal_4: bool = False) -> None:
        self.values = {name: AnnealedValue(getattr(objective, f"lambda_{name}"), iters, legacy_anneal_4)
                       for name in TERMS}

    def __call__(self, name: str, step: int) -> float:
        return self.values[name].value(step)

    def ever_nonzero(self, name: str) -> bool:
        return self.values[name].ever_nonzero()


@dataclass
class SyntheticRender:
    """The prior's view of this iteration, kept for the training-image dumps."""

    out: dict[str, Tensor]
    camera: CameraBatch


@dataclass
class MarchedView:
    """A view's rays marched and its render settings, waiting to be shaded: the prior's view with its draw and
    jittered camera, or the input view's pixels with their RGBA target."""

    rays: Marched
    settings: RenderSettings
    view: SyntheticView | None = None
    camera: CameraBatch | None = None
    target: Tensor | None = None


@dataclass
class StepLoss:
    loss: Tensor
    terms: dict[str, Tensor]  # weighted, as they enter the loss
    synthetic: SyntheticRender | None = None


def _image(values: Tensor, size: int) -> Tensor:
    """Rendered rays [1, size*size, C] as an image batch [1, C, size, size]."""
    return values.reshape(1, size, size, -1).permute(0, 3, 1, 2).contiguous()


def _jittered_rays(rays_o: Tensor, rays_d: Tensor, std: float) -> tuple[Tensor, Tensor]:
    """The rays moved by one `ray_noise` offset of `std`, flat (`flat_rays`: made where this runs)."""
    return flat_rays(*offset_rays(rays_o, rays_d, ray_noise(std, rays_o.device)))


def _jittered_camera_rays(camera: CameraBatch, std: float) -> tuple[CameraBatch, Tensor, Tensor]:
    """The camera with one `ray_noise` offset of `std`, and its rays, flat (`flat_rays`: made where this runs)."""
    camera = replace(camera, ray_offset=ray_noise(std, camera.poses.device))
    rays_o, rays_d, _ = camera.rays()
    return camera, *flat_rays(rays_o, rays_d)


class Objective:
    """Synthetic step (prior + regularisers) and input-view step, weighted and summed."""

    def __init__(self, objective: ObjectiveOptions, *, iters: int, renderer: Renderer,
                 views: SyntheticViews, real_view: RealView | None, guidance: Guidance | JointGuidance | None,
                 num_rays: int, generator: torch.Generator, legacy_anneal_4: bool = False, unscaled_prior: bool = False,
                 prior_weights: Sequence[str] = ("prior",)) -> None:
        """`prior_weights`: the weight of each prior's term (`nerf.guidance.prior_weights`), in the order of
        `prior_members(guidance)`. `unscaled_prior`: the original's SDS gradient, which bypassed the fp16 loss
        scaler: the prior's weight is lambda_prior * 65536 / (live loss scale), i.e. the default's at the scaler's
        initial scale, drifting as the scale grows or falls, and 65536 times the default without fp16."""
        self.options = objective
        self.iters = iters
        self.renderer = renderer
        self.views = views
        self.real_view = real_view
        self.guidance = guidance
        self.priors = tuple(zip(prior_members(guidance), prior_weights, strict=True)) if guidance is not None else ()
        self.num_rays = num_rays
        self.generator = generator
        self.lambdas = LossWeights(objective, iters, legacy_anneal_4)
        self.unscaled_prior = unscaled_prior
        self.use_prior = guidance is not None
        # --normal_type pred: the field's normals come from a head that the normal_pred loss ties to the geometry
        self.predicted_normals = bool(getattr(renderer.field, "predicts_normals", False))
        self.use_real = real_view is not None and (self.lambdas.ever_nonzero("image")
                                                   or self.lambdas.ever_nonzero("mask"))

    @property
    def is_empty(self) -> bool:
        return not (self.use_prior or self.use_real)

    def __call__(self, step: int, loss_scale: Callable[[], float] = lambda: 1.0) -> StepLoss:
        """The weighted loss of iteration `step`; `loss_scale` is read only for the legacy unscaled prior.

        The input view's step and then the prior's, in the draws' order, but the work is queued in another: both
        views are marched first (each march reads its sample count on the host, a wait for the GPU's queue), then
        the prior's view is shaded and scored, then the input view. The input view's render is hundreds of small
        launches for little GPU work: right after a march's wait the GPU idled through them; queued behind the
        prior's long frozen-network calls they cost no GPU time (1.0-1.6 ms less per iteration on an H100). Every random draw comes
        in the same order as two separate steps (neither shading draws from a stream the other uses before it), so
        the losses are those of `real_step` followed by `synthetic_step`."""
        device = self.renderer.density_grid.device
        loss, real_terms, terms, synthetic = torch.zeros((), device=device), {}, {}, None
        options = self.options
        use_real = self.use_real and step >= options.real_iters and step % options.real_every == 0
        draw = self.renderer.on_ray_stream  # rays are drawn and marched on the ray stream (`--ray_stream`)
        pixels = draw(self.real_view.sample, self.num_rays, self.generator) if use_real else None
        # The prior's camera and shading are drawn on the host before anything waits for the GPU: drawn after a
        # march's wait, they left the GPU idle (0.9 ms per iteration on an H100).
        view, shading = (draw(self.views.view, step), self.views.shading(step)) if self.use_prior else (None, None)
        real = self.march_real(step, pixels) if pixels is not None else None
        prior = self.march_synthetic(step, view, shading) if self.use_prior else None
        synthetic_loss = self.shade_synthetic(step, loss_scale, prior) if prior is not None else None
        if real is not None:
            real_loss = self.shade_real(step, real)
            loss, real_terms = loss + real_loss.loss, real_loss.terms
        if synthetic_loss is not None:
            loss, terms, synthetic = loss + synthetic_loss.loss, synthetic_loss.terms, synthetic_loss.synthetic
        return StepLoss(loss, {**terms, **real_terms}, synthetic)

    def synthetic_step(self, step: int, loss_scale: Callable[[], float], view: SyntheticView | None = None,
                       shading: tuple[str, float] | None = None) -> StepLoss:
        """The prior's terms and the regularisers on a synthetic view; `view` and `shading` are drawn unless given."""
        return self.shade_synthetic(step, loss_scale, self.march_synthetic(step, view, shading))

    def march_synthetic(self, step: int, view: SyntheticView | None = None,
                        shading: tuple[str, float] | None = None) -> MarchedView:
        """The first half of `synthetic_step`: the view, its jittered camera and settings, marched."""
        w, draw = self.lambdas, self.renderer.on_ray_stream
        view = view if view is not None else draw(self.views.view, step)
        camera, rays_o, rays_d = draw(_jittered_camera_rays, view.camera, view.ray_noise)
        shading, ratio = shading if shading is not None else self.views.shading(step)
        need_normals = shading != "albedo" or w("orient", step) > 0 or w("smooth_2d", step) > 0
        settings = RenderSettings(shading=shading, ratio=ratio, perturb=True, need_normals=need_normals,
                                  need_smooth=w("smooth", step) > 0,
                                  align_normals=self.predicted_normals and need_normals and w("normal_pred", step) > 0)
        return MarchedView(self.renderer.march(rays_o, rays_d, settings), settings, view, camera)

    def shade_synthetic(self, step: int, loss_scale: Callable[[], float], marched: MarchedView) -> StepLoss:
        """The second half of `synthetic_step`: the render, the priors' terms and the regularisers."""
        w, view, camera = self.lambdas, marched.view, marched.camera
        assert view is not None and camera is not None
        out = self.renderer.shade(marched.rays, marched.settings)
        size = view.camera.height
        terms: dict[str, Tensor] = {}
        for guidance, weight in self.priors:  # every prior on the same render
            if w(weight, step) > 0:
                prior, _ = guidance(_image(out["image"], size), view.direction, camera=camera)
                if self.unscaled_prior:  # the original's: the weight follows the live fp16 loss scale
                    prior = prior * FP16_INITIAL_LOSS_SCALE / loss_scale()
                terms[guidance.term] = w(weight, step) * prior
        terms.update(self.regularisers(out, size, step))
        loss = sum(terms.values(), torch.zeros((), device=out["image"].device))
        return StepLoss(loss, terms, SyntheticRender(out, camera))

    def regularisers(self, out: dict[str, Tensor], size: int, step: int) -> dict[str, Tensor]:
        """The weighted regularisers of a synthetic render of `size`^2 rays (the terms whose weight is above 0)."""
        opacity = out["weights_sum"].reshape(1, 1, size, size)
        unweighted: dict[str, Callable[[], Tensor]] = {
            "opacity": lambda: losses.opacity_loss(opacity),
            "entropy": lambda: losses.entropy_loss(opacity),
            "orient": lambda: out["loss_orient"],
            "smooth": lambda: out["loss_smooth"],
            "smooth_2d": lambda: losses.smooth_2d_loss(_image(out["normal_image"], size)),
            "normal_pred": lambda: out["loss_normal_pred"],
        }
        return {name: self.lambdas(name, step) * term() for name, term in unweighted.items()
                if self.lambdas(name, step) > 0 and (name != "normal_pred" or "loss_normal_pred" in out)}

    def real_step(self, step: int, pixels: tuple[Tensor, Tensor, Tensor] | None = None) -> StepLoss:
        """The input-view terms on `pixels` (rays_o, rays_d, RGBA of `RealView.sample`), drawn unless given."""
        return self.shade_real(step, self.march_real(step, pixels))

    def march_real(self, step: int, pixels: tuple[Tensor, Tensor, Tensor] | None = None) -> MarchedView:
        """The first half of `real_step`: the pixels' rays, jittered and marched; the target rides along."""
        options, draw = self.options, self.renderer.on_ray_stream
        assert self.real_view is not None
        rays_o, rays_d, target = (pixels if pixels is not None
                                  else draw(self.real_view.sample, self.num_rays, self.generator))
        anneal = (1 - step / self.iters) if options.noise_real_camera_annealing else 1.0
        rays_o, rays_d = draw(_jittered_rays, rays_o, rays_d, options.noise_real_camera * anneal)
        settings = RenderSettings(shading="albedo", ratio=1.0, perturb=True)
        return MarchedView(self.renderer.march(rays_o, rays_d, settings), settings, target=target)

    def shade_real(self, step: int, marched: MarchedView) -> StepLoss:
        """The second half of `real_step`: the render and the weighted input-view terms."""
        assert marched.target is not None
        out = self.renderer.shade(marched.rays, marched.settings)
        terms = self.real_terms(out, marched.target.reshape(-1, 4), step)  # flat, as the rays are
        return StepLoss(sum(terms.values(), torch.zeros((), device=out["image"].device)), terms)

    def real_terms(self, out: dict[str, Tensor], target: Tensor, step: int) -> dict[str, Tensor]:
        """The weighted input-view terms of a render of pixels whose RGBA is `target` [..., 4]."""
        w, terms = self.lambdas, {}
        gt_rgb, gt_alpha = target[..., :3], target[..., 3:]
        if w("image", step) > 0:
            terms["image"] = w("image", step) * losses.image_loss(out["image"], gt_rgb, gt_alpha)
        if w("mask", step) > 0:
            terms["mask"] = w("mask", step) * losses.mask_loss(out["weights_sum"], gt_alpha[..., 0])
        return terms
