"""Training and repartition runs of the quality benchmark, each through the unchanged command line
(`llamafactory-cli train`, `llamafactory-dids repartition`); per-strategy keys in `strategy_keys`."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import _harness as h
from llamafactory_dids.utils import OverrideError, parse_override

from .build import SOURCES, TASKS, QualityAssets, observe_name, train_name


@dataclass(frozen=True)
class Setting:
    """Hyper-parameters shared by every run of one benchmark invocation."""

    cutoff_len: int = 256
    batch_size: int = 8
    learning_rate: float = 4.0e-3  # 1e-3 (the demo's) leaves the tiny model near unigram statistics here
    budget: int = 2400  # samples per run (dids_budget): budget / batch_size optimizer steps
    num_updates: int = 10  # mixture updates of dynamic strategies over the run
    target_samples: int = 40  # observation rows per task a strategy may read (dids_target_samples)
    probe_samples: int = 8  # rows per domain / task in one impact probe (dids_probe_samples)
    threads: int = 1  # OMP threads per training process
    domains_per_source: int = 2  # repartition: clusters per source


@dataclass
class RunContext:
    """What a strategy's extra keys may depend on: the assets and the runs already done in this seed."""

    assets: QualityAssets
    setting: Setting
    seed: int
    sources: tuple[str, ...]
    outputs: dict[str, Path] = field(default_factory=dict)  # strategy -> finished run's output_dir


# ------------------------------------------------------------------ per-strategy wiring (edit here)


def _task_source_weights(task_weight: float, other_weight: float) -> Callable[[RunContext], dict[str, Any]]:
    """A static prior: sources holding some task's kind of content weigh `task_weight`, the others
    `other_weight` (normalised)."""

    def keys(ctx: RunContext) -> dict[str, Any]:
        kinds = set(TASKS.values())
        weights = {
            train_name(s): task_weight if kinds & set(SOURCES[s]) else other_weight for s in ctx.sources
        }
        return {"dids_static_weights": {k: v / sum(weights.values()) for k, v in weights.items()}}

    return keys


def _reference_keys(strategy: str) -> Callable[[RunContext], dict[str, Any]]:
    """`dids_reference_dir`: the output_dir of the strategy's reference run (trained first, same seed)."""
    return lambda ctx: {"dids_reference_dir": str(ctx.outputs[REFERENCE_RUNS[strategy]])}


#: strategy -> the strategy whose finished run it reads (trained first, in the same seed): DoReMi's
#: reference losses and Velocitune's scaling-law targets (docs/baselines.md)
REFERENCE_RUNS: dict[str, str] = {"doremi": "uniform", "velocitune": "uniform"}
#: strategy -> extra `dids_*` keys it needs beyond the shared ones; options of the baselines
#: (e.g. `dids_step_size`) stay at their defaults unless added here
EXTRA_KEYS: dict[str, Callable[[RunContext], dict[str, Any]]] = {
    "static": _task_source_weights(4.0, 1.0),  # task sources x4
    **{name: _reference_keys(name) for name in REFERENCE_RUNS},
}
#: display names for rows whose strategy uses a benchmark-chosen setting
LABELS: dict[str, str] = {"static": "static (task sources x4)"}


#: rows beyond one per strategy: label -> (strategy, extra keys or a function of the context)
ROWS: dict[str, tuple[str, dict[str, Any] | Callable[[RunContext], dict[str, Any]]]] = {
    "oracle": ("static", _task_source_weights(1.0, 0.0)),  # only the sources holding task content
    "dids (paper)": ("dids", {"dids_variant": "paper"}),
    "dids (reference)": ("dids", {"dids_variant": "reference"}),
    "dids-LT": ("dids", {"dids_use_trajectory": False}),
    # without the Fisher: the paper's ablation (the `directional` default already measures so); with it
    "dids-FIM": ("dids", {"dids_impact_metric": "inner_product"}),
    "dids+FIM": ("dids", {"dids_impact_metric": "fim"}),
}


def parse_row(name: str) -> tuple[str, str, Callable[[RunContext], dict[str, Any]] | dict[str, Any]]:
    """(label, strategy, extra keys) of one `--strategies` entry.

    An entry is a registered strategy, a name of `ROWS`, or `STRATEGY{key=value;key=value}` with `dids_`
    keys written without their prefix, e.g. `dids{impact=distance;importance_correction=true}`.
    """
    from llamafactory_dids.algorithms.registry import STRATEGY_CLASSES

    if name in ROWS:
        strategy, keys = ROWS[name]
        return name, strategy, keys
    if "{" in name and name.endswith("}"):
        strategy, _, body = name[:-1].partition("{")
        keys: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in body.split(";"))):
            try:
                key, value = parse_override(item)
            except OverrideError:
                raise ValueError(f"--strategies: {item!r} in {name!r} is not key=value.") from None
            keys[f"dids_{key}"] = value
        if strategy not in STRATEGY_CLASSES:
            raise ValueError(f"--strategies: unknown strategy {strategy!r} in {name!r}.")
        return name, strategy, keys
    if name not in STRATEGY_CLASSES:
        raise ValueError(
            f"--strategies: {name!r} is neither a registered strategy {sorted(STRATEGY_CLASSES)} nor a row "
            f"{sorted(ROWS)} nor STRATEGY{{key=value;...}}."
        )
    return name, name, {}


def registered_strategies() -> list[str]:
    """Every registered `dids_strategy`, reference runs before the strategies reading them."""
    from llamafactory_dids.algorithms.registry import STRATEGY_CLASSES

    names = list(STRATEGY_CLASSES)
    first = [n for n in dict.fromkeys(REFERENCE_RUNS.values()) if n in names]
    return first + [n for n in names if n not in first]


def strategy_keys(strategy: str, ctx: RunContext) -> dict[str, Any]:
    """The `dids_*` keys of one strategy's run (the budget is shared by all)."""
    from llamafactory_dids.algorithms.registry import STRATEGY_CLASSES

    if strategy not in STRATEGY_CLASSES:
        raise ValueError(f"Unknown strategy {strategy!r}; registered: {sorted(STRATEGY_CLASSES)}.")
    s = ctx.setting
    keys: dict[str, Any] = {"dids_strategy": strategy, "dids_budget": s.budget}
    observe = {
        "dids_target_datasets": [observe_name(t) for t in TASKS],
        "dids_target_samples": s.target_samples,
    }
    if STRATEGY_CLASSES[strategy].dynamic:  # every dynamic strategy steers by the observation sets
        keys.update({**observe, "dids_num_updates": s.num_updates, "dids_probe_samples": s.probe_samples})
    elif any(ref == strategy and user in STRATEGY_CLASSES for user, ref in REFERENCE_RUNS.items()):
        keys.update(observe)  # a reference run only measures the task losses its users read
    if strategy in EXTRA_KEYS:
        keys.update(EXTRA_KEYS[strategy](ctx))
    return keys


def training_config(
    ctx: RunContext, output_dir: Path, dids_keys: Mapping[str, Any], **overrides: Any
) -> dict[str, Any]:
    """The shared LLaMA-Factory SFT config (the demo's, at this benchmark's sizes) plus `dids_keys`."""
    from llamafactory_dids.demo import demo_training_config

    s = ctx.setting
    shared = {
        "dataset": ",".join(train_name(src) for src in ctx.sources),
        "cutoff_len": s.cutoff_len,
        "per_device_train_batch_size": s.batch_size,
        "per_device_eval_batch_size": s.batch_size,
        "learning_rate": s.learning_rate,
        "logging_steps": 25,
        "seed": ctx.seed,
    }
    return demo_training_config(ctx.assets.demo_assets(), output_dir, **{**shared, **dids_keys, **overrides})


# ------------------------------------------------------------------------------------ processes


def _launch(
    cmd: list[str], what: str, config: dict, run_dir: Path, threads: int
) -> tuple[Any, dict[str, Any]]:
    """Run `cmd CONFIG.yaml` (`what` names it); the run and its record: output_dir and seconds, or the error."""
    run = h.launch(cmd, run_dir, config, h.offline_env(threads), check=False)
    record: dict[str, Any] = {"output_dir": str(run.output_dir), "process_seconds": round(run.seconds, 1)}
    if run.returncode != 0:
        record["error"] = f"{what} exited {run.returncode}; see {run.log}:\n{run.tail(3000)}"
    return run, record


def run_training(config: dict[str, Any], run_dir: Path, threads: int) -> dict[str, Any]:
    """One `llamafactory-cli train` run; the record holds timings and the final mixture, or the error."""
    run, record = _launch(h.train_cli(), "llamafactory-cli train", config, run_dir, threads)
    if "error" in record:
        return record
    record["train_runtime"] = float(run.results["train_runtime"])
    record["train_loss"] = float(run.results.get("train_loss", float("nan")))
    if records := run.history():
        last = records[-1]
        record["final_weights"] = dict(zip(last["domains"], last["weights"], strict=True))
        record["weight_changes_lag1"] = weight_change_autocorrelation([r["weights"] for r in records])
        record["updates"] = sum(1 for r in records if r.get("update", 0) > 0)
        if last.get("realised_counts") is not None:
            record["realised_counts"] = dict(zip(last["domains"], last["realised_counts"], strict=True))
    return record


def weight_change_autocorrelation(weights: list[list[float]]) -> float | None:
    """Lag-1 autocorrelation of the weight changes between updates, averaged over the domains that moved
    (negative: the weights oscillate; None with fewer than 3 changes or nothing moving)."""
    import numpy as np

    changes = np.diff(np.asarray(weights, dtype=np.float64), axis=0)
    if changes.shape[0] < 3:
        return None
    values = [
        float(np.corrcoef(changes[:-1, i], changes[1:, i])[0, 1])
        for i in range(changes.shape[1])
        if changes[:-1, i].std() > 1e-12 and changes[1:, i].std() > 1e-12
    ]
    return float(np.mean(values)) if values else None


def repartition_available() -> bool:
    """Whether `llamafactory-dids repartition --help` succeeds with this interpreter's plugin."""
    try:
        proc = subprocess.run(
            [*h.dids_cli(), "repartition", "--help"],
            env=h.offline_env(1),
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def repartition_config(
    ctx: RunContext,
    proxy_dir: Path,
    output_dir: Path,
    *,
    features: str = "factored",
    domains_per_source: int | None = None,
) -> dict[str, Any]:
    """The repartition YAML (CLI contract): every training source, each split in `domains_per_source`
    (default: the setting's), clustered on `features` (`factored` gradients or `semantic` embeddings)."""
    s = ctx.setting
    return {
        "model_name_or_path": str(proxy_dir),
        "dataset": ",".join(train_name(src) for src in ctx.sources),
        "dataset_dir": str(ctx.assets.dataset_dir),
        "template": "default",
        "cutoff_len": s.cutoff_len,
        "output_dir": str(output_dir),
        "dids_domains_per_source": domains_per_source or s.domains_per_source,
        "dids_features": features,
        "dids_seed": ctx.seed,
    }


def run_repartition(config: dict[str, Any], run_dir: Path, threads: int) -> dict[str, Any]:
    """Run `llamafactory-dids repartition CONFIG.yaml`; the record has the output_dir or the error."""
    return _launch([*h.dids_cli(), "repartition"], "llamafactory-dids repartition", config, run_dir, threads)[
        1
    ]


def repartitioned_dataset_dir(ctx: RunContext, repartition_dir: Path, into: Path) -> Path:
    """A dataset_dir with `dids_repartitioned` (the repartition output) and the observation sets.

    The repartition output's `dataset_info.json` entry is kept as written, with its file made absolute
    (LLaMA-Factory joins dataset_dir and file_name, and an absolute file_name wins).
    """
    info = json.loads((repartition_dir / "dataset_info.json").read_text(encoding="utf-8"))
    if "dids_repartitioned" not in info:
        raise ValueError(
            f"{repartition_dir / 'dataset_info.json'} has no `dids_repartitioned` entry (keys: {sorted(info)}); "
            "the repartition CLI contract promises one."
        )
    entry = dict(info["dids_repartitioned"])
    entry["file_name"] = str((repartition_dir / entry["file_name"]).resolve())
    ours = json.loads((ctx.assets.dataset_dir / "dataset_info.json").read_text(encoding="utf-8"))
    merged = {"dids_repartitioned": entry}
    for task in TASKS:
        name = observe_name(task)
        merged[name] = {**ours[name], "file_name": str(ctx.assets.dataset_dir / ours[name]["file_name"])}
    into.mkdir(parents=True, exist_ok=True)
    (into / "dataset_info.json").write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
    return into
