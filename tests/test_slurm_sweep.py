"""The sweep script: job planning, and a real local submitit run with stand-in commands (one fails)."""

from __future__ import annotations

import csv
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nerf.cli import sweep

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "example-slurm.py"

# Stand-in for textual inversion: checks it got one photo, writes learned_embeds.bin into --output_dir.
FAKE_TI = """
import os, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
assert os.listdir(args["train_data_dir"]) == ["rgba.png"], os.listdir(args["train_data_dir"])
os.makedirs(args["output_dir"], exist_ok=True)
open(os.path.join(args["output_dir"], "learned_embeds.bin"), "wb").write(b"embedding")
"""

# Stand-in for main.py: fails for inputs named "bad", else logs two steps of losses to tensorboard.
FAKE_MAIN = """
import json, os, sys, time
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
argv = sys.argv[1:]
workspace = argv[argv.index("--workspace") + 1]
os.makedirs(workspace, exist_ok=True)
json.dump(argv, open(os.path.join(workspace, "argv.json"), "w"))
if "/bad/" in argv[argv.index("--image_path") + 1]:
    sys.exit(3)
writer = EventFileWriter(os.path.join(workspace, "tensorboard"))
for step, loss, rgb in [(1, 0.5, 0.25), (2, 0.125, 0.0625)]:
    values = [summary_pb2.Summary.Value(tag=tag, simple_value=v)
              for tag, v in [("train/loss", loss), ("train/loss_rgb", rgb), ("train/lr", 0.001)]]
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values)))
writer.close()
open(os.path.join(workspace, "report.html"), "w").write("<html></html>")
"""


def make_inputs(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
        Image.fromarray(np.full((8, 8, 4), 200, np.uint8)).save(root / name / "rgba.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / name / "mask.png")  # must not reach TI
        (root / name / "token_autoinit.txt").write_text("thing\n")
    return root


def stand_in(path: Path, source: str) -> str:
    path.write_text(source)
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(path))}"


def test_local_sweep_reports_one_success_and_one_failure(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "inputs", ["bad", "good"])
    out = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--inputs_dir", str(inputs), "--output_dir", str(out), "--cluster", "local",
         "--gpus", "0", "--cpus_per_task", "1", "--timeout_min", "5",
         "--ti_command", stand_in(tmp_path / "fake_ti.py", FAKE_TI),
         "--main_command", stand_in(tmp_path / "fake_main.py", FAKE_MAIN), "--", "--iters", "7"],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 1, result.stdout + result.stderr  # one job failed
    rows = {row["input"]: row for row in csv.DictReader((out / "summary.csv").open())}
    assert set(rows) == {"bad", "good"}
    good, bad = rows["good"], rows["bad"]
    assert good["status"] == "ok" and float(good["wall_time_s"]) > 0
    assert float(good["loss"]) == 0.125 and float(good["loss_rgb"]) == 0.0625  # last step, lr left out
    assert "lr" not in rows["good"]
    assert bad["status"].startswith("failed: nerf exited with 3")
    assert bad["loss"] == ""
    # Both jobs ran textual inversion first, and main.py got the learned token, the prompt and the extras.
    for name in ("good", "bad"):
        embeds = out / name / "token" / "learned_embeds.bin"
        assert embeds.read_bytes() == b"embedding"
        argv = json.loads((out / name / "nerf" / "argv.json").read_text())
        assert argv[:3] == ["--O", "--image_path", str((inputs / name / "rgba.png").resolve())]
        assert argv[argv.index("--learned_embeds_path") + 1] == str(embeds)
        assert argv[argv.index("--text") + 1] == "A high-resolution DSLR image of a <token>"
        assert argv[-2:] == ["--iters", "7"]
    assert rows["good"]["learned_embeds"] == str(out / "good" / "token" / "learned_embeds.bin")
    markdown = (out / "summary.md").read_text()
    assert "| good | ok |" in markdown and "| bad | failed: nerf exited with 3" in markdown
    assert "loss 0.125" in markdown
    assert f"[report]({out / 'good' / 'nerf' / 'report.html'})" in markdown  # each run's report is linked
    assert rows["good"]["report"] == str(out / "good" / "nerf" / "report.html")


def plan(tmp_path: Path, *extra: str):
    inputs = make_inputs(tmp_path / "inputs", ["a"]) if not (tmp_path / "inputs").exists() else tmp_path / "inputs"
    args, main_args = sweep.parse_args(["--inputs_dir", str(inputs), "--output_dir", str(tmp_path / "out"),
                                         *extra])
    return sweep.plan_job(inputs / "a" / "rgba.png", args, main_args)


def test_textual_inversion_uses_the_readme_recipe_and_the_autoinit_word(tmp_path: Path) -> None:
    spec = plan(tmp_path)
    token, nerf = spec.stages
    assert (token.name, nerf.name) == ("token", "nerf")
    for flag in ("--placeholder_token=_object_", "--initializer_token=thing", "--gradient_accumulation_steps=4",
                 "--max_train_steps=3000", "--learning_rate=5.0e-04", "--scale_lr", "--use_augmentations",
                 "--resolution=512", f"--output_dir={(tmp_path / 'out' / 'a' / 'token').resolve()}"):
        assert flag in token.args
    main = nerf.args
    assert main[main.index("--learned_embeds_path") + 1].endswith("a/token/learned_embeds.bin")


def test_existing_embeddings_skip_textual_inversion(tmp_path: Path) -> None:
    learned = tmp_path / "out" / "a" / "token" / "learned_embeds.bin"  # a token stage that has finished
    learned.parent.mkdir(parents=True)
    learned.write_bytes(b"x")
    assert [stage.complete() for stage in plan(tmp_path).stages] == [True, False]
    beside = tmp_path / "inputs" / "a" / "learned_embeds.bin"  # one given next to the input: no token stage
    beside.write_bytes(b"x")
    spec = plan(tmp_path)
    assert [stage.name for stage in spec.stages] == ["nerf"]
    main = spec.stages[0].args
    assert main[main.index("--learned_embeds_path") + 1] == str(beside.resolve())


def test_skip_flag_runs_main_without_embeddings(tmp_path: Path) -> None:
    spec = plan(tmp_path, "--skip_textual_inversion")
    assert [stage.name for stage in spec.stages] == ["nerf"]
    assert "--learned_embeds_path" not in spec.stages[0].args


def test_missing_initializer_word_is_a_user_error(tmp_path: Path) -> None:
    make_inputs(tmp_path / "inputs", ["a"])
    (tmp_path / "inputs" / "a" / "token_autoinit.txt").unlink()
    from nerf.errors import UserError

    with pytest.raises(UserError, match="--initializer_token"):
        plan(tmp_path)
    assert "--initializer_token=toy" in plan(tmp_path, "--initializer_token", "toy").stages[0].args


def test_no_inputs_exits_2(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--inputs_dir", str(tmp_path), "--dry_run"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "no */rgba.png" in result.stderr


def test_a_crashing_job_is_reported_and_the_summary_still_written(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "inputs", ["a", "b"])
    out = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--inputs_dir", str(inputs), "--output_dir", str(out), "--cluster", "debug",
         "--skip_textual_inversion", "--main_command", str(tmp_path / "no-such-program")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["input"] for r in rows] == ["a", "b"]
    assert all(r["status"].startswith("failed: ") and "no-such-program" in r["status"] for r in rows)
    assert all(r["wall_time_s"] == "" for r in rows)


def test_slurm_without_slurm_is_one_line_pointing_to_local(tmp_path: Path, monkeypatch) -> None:
    inputs = make_inputs(tmp_path / "inputs", ["a"])
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))  # no srun on the PATH
    result = subprocess.run([sys.executable, str(SCRIPT), "--inputs_dir", str(inputs), "--output_dir",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--cluster local" in result.stderr
    assert not (tmp_path / "out").exists()
