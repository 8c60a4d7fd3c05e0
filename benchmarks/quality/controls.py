"""Controls of the DIDS rule on the quality benchmark's data: null target, planted boilerplate, added
irrelevant sources (paper section 5.5.2, Figure 2b); method in benchmarks/README.md, quality/controls.py.

    python -m benchmarks.quality.controls --seeds 0 --out quality_controls
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from llamafactory_dids.run_files import read_history

from . import evaluate, runs
from .bench import PRESETS
from .build import SOURCES, TASKS, build_assets, train_name

IRRELEVANT_SOURCES = ("c", "reference", "licenses")
POOL_TASK = "quality_obs_pool"
BOILERPLATE = "quality_boilerplate"
_HEADER = (
    "Copyright (c) {year} The Project Authors. All rights reserved.\n"
    'Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in '
    'compliance with the License. Distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF '
    "ANY KIND."
)


def _log(message: str) -> None:
    print(f"[controls] {message}", file=sys.stderr, flush=True)


def _alpaca(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{k: r.get(k, "") for k in ("instruction", "input", "output")} for r in rows]


def control_dataset_dir(assets_dir: Path, into: Path, *, seed: int, observe: int) -> Path:
    """A dataset_dir with every dataset of the benchmark plus the pool target, boilerplate and copies."""
    info = json.loads((assets_dir / "dataset_info.json").read_text(encoding="utf-8"))
    into.mkdir(parents=True, exist_ok=True)
    out = {name: {**entry, "file_name": str(assets_dir / entry["file_name"])} for name, entry in info.items()}
    pool = [
        row
        for source in SOURCES
        for row in json.loads((assets_dir / f"{train_name(source)}.json").read_text(encoding="utf-8"))
    ]
    extra = {
        POOL_TASK: random.Random(f"{seed}:pool").sample(pool, observe),
        BOILERPLATE: [
            {
                "instruction": "Continue the next entry of the archive.",
                "input": "",
                "output": _HEADER.format(year=y),
            }
            for y in [1990 + (i % 4) for i in range(400)]
        ],
    }
    for name, rows in extra.items():
        (into / f"{name}.json").write_text(json.dumps(_alpaca(rows), indent=1) + "\n", encoding="utf-8")
        out[name] = {**info[train_name("python")], "file_name": str(into / f"{name}.json")}
    for source in IRRELEVANT_SOURCES:  # copies as further domains: quality_c_copy1 ...
        for copy in (1, 2, 3):
            out[f"{train_name(source)}_copy{copy}"] = dict(out[train_name(source)])
    (into / "dataset_info.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return into


def _datasets(factor: int = 1, boilerplate: bool = False) -> list[str]:
    names = [train_name(s) for s in SOURCES]
    names += [f"{train_name(s)}_copy{c}" for c in range(1, factor) for s in IRRELEVANT_SOURCES]
    return names + ([BOILERPLATE] if boilerplate else [])


def _total_variation(p: list[float], q: list[float]) -> float:
    return 0.5 * sum(abs(a - b) for a, b in zip(p, q, strict=True))


def _train(
    ctx: runs.RunContext,
    seed_dir: Path,
    data_dir: Path,
    score: Any,
    name: str,
    strategy: str,
    datasets: list[str],
    threads: int,
    keys: dict[str, Any],
) -> dict[str, Any]:
    """One training run of a control on the control dataset_dir; held-out losses and history attached."""
    _log(f"seed {ctx.seed}: {name}")
    config = runs.training_config(
        ctx,
        seed_dir / name / "output",
        {**runs.strategy_keys(strategy, ctx), **keys},
        dataset=",".join(datasets),
        dataset_dir=str(data_dir),
    )
    record = runs.run_training(config, seed_dir / name, threads)
    if "error" not in record:
        record["losses"] = score(Path(record["output_dir"]))
        record["target_mean"] = statistics.fmean(record["losses"][t] for t in TASKS if t != "tables")
        record["history"], _ = read_history(record["output_dir"])
    return {"name": name, "seed": ctx.seed, "strategy": strategy, **record}


def run_controls(out_dir: Path, *, seeds: tuple[int, ...], workdir: Path, threads: int = 1) -> dict[str, Any]:
    start = time.perf_counter()
    sizes, setting, _ = PRESETS["full"]
    setting = runs.Setting(**{**setting.__dict__, "threads": threads})
    assets = build_assets(workdir / "assets", sizes, seed=0)
    score = evaluate.heldout_scorer(assets.model_dir, assets.dataset_dir, list(TASKS), setting.cutoff_len)

    results: dict[str, Any] = {"seeds": list(seeds), "null": [], "planted": [], "irrelevant": []}
    for seed in seeds:
        ctx = runs.RunContext(assets=assets, setting=setting, seed=seed, sources=tuple(SOURCES))
        data_dir = control_dataset_dir(
            assets.dataset_dir, workdir / "controls" / "data", seed=seed, observe=sizes.observe
        )
        seed_dir = workdir / "controls" / f"seed{seed}"

        def train(
            name: str, strategy: str, datasets: list[str], _bind=(ctx, seed_dir, data_dir), **keys: Any
        ):
            return _train(*_bind, score, name, strategy, datasets, threads, keys)

        null = train("null", "dids", _datasets(), dids_target_datasets=[POOL_TASK])
        if "history" in null:
            sizes_ = null["history"][0]["domain_sizes"]
            natural = [n / sum(sizes_) for n in sizes_]
            # distance from natural and from the rule's own start (its floored prior: uniform by default), so
            # that a prior other than natural is not counted as movement
            rule_start = null["history"][0]["weights"]
            tvs = [_total_variation(r["weights"], natural) for r in null["history"]]
            moved = [_total_variation(r["weights"], rule_start) for r in null["history"]]
            null["tv_final"], null["tv_max"] = tvs[-1], max(tvs)
            null["tv_prior_final"], null["tv_prior_max"] = moved[-1], max(moved)
        results["null"].append(null)
        planted = train("planted", "dids", _datasets(boilerplate=True))
        if "realised_counts" in planted:
            counts = planted["realised_counts"]
            planted["boilerplate_share"] = counts[BOILERPLATE] / sum(counts.values())
            planted["uniform_share"] = 1 / len(counts)
        results["planted"].append(planted)
        for factor in (1, 2, 4):
            for strategy in ("uniform", "natural", "dids"):
                results["irrelevant"].append(
                    {**train(f"{strategy}_x{factor}", strategy, _datasets(factor)), "factor": factor}
                )
        for part in ("null", "planted", "irrelevant"):
            for record in results[part]:
                record.pop("history", None)
        results["seconds"] = round(time.perf_counter() - start, 1)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "controls.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        (out_dir / "controls.md").write_text(format_markdown(results), encoding="utf-8")
    return results


def format_markdown(results: dict[str, Any]) -> str:
    lines = ["| control | seed | figure | value | target |", "|---|---:|---|---:|---|"]
    for r in results["null"]:
        if "tv_final" in r:
            lines.append(
                f"| null target | {r['seed']} | TV(dids, natural) final / worst update | "
                f"{r['tv_final']:.3f} / {r['tv_max']:.3f} | <= 0.1 |"
            )
        if "tv_prior_final" in r:
            lines.append(
                f"| null target | {r['seed']} | TV(dids, its start) final / worst update | "
                f"{r['tv_prior_final']:.3f} / {r['tv_prior_max']:.3f} | <= 0.1 |"
            )
    for r in results["planted"]:
        if "boilerplate_share" in r:
            lines.append(
                f"| planted boilerplate | {r['seed']} | its share of trained samples | "
                f"{r['boilerplate_share']:.3f} | <= {r['uniform_share']:.3f} (uniform) |"
            )
    by = {(r["seed"], r["strategy"], r["factor"]): r for r in results["irrelevant"] if "target_mean" in r}
    for seed in results["seeds"]:
        for strategy in ("uniform", "natural", "dids"):
            means = [by.get((seed, strategy, f), {}).get("target_mean") for f in (1, 2, 4)]
            if None in means:
                continue
            lines.append(
                f"| irrelevant 1x/2x/4x | {seed} | {strategy}: target mean (growth 1x->4x) | "
                f"{means[0]:.3f} / {means[1]:.3f} / {means[2]:.3f} ({means[2] - means[0]:+.3f}) | dids grows least |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality.controls", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seeds", default="0", help="comma list of training seeds")
    parser.add_argument("--out", type=Path, default=Path("quality_controls"))
    parser.add_argument("--workdir", type=Path, default=None, help="default: OUT/work (assets are reused)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    results = run_controls(
        args.out,
        seeds=tuple(int(s) for s in args.seeds.split(",")),
        workdir=(args.workdir or args.out / "work").resolve(),
        threads=args.threads,
    )
    print(format_markdown(results))
    failed = [r for part in ("null", "planted", "irrelevant") for r in results[part] if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
