#!/usr/bin/env python
"""Command line of the quality benchmark: `python -m benchmarks.quality [--quick] [--out DIR] ...`, or
`python benchmarks/quality/run.py ...` (the same; `benchmarks/run_all.py` imports it by path and calls
`figures(argv)`). The setting and the figures: docs/quality-benchmark.md."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # imported by path: make `benchmarks.quality` importable
    sys.path.insert(0, str(REPO))

from benchmarks.quality.bench import figure_records, run_benchmark  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a few-minute smoke version (small data, short runs)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("quality_results"), help="results dir (quality.json, .md)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="assets and runs (default: OUT/work)")
    parser.add_argument(
        "--strategies", default=None, help="comma list (default: every registered dids_strategy)"
    )
    parser.add_argument(
        "--seeds",
        default=None,
        help="comma list of training seeds (default: 0; e.g. 0,1 for a spread over seeds)",
    )
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the row sampling and model init")
    parser.add_argument(
        "--threads", type=int, default=1, help="OMP threads per training process (0: torch default)"
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="fine-tune this pretrained model directory instead of the tiny model trained from scratch (e.g. "
        "`llamafactory-dids proxy smollm2 DIR`); selects the `pretrained` preset (cutoff 128, batch 4, lr 2e-5, "
        "320 samples, 8 updates, 16 probe rows)",
    )
    parser.add_argument("--no-repartition", action="store_true", help="skip `llamafactory-dids repartition`")
    parser.add_argument(
        "--repartitions",
        default="factored:2",
        help="comma list of FEATURES:N (N domains per source; features factored, exact or semantic): one "
        "repartition each, and dids trained on each (e.g. factored:4,semantic:4)",
    )
    return parser


def parse_repartitions(text: str) -> tuple[tuple[str, int], ...]:
    """`factored:4,semantic:4` -> (("factored", 4), ("semantic", 4))."""
    from llamafactory_dids.repartition.config import FEATURES

    out = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        features, _, count = item.partition(":")
        if features not in FEATURES or not count.isdigit() or int(count) < 1:
            raise SystemExit(
                f"--repartitions: {item!r} is not FEATURES:N with FEATURES one of {FEATURES} and N >= 1."
            )
        out.append((features, int(count)))
    return tuple(out)


def preset_name(args: argparse.Namespace) -> str:
    """`quick` with --quick, `pretrained` with --model, else `full` (benchmarks.quality.bench.PRESETS)."""
    return "quick" if args.quick else "pretrained" if args.model else "full"


def _run(args: argparse.Namespace) -> dict[str, Any]:
    return run_benchmark(
        args.out,
        preset=preset_name(args),
        strategies=[s.strip() for s in args.strategies.split(",") if s.strip()] if args.strategies else None,
        seeds=tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None,
        data_seed=args.data_seed,
        threads=args.threads,
        repartition=not args.no_repartition,
        repartitions=parse_repartitions(args.repartitions),
        workdir=args.workdir,
        model_dir=args.model,
    )


def figures(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run as `python -m benchmarks.quality ARGV` does; the figures as `_harness.Figure` fields."""
    argv = list(argv or [])
    command = " ".join(["python -m benchmarks.quality", *argv])
    return [
        {**record, "command": command} for record in figure_records(_run(build_parser().parse_args(argv)))
    ]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = _run(args)
    print((args.out / "quality.md").read_text(encoding="utf-8"))
    failed = sum(1 for r in results["runs"] if "error" in r)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
