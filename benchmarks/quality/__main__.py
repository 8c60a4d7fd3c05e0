"""Command line of the quality benchmark: `python -m benchmarks.quality [--quick] [--out DIR] ...`.

Run from the repository root with the environment that has the plugin installed. See
docs/quality-benchmark.md for the setting and the figures; `bench.run_benchmark` does the work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .bench import PRESETS, run_benchmark


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument("--no-repartition", action="store_true", help="skip `llamafactory-dids repartition`")
    args = parser.parse_args(argv)
    preset = "quick" if args.quick else "full"
    assert preset in PRESETS
    results = run_benchmark(
        args.out,
        preset=preset,
        strategies=[s.strip() for s in args.strategies.split(",") if s.strip()] if args.strategies else None,
        seeds=tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None,
        data_seed=args.data_seed,
        threads=args.threads,
        repartition=not args.no_repartition,
        workdir=args.workdir,
    )
    print((args.out / "quality.md").read_text(encoding="utf-8"))
    failed = sum(1 for r in results["runs"] if "error" in r)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
