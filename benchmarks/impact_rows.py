#!/usr/bin/env python
"""How often each impact form ranks the matched source first, against the number of probe rows.

    python benchmarks/impact_rows.py --workdir quality_results/work     # after `python -m benchmarks.quality`
    python benchmarks/impact_rows.py --rows 2,4,8,16,32 --repeats 12 --json impact_rows.json

Setup: the quality benchmark's assets and its seed-0 `uniform` model (`WORK/seed0/uniform/output`: a model
that has learnt the five sources for 300 steps, the state the first DIDS updates see). Domains: the five
training sources; tasks: `python` (matched source `quality_python`) and `comments` (matched source
`quality_mixed`, which holds the comment prose as half of its rows). For every row count n and repeat r,
one `GradientProbe.impact_terms` call with `dids_probe_samples: n` (domain rows drawn with seed r, task rows
a seeded shuffle of the 40 observation rows) gives the eq. 12 terms; the rank accuracy of a form is the
fraction of (repeat, task) pairs where the matched source has the largest score:

    distance    eq. 12 with (max - I) normalisation (the paper)    = smallest distance
    fim_inner   <g_D, g_S>_F                                       = largest inner product
    cosine      Fisher cosine (the default rule's impact)
    cosine (F=1) the cosine without the Fisher (DIDS-FIM ablation)

This is the curve behind `dids_probe_samples` in docs/dids.md.

Second measurement, the domain sketch (`dids_domain_gradients: train` with `dids_domain_sketch_dim`): on
the same model, `--sketch-steps` micro-batches of 8 training rows drawn uniformly (seeded; forward and
backward, no optimizer step) feed the train-side hooks twice at once, exact and sketched into each of
`--sketch-dims` buckets per layer; the Spearman correlation of the 5 x 3 cross terms <g_D, g_S>_F (tasks
`python`, `comments`, `tables`; 16 observation rows each) of the sketched sums with the exact ones, and the
accumulators' bytes. Target: >= 0.98 at the smallest sketch that is smaller than the exact sums. Then the
hooks' cost on a training step (no update): the same micro-batches timed in-process with the hooks idle, with
the exact hooks and with the smallest sketch, interleaved per micro-batch, `--threads` threads; the ratio of
medians to the step without hooks (target: at most 1.03, issue 13).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import _harness as h  # benchmarks/ is on sys.path when a script runs
from _harness import Figure

SOURCES = ("python", "c", "reference", "licenses", "mixed")
MATCHED = {"python": 0, "comments": 4}  # task -> index of the source holding its content
FORMS = ("distance", "fim_inner", "cosine", "cosine (F=1)")
QUICK = {"rows": "2,8,32", "repeats": 3, "sketch_dims": "1024"}


def _rows(data_dir: Path, name: str, tokenizer: Any) -> list[dict[str, list[int]]]:
    return h.encode_file(data_dir / f"{name}.json", tokenizer, 256)


def measure(workdir: Path, row_counts: list[int], repeats: int) -> dict[str, Any]:
    import numpy as np
    from transformers import AutoTokenizer

    data_dir, model_dir = workdir / "assets" / "data", workdir / "seed0" / "uniform" / "output"
    if not (model_dir / "config.json").is_file():
        raise SystemExit(
            f"{model_dir} has no trained model: run `python -m benchmarks.quality --strategies uniform "
            f"--seeds 0 --workdir {workdir}` first."
        )
    tokenizer = AutoTokenizer.from_pretrained(workdir / "assets" / "tiny-llama")
    model = h.load_model(model_dir)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train, pools = [], []
    for source in SOURCES:
        rows = _rows(data_dir, f"quality_{source}", tokenizer)
        pools.append(np.arange(len(train), len(train) + len(rows)))
        train += rows
    tasks = {task: _rows(data_dir, f"quality_obs_{task}", tokenizer) for task in MATCHED}
    hits = {form: {n: 0 for n in row_counts} for form in FORMS}
    total = {n: 0 for n in row_counts}
    for n in row_counts:
        for repeat in range(repeats):
            rng = np.random.default_rng([repeat, n])
            task_rows = [[rows[i] for i in rng.permutation(len(rows))] for rows in tasks.values()]
            for metric in ("fim", "inner_product"):
                collate = lambda rows: h.collate(rows, pad)  # noqa: E731
                options = {"probe_samples": n, "metric": metric, "layers_fraction": 0.5, "seed": repeat}
                probe = h.probe(model, collate, train, pools, task_rows, **options)
                terms = probe.impact_terms(1)
                scores = (
                    {"distance": -terms.distance(), "fim_inner": terms.inner(), "cosine": terms.cosine()}
                    if metric == "fim"
                    else {"cosine (F=1)": terms.cosine()}
                )
                for form, values in scores.items():
                    for j, matched in enumerate(MATCHED.values()):
                        hits[form][n] += int(np.argmax(values[:, j]) == matched)
            total[n] += len(MATCHED)
    return {
        "rows": row_counts,
        "repeats": repeats,
        "accuracy": {form: {n: hits[form][n] / total[n] for n in row_counts} for form in FORMS},
    }


def measure_sketch(workdir: Path, dims: list[int], steps: int) -> dict[str, Any]:
    import numpy as np
    import torch
    from scipy.stats import spearmanr
    from transformers import AutoTokenizer

    from llamafactory_dids.integration.loss import install_loss_recorder
    from llamafactory_dids.runtime.domain_gradients import DomainGradientHooks

    data_dir = workdir / "assets" / "data"
    tokenizer = AutoTokenizer.from_pretrained(workdir / "assets" / "tiny-llama")
    model = h.load_model(workdir / "seed0" / "uniform" / "output")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train, pools, domain_of = [], [], []
    for d, source in enumerate(SOURCES):
        rows = _rows(data_dir, f"quality_{source}", tokenizer)
        pools.append(np.arange(len(train), len(train) + len(rows)))
        train, domain_of = train + rows, domain_of + [d] * len(rows)
    tasks = [_rows(data_dir, f"quality_obs_{task}", tokenizer) for task in ("python", "comments", "tables")]
    collate = lambda rows: h.collate(rows, pad)  # noqa: E731
    options = {"probe_samples": 16, "layers_fraction": 0.1, "seed": 0, "domain_gradients": "train"}
    probe = h.probe(model, collate, train, pools, tasks, **options)
    sketched = {
        dim: DomainGradientHooks(
            model, probe.params, len(SOURCES), probe.shapes, probe.device, sketch_dim=dim
        )
        for dim in dims
    }
    hooks = [probe.train_gradients, *sketched.values()]
    install_loss_recorder(model).scale_sink = lambda grad: [x.capture_scale(grad) for x in hooks] and None
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(steps):
        chosen = rng.choice(len(train), size=8, replace=False)
        batch = collate([train[i] for i in chosen])
        for x in hooks:
            x.begin_batch(torch.tensor([domain_of[i] for i in chosen]), batch["labels"])
        model(**batch).loss.backward()
        for x in hooks:
            x.end_batch()
        model.zero_grad()
    exact_hooks = probe.train_gradients
    exact_bytes = sum(s.numel() * 4 for s in probe.train_gradients.sums)
    exact = probe.impact_terms(1).cross
    out = {"steps": steps, "probed_parameters": probe.num_probe_parameters, "exact_bytes": exact_bytes}
    out["sketches"] = []
    for dim, hook in sketched.items():
        probe.train_gradients = hook
        cross = probe.impact_terms(1).cross
        rho = float(spearmanr(exact.ravel(), cross.ravel()).statistic)
        out["sketches"].append({"dim": dim, "spearman": rho, "bytes": sum(s.numel() * 4 for s in hook.sums)})
    batches = [collate(train[:8]), collate(train[8:16])]
    out["step_seconds"] = _hook_timing(model, exact_hooks, hooks[1], batches, domain_of)
    return out


def _hook_timing(model: Any, exact: Any, sketch: Any, batches: list[Any], domain_of: list[int]) -> dict:
    """Median seconds of a training micro-batch (forward + backward) with the hooks idle (no open
    micro-batch), exact and sketched."""
    import time

    import torch

    seconds: dict[str, list[float]] = {"none": [], "exact": [], "sketch": []}
    domains = torch.tensor(domain_of[:8])
    for rep in range(30):
        batch = batches[rep % len(batches)]
        for mode, hook in (("none", None), ("exact", exact), ("sketch", sketch)):
            start = time.perf_counter()
            if hook is not None:
                hook.begin_batch(domains, batch["labels"])
            model(**batch).loss.backward()
            if hook is not None:
                hook.end_batch()
            seconds[mode].append(time.perf_counter() - start)
            model.zero_grad()
    exact.reset()
    sketch.reset()
    return {mode: h.median(values) for mode, values in seconds.items()}


def build_parser() -> Any:
    p = h.parser(__doc__, quick="rows 2,8,32, 3 repeats", workdir=Path("quality_results/work"))  # read only
    p.add_argument("--rows", default="2,4,8,16,32")
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--sketch-dims", default="256,1024,4096", help="buckets per layer of the domain sketch")
    p.add_argument("--sketch-steps", type=int, default=40, help="micro-batches of 8 rows the hooks see")
    return p


def run(args: Any) -> tuple[list[Figure], dict[str, Any]]:
    import torch

    torch.set_num_threads(args.threads)
    result = measure(args.workdir, [int(n) for n in args.rows.split(",")], args.repeats)
    result["sketch"] = measure_sketch(
        args.workdir, [int(n) for n in args.sketch_dims.split(",")], args.sketch_steps
    )
    return report(result), result


def report(result: dict[str, Any]) -> list[Figure]:
    figures = [
        Figure(f"rank accuracy, {form}, {n} rows", value)
        for form, by_rows in result["accuracy"].items()
        for n, value in by_rows.items()
    ]
    sketch = result["sketch"]
    smaller = [s for s in sketch["sketches"] if s["bytes"] < sketch["exact_bytes"]]
    for s in sketch["sketches"]:
        targeted = bool(smaller) and s is smaller[0]
        figures.append(
            Figure(
                f"domain sketch, {s['dim']} per layer: Spearman of cross terms with the exact",
                s["spearman"],
                target=0.98 if targeted else None,
                comparator=">=" if targeted else None,
                text=f"{s['spearman']:.4f} ({s['bytes'] / 1e6:.2f} MB vs exact {sketch['exact_bytes'] / 1e6:.2f} MB)",
            )
        )
    step = sketch["step_seconds"]
    for mode in ("exact", "sketch"):
        figures.append(
            Figure(
                f"training micro-batch with domain-gradient hooks ({mode}) / idle",
                step[mode] / step["none"],
                target=1.03,
                comparator="<=",
                text=f"{step[mode] / step['none']:.3f} ({1000 * step[mode]:.1f} vs {1000 * step['none']:.1f} ms)",
            )
        )
    return figures


figures, main = h.entry("impact_rows.py", build_parser, run, QUICK)

if __name__ == "__main__":
    sys.exit(main())
