"""notebooks/realfusion.ipynb runs top to bottom (the offline smoke run with a tiny model), so it cannot rot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_notebook_executes_top_to_bottom(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(REPO / "notebooks" / "realfusion.ipynb", as_version=4)
    monkeypatch.setenv("REALFUSION_NOTEBOOK_DIR", str(tmp_path))  # the kernel inherits it: outputs go here
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO / "notebooks")}})
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    rich = [o for o in outputs if o.get("output_type") in ("display_data", "execute_result")]
    assert any("text/html" in o["data"] and "<video" in o["data"]["text/html"] for o in rich)  # the video inline
    assert any("image/png" in o["data"] for o in rich)  # the mesh preview
    assert (tmp_path / "smoke" / "mesh" / "mesh.glb").is_file() and (tmp_path / "smoke" / "report.html").is_file()
