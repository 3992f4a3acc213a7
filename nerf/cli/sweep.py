"""Reconstruct many inputs at once: one cluster job per rgba.png, then a summary table.

    python scripts/example-slurm.py --partition gpu                       # every bundled example
    python scripts/example-slurm.py --inputs_dir my-photos --cluster local -- --iters 2000

Each job runs two stages of the pipeline (`nerf.pipeline`, the same commands as scripts/reconstruct.py):
textual inversion with RealFusion's recipe into <output_dir>/<name>/token (skipped when a learned_embeds.bin already
exists next to the input, or with --skip_textual_inversion), then `main.py --O` with the learned token in the
prompt into <output_dir>/<name>/nerf. A stage whose output is complete is skipped, so a sweep run again continues.
Arguments after `--` go to main.py. Failed jobs are reported; the others go on. The summary (Markdown and CSV)
lists status, wall time, the final training losses read from each workspace's tensorboard log, and the output paths.
"""

from __future__ import annotations

import argparse
import csv
import io
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from nerf import pipeline, workspace_lock
from nerf.errors import ArgumentParser, UserError, one_line_errors
from nerf.fileio import write_text_atomic
from nerf.options import DEFAULT_MODEL


@dataclass
class JobSpec:
    """Everything one job needs; plain data so that it pickles into the cluster job."""

    name: str
    out_dir: str
    stages: list[pipeline.Stage]  # run in order until one fails; complete ones are skipped
    workspace: str
    learned_embeds: str | None


@dataclass
class JobRecord:
    """What a job reports back: one (stage, exit code, seconds, log file) per stage it ran."""

    stages: list[tuple[str, int, float, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(code == 0 for _, code, _, _ in self.stages)

    @property
    def seconds(self) -> float:
        return sum(seconds for _, _, seconds, _ in self.stages)


def run_job(spec: JobSpec) -> JobRecord:
    """Runs inside the cluster job: each stage as a subprocess with its own log, stopping at a failure."""
    record = JobRecord()
    Path(spec.out_dir).mkdir(parents=True, exist_ok=True)
    for stage in spec.stages:
        if stage.complete():
            continue
        log_path = Path(spec.out_dir) / f"{stage.name}.log"
        start = time.monotonic()
        with open(log_path, "w", encoding="utf-8") as log:
            log.write("$ " + shlex.join(stage.argv) + "\n")
            log.flush()
            code = pipeline.run(stage, stdout=log, stderr=subprocess.STDOUT).returncode
        record.stages.append((stage.name, code, time.monotonic() - start, str(log_path)))
        if code != 0:
            break
    return record


# --- planning -------------------------------------------------------------------------------------

def find_inputs(inputs_dir: Path) -> list[Path]:
    inputs = sorted(inputs_dir.glob("*/rgba.png"))
    if not inputs:
        raise UserError(f"no */rgba.png under {inputs_dir}; make inputs with scripts/extract-mask.py")
    return inputs


def initializer_word(rgba: Path, fallback: str | None) -> str:
    """The textual-inversion initializer: token_autoinit.txt next to the input, else --initializer_token."""
    try:
        return pipeline.initializer_word(rgba)
    except UserError:
        if fallback:
            return fallback
        raise


def with_program(stage: pipeline.Stage, command: str | None) -> pipeline.Stage:
    """The stage run by another program (--ti_command, --main_command) with the same arguments."""
    return stage if command is None else replace(stage, program=tuple(shlex.split(command)))


def plan_job(rgba: Path, args: argparse.Namespace, main_args: list[str]) -> JobSpec:
    name = rgba.parent.name
    out_dir = (args.output_dir / name).resolve()
    rgba = rgba.resolve()
    stages: list[pipeline.Stage] = []
    given = rgba.parent / "learned_embeds.bin"
    embeds = given if given.is_file() else None
    if embeds is None and not args.skip_textual_inversion:
        settings = pipeline.TokenSettings(args.pretrained_model_name_or_path)
        token = pipeline.learn_token(rgba, initializer_word(rgba, args.initializer_token), out_dir / "token", settings)
        stages.append(with_program(token, args.ti_command))
        embeds = token.output
    nerf = pipeline.reconstruct(rgba, out_dir / "nerf", model=args.pretrained_model_name_or_path,
                                learned_embeds=embeds, main_args=main_args)
    stages.append(with_program(nerf, args.main_command))
    return JobSpec(name, str(out_dir), stages, str(out_dir / "nerf"), str(embeds) if embeds else None)


# --- results --------------------------------------------------------------------------------------

def final_scalars(workspace: Path) -> dict[str, float]:
    """Last logged value of every train/* scalar (except the learning rate) in the workspace's event files."""
    from nerf.report import read_scalars

    return {tag.removeprefix("train/"): points[-1][1] for tag, points in sorted(read_scalars(workspace).items())
            if tag.startswith("train/") and tag != "train/lr" and points}


@dataclass
class Row:
    name: str
    status: str
    seconds: float | None
    losses: dict[str, float]
    workspace: str
    learned_embeds: str
    mesh: str
    report: str  # the workspace's report.html, "" when there is none


def summarise(spec: JobSpec, record: JobRecord | None, error: str | None) -> Row:
    if record is None:
        status, seconds = f"failed: {error}", None
    elif record.ok:
        status, seconds = "ok", record.seconds
    else:
        stage, code, _, log = record.stages[-1]
        status, seconds = f"failed: {stage} exited with {code} (log: {log})", record.seconds
    workspace = Path(spec.workspace)
    mesh = workspace / "mesh" / "mesh.glb"
    embeds = spec.learned_embeds if spec.learned_embeds and Path(spec.learned_embeds).is_file() else ""
    losses = final_scalars(workspace) if workspace.is_dir() else {}
    report = workspace / "report.html"
    return Row(spec.name, status, seconds, losses, str(workspace), embeds, str(mesh) if mesh.is_file() else "",
               str(report) if report.is_file() else "")


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| input | status | wall time | final losses | workspace | learned embeddings | mesh | report |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        wall = "-" if r.seconds is None else f"{r.seconds:.0f} s"
        losses = ", ".join(f"{k} {v:.4g}" for k, v in r.losses.items()) or "-"
        report = f"[report]({r.report})" if r.report else "-"
        cells = [r.name, r.status, wall, losses, r.workspace, r.learned_embeds or "-", r.mesh or "-", report]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: list[Row]) -> str:
    loss_names = sorted({k for r in rows for k in r.losses})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["input", "status", "wall_time_s", *loss_names, "workspace", "learned_embeds", "mesh", "report"])
    for r in rows:
        wall = "" if r.seconds is None else f"{r.seconds:.1f}"
        losses = [r.losses.get(k, "") for k in loss_names]
        writer.writerow([r.name, r.status, wall, *losses, r.workspace, r.learned_embeds, r.mesh, r.report])
    return buffer.getvalue()


# --- driver ---------------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our options, and the arguments after `--` (passed to main.py unchanged)."""
    ours, main_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs_dir", type=Path, default=pipeline.REPO / "examples" / "natural-images",
                        help="folder of <name>/rgba.png inputs")
    parser.add_argument("--output_dir", type=Path, default=pipeline.REPO / "outputs" / "sweep",
                        help="per-input outputs, cluster logs and the summary")
    parser.add_argument("--cluster", choices=("slurm", "local", "debug"), default="slurm")
    parser.add_argument("--partition", default="your-slurm-partition")
    parser.add_argument("--constraint", default=None, help="SLURM --constraint, e.g. volta32gb")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per job")
    parser.add_argument("--cpus_per_task", type=int, default=8)
    parser.add_argument("--mem_gb", type=int, default=32)
    parser.add_argument("--timeout_min", type=int, default=90)
    parser.add_argument("--pretrained_model_name_or_path", default=DEFAULT_MODEL)
    parser.add_argument("--initializer_token", default=None,
                        help="textual-inversion initializer for inputs without token_autoinit.txt")
    parser.add_argument("--skip_textual_inversion", action="store_true",
                        help="never run textual inversion (main.py then uses the input's learned_embeds.bin if it has one, "
                             "else its token_autoinit.txt)")
    parser.add_argument("--ti_command", default=None,
                        help="program that runs textual inversion, from the repository root "
                             "(default: python textual-inversion/textual_inversion.py)")
    parser.add_argument("--main_command", default=None,
                        help="program that runs the reconstruction, from the repository root (default: python main.py)")
    parser.add_argument("--dry_run", action="store_true", help="print every job's commands and submit nothing")
    return parser.parse_args(ours), main_args


def make_executor(args: argparse.Namespace):
    import submitit

    executor = submitit.AutoExecutor(folder=args.output_dir / "slurm_logs", cluster=args.cluster)
    executor.update_parameters(
        name="realfusion", timeout_min=args.timeout_min, tasks_per_node=1, gpus_per_node=args.gpus,
        cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb, slurm_partition=args.partition,
    )
    if args.constraint:
        executor.update_parameters(slurm_constraint=args.constraint)
    return executor


def run(argv: list[str]) -> int:
    args, main_args = parse_args(argv)
    inputs = find_inputs(args.inputs_dir)
    specs = [plan_job(rgba, args, main_args) for rgba in inputs]
    if args.dry_run:
        for spec in specs:
            for stage in spec.stages:
                print(f"[{spec.name}] {stage.name}: {shlex.join(stage.argv)}")
        return 0
    if args.cluster == "slurm" and shutil.which("srun") is None:
        raise UserError("--cluster slurm needs SLURM (no srun here); run it on the cluster, or pass --cluster local "
                        "to run the jobs on this machine (--dry_run prints them).")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    with workspace_lock.held(args.output_dir, flag="--output_dir"):  # one sweep per folder
        return launch(args, specs)


def launch(args: argparse.Namespace, specs: list[JobSpec]) -> int:
    """Run every job, write the summary; 1 when a job failed."""
    executor = make_executor(args)
    start = time.monotonic()
    with executor.batch():
        jobs = [executor.submit(run_job, spec) for spec in specs]
    print(f"submitted {len(jobs)} jobs ({args.cluster}); logs in {args.output_dir / 'slurm_logs'}")
    outcomes: list[tuple[JobRecord | None, str | None]] = []
    for spec, job in zip(specs, jobs):  # in order: the debug executor runs each job inside result()
        try:
            outcomes.append((job.result(), None))
        except Exception as error:  # a crashed, killed or timed-out job: report it, keep the others
            lines = str(error).strip().splitlines()
            outcomes.append((None, lines[-1] if lines else repr(error)))
        record = outcomes[-1][0]
        ok = record is not None and record.ok
        print(f"[{spec.name}] {'done' if ok else 'FAILED'} ({len(outcomes)}/{len(jobs)})", flush=True)
    rows = [summarise(spec, *outcome) for spec, outcome in zip(specs, outcomes)]
    write_text_atomic(args.output_dir / "summary.md", markdown_table(rows))
    write_text_atomic(args.output_dir / "summary.csv", csv_table(rows))
    failed = sum(not r.status.startswith("ok") for r in rows)
    print(markdown_table(rows))
    print(f"{len(rows) - failed} ok, {failed} failed in {time.monotonic() - start:.0f} s; "
          f"summary: {args.output_dir / 'summary.md'}, {args.output_dir / 'summary.csv'}")
    return 1 if failed else 0


@one_line_errors
def main() -> int:
    return run(sys.argv[1:])

