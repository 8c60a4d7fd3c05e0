"""Orchestration of the quality benchmark: build, train every strategy, repartition, evaluate, report
(docs/quality-benchmark.md). A strategy's figure is the mean held-out loss over the tasks whose content is
in the training data; its ratio to `uniform` is taken per seed, then averaged over seeds."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from . import evaluate, runs
from .build import (
    IRRELEVANT_TASKS,
    SOURCES,
    TASKS,
    Sizes,
    build_assets,
    train_name,
)

__all__ = ["PRESETS", "figure_records", "format_markdown", "run_benchmark"]

#: name -> (data sizes, shared hyper-parameters, training seeds)
PRESETS: dict[str, tuple[Sizes, runs.Setting, tuple[int, ...]]] = {
    "full": (Sizes(train=400, observe=40, heldout=100), runs.Setting(), (0,)),
    "quick": (
        Sizes(train=120, observe=16, heldout=40),
        runs.Setting(cutoff_len=128, budget=480, num_updates=4, target_samples=16, probe_samples=4),
        (0,),
    ),
    # fine-tuning a pretrained model (`--model DIR`): shorter rows and run, a fine-tuning learning rate, and
    # `dids_probe_samples`' own default of 16 (at 8 the evidence of a pretrained model sits at the dead zone)
    "pretrained": (
        Sizes(train=400, observe=40, heldout=100),
        runs.Setting(
            cutoff_len=128,
            batch_size=4,
            learning_rate=2.0e-5,
            budget=320,
            num_updates=8,
            target_samples=16,
            probe_samples=16,
        ),
        (0,),
    ),
}
REPARTITIONED = "dids (repartitioned)"
#: the repartition runs by default: (features, domains per source); each trains `dids` once more
DEFAULT_REPARTITIONS: tuple[tuple[str, int], ...] = (("factored", 2),)
INIT = "init (no training)"


def _log(message: str) -> None:
    print(f"[quality] {message}", file=sys.stderr, flush=True)


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _task_source_share(record: dict[str, Any], domain_sources: dict[str, str] | None = None) -> float | None:
    """Share of the run's samples (realised counts, else final weights) drawn from sources holding a task's kind."""
    task_sources = {train_name(s) for s, kinds in SOURCES.items() if set(kinds) & set(TASKS.values())}
    counts = record.get("realised_counts") or {}
    mass = counts if sum(counts.values()) > 0 else record.get("final_weights") or {}
    total = sum(mass.values())
    if not total:
        return None
    source = domain_sources or {}
    return sum(v for d, v in mass.items() if source.get(d, d) in task_sources) / total


def _domain_sources(repartition_dir: Path) -> dict[str, str]:
    """Repartitioned domain -> its source dataset, from domain_map.json (empty when unreadable)."""
    try:
        domains = json.loads((repartition_dir / "domain_map.json").read_text(encoding="utf-8"))["domains"]
        return {name: str(entry["source"]) for name, entry in domains.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def run_benchmark(
    out_dir: Path,
    *,
    preset: str = "full",
    strategies: list[str] | None = None,
    seeds: tuple[int, ...] | None = None,
    data_seed: int = 0,
    threads: int = 1,
    repartition: bool = True,
    repartitions: tuple[tuple[str, int], ...] = DEFAULT_REPARTITIONS,
    workdir: Path | None = None,
    model_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the whole benchmark; write `out_dir/quality.json` and `out_dir/quality.md`; return the results.

    `model_dir`: start every run from this (pretrained) model instead of the tiny one the build makes; its
    tokenizer encodes the held-out rows.
    """
    start = time.perf_counter()
    sizes, setting, default_seeds = PRESETS[preset]
    setting = runs.Setting(**{**asdict(setting), "threads": threads})
    seeds = tuple(seeds if seeds is not None else default_seeds)
    registered = runs.registered_strategies()
    strategies = list(strategies or registered)
    rows = [runs.parse_row(s) for s in strategies]  # raises on an unknown entry
    needed = {runs.REFERENCE_RUNS.get(strategy) for _, strategy, _ in rows}
    # plain strategies in registry order (reference runs first), then the extra rows as given
    order = [s for s in registered if s in strategies or s in needed]
    order += [label for label, _, _ in rows if label not in order]
    workdir = Path(workdir or out_dir / "work").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    _log(f"building assets in {workdir / 'assets'} ({sizes})")
    assets = build_assets(workdir / "assets", sizes, seed=data_seed)
    if model_dir is not None:
        assets = replace(assets, model_dir=Path(model_dir).resolve())
    manifest = assets.manifest
    score = evaluate.heldout_scorer(assets.model_dir, assets.dataset_dir, list(TASKS), setting.cutoff_len)

    has_repartition = repartition and runs.repartition_available()
    if repartition and not has_repartition:
        _log("repartition: not available (`llamafactory-dids repartition --help` failed)")
    records: list[dict[str, Any]] = [
        {"label": INIT, "strategy": None, "seed": None, "losses": score(assets.model_dir)}
    ]
    partitions: list[dict[str, Any]] = []

    def report(done_seeds: tuple[int, ...]) -> dict[str, Any]:
        """Write quality.json and quality.md for the seeds finished so far (after every seed)."""
        results = {
            "schema_version": 1,
            "command": " ".join(["python -m benchmarks.quality", *sys.argv[1:]]),
            "preset": preset,
            "sizes": asdict(sizes),
            "setting": asdict(setting),
            "seeds": list(done_seeds),
            "data_seed": data_seed,
            "model": str(assets.model_dir),
            "strategies": order,
            "tasks": list(TASKS),
            "irrelevant_tasks": list(IRRELEVANT_TASKS),
            "sources": {train_name(s): list(k) for s, k in SOURCES.items()},
            "pool_sizes": manifest["pool_sizes"],
            "runs": records,
            "repartition": partitions,
            "summary": summarise(records),
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": _cpus(),
            },
            "seconds": round(time.perf_counter() - start, 1),
            "assets": str(assets.root),
        }
        (out_dir / "quality.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        (out_dir / "quality.md").write_text(format_markdown(results), encoding="utf-8")
        return results

    for seed in seeds:
        if seed != seeds[0]:
            report(seeds[: seeds.index(seed)])
        ctx = runs.RunContext(assets=assets, setting=setting, seed=seed, sources=tuple(SOURCES))
        records += _train_strategies(ctx, order, workdir / f"seed{seed}", score)
        if not has_repartition:
            why = "not available" if repartition else "skipped (--no-repartition)"
            partitions.append({"seed": seed, "error": f"repartition: {why}"})
            continue
        for features, per_source in repartitions:
            part, record = _repartition_and_train(
                ctx, workdir / f"seed{seed}", score, "dids" in strategies, features, per_source
            )
            partitions.append(part)
            records += [record] if record else []

    return report(seeds)


Scorer = Callable[[Path], dict[str, float]]


def _train_strategies(ctx: runs.RunContext, order: list[str], seed_dir: Path, score: Scorer) -> list[dict]:
    """Train and score every strategy of `order` for one seed; a failed run is a record with `error`."""
    records = []
    for name in order:
        label, strategy, extra = runs.parse_row(name)
        record: dict[str, Any] = {
            "label": runs.LABELS.get(label, label),
            "strategy": strategy,
            "seed": ctx.seed,
        }
        reference = runs.REFERENCE_RUNS.get(strategy)
        if reference is not None and reference not in ctx.outputs:
            records.append({**record, "error": f"reference run {reference!r} failed or missing"})
            continue
        _log(f"seed {ctx.seed}: training {label}")
        keys = {**runs.strategy_keys(strategy, ctx), **(extra(ctx) if callable(extra) else extra)}
        run_dir = seed_dir / _slug(label)
        config = runs.training_config(ctx, run_dir / "output", keys)
        record.update(runs.run_training(config, run_dir, ctx.setting.threads))
        if "error" in record:
            _log(f"seed {ctx.seed}: {label} failed: {record['error'].splitlines()[0]}")
        else:
            ctx.outputs[label] = Path(record["output_dir"])
            record["losses"] = score(ctx.outputs[label])
            record["task_source_share"] = _task_source_share(record)
        records.append(record)
    return records


def _slug(label: str) -> str:
    """A folder name for a row label (`dids{impact=distance}` -> `dids_impact-distance_`)."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", label.replace("=", "-")).strip("_") or "row"


def repartition_label(features: str, per_source: int) -> str:
    """The row label of `dids` trained on one repartition (the default setting keeps the plain label)."""
    if (features, per_source) == DEFAULT_REPARTITIONS[0]:
        return REPARTITIONED
    return f"dids (repartitioned, {features} x{per_source})"


def _repartition_and_train(
    ctx: runs.RunContext,
    seed_dir: Path,
    score: Scorer,
    train_dids: bool,
    features: str = "factored",
    per_source: int = 2,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Repartition with the seed's uniform model as proxy, score the mix, train dids on the new domains."""
    proxy = ctx.outputs.get("uniform", ctx.assets.model_dir)
    label = repartition_label(features, per_source)
    folder = "repartition" if label == REPARTITIONED else _slug(f"repartition_{features}_{per_source}")
    part_dir = seed_dir / folder / "output"
    _log(f"seed {ctx.seed}: repartition ({features}, {per_source} per source) with proxy {proxy}")
    config = runs.repartition_config(ctx, proxy, part_dir, features=features, domains_per_source=per_source)
    part = {**runs.run_repartition(config, seed_dir / folder, ctx.setting.threads), "seed": ctx.seed}
    part.update(proxy=str(proxy), features=features, domains_per_source=per_source)
    if "error" in part:
        return part, None
    mixed = train_name("mixed")
    rows = json.loads((ctx.assets.dataset_dir / f"{mixed}.json").read_text(encoding="utf-8"))
    try:
        kinds = ctx.assets.manifest["datasets"][mixed]["kinds"]
        part.update(evaluate.mixed_source_purity(part_dir / "data.jsonl", rows, kinds))
    except (OSError, ValueError) as exc:
        part["error"] = f"scoring the repartition failed: {exc}"
        return part, None
    if not train_dids:
        return part, None
    record: dict[str, Any] = {"label": label, "strategy": "dids", "seed": ctx.seed}
    _log(f"seed {ctx.seed}: training {label}")
    run_dir = seed_dir / ("dids_repartitioned" if label == REPARTITIONED else _slug(label))
    try:
        data_dir = runs.repartitioned_dataset_dir(ctx, part_dir, run_dir.with_name(run_dir.name + "_data"))
    except (OSError, ValueError, KeyError) as exc:
        return part, {**record, "error": str(exc)}
    config = runs.training_config(
        ctx,
        run_dir / "output",
        runs.strategy_keys("dids", ctx),
        dataset="dids_repartitioned",
        dataset_dir=str(data_dir),
        dids_domain_column="dids_domain",
    )
    record.update(runs.run_training(config, run_dir, ctx.setting.threads))
    if "error" not in record:
        record["losses"] = score(Path(record["output_dir"]))
        record["task_source_share"] = _task_source_share(record, _domain_sources(part_dir))
    return part, record


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per label: per-task mean loss over seeds, the target mean, its ratio to uniform (per seed)."""
    relevant = [t for t in TASKS if t not in IRRELEVANT_TASKS]
    uniform = {r["seed"]: r for r in records if r["label"] == "uniform" and "losses" in r}
    rows = []
    for label in dict.fromkeys(r["label"] for r in records):
        group = [r for r in records if r["label"] == label]
        done = [r for r in group if "losses" in r]
        row: dict[str, Any] = {
            "label": label,
            "seeds": [r["seed"] for r in done],
            "failed": len(group) - len(done),
        }
        if not done:
            row["error"] = group[0].get("error", "")
            rows.append(row)
            continue
        row["tasks"] = {t: _mean([r["losses"][t] for r in done]) for t in TASKS}
        targets = [_mean([r["losses"][t] for t in relevant]) for r in done]
        row["target_mean"], row["all_mean"] = (
            _mean(targets),
            _mean([_mean([r["losses"][t] for t in TASKS]) for r in done]),
        )
        row["target_spread"] = (max(targets) - min(targets)) / 2 if len(targets) > 1 else None

        ratios, ratios_all = (_ratios(done, uniform, tasks) for tasks in (relevant, list(TASKS)))
        row["ratio"], row["ratio_all"] = (_mean(x) if x else None for x in (ratios, ratios_all))
        row["ratio_spread"] = (max(ratios) - min(ratios)) / 2 if len(ratios) > 1 else None
        shares = [r["task_source_share"] for r in done if r.get("task_source_share") is not None]
        row["task_source_share"] = _mean(shares) if shares else None
        row["task_source_share_range"] = [min(shares), max(shares)] if shares else None
        lags = [r["weight_changes_lag1"] for r in done if r.get("weight_changes_lag1") is not None]
        row["weight_changes_lag1"] = _mean(lags) if lags else None
        rows.append(row)
    return rows


def _ratios(done: list[dict], uniform: dict[int, dict], tasks: list[str]) -> list[float]:
    """Per seed: the mean loss over `tasks` / uniform's in the same seed."""
    mean = lambda r: _mean([r["losses"][t] for t in tasks])  # noqa: E731
    return [mean(r) / mean(uniform[r["seed"]]) for r in done if r["seed"] in uniform]


def _fmt(value: float | None, spread: float | None = None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" + (f" ± {spread:.{digits}f}" if spread is not None else "")


def format_markdown(results: dict[str, Any]) -> str:
    """The results table, the purity of the repartition and the setting, as markdown."""
    tasks = results["tasks"]
    irrelevant = set(results["irrelevant_tasks"])
    head = [f"{t} (irrelevant)" if t in irrelevant else t for t in tasks]
    lines = [
        "| strategy | "
        + " | ".join(head)
        + " | target mean | ratio to uniform | all-task ratio | task-source share |",
        "|---|" + "---:|" * (len(tasks) + 4),
    ]
    for row in results["summary"]:
        if "tasks" not in row:
            lines.append(
                f"| {row['label']} | failed: {row.get('error', '').splitlines()[0] if row.get('error') else ''} |"
            )
            continue
        cells = [_fmt(row["tasks"][t]) for t in tasks]
        lines.append(
            f"| {row['label']} | "
            + " | ".join(cells)
            + f" | {_fmt(row['target_mean'], row['target_spread'])} | {_fmt(row['ratio'], row['ratio_spread'], 4)}"
            + f" | {_fmt(row['ratio_all'], None, 4)} | {_fmt(row['task_source_share'], None, 2)} |"
        )
    lines.append("")
    for part in results["repartition"]:
        if "purity" in part:
            lines.append(
                f"Repartition (seed {part['seed']}, {part.get('features', 'factored')} x"
                f"{part.get('domains_per_source', 2)}): purity {part['purity']:.3f}, ARI {part['ari']:.3f} of the "
                f"{len(part['clusters'])} clusters over the {part['rows']} rows of the mixed source; clusters: "
                + "; ".join(f"{c}: {kinds}" for c, kinds in part["clusters"].items())
            )
        else:
            msg = part.get("error", "").splitlines()[0] if part.get("error") else ""
            lines.append(f"Repartition (seed {part['seed']}): {msg or 'failed'}")
    s, z = results["setting"], results["sizes"]
    lines += [
        "",
        f"Seeds {results['seeds']}; {z['train']} training rows per source, {z['observe']} observation and "
        f"{z['heldout']} held-out rows per task; budget {s['budget']} samples (batch {s['batch_size']}, "
        f"cutoff {s['cutoff_len']}, lr {s['learning_rate']}); {s['num_updates']} mixture updates for dynamic "
        f"strategies. Losses: token-weighted mean response cross-entropy on the held-out rows (nats, lower is "
        f"better); target mean over the tasks whose content is in the training data; ratio per seed, then "
        f"averaged (± half the range over seeds). Task-source share: fraction of the trained samples drawn "
        f"from the sources holding a task's content. {results['seconds']:.0f} s on {results['machine']['cpus']} "
        f"CPUs, Python {results['machine']['python']}.",
        "",
    ]
    return "\n".join(lines)


def _setting_suffix(part: dict[str, Any]) -> str:
    """`, semantic x4` for a repartition other than the default (figure names stay as they were)."""
    setting = (part.get("features", "factored"), part.get("domains_per_source", 2))
    return "" if setting == DEFAULT_REPARTITIONS[0] else f", {setting[0]} x{setting[1]}"


def figure_records(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Informational figures (the fields of benchmarks/_figures.Figure): each ratio, purity and ARI."""
    records = []
    for row in results["summary"]:
        if row.get("ratio") is not None and row["label"] != "uniform":
            spread = f" ± {row['ratio_spread']:.4f}" if row.get("ratio_spread") is not None else ""
            records.append(
                {
                    "name": f"held-out target loss {row['label']} / uniform (lower is better)",
                    "value": row["ratio"],
                    "unit": "x",
                    "text": f"{row['ratio']:.4f}{spread} x",
                }
            )
    for part in results["repartition"]:
        for key in ("purity", "ari"):
            if key in part:
                records.append(
                    {
                        "name": f"repartition {key} on the hidden mix (seed {part['seed']}"
                        + _setting_suffix(part)
                        + ")",
                        "value": part[key],
                    }
                )
    return records
