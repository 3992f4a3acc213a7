"""A file whose first line is `# Copied from <path>` must equal that file byte for byte after the marker line.

The CUDA packages each carry a copy of `gridencoder/cuda_build.py` so that each one (and its `setup.py`)
stands alone; this check keeps the copies from drifting apart (diffusers' "Copied from" habit).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = b"# Copied from "
CUDA_BUILD_COPIES = {f"{name}/cuda_build.py" for name in ("raymarching", "shencoder", "freqencoder")}


def python_files(root: Path) -> list[Path]:
    """The `*.py` files of the git work tree `root`, tracked or not yet added: ignored build outputs and
    virtual environments stay out."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.py"],
        cwd=root, capture_output=True, text=True, check=True,
    ).stdout
    return sorted({root / name for name in listed.split("\0") if name and (root / name).is_file()})


def check_copies(root: Path) -> tuple[dict[str, str], list[str]]:
    """({copy: source} for every marked file under `root`, one line per copy that differs from its source)."""
    copies: dict[str, str] = {}
    problems: list[str] = []
    for path in python_files(root):
        first, _, rest = path.read_bytes().partition(b"\n")
        if not first.startswith(MARKER):
            continue
        copy, source = path.relative_to(root).as_posix(), first[len(MARKER):].decode().strip()
        copies[copy] = source
        if not (root / source).is_file():
            problems.append(f"{copy}: the file it is copied from, {source}, does not exist")
        elif rest != (root / source).read_bytes():
            problems.append(f"{copy} differs from {source}: edit {source}, then copy it again below the marker")
    return copies, problems


def test_copies_match_their_source() -> None:
    _, problems = check_copies(REPO)
    assert not problems, "\n".join(problems)


def test_the_cuda_build_copies_are_checked() -> None:
    copies, _ = check_copies(REPO)
    assert {c: s for c, s in copies.items() if c in CUDA_BUILD_COPIES} == dict.fromkeys(
        CUDA_BUILD_COPIES, "gridencoder/cuda_build.py"
    )


def test_a_modified_copy_is_detected(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, capture_output=True)
    (tmp_path / "pkg").mkdir()
    source = 'def f() -> int:\n    return 1\n'
    (tmp_path / "pkg" / "helper.py").write_text(source)
    (tmp_path / "same.py").write_text("# Copied from pkg/helper.py\n" + source)
    (tmp_path / "drifted.py").write_text("# Copied from pkg/helper.py\n" + source.replace("1", "2"))
    (tmp_path / "orphan.py").write_text("# Copied from pkg/gone.py\n" + source)

    copies, problems = check_copies(tmp_path)

    assert set(copies) == {"same.py", "drifted.py", "orphan.py"}
    assert len(problems) == 2
    assert problems[0].startswith("drifted.py differs from pkg/helper.py")
    assert problems[1].startswith("orphan.py: the file it is copied from, pkg/gone.py, does not exist")
