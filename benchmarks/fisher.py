#!/usr/bin/env python
"""How well the cheap Fisher estimators rank eq. 12 impacts, and what they cost, against the exact one.

    python benchmarks/fisher.py                 # 3 seeds, 24 domains x 3 tasks: ~10 min on 2 busy cores
    python benchmarks/fisher.py --quick         # 1 seed
    python benchmarks/fisher.py --json fisher.json --workdir /tmp/dids-fisher

Method: benchmarks/README.md, fisher.py.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import _harness as h  # benchmarks/ is on sys.path when a script runs
from _harness import Figure

CUTOFF = 256

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


def measure(assets: Any, seed: int, train_steps: int, probe_rows: int) -> dict[str, Any]:
    import numpy as np
    import torch
    from scipy.stats import spearmanr

    torch.manual_seed(seed)
    tokenizer, pad = h.tokenizer(assets.model_dir)
    rows = lambda name: h.encode_file(assets.dataset_dir / f"demo_{name}.json", tokenizer, CUTOFF)  # noqa: E731
    model = h.load_model(assets.model_dir)
    for module in model.modules():  # a fresh init per seed: the built model is always the same one
        if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
            module.reset_parameters()
    train = [row for name in DOMAINS for row in rows(name)]
    labels = np.repeat(np.arange(len(DOMAINS)), [len(train) // len(DOMAINS)] * len(DOMAINS))
    tasks = [rows(f"target_{name}")[:probe_rows] for name in DOMAINS]

    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(train_steps):
        batch = h.collate([train[i] for i in rng.choice(len(train), 8, replace=False)], pad)
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
        # F = 1 (the ablation the estimators must beat): the probe's identity metric (DIDS-FIM)
        none = estimator == "none"
        options = {
            "metric": "inner_product" if none else "fim",
            "fisher_estimator": "batch" if none else estimator,
        }
        options.update(probe_samples=probe_rows, fisher_batch_size=batch_size, layers_fraction=0.5, seed=seed)
        probe = h.probe(model, lambda rows: h.collate(rows, pad), train, pools, tasks, **options)
        start = time.perf_counter()
        impacts[name] = probe.impact_terms(1).distance()  # eq. 12 under diag(F) or I
        out[f"{name}_seconds"] = time.perf_counter() - start
    reference = impacts["exact"]
    for name, values in impacts.items():
        out[f"{name}_spearman"] = float(spearmanr(reference.ravel(), values.ravel()).statistic)
        out[f"{name}_spearman_per_task"] = float(
            np.mean([spearmanr(reference[:, j], values[:, j]).statistic for j in range(reference.shape[1])])
        )
    out["probe_parameters"] = probe.num_probe_parameters
    return out


def build_parser() -> Any:
    p = h.parser(__doc__, quick="one seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-steps", type=int, default=400)
    p.add_argument("--probe-rows", type=int, default=32, help="rows per domain and per task")
    return p


def run(args: Any) -> tuple[list[Figure], list[dict[str, Any]]]:
    import torch

    torch.set_num_threads(args.threads)
    with h.workdir(args.workdir, "dids-fisher-") as workdir:
        assets = h.demo_assets(workdir, examples_per_domain=160)
        runs = [measure(assets, seed, args.train_steps, args.probe_rows) for seed in args.seeds]
    return report(runs), runs


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return h.median([run[key] for run in runs])


def report(runs: list[dict[str, Any]]) -> list[Figure]:
    """Per estimator: Spearman over all pairs and per task, seconds per impact and ratio to the exact one."""
    exact_seconds = _median(runs, "exact_seconds")
    out = []
    for name in ESTIMATORS:
        seconds = _median(runs, f"{name}_seconds")
        pairs, per_task = _median(runs, f"{name}_spearman"), _median(runs, f"{name}_spearman_per_task")
        text = f"{pairs:.3f} ({per_task:.3f}); {seconds:.3f} s per impact ({seconds / exact_seconds:.2f} x exact)"
        row = f"Spearman with the exact Fisher, all pairs (per task); cost: {name}"
        out.append(Figure(row, None, text=text, detail=True))
    for name in ("per_example", "per_token", "kfac", "no Fisher"):
        target = {"target": 0.99, "comparator": ">="} if name != "no Fisher" else {}
        name_ = f"impact rank correlation with the exact Fisher, per task: {name}"
        out.append(Figure(name_, _median(runs, f"{name}_spearman_per_task"), **target))
    print(
        f"\nFisher estimators vs the exact per-example Fisher: {runs[0]['domains']} domains x {runs[0]['tasks']} tasks, "
        f"{runs[0]['probe_parameters']} probed parameters, seeds {[r['seed'] for r in runs]} (medians over seeds)"
    )
    return out


figures, main = h.entry("fisher.py", build_parser, run, {"seeds": [0]})

if __name__ == "__main__":
    sys.exit(main())
