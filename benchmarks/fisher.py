#!/usr/bin/env python
"""How well the cheap Fisher estimators rank eq. 12 impacts, and what they cost, against the exact one.

    python benchmarks/fisher.py                 # 3 seeds, 24 domains x 3 tasks: ~10 min on 2 busy cores
    python benchmarks/fisher.py --quick         # 1 seed
    python benchmarks/fisher.py --json fisher.json --workdir /tmp/dids-fisher

Setup, all offline: the demo tiny Llama (`llamafactory_dids.demo.build_demo_assets`, 2 blocks, hidden 64)
trained in this process for `--train-steps` (400) AdamW steps (lr 1e-3, batch 8) on the three demo domains, so
the Fisher is that of a model that has learned something (at random init every gradient is noise). Rows
are built like LLaMA-Factory builds them (alpaca rows, `default` template, cutoff 256, prompt masked).
Domains: each demo domain split at random into 8 parts -> k = 24 domains; tasks: the held-out
demo_target_{code,docs,comments} sets -> m = 3 tasks, 72 (domain, task) pairs. `GradientProbe` over the
linear layers of the last block (`dids_probe_layers_fraction: 0.5` of 2 blocks), 32 probe rows per domain
and per task (`--probe-rows`; the demo target sets hold 40), identical rows for every estimator.

Estimators compared with the exact per-example Fisher (`dids_fisher_estimator: batch` at
`dids_fisher_batch_size: 1`, the reference):
  per_example hooks: per example, squared gradient (delta_b^T x_b)^2: exact; micro-batches of 8 rows
  per_token   hooks: per example, sum over tokens of (output-grad^2)^T (input^2); micro-batches of 8 rows
  kfac        hooks: per example, K-FAC diagonal (sum output-grad^2)(sum input^2)^T / positions; 8 rows
  batch@8     the reference code's estimator: squared mean gradients of 8-row micro-batches
  no Fisher   F = 1 (eq. 12 becomes half the squared Euclidean distance; per-example passes)
For each: Spearman rank correlation of the 72 impacts with the reference's (and the mean over tasks of
the per-task Spearman over domains, which is what the per-task normalisation sees), and the seconds of
one `probe.impact` call with its ratio to the reference's. Medians over seeds (model init, training
order, domain split and probe rows all change with the seed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dids_update import CUTOFF, _collate

from _figures import Figure  # benchmarks/ is on sys.path when a script runs
from _runs import encode_alpaca_rows

DOMAINS = ("code", "docs", "comments")
SPLITS = 8  # parts per demo domain -> 24 domains
ESTIMATORS = {  # name -> (fisher_estimator, fisher_batch_size)
    "exact": ("batch", 1),
    "per_example": ("per_example", 8),
    "per_token": ("per_token", 8),
    "kfac": ("kfac", 8),
    "batch@8": ("batch", 8),
    "no Fisher": ("none", 1),
}


def _load_rows(assets: Any, tokenizer: Any, name: str) -> list[dict[str, list[int]]]:
    rows = json.loads((assets.dataset_dir / f"demo_{name}.json").read_text(encoding="utf-8"))
    return encode_alpaca_rows(tokenizer, rows, CUTOFF)


def measure(assets: Any, seed: int, train_steps: int, probe_rows: int) -> dict[str, Any]:
    import numpy as np
    import torch
    from scipy.stats import spearmanr
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llamafactory_dids.runtime.probe import GradientProbe

    class UnitFisherProbe(GradientProbe):
        """F = 1: eq. 12 without the Fisher (the ablation the estimators must beat)."""

        def _fisher_term(self, grad, io, examples):
            return torch.ones_like(grad)

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
    model = AutoModelForCausalLM.from_pretrained(assets.model_dir)
    model.config.use_cache = False
    for module in model.modules():  # a fresh init per seed: the built model is always the same one
        if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
            module.reset_parameters()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train = [row for name in DOMAINS for row in _load_rows(assets, tokenizer, name)]
    labels = np.repeat(np.arange(len(DOMAINS)), [len(train) // len(DOMAINS)] * len(DOMAINS))
    tasks = [_load_rows(assets, tokenizer, f"target_{name}")[:probe_rows] for name in DOMAINS]

    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(train_steps):
        batch = _collate([train[i] for i in rng.choice(len(train), 8, replace=False)], pad)
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()

    pools = [
        part
        for d in range(len(DOMAINS))
        for part in np.array_split(rng.permutation(np.flatnonzero(labels == d)), SPLITS)
    ]
    out: dict[str, Any] = {"seed": seed, "domains": len(pools), "tasks": len(tasks)}
    impacts: dict[str, np.ndarray] = {}
    for name, (estimator, batch_size) in ESTIMATORS.items():
        cls = UnitFisherProbe if estimator == "none" else GradientProbe
        probe = cls(
            model,
            lambda rows: _collate(rows, pad),
            lambda idx: [train[i] for i in idx],
            pools,
            tasks,
            device=torch.device("cpu"),
            probe_samples=probe_rows,
            fisher_batch_size=batch_size,
            eval_batch_size=8,
            metric="fim",
            layers_fraction=0.5,
            include_lm_head=False,
            seed=seed,
            fisher_estimator="batch" if estimator == "none" else estimator,
        )
        start = time.perf_counter()
        impacts[name] = probe.impact(1)
        out[f"{name}_seconds"] = time.perf_counter() - start
    reference = impacts["exact"]
    for name, values in impacts.items():
        out[f"{name}_spearman"] = float(spearmanr(reference.ravel(), values.ravel()).statistic)
        out[f"{name}_spearman_per_task"] = float(
            np.mean([spearmanr(reference[:, j], values[:, j]).statistic for j in range(reference.shape[1])])
        )
    out["probe_parameters"] = probe.num_probe_parameters
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="one seed")
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--probe-rows", type=int, default=32, help="rows per domain and per task")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    return parser


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from llamafactory_dids.demo import build_demo_assets

    torch.set_num_threads(args.threads)
    seeds = args.seeds[:1] if args.quick else args.seeds
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dids-fisher-"))
    assets = build_demo_assets(workdir / "assets", examples_per_domain=160)
    runs = [measure(assets, seed, args.train_steps, args.probe_rows) for seed in seeds]
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    return runs


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def figures(argv: list[str] | None = None) -> list[Figure]:
    """Measure as `python benchmarks/fisher.py ARGV` does and return the figures (see _figures.py)."""
    argv = list(argv or [])
    runs = run(build_parser().parse_args(argv))
    command = " ".join(["python benchmarks/fisher.py", *argv])
    out = []
    for name in ("per_example", "per_token", "kfac", "no Fisher"):
        target = {"target": 0.99, "comparator": ">="} if name != "no Fisher" else {}
        out.append(
            Figure(
                f"impact rank correlation with the exact Fisher, per task: {name}",
                _median(runs, f"{name}_spearman_per_task"),
                command=command,
                **target,
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runs = run(args)
    seeds = [r["seed"] for r in runs]
    print(
        f"\nFisher estimators vs the exact per-example Fisher: {runs[0]['domains']} domains x "
        f"{runs[0]['tasks']} tasks, {runs[0]['probe_parameters']} probed parameters, seeds {seeds}"
    )
    print(
        f"{'estimator':<12} {'spearman (all pairs)':>20} {'per task':>10} {'s / impact':>11} {'x exact':>8}"
    )
    exact_seconds = _median(runs, "exact_seconds")
    for name in ESTIMATORS:
        print(
            f"{name:<12} {_median(runs, f'{name}_spearman'):>20.3f} {_median(runs, f'{name}_spearman_per_task'):>10.3f} "
            f"{_median(runs, f'{name}_seconds'):>11.3f} {_median(runs, f'{name}_seconds') / exact_seconds:>8.2f}"
        )
    print("(medians over seeds; per-seed values with --json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
