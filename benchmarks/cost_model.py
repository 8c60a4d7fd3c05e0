#!/usr/bin/env python
"""What DIDS adds to training in the paper's setting, from per-row costs measured on a model.

    python benchmarks/cost_model.py                              # the demo's tiny Llama (built here)
    python benchmarks/cost_model.py --model dids_demo/smollm2     # a real architecture (`llamafactory-dids proxy`)
    python benchmarks/cost_model.py --model DIR --length 512 --json cost_model.json

Method: benchmarks/README.md, cost_model.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import _harness as h  # benchmarks/ is on sys.path when a script runs
from _harness import Figure

PAPER = {"domains": 72, "tasks": 9, "rows_per_update": 4000}
BATCH = 8


def _rows(vocab: int, length: int, count: int, seed: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (count, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def measure_rows(model: Any, length: int, reps: int) -> dict[str, float]:
    """Median per-row seconds of a forward, a probe pass and a training step (hooks idle/exact/sketched)."""
    import torch

    from llamafactory_dids.integration.loss import install_loss_recorder
    from llamafactory_dids.runtime.domain_gradients import DomainGradientHooks
    from llamafactory_dids.runtime.probe import select_probe_parameters

    vocab = model.config.vocab_size
    batch, one = _rows(vocab, length, BATCH, 0), _rows(vocab, length, 1, 1)
    params = select_probe_parameters(model, layers_fraction=0.1)
    shapes = [tuple(p.shape) for _, p in params]
    exact = DomainGradientHooks(model, params, 8, shapes, torch.device("cpu"))
    sketch = DomainGradientHooks(model, params, 8, shapes, torch.device("cpu"), sketch_dim=4096)
    install_loss_recorder(model).scale_sink = lambda g: (
        (exact.capture_scale(g), sketch.capture_scale(g)) and None
    )
    domains = torch.arange(BATCH) % 8

    def forward() -> None:
        with torch.no_grad():
            model(**batch)

    def probe_pass() -> None:
        torch.autograd.grad(model(**one).loss, [p for _, p in params])

    def train_step(hooks: Any = None) -> None:
        if hooks is not None:
            hooks.begin_batch(domains, batch["labels"])
        model(**batch).loss.backward()
        if hooks is not None:
            hooks.end_batch()
        model.zero_grad(set_to_none=True)

    kinds = {
        "forward": (forward, BATCH),
        "probe pass": (probe_pass, 1),
        "train step": (train_step, BATCH),
        "train step, exact hooks": (lambda: train_step(exact), BATCH),
        "train step, sketched hooks": (lambda: train_step(sketch), BATCH),
    }
    seconds: dict[str, list[float]] = {name: [] for name in kinds}
    for rep in range(reps + 1):  # interleaved; the first round is a warm-up
        for name, (fn, rows) in kinds.items():
            elapsed, _ = h.timed(fn)
            if rep:
                seconds[name].append(elapsed / rows)
    return (
        {name: h.median(values) for name, values in seconds.items()}
        | hash_seconds(params, reps)
        | {
            "probed_parameters": float(sum(p.numel() for _, p in params)),
            "parameters": float(sum(p.numel() for p in model.parameters())),
        }
    )


def hash_seconds(params: list[Any], reps: int) -> dict[str, float]:
    """Median seconds to sketch one [out, in] product of the largest probed matrix into 4096 buckets, summed in
    float32 (what the training hooks do) and in float64 (what they did before), interleaved."""
    import torch

    from llamafactory_dids.algorithms.impact import SparseJLProjection

    product = torch.randn(max((p for _, p in params), key=lambda p: p.numel()).shape).flatten()
    sketch = SparseJLProjection(4096, 0, cache_bytes=8 * product.numel())
    hashed = sketch.block_hash(0, product.numel(), product.device)
    seconds = h.interleaved(
        {
            f"sketch one product, {name}": (lambda d=dtype: sketch.project_block(0, product, hashed, dtype=d))
            for name, dtype in (("float32", torch.float32), ("float64", torch.float64))
        },
        5 * reps,
        warmup=1,
    )
    return {name: h.median(values) for name, values in seconds.items()}


def cost_model(per_row: dict[str, float], target_samples: int, probe_samples: int) -> dict[str, float]:
    """Extra seconds per update over the training rows' seconds, for `probe` and `train` (exact, sketched)."""
    k, m, rows = PAPER["domains"], PAPER["tasks"], PAPER["rows_per_update"]
    training = rows * per_row["train step"]
    tasks = m * target_samples * per_row["forward"] + m * probe_samples * per_row["probe pass"]
    hooks = {
        kind: rows * (per_row[f"train step, {kind} hooks"] - per_row["train step"])
        for kind in ("exact", "sketched")
    }
    return {
        "probe": (tasks + k * probe_samples * per_row["probe pass"]) / training,
        "train (exact)": (tasks + max(hooks["exact"], 0.0)) / training,
        "train (sketched)": (tasks + max(hooks["sketched"], 0.0)) / training,
        "task losses alone": m * target_samples * per_row["forward"] / training,
    }


def build_parser() -> Any:
    p = h.parser(__doc__, quick="3 repetitions, rows of 128 tokens")
    p.add_argument(
        "--model", type=Path, default=None, help="a model directory (default: the demo's tiny Llama)"
    )
    p.add_argument("--length", type=int, default=256, help="tokens per row (default 256)")
    p.add_argument("--reps", type=int, default=7, help="timed repetitions (default 7)")
    from llamafactory_dids.algorithms.dids import VARIANT_TARGET_SAMPLES

    rows = VARIANT_TARGET_SAMPLES["directional"]
    p.add_argument("--target-samples", type=int, default=rows, help=f"dids_target_samples (default {rows})")
    p.add_argument("--probe-samples", type=int, default=16, help="dids_probe_samples (default 16)")
    return p


def run(args: Any) -> tuple[list[Figure], dict[str, Any]]:
    import torch

    torch.set_num_threads(args.threads)
    with h.workdir(args.workdir, "dids-cost-") as workdir:
        model_dir = args.model or Path(h.demo_assets(workdir, examples_per_domain=8, seed=0).model_dir)
        model = h.load_model(model_dir)
        model.train()
        per_row = measure_rows(model, args.length, args.reps)
    fractions = cost_model(per_row, args.target_samples, args.probe_samples)
    payload = {"model": str(model_dir), "length": args.length, "per_row_seconds": per_row, "extra": fractions}
    return report(payload), payload


def report(payload: dict[str, Any]) -> list[Figure]:
    per_row, extra = payload["per_row_seconds"], payload["extra"]
    figures = [
        Figure(f"per-row seconds: {name}", per_row[name], "s")
        for name in (
            "forward",
            "probe pass",
            "train step",
            "train step, exact hooks",
            "train step, sketched hooks",
        )
    ]
    figures.append(
        Figure(
            "sketching a product in float32 / float64",
            per_row["sketch one product, float32"] / per_row["sketch one product, float64"],
        )
    )
    for kind in ("exact", "sketched"):
        ratio = per_row[f"train step, {kind} hooks"] / per_row["train step"]
        figures.append(
            Figure(f"training step with {kind} domain-gradient hooks / idle", ratio, "", 1.03, "<=")
        )
    for name, value in extra.items():
        target = (0.05, "<=") if name != "task losses alone" else (None, None)
        figures.append(Figure(f"paper setting, extra compute: {name}", value, "", *target))
    return figures


figures, main = h.entry("cost_model.py", build_parser, run, {"reps": 3, "length": 128})

if __name__ == "__main__":
    sys.exit(main())
