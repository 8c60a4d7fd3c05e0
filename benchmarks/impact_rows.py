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
QUICK = {"rows": "2,8,32", "repeats": 3}


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


def build_parser() -> Any:
    p = h.parser(__doc__, quick="rows 2,8,32, 3 repeats", workdir=Path("quality_results/work"))  # read only
    p.add_argument("--rows", default="2,4,8,16,32")
    p.add_argument("--repeats", type=int, default=12)
    return p


def run(args: Any) -> tuple[list[Figure], dict[str, Any]]:
    import torch

    torch.set_num_threads(args.threads)
    result = measure(args.workdir, [int(n) for n in args.rows.split(",")], args.repeats)
    return report(result), result


def report(result: dict[str, Any]) -> list[Figure]:
    return [
        Figure(f"rank accuracy, {form}, {n} rows", value)
        for form, by_rows in result["accuracy"].items()
        for n, value in by_rows.items()
    ]


figures, main = h.entry("impact_rows.py", build_parser, run, QUICK)

if __name__ == "__main__":
    sys.exit(main())
