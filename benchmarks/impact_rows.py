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

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dids_update import _collate

from _figures import Figure  # benchmarks/ is on sys.path when a script runs
from _runs import encode_alpaca_rows

SOURCES = ("python", "c", "reference", "licenses", "mixed")
MATCHED = {"python": 0, "comments": 4}  # task -> index of the source holding its content
FORMS = ("distance", "fim_inner", "cosine", "cosine (F=1)")


def _rows(data_dir: Path, name: str, tokenizer: Any) -> list[dict[str, list[int]]]:
    rows = json.loads((data_dir / f"{name}.json").read_text(encoding="utf-8"))
    return encode_alpaca_rows(tokenizer, rows, 256)


def measure(workdir: Path, row_counts: list[int], repeats: int) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llamafactory_dids.runtime.probe import GradientProbe

    data_dir, model_dir = workdir / "assets" / "data", workdir / "seed0" / "uniform" / "output"
    if not (model_dir / "config.json").is_file():
        raise SystemExit(
            f"{model_dir} has no trained model: run `python -m benchmarks.quality --strategies uniform "
            f"--seeds 0 --workdir {workdir}` first."
        )
    tokenizer = AutoTokenizer.from_pretrained(workdir / "assets" / "tiny-llama")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.config.use_cache = False
    model.eval()
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
                probe = GradientProbe(
                    model,
                    lambda rows: _collate(rows, pad),
                    lambda idx: [train[i] for i in idx],
                    pools,
                    task_rows,
                    device=torch.device("cpu"),
                    probe_samples=n,
                    fisher_batch_size=1,
                    eval_batch_size=8,
                    metric=metric,
                    layers_fraction=0.5,
                    include_lm_head=False,
                    seed=repeat,
                )
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("quality_results/work"))
    parser.add_argument("--rows", default="2,4,8,16,32")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--json", type=Path, default=None)
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    result = measure(args.workdir, [int(n) for n in args.rows.split(",")], args.repeats)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def table(result: dict[str, Any]) -> str:
    head = "| form | " + " | ".join(f"{n} rows" for n in result["rows"]) + " |"
    lines = [head, "|---|" + "---:|" * len(result["rows"])]
    for form, by_rows in result["accuracy"].items():
        lines.append(f"| {form} | " + " | ".join(f"{by_rows[n]:.2f}" for n in result["rows"]) + " |")
    return "\n".join(lines)


def figures(argv: list[str] | None = None) -> list[Figure]:
    result = run(build_parser().parse_args(argv or []))
    command = " ".join(["python benchmarks/impact_rows.py", *(argv or [])])
    return [
        Figure(f"rank accuracy, {form}, {n} rows", value, command=command)
        for form, by_rows in result["accuracy"].items()
        for n, value in by_rows.items()
    ]


def main(argv: list[str] | None = None) -> int:
    print(table(run(build_parser().parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
