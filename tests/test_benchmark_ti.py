"""`scripts/benchmark.py ti` as a CPU smoke run on the tiny model: the real loop, timed by its phase hook."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import math

import pytest

from nerf.benchmarks import common, ti
from nerf.errors import UserError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    ti.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.skipif(ti.torch.cuda.is_available(), reason="the smoke run is the CPU path")
def test_cpu_smoke_run(tiny_sd_dir, tmp_path, monkeypatch):
    calls, data_files = [], []
    real_train = ti.train

    def spy(args, on_phase):
        calls.append(args)
        data_files.append(sorted(p.name for p in Path(args.train_data_dir).iterdir()))
        return real_train(args, on_phase)

    monkeypatch.setattr(ti, "train", spy)
    result = ti.run(parse("--device", "cpu", "--model", str(tiny_sd_dir), "--resolution", "16", "--steps", "3",
                          "--warmup", "1", "--variant", "unfused_data=--dataloader_num_workers 0 --train_batch_size 2"))
    assert [row["variant"] for row in result["rows"]] == ["default", "unfused_data"]
    # the README's settings reach the real loop; a variant's flags come last and win
    first, second = calls
    assert (first.train_batch_size, first.gradient_accumulation_steps, first.use_augmentations, first.scale_lr,
            first.lr_scheduler, first.lr_warmup_steps, first.max_train_steps) == (1, 4, True, True, "constant", 0, 4)
    assert second.train_batch_size == 2 and second.dataloader_num_workers == 0
    assert data_files == [["rgba.png"]] * 2  # the photo alone, as the sweep stages it
    for row in result["rows"]:
        assert row["timed_steps"] == 3
        phases = [row[p] for p in ti.PHASES]
        assert all(v >= 0 for v in phases) and row["unet_forward"] > 0 and row["backward"] > 0
        assert row["ms_step"] > 0 and row["steps_per_s"] == pytest.approx(1000 / row["ms_step_mean"])
        assert row["min_3000_steps"] == pytest.approx(3000 * row["ms_step_mean"] / 60000)
    assert result["info"]["card"] == "cpu"
    assert "break_even_steps" not in result["rows"][0] and "extra_wall_s" in result["rows"][1]
    table = common.format_table(result["rows"], result["columns"])
    assert table.splitlines()[0].split() == result["columns"]
    common.write_json(tmp_path / "ti.json", result)
    assert json.loads((tmp_path / "ti.json").read_text())["rows"][0]["variant"] == "default"


def test_break_even_is_the_extra_time_over_the_saving_per_step():
    from nerf.benchmarks.ti import add_break_even

    rows = [{"run_wall_s": 11.5, "ms_step_mean": 75.8}, {"run_wall_s": 19.9, "ms_step_mean": 65.3},
            {"run_wall_s": 12.0, "ms_step_mean": 80.0}]
    add_break_even(rows)
    assert rows[1]["extra_wall_s"] == pytest.approx(8.4) and rows[1]["break_even_steps"] == pytest.approx(800.0)
    assert rows[2]["break_even_steps"] == math.inf  # slower per step: never pays back


def test_phase_clock_splits_steps_at_their_logging_mark():
    clock = ti.PhaseClock(cuda=False)
    marks = [("data", 0.0), ("unet_forward", 0.004), ("logging", 0.005),  # step 1: its start is not marked
             ("data", 0.010), ("unet_forward", 0.030), ("logging", 0.031),
             ("data", 0.050), ("unet_forward", 0.100), ("logging", 0.102)]
    clock.marks = [(phase, seconds, None) for phase, seconds in marks]
    steps = clock.steps()
    assert [sum(s["gpu"].values()) for s in steps] == pytest.approx([26.0, 71.0])
    assert steps[0]["host"] == pytest.approx({"data": 5.0, "unet_forward": 20.0, "logging": 1.0})
    assert steps[1]["gpu"] == pytest.approx({"data": 19.0, "unet_forward": 50.0, "logging": 2.0})


def test_bad_arguments():
    with pytest.raises(UserError, match="--variant"):
        ti.parse_variants(["no-equals-sign"])
    with pytest.raises(UserError, match="--warmup"):
        ti.run(parse("--warmup", "0", "--device", "cpu"))
    with pytest.raises(UserError, match="--photo"):
        ti.run(parse("--photo", "/nonexistent.png", "--device", "cpu"))
