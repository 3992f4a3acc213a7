"""Evaluation reports as text tables and JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from nerf.fileio import write_text_atomic

# Display name -> path into an evaluation report.
HEADLINE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("input PSNR", ("input_view", "psnr")),
    ("input SSIM", ("input_view", "ssim")),
    ("input mask IoU", ("input_view", "mask_iou")),
    ("novel PSNR", ("novel_views", "psnr")),
    ("novel SSIM", ("novel_views", "ssim")),
    ("novel mask IoU", ("novel_views", "mask_iou")),
    ("novel LPIPS", ("novel_views", "lpips")),
    ("novel CLIP sim.", ("novel_views", "clip_similarity")),
    ("Chamfer-L1", ("geometry", "chamfer_l1")),
    ("F@1%", ("geometry", "fscore", "1%")),
    ("F@2%", ("geometry", "fscore", "2%")),
    ("F@5%", ("geometry", "fscore", "5%")),
    ("volume IoU", ("geometry", "volume_iou")),
)


def lookup(report: dict, path: Sequence[str]) -> Any:
    """The value at `path`, or None where a section or value is missing."""
    value: Any = report
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def headline(report: dict) -> dict[str, float | None]:
    return {name: lookup(report, path) for name, path in HEADLINE}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table with aligned columns (None shows as '-')."""
    cells = [list(header)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def comparison_table(reports: dict[str, dict]) -> str:
    """Metric rows, one column per report; rows that no report has are left out."""
    values = {name: headline(report) for name, report in reports.items()}
    rows = [[metric] + [values[name][metric] for name in reports] for metric, _ in HEADLINE
            if any(values[name][metric] is not None for name in reports)]
    return format_table(["metric", *reports], rows)


def write_json(path: str | Path, data: dict) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")
