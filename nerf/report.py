"""report.html: one page that shows a person everything a workspace holds, readable offline.

Images are embedded (data URIs), loss curves are inline SVG drawn from the tensorboard scalars, and the videos
and mesh files are linked by their paths inside the workspace, so the page has no network dependency and moves
with the workspace folder. Every part is optional: a part whose files are absent is left out with a note.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from nerf.errors import UserError
from nerf.fileio import write_text_atomic
from nerf.option_checks import resolve
from nerf.options import Options
from nerf.options_file import to_dict
from nerf.outputs import ORBIT_VIEWS

log = logging.getLogger("realfusion")

ORBIT_MOMENTS = 4  # validation orbits shown, spread over training
CURVE_POINTS = 400  # points per loss curve (longer series are thinned)
PREVIEW_SIZE = 192  # side of each mesh preview view, pixels
# Barycentric weights of the points splatted per face: corners, edge midpoints, centre and inner points.
SPLAT_WEIGHTS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [.5, .5, 0], [0, .5, .5], [.5, 0, .5], [1 / 3] * 3,
                          [2 / 3, 1 / 6, 1 / 6], [1 / 6, 2 / 3, 1 / 6], [1 / 6, 1 / 6, 2 / 3]])
STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1100px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
img.pixel { image-rendering: pixelated; } figure { display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }
figcaption { font-size: 0.85em; color: #555; } table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: left; } .warn { color: #a40; }
svg { background: #fafafa; border: 1px solid #ddd; margin: 0 1em 1em 0; }
.tiles { display: grid; font-size: 0.75em; color: #555; text-align: center; }
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_bytes(image: np.ndarray) -> bytes:
    """An RGB(A) or grey uint8 array as PNG bytes."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()


def figure(src: str, caption: str, width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    return (f'<figure><img class="pixel" src="{src}"{size} alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def input_section(opt: Options) -> str:
    """The input photo, its mask and extract-mask.py's framing warnings (framing.json beside the photo)."""
    path = Path(opt.data.image_path)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        return f"<p>The input {html.escape(str(path))} cannot be read here.</p>"
    parts = [figure(data_uri(path.read_bytes()), f"input: {path.name}", 256)]
    if raw.ndim == 3 and raw.shape[2] == 4:
        alpha = raw[..., 3]
        parts.append(figure(data_uri(png_bytes(alpha)), "mask (alpha)", 256))
    framing = path.parent / "framing.json"
    if framing.is_file():
        try:
            warnings = json.loads(framing.read_text(encoding="utf-8")).get("warnings", [])
        except json.JSONDecodeError:
            warnings = ["framing.json is unreadable"]
        parts += [f'<p class="warn">framing: {html.escape(str(w))}</p>' for w in warnings]
    return "".join(parts)


def epoch_images(folder: Path, prefix: str) -> list[tuple[int, Path]]:
    found = []
    for file in folder.glob(f"{prefix}_ep*.png"):
        match = re.fullmatch(rf"{prefix}_ep(\d+)\.png", file.name)
        if match:
            found.append((int(match.group(1)), file))
    return sorted(found)


def spread(items: list, count: int) -> list:
    """`count` items evenly spread over `items`, the first and last included."""
    if len(items) <= count:
        return items
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


REAL_TILES = ("input", "input mask", "masked input", "render", "rendered opacity", "rendered depth")
ORBIT_ROWS = ("colour", "opacity", "depth")


def tiled_figure(src: str, caption: str, width: int, columns: Sequence[str]) -> str:
    """An image of equal tiles in a row (or rows), with each column's label above its tile."""
    labels = "".join(f"<span>{html.escape(label)}</span>" for label in columns)
    return (f'<figure><div class="tiles" style="width:{width}px;grid-template-columns:repeat({len(columns)},1fr)">'
            f'{labels}</div><img class="pixel" src="{src}" width="{width}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def validation_section(workspace: Path) -> str:
    folder = workspace / "validation"
    real, orbits = epoch_images(folder, "real"), epoch_images(folder, "orbit")
    if not real and not orbits:
        return "<p>No validation images yet.</p>"
    parts = []
    if real:
        epoch, file = real[-1]
        parts.append(tiled_figure(data_uri(file.read_bytes()), f"input view rendered (epoch {epoch})", 512,
                                  REAL_TILES))
    azimuths = [f"{round(k * 360 / ORBIT_VIEWS)}°" for k in range(ORBIT_VIEWS)]
    rows = ", ".join(ORBIT_ROWS)
    parts += ["<br>"] + [tiled_figure(data_uri(file.read_bytes()), f"validation orbit, epoch {epoch}: azimuth from "
                                      f"the input view; rows: {rows}", 900, azimuths)
                         for epoch, file in spread(orbits, ORBIT_MOMENTS)]
    return "".join(parts)


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the tensorboard logs under `folder`: tag -> [(step, value)] by step (a resumed run's
    event files are merged; a step logged twice keeps its last value)."""
    if not folder.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            series.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return {tag: sorted(dict(points).items()) for tag, points in series.items()}


def svg_curve(tag: str, points: list[tuple[int, float]], width: int = 320, height: int = 160) -> str:
    """One series as a polyline; a log scale when the values are positive and span two decades."""
    points = [(s, v) for s, v in points if math.isfinite(v)]
    if not points:
        return ""
    points = spread(points, CURVE_POINTS)
    steps, values = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
    log_scale = bool((values > 0).all() and values.max() / values.min() > 100)
    ys = np.log10(values) if log_scale else values
    pad = 24

    def scale(a: np.ndarray, lo: float, hi: float, length: float) -> np.ndarray:
        return (a - lo) / (hi - lo) * length if hi > lo else np.full_like(a, length / 2)

    left = 52  # room for the value axis' labels
    x = left + scale(steps, steps.min(), steps.max(), width - left - pad)
    y = height - pad - scale(ys, ys.min(), ys.max(), height - 2 * pad)
    line = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(x, y))
    label = f"{tag}{' (log)' if log_scale else ''}: {values[-1]:.4g} at step {int(steps[-1])}"
    bottom, right = height - pad, width - pad
    ticks = [(left - 3, height - pad, "end", f"{values.min():.3g}"), (left - 3, pad + 8, "end", f"{values.max():.3g}"),
             (left, height - 6, "start", f"{int(steps.min())}"), (right, height - 6, "end", f"step {int(steps.max())}")]
    axes = (f'<polyline fill="none" stroke="#888" stroke-width="1" points="{left},{pad} {left},{bottom} '
            f'{right},{bottom}"/>' + "".join(f'<text x="{tx}" y="{ty}" font-size="10" text-anchor="{anchor}">'
                                              f"{html.escape(text)}</text>" for tx, ty, anchor, text in ticks))
    return (f'<svg width="{width}" height="{height}" role="img"><title>{html.escape(tag)}</title>'
            f'<text x="4" y="14" font-size="11">{html.escape(label)}</text>{axes}'
            f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.2" points="{line}"/></svg>')


def curves_section(workspace: Path) -> str:
    series = read_scalars(workspace / "tensorboard")
    if not series:
        return "<p>No logged scalars.</p>"
    return "".join(svg_curve(tag, points) for tag, points in sorted(series.items()))


def videos_section(workspace: Path) -> str:
    videos = sorted((workspace / "results").glob("*.mp4"))
    if not videos:
        return "<p>No videos (run main.py --test on the workspace).</p>"
    return "".join(f'<figure><video src="{html.escape(v.relative_to(workspace).as_posix())}" controls loop muted '
                   f'width="256"></video><figcaption>{html.escape(v.name)}</figcaption></figure>' for v in videos)


def mesh_preview(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Front, side and top views of the mesh: points spread over every face, splatted with a z-buffer and shaded by
    the face normal (a quick look at the surface at its iso-level, without a renderer)."""
    corners = vertices[faces]  # [F, 3 corners, 3]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True).clip(1e-12)
    points = np.einsum("sc,fcd->fsd", SPLAT_WEIGHTS, corners).reshape(-1, 3)
    normals = np.repeat(normals, len(SPLAT_WEIGHTS), axis=0)
    half = float(np.abs(points).max()) * 1.05 or 1.0
    views = []
    for right, up, toward in ((0, 1, 2), (2, 1, 0), (0, 2, 1)):  # seen from +z (front), +x (side), +y (top)
        u = ((points[:, right] / half + 1) / 2 * (PREVIEW_SIZE - 1)).round().astype(int)
        v = ((1 - (points[:, up] / half + 1) / 2) * (PREVIEW_SIZE - 1)).round().astype(int)
        shade = ((0.25 + 0.75 * np.abs(normals[:, toward])) * 255).astype(np.uint8)
        image = np.full((PREVIEW_SIZE, PREVIEW_SIZE), 255, np.uint8)
        order = np.argsort(points[:, toward])  # the nearest point is written last
        image[v[order], u[order]] = shade[order]
        views.append(image)
    return np.concatenate(views, axis=1)


def mesh_section(workspace: Path, opt: Options) -> str:
    folder = workspace / "mesh"
    files = sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
    if not files:
        return "<p>No mesh (run main.py --mesh_only on the workspace).</p>"
    rows = "".join(f'<tr><td><a href="{html.escape(f.relative_to(workspace).as_posix())}">{html.escape(f.name)}</a>'
                   f"</td><td>{file_size(f.stat().st_size)}</td></tr>" for f in files)
    parts = [f"<table><tr><th>file</th><th>size</th></tr>{rows}</table>"]
    obj = folder / "mesh.obj"
    if obj.is_file():
        import trimesh

        mesh = trimesh.load(obj, force="mesh", process=False)
        level = opt.output.mesh_threshold
        low, high = mesh.bounds if len(mesh.vertices) else (np.zeros(3), np.zeros(3))
        parts.append(f"<p>{len(mesh.vertices)} vertices, {len(mesh.faces)} faces, watertight: {mesh.is_watertight}, "
                     f"bounds {np.round(low, 3).tolist()} to {np.round(high, 3).tolist()}; iso-level: "
                     f"{'the occupancy threshold' if level is None else level}.</p>")
        if len(mesh.faces):
            preview = mesh_preview(np.asarray(mesh.vertices), np.asarray(mesh.faces))
            parts.append(figure(data_uri(png_bytes(preview)), "mesh at its iso-level: front, side, top",
                                3 * PREVIEW_SIZE))
    return "".join(parts)


def file_size(size: int) -> str:
    """Bytes as a person reads them: 312 B, 4.2 KiB, 1.3 MiB (small files are not '0 KiB')."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def flatten(data: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from flatten(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), data


def evaluation_section(evaluation: Path | None) -> str:
    if evaluation is None or not evaluation.is_file():
        return "<p>No evaluation (scripts/evaluate.py WORKSPACE writes one).</p>"
    try:
        data = json.loads(evaluation.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return f"<p>{html.escape(str(evaluation))} is unreadable.</p>"
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(fmt(v))}</td></tr>"
                   for k, v in flatten(data) if isinstance(v, (int, float)) and not isinstance(v, bool))
    return f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>"


def fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def options_section(opt: Options) -> str:
    """Every option whose value differs from the default, by its flag name."""
    used, default = dict(flatten(to_dict(opt))), dict(flatten(to_dict(resolve(Options()))))
    rows = "".join(f"<tr><td>--{html.escape(key.split('.')[-1])}</td><td>{html.escape(fmt(value))}</td>"
                   f"<td>{html.escape(fmt(default.get(key)))}</td></tr>"
                   for key, value in used.items() if value != default.get(key))
    return f"<table><tr><th>option</th><th>value</th><th>default</th></tr>{rows}</table>"


def prompt_used(opt: Options) -> str:
    """The prompt as the prior read it: <token> replaced by the learned token or the word that stands for it."""
    from nerf.guidance.stable_diffusion import TOKEN_PLACEHOLDER, replace_token_placeholder, resolve_token

    text = opt.prior.text
    if TOKEN_PLACEHOLDER not in text:
        return text
    try:
        word, vector = resolve_token(opt.prior, opt.data.image_path)
    except UserError:  # the token's file or word is gone since training
        return text
    learned = f"learned token {word}" if vector is not None else f"the word '{word}' from token_autoinit.txt"
    return f"{replace_token_placeholder(text, word)} ({TOKEN_PLACEHOLDER} = {learned})"


def prior_summary(opt: Options) -> str:
    """The prior by name, with what it was given: the prompt (Stable Diffusion), the model (Zero-1-to-3)."""
    parts = [f"prior: {opt.prior.guidance}"]
    members = opt.prior.guidance.split("+")
    if "zero123" in members:
        parts.append(f"Zero-1-to-3 model: {opt.prior.zero123_model}")
    if "zero123" not in members or "sd" in members:
        parts.append(f"prompt: {prompt_used(opt)}")
    return " | ".join(parts)


def write_report(workspace: Path, opt: Options, *, evaluation: Path | None = None) -> Path:
    """WORKSPACE/report.html from what the workspace holds now (rewritten whole on every call)."""
    evaluation = evaluation or workspace / "evaluation.json"
    sections = [("Input", input_section(opt)), ("Validation", validation_section(workspace)),
                ("Training curves", curves_section(workspace)), ("Videos", videos_section(workspace)),
                ("Mesh", mesh_section(workspace, opt)), ("Evaluation", evaluation_section(evaluation)),
                ("Options that differ from the defaults", options_section(opt))]
    name = html.escape(workspace.resolve().name)  # also for --workspace .
    body = "".join(f"<h2>{title}</h2>\n{content}\n" for title, content in sections)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{name}</title>'
            f"<style>{STYLE}</style></head><body>\n<h1>{name}</h1>\n<p>RealFusion reconstruction; "
            f"{html.escape(prior_summary(opt))}</p>\n{body}</body></html>\n")
    path = write_text_atomic(workspace / "report.html", page)
    log.info("report: %s", path)
    return Path(path)

