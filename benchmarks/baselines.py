#!/usr/bin/env python
"""What each strategy costs and reaches on the demo setup, through `llamafactory-dids compare`.

    python benchmarks/baselines.py                                # 7 strategies, 160 samples, 4 updates
    python benchmarks/baselines.py --budget 320 --updates 8 --json baselines.json --workdir /tmp/bl-bench

Everything runs offline in a temporary work directory (or `--workdir`): the tiny Llama (2 blocks), its
tokenizer and the demo datasets (`build_demo_assets`, 300 rows per domain). One `run_compare` call trains
every strategy in turn with the unchanged `llamafactory-cli train` (OMP/MKL threads set to `--threads`,
default 1): SFT, full fine-tuning, domains demo_code, demo_docs, demo_comments (k = 3), batch 8,
`dids_budget: --budget`, `dids_num_updates: --updates`, target set demo_target_code (m = 1, 24
observation rows, 8 probe rows per domain and task), seed 42; `uniform` is the reference of doremi and
velocitune. dids runs with `dids_normaliser: clamp`, `dids_ema_beta: 0.3` (the demo's settings); every
other key at its default.

Per strategy:
- update s (median): median `seconds` of the `history.jsonl` records with update > 0 (wall time of
  `DomainMixture.update`: probe, task losses, rule, broadcast); for static strategies the task-loss
  observation only.
- train_runtime s and its ratio to uniform's: `train_runtime` of `output_dir/train_results.json` (the
  Trainer's timer around the training loop: no start-up or data loading). Strategies run one after the
  other, once: on a shared machine read the ratios, not the seconds, and expect a few % of noise.
- final target loss: `dids_final.json` (the final model on the 24 observation rows), and the final
  weights.
Exit code 0: it is a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

from llamafactory_dids.run_files import read_history

from _figures import Figure  # benchmarks/ is on sys.path when a script runs

STRATEGIES = ("uniform", "natural", "dids", "dga", "doge", "doremi", "velocitune")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--budget", type=int, default=160)
    parser.add_argument("--updates", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    return parser


def measure(args: argparse.Namespace) -> list[dict]:
    """Train every strategy through `run_compare`; one dict of figures per strategy (module docstring)."""
    from llamafactory_dids.cli import find_llamafactory_cli
    from llamafactory_dids.compare import run_compare
    from llamafactory_dids.demo import build_demo_assets, demo_training_config

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dids-baselines-"))
    args.workdir = workdir
    assets = build_demo_assets(workdir / "assets", examples_per_domain=300, seed=0)
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
    os.environ.update({"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)})
    os.environ.update({"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    cli = find_llamafactory_cli() or "llamafactory-cli"
    _, rows = run_compare(path, args.strategies, cli=cli, out=sys.stderr)

    figures = []
    for row in rows:
        out = Path(row["output_dir"])
        results = out / "train_results.json"
        runtime = json.loads(results.read_text())["train_runtime"] if results.is_file() else float("nan")
        history, _ = read_history(out)
        seconds = [r["seconds"] for r in history if r.get("update", 0) > 0]
        figures.append(
            {
                "strategy": row["strategy"],
                "status": row["status"],
                "update_seconds_median": statistics.median(seconds) if seconds else float("nan"),
                "train_runtime": runtime,
                "target_loss": row.get("mean_task_loss", float("nan")),
                "weights": row["weights"],
            }
        )
    base = next((f["train_runtime"] for f in figures if f["strategy"] == "uniform"), float("nan"))
    for f in figures:
        f["runtime_over_uniform"] = f["train_runtime"] / base if base == base and base > 0 else float("nan")
    return figures


def figures(argv: list[str] | None = None) -> list[Figure]:
    """Measure as `python benchmarks/baselines.py ARGV` does and return the figures (see _figures.py)."""
    argv = list(argv or [])
    command = " ".join(["python benchmarks/baselines.py", *argv])
    out = []
    for f in measure(build_parser().parse_args(argv)):
        name = f["strategy"]
        out.append(
            Figure(
                f"{name}: median seconds per mixture update", f["update_seconds_median"], "s", command=command
            )
        )
        out.append(
            Figure(
                f"{name}: train_runtime / uniform (one run each)", f["runtime_over_uniform"], command=command
            )
        )
        out.append(Figure(f"{name}: final target loss (demo_target_code)", f["target_loss"], command=command))
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rows = measure(args)
    print(
        f"budget {args.budget} samples, {args.updates} updates, threads {args.threads}, workdir {args.workdir}"
    )
    print(
        "| strategy | update s (median) | train_runtime s | / uniform | final target loss | final weights |"
    )
    print("|---|---|---|---|---|---|")
    for f in rows:
        weights = ", ".join(f"{k.removeprefix('demo_')} {v:.3f}" for k, v in (f["weights"] or {}).items())
        print(
            f"| {f['strategy']} | {f['update_seconds_median']:.2f} | {f['train_runtime']:.1f} | "
            f"{f['runtime_over_uniform']:.2f} | {f['target_loss']:.4f} | {weights} |"
        )
    if args.json:
        payload = {"args": vars(args) | {"workdir": str(args.workdir)}, "rows": rows}
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
