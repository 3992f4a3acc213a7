#!/usr/bin/env python
"""Speed of the pipeline on the GPU, with Stable Diffusion v1.5-shaped random-weight models (no download).

    python scripts/benchmark.py kernels [--out kernels.json]   # CUDA extensions vs PyTorch reference
    python scripts/benchmark.py recon [--full] [--variants ...] # the real Trainer loop, default --O options
    python scripts/benchmark.py ti                             # the real textual-inversion loop, README settings
    python scripts/benchmark.py mesh                           # mesh export at the defaults, split by stage
    python scripts/benchmark.py all                            # the four above

Each prints a table and writes the same numbers as JSON (`--out`, default benchmark-<name>.json).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nerf.benchmarks import common, kernels, mesh, recon, ti
from nerf.errors import ArgumentParser, one_line_errors

SUBCOMMANDS = {"kernels": kernels, "recon": recon, "ti": ti, "mesh": mesh}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in SUBCOMMANDS.items():
        child = sub.add_parser(name, help=module.__doc__.splitlines()[0])
        child.add_argument("--out", type=Path, default=Path(f"benchmark-{name}.json"), help="JSON result file")
        module.add_arguments(child)
    every = sub.add_parser("all", help="kernels, recon, ti and mesh with their defaults")
    every.add_argument("--out", type=Path, default=Path("benchmark-all.json"), help="JSON result file")
    return parser.parse_args(argv)


def run_one(name: str, args: argparse.Namespace) -> dict:
    result = SUBCOMMANDS[name].run(args)
    print(f"\n== {name} ({result['info'].get('card', '?')})")
    print(common.format_table(result["rows"], result["columns"]))
    return result


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "all":
        results = {}
        for name, module in SUBCOMMANDS.items():
            defaults = ArgumentParser()
            module.add_arguments(defaults)
            results[name] = run_one(name, defaults.parse_args([]))
    else:
        results = run_one(args.command, args)
    common.write_json(args.out, results)
    print(f"\nwrote {args.out}")
    return 0

