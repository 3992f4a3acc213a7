"""Every command-line tool, run as a real process on its worst inputs: one line on stderr, exit status 2, no
traceback, and nothing created or changed on disk.

The processes run two at a time in a module fixture (each pays for importing torch); the tests read the results.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
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
    ("scripts/make-tiny-sd.py", ["{file}"], "is a file"),
    ("scripts/benchmark.py", ["nosuch"], "invalid choice"),
    ("scripts/make-examples.py", ["--nosuch"], "unrecognized arguments"),
]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for folders): equal snapshots mean nothing changed."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


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
             "new": root / "new"}
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
