"""Mesh export on analytic fields: geometry, floaters, UV atlas, baked texture, file formats, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from nerf.errors import UserError
from nerf import mesh as mesh_module
from nerf.mesh import dilate, export_mesh, rasterize, split_faces

RADIUS = 0.5
FLOATER_CENTRE = torch.tensor([0.75, 0.75, 0.75])


def sphere_density(x: torch.Tensor, radius: float = RADIUS) -> torch.Tensor:
    """sigma = 20 inside, 0 outside, smoothed over a few grid cells: the surface sigma = 10 is at `radius`."""
    return 20 * torch.sigmoid((radius - x.norm(dim=-1)) / 0.02)


def with_floater(x: torch.Tensor) -> torch.Tensor:
    floater = 20 * torch.sigmoid((0.08 - (x - FLOATER_CENTRE.to(x)).norm(dim=-1)) / 0.02)
    return sphere_density(x) + floater


def albedo(x: torch.Tensor) -> torch.Tensor:
    return (0.5 + 0.8 * x).clamp(0, 1)


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse v / vt / f a/ta ... lines directly: positions, uvs, position faces, uv faces."""
    v, vt, f = [], [], []
    for line in path.read_text().splitlines():
        head, *rest = line.split()
        if head == "v":
            v.append([float(t) for t in rest])
        elif head == "vt":
            vt.append([float(t) for t in rest])
        elif head == "f":
            f.append([[int(i) - 1 for i in corner.split("/")] for corner in rest])
    faces = np.array(f)
    return np.array(v), np.array(vt), faces[..., 0], faces[..., 1]


def texture_error(mesh: trimesh.Trimesh, image: np.ndarray, samples: int = 4000) -> np.ndarray:
    """|texture(uv(p)) - albedo(p)| at random surface points, uv interpolated from the corners (v up)."""
    points, face_index = trimesh.sample.sample_surface(mesh, samples, seed=0)
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[face_index], points)
    uv = (bary[..., None] * mesh.visual.uv[mesh.faces[face_index]]).sum(1)
    h, w = image.shape[:2]
    cols = np.clip((uv[:, 0] * w).astype(int), 0, w - 1)
    rows = np.clip(((1 - uv[:, 1]) * h).astype(int), 0, h - 1)
    baked = image[rows, cols, :3] / 255.0
    return np.abs(baked - albedo(torch.from_numpy(points).float()).numpy())


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("mesh")
    return export_mesh(with_floater, albedo, 1.0, out, resolution=72, decimate_target=None, texture_size=256)


def test_writes_the_four_files(exported: dict[str, Path]) -> None:
    assert {p.name for p in exported.values()} == {"mesh.obj", "mesh.mtl", "albedo.png", "mesh.glb"}
    assert all(p.is_file() for p in exported.values())
    mtl = exported["mtl"].read_text()
    assert "newmtl mat0" in mtl and "map_Kd albedo.png" in mtl
    assert exported["obj"].read_text().startswith("mtllib mesh.mtl\nusemtl mat0\n")


def test_sphere_is_watertight_with_the_right_radius_and_outward_faces(exported: dict[str, Path]) -> None:
    v, _, faces, _ = read_obj(exported["obj"])
    mesh = trimesh.Trimesh(v, faces, process=False)
    assert mesh.is_watertight
    radii = np.linalg.norm(v, axis=1)
    assert np.all(np.abs(radii - RADIUS) < 0.03 * RADIUS)
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * RADIUS**3, rel=0.05)  # > 0: normals point out


def test_floater_is_removed(exported: dict[str, Path]) -> None:
    v, *_ = read_obj(exported["obj"])
    assert np.linalg.norm(v - FLOATER_CENTRE.numpy(), axis=1).min() > 0.5


def test_floater_is_kept_when_cleanup_is_off(tmp_path: Path) -> None:
    paths = export_mesh(with_floater, albedo, 1.0, tmp_path, resolution=48, decimate_target=None,
                        texture_size=128, keep_ratio=0.0)
    v, *_ = read_obj(paths["obj"])
    assert np.linalg.norm(v - FLOATER_CENTRE.numpy(), axis=1).min() < 0.1


def test_uvs_are_in_the_unit_square(exported: dict[str, Path]) -> None:
    _, vt, faces, uv_faces = read_obj(exported["obj"])
    assert vt.min() >= 0 and vt.max() <= 1
    assert faces.shape == uv_faces.shape and uv_faces.max() == len(vt) - 1


def test_obj_texture_matches_the_albedo_on_the_surface(exported: dict[str, Path]) -> None:
    mesh = trimesh.load(exported["obj"], force="mesh")
    image = np.asarray(mesh.visual.material.image.convert("RGB"))
    assert image.shape == (256, 256, 3)
    error = texture_error(mesh, image)
    assert error.mean() < 0.015 and np.quantile(error, 0.99) < 0.05


def test_glb_reloads_textured_and_matches_the_albedo(exported: dict[str, Path]) -> None:
    mesh = trimesh.load(exported["glb"], force="mesh")
    image = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))
    obj_v, *_ = read_obj(exported["obj"])
    assert np.abs(np.linalg.norm(mesh.vertices, axis=1) - RADIUS).max() < 0.03 * RADIUS
    assert len(mesh.faces) == len(read_obj(exported["obj"])[2]) and len(mesh.vertices) >= len(obj_v)
    error = texture_error(mesh, image)
    assert error.mean() < 0.015 and np.quantile(error, 0.99) < 0.05


def test_grid_spans_the_bound_and_vertices_are_in_world_units(tmp_path: Path) -> None:
    big = 1.2  # outside [-1, 1]: only visible when the grid spans the scene bound
    paths = export_mesh(lambda x: sphere_density(x, big), albedo, 1.5, tmp_path, resolution=64,
                        decimate_target=3000, texture_size=128)
    v, *_ = read_obj(paths["obj"])
    assert np.abs(np.linalg.norm(v, axis=1) - big).max() < 0.03 * big


def test_decimation_reaches_the_target_and_keeps_the_shape(tmp_path: Path) -> None:
    paths = export_mesh(sphere_density, albedo, 1.0, tmp_path, resolution=64, decimate_target=2000,
                        texture_size=128)
    v, _, faces, _ = read_obj(paths["obj"])
    assert len(faces) <= 2000
    assert np.abs(np.linalg.norm(v, axis=1) - RADIUS).max() < 0.03 * RADIUS


def test_split_faces_is_a_balanced_partition_into_compact_pieces() -> None:
    rng = np.random.default_rng(0)
    vertices = rng.uniform(-1, 1, (3000, 3)).astype(np.float32)
    faces = rng.integers(0, len(vertices), (1001, 3))
    groups = split_faces(vertices, faces, 8)
    assert len(groups) == 8 and sorted(np.concatenate(groups).tolist()) == list(range(len(faces)))
    assert max(map(len, groups)) - min(map(len, groups)) <= 1
    centroids = vertices[faces].mean(1)
    whole = (centroids.max(0) - centroids.min(0)).prod()
    assert all((centroids[g].max(0) - centroids[g].min(0)).prod() < whole / 4 for g in groups)


def test_a_mesh_charted_in_many_pieces_is_welded_and_textured(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(mesh_module, "FACES_PER_ATLAS_PIECE", 800)  # 16 pieces of the sphere's 12,000 faces
    paths = export_mesh(sphere_density, albedo, 1.0, tmp_path, resolution=72, decimate_target=None, texture_size=256)
    v, vt, faces, uv_faces = read_obj(paths["obj"])
    assert trimesh.Trimesh(v, faces, process=False).is_watertight  # the pieces share their cut's vertices
    assert vt.min() >= 0 and vt.max() <= 1 and uv_faces.max() == len(vt) - 1
    mesh = trimesh.load(paths["obj"], force="mesh")
    error = texture_error(mesh, np.asarray(mesh.visual.material.image.convert("RGB")))
    assert error.mean() < 0.015 and np.quantile(error, 0.99) < 0.05


@pytest.mark.parametrize("value, match", [(0.0, "no density above"), (50.0, "everywhere")])
def test_degenerate_density_is_a_user_error(tmp_path: Path, value: float, match: str) -> None:
    with pytest.raises(UserError, match=match):
        export_mesh(lambda x: torch.full(x.shape[:1], value), albedo, 1.0, tmp_path, resolution=16)
    assert not any(tmp_path.iterdir())


def test_rasterize_matches_an_edge_function_test() -> None:
    """Two triangles sharing an edge plus a separate one: coverage and barycentrics of every texel centre."""
    size = 24
    corners = torch.tensor([
        [[2.0, 3.0], [16.0, 4.0], [6.0, 14.0]],
        [[16.0, 4.0], [18.0, 16.0], [6.0, 14.0]],  # shared edge x + y = 20 crosses centres
        [[3.0, 17.0], [11.0, 22.5], [2.5, 23.0]],
    ], dtype=torch.float64)
    face, bary = rasterize(corners, size, chunk=2)  # chunk 2: the third triangle comes in a second pass
    face = face.numpy()
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    inside, closed = [], []
    for tri in corners.numpy():
        # Edge functions: the centre is inside when it is on the interior side of all three edges.
        (ax, ay), (bx, by), (cx, cy) = tri
        winding = np.sign((bx - ax) * (cy - ay) - (by - ay) * (cx - ax))
        sides = np.stack([(q[0] - p[0]) * (ys - p[1]) - (q[1] - p[1]) * (xs - p[0])
                          for p, q in zip(tri, np.roll(tri, -1, axis=0))]) * winding
        inside.append((sides > 1e-9).all(0))
        closed.append((sides > -1e-9).all(0))
    inside, closed = np.stack(inside), np.stack(closed)
    for index in range(3):
        assert (face[inside[index]] == index).all()
    # Centres exactly on an edge go to a triangle owning that edge; centres outside every triangle stay empty.
    rows, cols = np.nonzero(face >= 0)
    assert closed[face[rows, cols], rows, cols].all()
    np.testing.assert_array_equal(face >= 0, closed.any(0))
    assert (closed.any(0) & ~inside.any(0)).sum() >= 5  # centres on the shared edge: no cracks there
    covered = face >= 0
    points = (bary[..., None] * corners[torch.from_numpy(face).clamp(min=0)]).sum(-2).numpy()
    np.testing.assert_allclose(points[covered], np.stack([xs, ys], -1)[covered], atol=1e-9)
    assert np.allclose(bary.sum(-1).numpy()[covered], 1) and (bary.numpy()[covered] >= -1e-6).all()


def test_dilate_fills_nearest_colour_within_the_radius() -> None:
    texture = np.zeros((9, 9, 3), np.uint8)
    covered = np.zeros((9, 9), bool)
    texture[4, 1], texture[4, 7] = (200, 0, 0), (0, 0, 200)
    covered[4, 1] = covered[4, 7] = True
    out = dilate(texture, covered, 2)
    for r in range(9):
        for c in range(9):
            d_left, d_right = np.hypot(r - 4, c - 1), np.hypot(r - 4, c - 7)
            if min(d_left, d_right) > 2:
                assert not out[r, c].any()
            else:
                assert tuple(out[r, c]) == ((200, 0, 0) if d_left < d_right else (0, 0, 200))


@pytest.mark.gpu
def test_field_on_the_gpu_gives_the_cpu_mesh(tmp_path: Path, exported: dict[str, Path]) -> None:
    def on_cuda(fn):
        def wrapped(x: torch.Tensor) -> torch.Tensor:
            assert x.is_cuda
            return fn(x)
        return wrapped

    paths = export_mesh(on_cuda(with_floater), on_cuda(albedo), 1.0, tmp_path, resolution=72,
                        decimate_target=None, texture_size=256, device="cuda")
    gpu_v, _, gpu_f, _ = read_obj(paths["obj"])
    cpu_v, _, cpu_f, _ = read_obj(exported["obj"])
    assert gpu_f.shape == cpu_f.shape
    np.testing.assert_allclose(np.sort(gpu_v, axis=0), np.sort(cpu_v, axis=0), atol=1e-4)
