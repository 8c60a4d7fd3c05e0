#!/usr/bin/env python
"""What each strategy costs and reaches on the demo setup, through `llamafactory-dids compare`.

    python benchmarks/baselines.py                                # 7 strategies, 160 samples, 4 updates
    python benchmarks/baselines.py --budget 320 --updates 8 --json baselines.json --workdir /tmp/bl-bench

Method: benchmarks/README.md, baselines.py.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import _harness as h  # benchmarks/ is on sys.path when a script runs
from _harness import Figure

STRATEGIES = ("uniform", "natural", "dids", "dga", "doge", "doremi", "velocitune")
QUICK = {"budget": 80, "updates": 2, "strategies": ["uniform", "dga", "doge", "doremi"]}


def build_parser() -> Any:
    p = h.parser(__doc__, quick="80 samples, 2 updates, uniform dga doge doremi")
    p.add_argument("--budget", type=int, default=160)
    p.add_argument("--updates", type=int, default=4)
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    return p


def measure(args: Any) -> tuple[list[Figure], dict[str, Any]]:
    """Train every strategy through `run_compare`; one dict of figures per strategy (module docstring)."""
    with h.workdir(args.workdir, "dids-baselines-") as workdir:
        rows = _measure(args, workdir)
    return report(rows, args), {"args": vars(args), "rows": rows}


def _measure(args: Any, workdir: Path) -> list[dict]:
    import yaml

    from llamafactory_dids.compare import run_compare
    from llamafactory_dids.demo import demo_training_config

    assets = h.demo_assets(workdir, examples_per_domain=300, seed=0)
    config = demo_training_config(
        assets,
        workdir / "compare",
        dids_strategy="dids",
        dids_target_datasets="demo_target_code",
        dids_target_samples=24,
        dids_probe_samples=8,
        dids_num_updates=args.updates,
        dids_budget=args.budget,
        dids_normaliser="clamp",
        dids_ema_beta=0.3,
        per_device_eval_batch_size=8,
        seed=42,
    )
    path = workdir / "compare.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    os.environ.update(h.offline_env(args.threads))
    _, rows = run_compare(path, args.strategies, cli=h.train_cli()[0], out=sys.stderr)
    figures = []
    for row in rows:
        results = Path(row["output_dir"]) / "train_results.json"
        seconds = h.update_seconds(Path(row["output_dir"]))
        figures.append(
            {
                "strategy": row["strategy"],
                "status": row["status"],
                "update_seconds_median": statistics.median(seconds) if seconds else float("nan"),
                "train_runtime": json.loads(results.read_text())["train_runtime"]
                if results.is_file()
                else float("nan"),
                "target_loss": row.get("mean_task_loss", float("nan")),
                "weights": row["weights"],
            }
        )
    base = next((f["train_runtime"] for f in figures if f["strategy"] == "uniform"), float("nan"))
    for f in figures:
        f["runtime_over_uniform"] = f["train_runtime"] / base if base == base and base > 0 else float("nan")
    return figures


def report(rows: list[dict], args: Any) -> list[Figure]:
    """Per strategy: update seconds, runtime ratio and final target loss; seconds and weights as detail."""
    print(f"\nbudget {args.budget} samples, {args.updates} updates, threads {args.threads}")
    out = []
    for f in rows:
        name = f["strategy"]
        weights = ", ".join(f"{k.removeprefix('demo_')} {v:.3f}" for k, v in (f["weights"] or {}).items())
        out += [
            Figure(f"{name}: median seconds per mixture update", f["update_seconds_median"], "s"),
            Figure(f"{name}: train_runtime / uniform (one run each)", f["runtime_over_uniform"]),
            Figure(f"{name}: final target loss (demo_target_code)", f["target_loss"]),
            Figure(f"{name}: train_runtime", f["train_runtime"], "s", detail=True),
            Figure(f"{name}: final weights", None, text=weights or "-", detail=True),
        ]
    return out


figures, main = h.entry("baselines.py", build_parser, measure, QUICK)

if __name__ == "__main__":
    sys.exit(main())
