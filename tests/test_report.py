"""report.html: written by main.py into the workspace, self-contained (images inline, videos and mesh files by
their paths inside the workspace, nothing from the network), and it loads in a real headless browser with every
image and video found and no console error."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from nerf.cli import train as main_module
from nerf.options_file import load_options
from nerf.report import write_report

TINY = ["--lambda_prior", "0", "--iters", "30", "--HW_real", "32", "--HW_synthetic", "32", "--num_rays", "512",
        "--occupancy_grid_size", "16", "--max_steps", "64", "--HW_vis", "8", "--eval_interval", "1",
        "--no_cuda_ray", "--save_mesh", "--mesh_resolution", "32"]
PROBE = """<script>
window.addEventListener("load", () => {
  const out = [];
  for (const img of document.images) out.push("img " + (img.complete && img.naturalWidth > 0 ? "ok" : "broken"));
  const videos = [...document.querySelectorAll("video")];
  let pending = videos.length;
  const done = () => { const pre = document.createElement("pre"); pre.id = "probe";
                       pre.textContent = out.join("\\n"); document.body.appendChild(pre); };
  if (!pending) done();
  for (const v of videos) {
    const finish = (state) => { out.push("video " + state); if (--pending === 0) done(); };
    if (v.readyState >= 1) finish("ok");
    else { v.addEventListener("loadedmetadata", () => finish("ok")); v.addEventListener("error", () => finish("broken")); }
  }
});
</script>"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    image = root / "rgba.png"
    yy, xx = np.mgrid[0:64, 0:64]
    disk = ((xx - 32) ** 2 + (yy - 32) ** 2 < 18 ** 2).astype(np.uint8) * 255
    cv2.imwrite(str(image), np.dstack([disk // 3, disk // 2, disk, disk]))
    (root / "token_autoinit.txt").write_text("cup\n")
    assert main_module.main([*TINY, "--image_path", str(image), "--workspace", str(root / "ws")]) == 0
    return root / "ws"


def links(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]*)"', page)


def test_main_writes_a_self_contained_report(workspace):
    page = (workspace / "report.html").read_text(encoding="utf-8")
    targets = links(page)
    assert targets and not [t for t in targets if re.match(r"(https?:)?//", t)]  # nothing from the network
    files = [t for t in targets if not t.startswith("data:")]
    assert all((workspace / t).is_file() for t in files), files  # videos and mesh files by workspace paths
    assert sum(t.startswith("results/") and t.endswith(".mp4") for t in files) == 6
    assert {"mesh/mesh.obj", "mesh/mesh.glb"} <= set(files)
    assert sum(t.startswith("data:image/png") for t in targets) >= 5  # input, mask, input view, orbit, mesh
    assert "<polyline" in page and "train/loss" in page  # loss curves drawn from the logged scalars
    assert re.search(r"\d+ vertices, \d+ faces", page)
    assert "--iters</td><td>30</td><td>5000" in page  # options that differ from the defaults


def test_the_report_names_its_workspace_labels_its_pictures_and_shows_what_was_used(workspace):
    page = (workspace / "report.html").read_text(encoding="utf-8")
    assert "<title>ws</title>" in page and "<h1>ws</h1>" in page
    assert "A high-resolution DSLR image of a cup (&lt;token&gt; = the word &#x27;cup&#x27;" in page
    assert "<span>rendered opacity</span>" in page and "<span>45°</span>" in page  # tiles labelled
    assert '<text x="296" y="154" font-size="10" text-anchor="end">step 30</text>' in page  # the step axis
    assert "train/lr: 0.001 at step 30" in page  # --lr as used, not the grid tables' 10x
    sizes = re.findall(r"</a></td><td>([^<]*)</td>", page)
    files = sorted(p for p in (workspace / "mesh").iterdir() if p.is_file())
    assert len(sizes) == len(files) and "0 KiB" not in sizes
    assert all(re.fullmatch(r"\d+ B|\d+\.\d (KiB|MiB)", size) for size in sizes), sizes


def test_report_shows_the_evaluation(workspace):
    (workspace / "evaluation.json").write_text(json.dumps({"input_view": {"psnr": 31.25, "mask_iou": 0.97}}))
    write_report(workspace, load_options(workspace / "options.json"))
    page = (workspace / "report.html").read_text(encoding="utf-8")
    assert "input_view.psnr</td><td>31.25" in page and "input_view.mask_iou</td><td>0.97" in page


def test_report_loads_in_headless_chromium(workspace, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    probe = workspace / "probe.html"  # beside the report, so its relative links resolve the same way
    probe.write_text((workspace / "report.html").read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"))
    try:
        dom = subprocess.run([*flags, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                             capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stderr[-2000:]
    states = found.group(1).splitlines()
    assert states.count("img ok") >= 5 and states.count("video ok") == 6 and not any("broken" in s for s in states)
    shot = tmp_path / "shot.png"
    run = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1000,1600",
                          (workspace / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    pixels = cv2.imread(str(shot))
    assert pixels is not None and pixels.std() > 10  # not blank
