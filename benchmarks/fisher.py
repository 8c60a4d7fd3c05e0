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

import statistics
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


def _load_rows(assets: Any, tokenizer: Any, name: str) -> list[dict[str, list[int]]]:
    return h.encode_file(assets.dataset_dir / f"demo_{name}.json", tokenizer, CUTOFF)


def measure(assets: Any, seed: int, train_steps: int, probe_rows: int) -> dict[str, Any]:
    import numpy as np
    import torch
    from scipy.stats import spearmanr
    from transformers import AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
    model = h.load_model(assets.model_dir)
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
        probe = h.probe(
            model,
            lambda rows: h.collate(rows, pad),
            train,
            pools,
            tasks,
            # F = 1 (the ablation the estimators must beat): the probe's identity metric (DIDS-FIM)
            metric="inner_product" if estimator == "none" else "fim",
            probe_samples=probe_rows,
            fisher_batch_size=batch_size,
            layers_fraction=0.5,
            seed=seed,
            fisher_estimator="batch" if estimator == "none" else estimator,
        )
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
    return statistics.median(run[key] for run in runs)


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
