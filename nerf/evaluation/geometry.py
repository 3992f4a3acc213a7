"""Geometry metrics between a reconstructed and a ground-truth triangle mesh in the same frame.

Surface metrics compare uniformly sampled surface points: Chamfer-L1 is the mean of accuracy (reconstruction to
ground truth) and completeness (ground truth to reconstruction), both mean Euclidean nearest-neighbour distances;
the F-score at tau is the harmonic mean of the share of points within tau in each direction (Tatarchenko et al.
2019). Volume IoU compares inside/outside on a voxel grid, decided per voxel by ray parity along three axes
(majority vote), so small holes in a mesh change a few voxels instead of flooding a whole column.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.spatial import cKDTree

from nerf.errors import UserError
from nerf.mesh import Mesh

F_SCORE_FRACTIONS = (0.01, 0.02, 0.05)  # of the ground truth's bounding-box diagonal
PAIRS_PER_CHUNK = 1 << 22


def load_mesh(path: str | Path) -> Mesh:
    """A triangle mesh from any format trimesh reads (OBJ, PLY, GLB, STL, OFF); scenes are merged."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise UserError(f"mesh {path} does not exist; give --gt_mesh a mesh file (e.g. mesh.ply of a synthetic scene).")
    try:
        mesh = trimesh.load(str(path), force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types for unreadable or foreign files
        raise UserError(f"cannot read mesh {path} ({type(exc).__name__}); "
                        "give an OBJ, PLY, GLB, STL or OFF file.") from None
    if not hasattr(mesh, "faces") or len(mesh.faces) == 0:
        raise UserError(f"mesh {path} has no triangles; give a triangle mesh.")
    return Mesh(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64))


def sample_surface(mesh: Mesh, count: int, seed: int = 0) -> np.ndarray:
    """`count` points distributed uniformly by area over the surface (deterministic for a seed)."""
    tri = mesh.vertices[mesh.faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if area.sum() <= 0:
        raise UserError("a mesh has zero surface area; it cannot be compared.")
    rng = np.random.default_rng(seed)
    which = rng.choice(len(tri), size=count, p=area / area.sum())
    u, v = rng.random(count), rng.random(count)
    outside = u + v > 1  # fold the unit square onto the triangle: uniform barycentric coordinates
    u[outside], v[outside] = 1 - u[outside], 1 - v[outside]
    a, b, c = tri[which, 0], tri[which, 1], tri[which, 2]
    return a + u[:, None] * (b - a) + v[:, None] * (c - a)


def nearest_distances(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Euclidean distance from every point to its nearest reference point."""
    return cKDTree(reference).query(points, workers=-1)[0]


def chamfer_l1(pred: np.ndarray, gt: np.ndarray) -> float:
    """0.5 * (mean pred->gt + mean gt->pred) nearest-neighbour distance of two point sets."""
    return 0.5 * float(nearest_distances(pred, gt).mean() + nearest_distances(gt, pred).mean())


def fscore_from_distances(d_pred_gt: np.ndarray, d_gt_pred: np.ndarray, tau: float) -> tuple[float, float, float]:
    """(F-score, precision, recall) at distance tau from the two directed nearest-neighbour distances."""
    precision, recall = float((d_pred_gt < tau).mean()), float((d_gt_pred < tau).mean())
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return f, precision, recall


def fscore(pred: np.ndarray, gt: np.ndarray, tau: float) -> float:
    return fscore_from_distances(nearest_distances(pred, gt), nearest_distances(gt, pred), tau)[0]


# --- voxels ------------------------------------------------------------------------------------------------
class VoxelGrid(NamedTuple):
    """A cube of resolution^3 voxels; voxel (i, j, k) has its centre at origin + (index + 0.5) * step."""

    origin: np.ndarray
    step: float
    resolution: int

    def centers(self, axis: int) -> np.ndarray:
        return self.origin[axis] + (np.arange(self.resolution) + 0.5) * self.step


def enclosing_grid(meshes: list[Mesh], resolution: int, margin_voxels: int = 2) -> VoxelGrid:
    """The smallest cube grid holding every mesh with a margin (so no surface touches the grid's border)."""
    lo = np.min([m.vertices.min(0) for m in meshes], axis=0)
    hi = np.max([m.vertices.max(0) for m in meshes], axis=0)
    extent = float((hi - lo).max())
    step = extent / (resolution - 2 * margin_voxels)
    origin = (lo + hi) / 2 - resolution * step / 2
    return VoxelGrid(origin, step, resolution)


def _column_crossings(vertices: np.ndarray, faces: np.ndarray, grid: VoxelGrid) -> np.ndarray:
    """Inside-parity [R, R, R] from rays along axis 2 through every (axis 0, axis 1) column of voxel centres.

    Every triangle lists the columns in its bounding box (chunked), keeps those inside it in projection, and adds
    one crossing at its height; a cumulative sum along the column counts the crossings below each voxel centre.
    """
    res, step = grid.resolution, grid.step
    # An irrational sub-voxel shift keeps rays off mesh edges and vertices, which would count twice.
    shift = step * 1e-3 * np.sqrt([2.0, 3.0])
    tri = vertices[faces]
    lo = np.ceil((tri[:, :, :2].min(1) - grid.origin[:2] - shift) / step - 0.5).clip(0, res - 1).astype(np.int64)
    hi = np.floor((tri[:, :, :2].max(1) - grid.origin[:2] - shift) / step - 0.5).clip(0, res - 1).astype(np.int64)
    extent = (hi - lo + 1).clip(min=0)
    counts = extent[:, 0] * extent[:, 1]
    crossings = np.zeros((res * res, res + 1), np.int32)
    z_centers = grid.centers(2)
    ends = np.cumsum(counts)
    start = 0
    while start < len(tri):
        budget = (ends[start - 1] if start else 0) + PAIRS_PER_CHUNK
        stop = max(int(np.searchsorted(ends, budget, side="right")), start + 1)
        chunk_counts = counts[start:stop]
        which = np.repeat(np.arange(start, stop), chunk_counts)
        offset = np.arange(len(which)) - np.repeat(np.cumsum(chunk_counts) - chunk_counts, chunk_counts)
        width = extent[which, 0]
        ci, cj = lo[which, 0] + offset % width, lo[which, 1] + offset // width
        p = np.stack([ci, cj], -1) * step + grid.origin[:2] + 0.5 * step + shift
        a, b, c = tri[which, 0], tri[which, 1], tri[which, 2]
        area = _cross2(b[:, :2] - a[:, :2], c[:, :2] - a[:, :2])
        valid = np.abs(area) > 1e-15  # triangles seen edge-on are never crossed
        area = np.where(valid, area, 1.0)
        w_b = _cross2(p - a[:, :2], c[:, :2] - a[:, :2]) / area
        w_c = _cross2(b[:, :2] - a[:, :2], p - a[:, :2]) / area
        w_a = 1 - w_b - w_c
        inside = valid & (w_a >= 0) & (w_b >= 0) & (w_c >= 0)
        height = w_a * a[:, 2] + w_b * b[:, 2] + w_c * c[:, 2]
        below = np.searchsorted(z_centers, height[inside])  # first voxel centre above the crossing
        np.add.at(crossings, (ci[inside] * res + cj[inside], below), 1)
        start = stop
    return (np.cumsum(crossings, axis=1)[:, :res] % 2 == 1).reshape(res, res, res)


def _cross2(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def voxelize(mesh: Mesh, grid: VoxelGrid) -> np.ndarray:
    """Occupancy [R, R, R] (x, y, z order): inside by at least two of the three axis-aligned parity tests."""
    votes = np.zeros((grid.resolution,) * 3, np.int64)
    for perm in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
        permuted = VoxelGrid(grid.origin[list(perm)], grid.step, grid.resolution)
        inside = _column_crossings(mesh.vertices[:, perm], mesh.faces, permuted)
        votes += np.transpose(inside, np.argsort(perm))
    return votes >= 2


def volume_iou(pred: Mesh, gt: Mesh, resolution: int = 128) -> float:
    """IoU of the two meshes' interiors on a common cube grid."""
    grid = enclosing_grid([pred, gt], resolution)
    a, b = voxelize(pred, grid), voxelize(gt, grid)
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def geometry_metrics(pred: Mesh, gt: Mesh, num_points: int = 100_000, fractions=F_SCORE_FRACTIONS,
                     voxel_resolution: int = 128, seed: int = 0) -> dict:
    """Chamfer-L1, accuracy, completeness, F-score/precision/recall at tau = fraction x GT diagonal, volume IoU."""
    p, g = sample_surface(pred, num_points, seed), sample_surface(gt, num_points, seed + 1)
    d_pg, d_gp = nearest_distances(p, g), nearest_distances(g, p)
    diagonal = gt.diagonal
    result: dict = {"chamfer_l1": 0.5 * float(d_pg.mean() + d_gp.mean()), "accuracy": float(d_pg.mean()),
                    "completeness": float(d_gp.mean()), "gt_diagonal": diagonal,
                    "fscore": {}, "precision": {}, "recall": {}}
    for fraction in fractions:
        key = f"{100 * fraction:g}%"
        f, precision, recall = fscore_from_distances(d_pg, d_gp, fraction * diagonal)
        result["fscore"][key], result["precision"][key], result["recall"][key] = f, precision, recall
    result["volume_iou"] = volume_iou(pred, gt, voxel_resolution)
    return result
