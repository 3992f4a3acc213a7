"""The radiance field split into parts: the composition against a hand computation from its parts, finite-difference
normals of a known density, and the renderer driven through the `Field` protocol alone (CPU, reference backends)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from nerf.checkpoint import load_checkpoint
from nerf.errors import UserError
from nerf.field import SHADINGS, RadianceField
from nerf.field.background import Background
from nerf.field.geometry import NORMAL_EPS, DensityGeometry
from nerf.field.mlp import mlp
from nerf.renderer import Renderer, RenderSettings

BOUND = 0.75
RATIO = 0.2


def small_geometry(**kwargs) -> DensityGeometry:
    return DensityGeometry(bound=BOUND, grid_levels=4, log2_hashmap_size=12, backend="torch", **kwargs)


@pytest.fixture
def field() -> RadianceField:
    torch.manual_seed(0)
    field = RadianceField(small_geometry(), Background(backend="torch"))
    with torch.no_grad():  # grid values and outputs large enough that colour and density vary across points
        field.geometry.encoder.embeddings.uniform_(-1, 1)
        field.geometry.mlp[-1].weight.mul_(10)
    return field


def points(n: int = 200, radius: float = 0.5, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, generator=gen) * 2 - 1) * radius


def unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def hand_density(geometry: DensityGeometry, x: Tensor) -> tuple[Tensor, Tensor]:
    """sigma = exp(h0 + blob), albedo = sigmoid(h1..3), h = W2 relu(W1 relu(W0 f + b0) + b1) + b2."""
    h = geometry.encoder(x, bound=BOUND)
    linears = [m for m in geometry.mlp if isinstance(m, torch.nn.Linear)]
    for index, layer in enumerate(linears):
        h = h @ layer.weight.T + layer.bias
        h = h.clamp(min=0) if index < len(linears) - 1 else h
    blob = geometry.blob_density * torch.exp(-(x * x).sum(-1) / (2 * geometry.blob_radius**2))
    return torch.exp(h[:, 0] + blob), torch.sigmoid(h[:, 1:])


def hand_normals(geometry: DensityGeometry, x: Tensor) -> Tensor:
    """-grad(sigma) / |grad(sigma)| by central differences, one axis at a time."""
    gradient = torch.stack([(hand_density(geometry, x + e)[0] - hand_density(geometry, x - e)[0]) / (2 * NORMAL_EPS)
                            for e in torch.eye(3) * NORMAL_EPS], dim=-1)
    return unit(-gradient)


@pytest.mark.parametrize("shading", SHADINGS)
@torch.no_grad()
def test_composed_field_matches_its_parts_by_hand(field: RadianceField, shading: str) -> None:
    x = points()
    d = unit(torch.randn(len(x), 3))
    light = unit(torch.tensor([0.3, -0.5, 0.8]))
    sigma, rgb, normals = field(x, d, light, RATIO, shading, need_normals=True)
    want_sigma, albedo = hand_density(field.geometry, x)
    want_normals = hand_normals(field.geometry, x)
    lambert = RATIO + (1 - RATIO) * (want_normals @ light).clamp(min=0)
    want_rgb = {"albedo": albedo, "lambertian": albedo * lambert[:, None],
                "textureless": lambert[:, None].expand(-1, 3)}[shading]
    torch.testing.assert_close(sigma, want_sigma, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(normals, want_normals, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(rgb, want_rgb, rtol=1e-3, atol=1e-3)
    assert 0.1 < float(albedo.std()) and 0.1 < float(lambert.std())  # the comparison is not between constants


@torch.no_grad()
def test_normals_only_when_asked_or_shaded_and_unknown_shading_fails(field: RadianceField) -> None:
    x = points(10)
    assert field(x, shading="albedo")[2] is None
    assert field(x, shading="albedo", need_normals=True)[2].shape == (10, 3)
    with pytest.raises(ValueError, match="unknown shading"):
        field(x, shading="normal")


def test_finite_difference_normals_of_a_known_density_point_outward() -> None:
    """With the MLP's output layer zeroed, sigma = exp(blob(x)) falls off radially: normals are x / |x|, and agree
    with autograd's -grad(sigma) / |grad(sigma)|."""
    torch.manual_seed(0)
    geometry = small_geometry()
    with torch.no_grad():
        geometry.mlp[-1].weight.zero_()
        geometry.mlp[-1].bias.zero_()
    x = points(300)
    x = x[x.norm(dim=-1) > 0.05]
    normals = geometry.normal(x).detach()
    assert (normals * unit(x)).sum(-1).min() > 0.9999
    x.requires_grad_()
    (gradient,) = torch.autograd.grad(geometry.density(x)["sigma"].sum(), x)
    assert (normals * unit(-gradient)).sum(-1).min() > 0.9999


def test_grid_levels_mask_zeroes_the_finest_levels_through_the_field(field: RadianceField) -> None:
    x = points(20)
    full = field.geometry.features(x)
    field.grid_levels_mask = 1
    assert field.geometry.grid_levels_mask == 1
    masked = field.geometry.features(x)
    torch.testing.assert_close(masked[:, :-2], full[:, :-2])
    assert torch.all(masked[:, -2:] == 0) and torch.any(full[:, -2:] != 0)


def _graph_nodes(tensor: Tensor) -> set[str]:
    seen, stack, names = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack += [child for child, _ in node.next_functions]
    return names


def test_mlp_on_stacked_rows_matches_row_by_row_without_copying_its_activations() -> None:
    """The stencil's [7, N, C] features through the MLP: the same values and gradients as each [N, C] slice through
    a copy with out-of-place ReLUs, and a backward without the whole-buffer copies of an in-place op on a view."""
    torch.manual_seed(0)
    net = mlp(8, 4, 16, 3)
    reference = torch.nn.Sequential(*[torch.nn.ReLU() if isinstance(layer, torch.nn.ReLU) else layer for layer in net])
    x = torch.randn(7, 50, 8, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out = net(x)
    expected = torch.stack([reference(x_ref[k]) for k in range(7)])
    assert out.shape == (7, 50, 4)
    torch.testing.assert_close(out, expected)
    assert not {"CopySlices", "AsStridedBackward0"} & _graph_nodes(out)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), [x, *net.parameters()])
    grads_ref = torch.autograd.grad((expected * weights).sum(), [x_ref, *reference.parameters()])
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want)


def test_param_groups_grid_at_ten_times_the_rate_and_every_parameter_once(field: RadianceField) -> None:
    groups = field.param_groups(1e-3)
    assert [g["lr"] for g in groups] == [1e-2, 1e-3, 1e-3]
    assert groups[0]["params"] == [field.geometry.encoder.embeddings]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in field.parameters())
    assert field.encoder.backend_name == "torch"


def test_background_is_none_without_a_network_and_the_renderer_composites_on_white(field: RadianceField) -> None:
    """Training renders use the learned background where there is one, white where there is none."""
    rays_o = torch.tensor([[0.0, 0.0, 2.0], [0.5, 0.0, 2.0]])
    rays_d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.6, 0.8]])  # both leave the scene cube behind: no samples
    plain = RadianceField(field.geometry)
    assert plain.background(rays_d) is None
    for f, want in ((field, field.background(rays_d).detach()), (plain, torch.ones(2, 3))):
        renderer = Renderer(f, BOUND, grid_size=16, max_steps=64, backend="torch").train()
        out = renderer.render(rays_o, rays_d, RenderSettings(light_d=torch.tensor([0.0, 0.0, 1.0])))
        assert torch.all(out["weights_sum"] == 0)
        torch.testing.assert_close(out["image"].detach(), want)
    assert not torch.allclose(field.background(rays_d), torch.ones(2, 3))


class SphereStub:
    """Only the `Field` protocol, not an nn.Module: a red ball of density 50 and radius 0.4, no background."""

    grid_levels_mask = 0
    radius = 0.4

    def density(self, x: Tensor) -> dict[str, Tensor]:
        sigma = 50.0 * (x.norm(dim=-1) < self.radius).float()
        return {"sigma": sigma, "albedo": torch.tensor([1.0, 0.0, 0.0]).expand(len(x), 3)}

    def normal(self, x: Tensor) -> Tensor:
        return unit(x)

    def background(self, d: Tensor) -> None:
        return None

    def __call__(self, x: Tensor, d: Tensor, light_d: Tensor | None, ratio: float, shading: str,
                 need_normals: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        out = self.density(x)
        return out["sigma"], out["albedo"], self.normal(x) if need_normals else None


@pytest.mark.parametrize("training", [False, True])
def test_renderer_renders_a_stub_field_through_the_protocol(training: bool) -> None:
    torch.manual_seed(0)
    renderer = Renderer(SphereStub(), bound=1.0, grid_size=32, max_steps=512, backend="torch")
    renderer.update_occupancy()
    renderer.train(training)
    rays_o = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.9, 2.0]])
    rays_d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])  # through the centre; past the ball
    settings = RenderSettings(need_normals=True, need_smooth=training)
    out = renderer.render(rays_o, rays_d, settings)
    torch.testing.assert_close(out["weights_sum"], torch.tensor([1.0, 0.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(out["image"], torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), atol=1e-3, rtol=0)
    assert abs(float(out["depth"][0]) - (2 - SphereStub.radius)) < 0.03
    assert float(out["normal_image"][0, 2]) > 0.9  # the front of the ball faces the camera (+z)


def test_v1_checkpoints_are_refused_as_older(tmp_path) -> None:
    path = tmp_path / "old.pth"
    torch.save({"format": "realfusion-checkpoint-v1", "model": {}}, path)
    with pytest.raises(UserError, match="older version"):
        load_checkpoint(path)


class SoftBallStub(SphereStub):
    """A ball whose density falls off smoothly, with a colour that varies along the ray: semi-transparent
    samples, so the two evaluation renders are compared where compositing order and termination matter."""

    def density(self, x: Tensor) -> dict[str, Tensor]:
        r = x.norm(dim=-1)
        sigma = 30.0 * torch.clamp(1 - r / 0.6, min=0) ** 2
        return {"sigma": sigma, "albedo": torch.stack([x[:, 0].abs(), (x[:, 1] + 1) / 2, x[:, 2].abs()], -1)}


def soft_ball_rays(field: SphereStub, side_count: int) -> tuple[Renderer, Tensor, Tensor]:
    """An evaluation renderer of `field` on the reference ops, and a square of parallel rays looking down -z
    that cover empty, soft and opaque parts of the ball."""
    torch.manual_seed(0)
    renderer = Renderer(field, bound=1.0, grid_size=32, max_steps=256, backend="torch")
    renderer.update_occupancy()
    renderer.eval()
    side = torch.linspace(-0.7, 0.7, side_count)
    yy, xx = torch.meshgrid(side, side, indexing="ij")
    rays_o = torch.stack([xx, yy, torch.full_like(xx, 2.0)], -1).reshape(-1, 3)
    return renderer, rays_o, torch.tensor([0.0, 0.0, -1.0]).expand_as(rays_o).contiguous()


def test_reference_evaluation_renders_every_sample_at_once_like_the_incremental_marcher() -> None:
    """On the reference ops an evaluation render marches and shades every sample in one go; the incremental
    march of the CUDA path (a few samples per live ray per round) gives the same frame, but for the samples
    after a ray turns opaque, whose weight is below the termination threshold."""
    renderer, rays_o, rays_d = soft_ball_rays(SoftBallStub(), 24)
    settings = RenderSettings(need_normals=True)
    light = renderer._light(settings, rays_o)
    at_once = renderer._render_eval(rays_o, rays_d, light, settings)
    incremental = renderer._render_infer(rays_o, rays_d, light, settings)
    assert 0.1 < float(at_once["weights_sum"].mean()) < 0.9  # covers empty, soft and opaque rays
    for key in ("weights_sum", "image", "depth", "normal_image"):
        torch.testing.assert_close(at_once[key], incremental[key], atol=1e-3, rtol=0)


class ShadedSoftBall(SoftBallStub):
    """The soft ball, shaded as the project's field shades (albedo, lambertian or textureless)."""

    def __call__(self, x: Tensor, d: Tensor, light_d: Tensor | None, ratio: float, shading: str,
                 need_normals: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        from nerf.field.shading import SHADERS, needs_normals

        out = self.density(x)
        normal = self.normal(x) if need_normals or needs_normals(shading) else None
        return out["sigma"], SHADERS[shading](out["albedo"], normal, light_d, ratio), normal


@pytest.mark.parametrize("marcher", ["_render_eval", "_render_infer"])
def test_one_pass_gives_the_textureless_image_of_a_separate_textureless_render(marcher) -> None:
    """The test videos take rgb, normals and the textureless pass from one march (`textureless_ratio`): the same
    images as a normals render plus a separate textureless render, with both marchers."""
    renderer, rays_o, rays_d = soft_ball_rays(ShadedSoftBall(), 16)
    light = torch.tensor([0.3, 0.5, 1.0])
    render = getattr(renderer, marcher)
    unit = renderer._light(RenderSettings(light_d=light), rays_o)
    both = render(rays_o, rays_d, unit, RenderSettings(light_d=light, need_normals=True, textureless_ratio=0.1))
    plain = render(rays_o, rays_d, unit, RenderSettings(light_d=light, need_normals=True))
    shaded = render(rays_o, rays_d, unit, RenderSettings(shading="textureless", ratio=0.1, light_d=light))
    for key in ("weights_sum", "image", "depth", "normal_image"):
        torch.testing.assert_close(both[key], plain[key], atol=0, rtol=0)
    torch.testing.assert_close(both["textureless_image"], shaded["image"], atol=1e-6, rtol=0)
    assert float((shaded["image"] - both["image"]).abs().max()) > 0.05  # the two shadings do differ
    full = renderer.render(rays_o, rays_d, RenderSettings(light_d=light, need_normals=True, textureless_ratio=0.1))
    alone = renderer.render(rays_o, rays_d, RenderSettings(shading="textureless", ratio=0.1, light_d=light))
    torch.testing.assert_close(full["textureless_image"], alone["image"], atol=1e-6, rtol=0)  # with the background
