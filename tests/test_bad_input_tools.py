"""Every command-line tool, run as a real process on its worst inputs: one line on stderr, exit status 2, no
traceback, and nothing created or changed on disk.

The processes run two at a time in a module fixture (each pays for importing torch); the tests read the results.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TI = "textual-inversion/textual_inversion.py"
TI_BASE = ["--pretrained_model_name_or_path", "{missing}", "--placeholder_token", "<obj>", "--initializer_token", "dog"]

# (tool, arguments, what the line must name: one string or several); {file}: an existing file, {empty}: an empty folder, {photos}: a folder
# holding one RGBA photo, {missing}: a path that does not exist, {new}: a path the tool must not create.
CASES = [
    ("main.py", ["--lambda_prior", "abc"], "--lambda_prior"),
    ("main.py", ["--lamda_prior", "1"], "did you mean --lambda_prior"),
    ("main.py", ["--image_path", "{empty}", "--workspace", "{new}"], "is a folder"),
    ("main.py", ["--image_path", "{photos}/rgba.png", "--workspace", "{file}"], "is a file"),
    ("main.py", ["--seed", "-1", "--workspace", "{new}"], "--seed"),
    (TI, [*TI_BASE, "--train_data_dir", "{missing}", "--output_dir", "{new}"], "--train_data_dir"),
    (TI, [*TI_BASE, "--train_data_dir", "{photos}", "--output_dir", "{file}"], "is a file"),
    (TI, [*TI_BASE, "--train_data_dir", "{photos}", "--output_dir", "{new}", "--learning_rte", "1"],
     "did you mean --learning_rate"),
    ("textual-inversion/autoinit.py", ["get_initialization", "{photos}/rgba.png", "--text_emb_file", "{file}",
                                       "--no_save"], "cannot read noun embeddings"),
    ("textual-inversion/autoinit.py", ["get_initialization", "--clip_modle", "x"], "did you mean --clip_model"),
    ("textual-inversion/autoinit.py", ["get_initialization", "{photos}/rgba.png", "--text_emb_file", "{missing}"],
     ("`python textual-inversion/autoinit.py save_embeddings", "--initializer_token WORD")),
    ("scripts/extract-mask.py", ["--image_path", "{missing}", "--output_dir", "{new}"], "not found"),
    ("scripts/extract-mask.py", ["--image_path", "{photos}/rgba.png", "--output_dir", "{file}"], "is a file"),
    ("scripts/evaluate.py", ["{empty}"], "not a reconstruction workspace"),
    ("scripts/evaluate.py", ["--suite", "synthetic", "--scenes", "nosuch", "--work_dir", "{new}"], "invalid choice"),
    ("scripts/example-slurm.py", ["--inputs_dir", "{empty}", "--output_dir", "{new}"], "no */rgba.png"),
    ("scripts/reconstruct.py", ["{missing}", "--workspace", "{new}"], "is not a photo file"),
    ("scripts/reconstruct.py", ["{photos}/rgba.png", "--workspace", "{file}"], "is a file"),
    ("scripts/make-synthetic-scene.py", ["{new}", "--family", "nosuch"], "invalid choice"),
    ("scripts/train-toy-prior.py", ["{new}", "--objects", "nosuch:0=cup"], "unknown scene family"),
    ("scripts/check-toy-prior.py", ["{empty}"], "objects.json"),
    ("scripts/train-toy-zero123.py", ["{new}", "--prior", "{empty}"], "not a toy Stable Diffusion prior"),
    ("scripts/make-tiny-sd.py", ["{file}"], "is a file"),
    ("scripts/benchmark.py", ["nosuch"], "invalid choice"),
    ("scripts/benchmark.py", ["recon", "--main_args", "--ray_stream"], "after '=' (--main_args=VALUE)"),
    ("scripts/make-examples.py", ["--nosuch"], "unrecognized arguments"),
    # options that would be silently ignored or fail far from the command line
    ("main.py", ["--lambda_mask", "-1", "--workspace", "{new}"], "--lambda_mask is a loss weight and must be >= 0"),
    ("main.py", ["--workspace", ""], "--workspace is empty"),
    ("main.py", ["--seed", "4294967296", "--workspace", "{new}"], "--seed must be in [0, 2^32)"),
    ("main.py", ["--image_path", "{photos}/rgba.png", "--lambda_prior", "0", "--learned_embeds_path", "{missing}",
                 "--workspace", "{new}"],
     "does not exist; give the file (or folder) textual inversion wrote"),
    ("main.py", ["--image_path", "{photos}/rgba.png", "--learned_embeds_path", "{inputs}/nan_embeds.bin",
                 "--workspace", "{new}"], "NaN or infinite"),
    ("main.py", ["--image_path", "{photos}/rgba.png", "--learned_embeds_path", "{inputs}/a1111.pt", "--workspace",
                 "{new}"], "AUTOMATIC1111 format"),
    ("main.py", ["--test", "--workspace", "{inputs}/edited_record"], "has iters = \"many\""),
    ("scripts/evaluate.py", ["{inputs}/edited_record", "--no_perceptual"], "has iters = \"many\""),
    ("main.py", ["--test", "--workspace", "{inputs}/corrupt_checkpoint"], "or train the workspace again"),
    ("main.py", ["--image_path", "{photos}/rgba.png", "--workspace", "{inputs}/latest_is_a_folder"],
     "latest.pth is not a file"),
    (TI, [*TI_BASE[:-1], "red cup", "--train_data_dir", "{photos}", "--output_dir", "{new}"], "is 2 words"),
    (TI, [*TI_BASE, "--train_data_dir", "{photos}", "--output_dir", "{new}", "--learning_rate", "nan"],
     "--learning_rate must be a finite number"),
    # pictures: one claiming 100000 x 100000 pixels; an alpha (or a mask) of several low labels
    ("main.py", ["--image_path", "{inputs}/huge.png", "--workspace", "{new}"], "cannot be read by OpenCV"),
    ("scripts/extract-mask.py", ["--image_path", "{inputs}/huge.png", "--output_dir", "{new}"], "too large to read"),
    ("main.py", ["--image_path", "{inputs}/label_alpha.png", "--workspace", "{new}"], "a label map of several"),
    ("scripts/extract-mask.py", ["--image_path", "{photos}/rgba.png", "--mask_path", "{inputs}/labels.png",
                                 "--output_dir", "{new}"], "a label map of several"),
]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for folders): equal snapshots mean nothing changed."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def huge_png(path: Path, side: int = 100_000) -> None:
    """A PNG whose header claims side x side RGBA pixels, with almost no data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def bad_inputs(folder: Path, photo: Path) -> None:
    """Inputs that look usable but are not: embeddings, workspace records, checkpoints, pictures."""
    import torch

    from nerf.option_checks import parse
    from nerf.options_file import save_options, to_dict

    folder.mkdir()
    torch.save({"_obj_": torch.full((32,), float("nan"))}, folder / "nan_embeds.bin")
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.zeros(2, 32)}, "name": "obj"},
               folder / "a1111.pt")
    record = to_dict(parse(["--workspace", str(folder / "edited_record")]))
    record["train"]["iters"] = "many"
    (folder / "edited_record").mkdir()
    (folder / "edited_record" / "options.json").write_text(json.dumps(record))
    corrupt = folder / "corrupt_checkpoint"
    save_options(parse(["--workspace", str(corrupt), "--image_path", str(photo), "--no_cuda_ray"]),
                 corrupt / "options.json")
    (corrupt / "checkpoints").mkdir()
    (corrupt / "checkpoints" / "latest.pth").write_bytes(b"half a checkpoint")
    (folder / "latest_is_a_folder" / "checkpoints" / "latest.pth").mkdir(parents=True)
    huge_png(folder / "huge.png")
    labels = np.zeros((32, 32), np.uint8)
    labels[4:28, 4:16], labels[4:28, 16:28], labels[:4] = 1, 3, 2  # table, cup, wall
    rgba = np.full((32, 32, 4), 120, np.uint8)
    rgba[..., 3] = labels
    cv2.imwrite(str(folder / "label_alpha.png"), rgba)
    cv2.imwrite(str(folder / "labels.png"), labels)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> tuple[list[subprocess.CompletedProcess], dict, dict]:
    root = tmp_path_factory.mktemp("bad-input")
    (root / "file").write_text("a file, not a folder\n")
    (root / "empty").mkdir()
    (root / "photos").mkdir()
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (40, 90, 200, 255)
    cv2.imwrite(str(root / "photos" / "rgba.png"), rgba)
    names = {"file": root / "file", "empty": root / "empty", "photos": root / "photos", "missing": root / "missing",
             "new": root / "new", "inputs": root / "inputs"}
    bad_inputs(root / "inputs", root / "photos" / "rgba.png")
    before = snapshot(root)

    def run(case: tuple[str, list[str], str]) -> subprocess.CompletedProcess:
        tool, args, _ = case
        argv = [arg.format(**{k: str(v) for k, v in names.items()}) for arg in args]
        return subprocess.run([sys.executable, str(REPO / tool), *argv], cwd=root, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, CASES))
    return results, before, snapshot(root)


def message_lines(stderr: str) -> list[str]:
    """stderr without Python's warnings (a `...Warning: ...` line and the indented source line after it)."""
    lines, skip_source = [], False
    for line in stderr.splitlines():
        if skip_source and line.startswith((" ", "\t")):
            skip_source = False
            continue
        skip_source = bool(re.search(r"\w+Warning: ", line))
        if not skip_source and line.strip():
            lines.append(line)
    return lines


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{Path(c[0]).stem}:{' '.join(c[1])[:40]}" for c in CASES])
def test_a_bad_input_is_one_line_exit_2_and_no_traceback(outcomes, index):
    result = outcomes[0][index]
    expected = CASES[index][2]
    expected = (expected,) if isinstance(expected, str) else expected
    lines = message_lines(result.stderr)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert all(part in lines[0] for part in expected), lines[0]


def test_no_refused_command_created_or_changed_anything(outcomes):
    _, before, after = outcomes
    assert after == before


def test_no_tool_imports_torchvision_to_read_its_command_line():
    """torchvision, with the torch._dynamo it imports, takes about a second to import: the tools' modules leave it to
    the code that uses it, so that a command line answered in one line (above) does not wait for it."""
    tools = [REPO / "main.py", *(REPO / "scripts").glob("*.py"), *(REPO / "textual-inversion").glob("*.py")]
    modules = sorted({m for tool in tools for m in re.findall(r"^from ([\w.]+) import main$", tool.read_text(), re.M)})
    assert "nerf.cli.train" in modules and "nerf.textual_inversion.train" in modules
    code = f"import sys, {', '.join(modules)}; assert 'torchvision' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
