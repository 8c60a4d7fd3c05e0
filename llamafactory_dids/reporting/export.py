"""`llamafactory-dids export OUTPUT_DIR`: a run's learned mixture as JSON and as YAML to paste into another run.

Role: after the schedule step (repartition -> impact -> *schedule* -> sampler), carry the weights a
(proxy) run learned over to another run or a larger model. The mixture is either the last one (`final`)
or the time average over the run (`mean`, `run_outputs.time_averaged_weights`: each weights vector
weighted by the stream samples it governed, or by optimizer steps). Outputs:

- `mixture.json`: schema version, domains, weights, the source run and how the weights were computed;
- `static.yaml`: `dids_strategy: static` + `dids_static_weights` (domain -> weight) for this plugin;
- `interleave.yaml`: `dataset` / `mix_strategy` / `interleave_probs` for stock LLaMA-Factory, only when
  every domain is one `dataset:` entry. Domains taken from a `dids_domain_column` (e.g. a repartition)
  are row labels inside datasets, which `interleave_probs` (one probability per dataset) cannot
  express; then no interleave file is written and the JSON and the command say why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..run_files import EXPORT_DIR, EXPORT_INTERLEAVE, EXPORT_JSON, EXPORT_STATIC, HISTORY_FILE
from ..run_files import EXPORT_VERSION as EXPORT_SCHEMA
from .run_outputs import (
    AVERAGING,
    RunOutputs,
    RunOutputsError,
    load_run,
    realised_fractions,
    time_averaged_weights,
)

MIXTURES = ("mean", "final")
INTERLEAVE_STRATEGIES = ("interleave_under", "interleave_over")
WEBUI_CONFIG = "training_args.yaml"  # LLaMA-Board saves the training arguments here


@dataclass
class Export:
    """What `export_mixture` wrote; `interleave` is None when stock interleave cannot express the mixture."""

    domains: list[str]
    weights: list[float]
    json_path: Path
    static_path: Path
    interleave: Path | None
    interleave_note: str
    warnings: list[str] = field(default_factory=list)


def learned_mixture(run: RunOutputs, mixture: str = "mean", by: str = "samples") -> np.ndarray:
    """float [k]: the final weights, or the time average by stream samples / optimizer steps."""
    if mixture not in MIXTURES:
        raise ValueError(f"`mixture` must be one of {', '.join(MIXTURES)}, got {mixture!r}.")
    if mixture == "final":
        return run.weights[-1].copy()
    return time_averaged_weights(run, by)


def rounded_probabilities(weights: np.ndarray, decimals: int = 6) -> list[float]:
    """Normalise and round to `decimals` places, summing to exactly 1 in units of 10^-decimals.

    Largest-remainder rounding: every entry is floored to a unit, and the units still missing go to the
    entries with the largest remainders, so each entry is within one unit of its exact value.
    """
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    units = 10**decimals
    scaled = w / w.sum() * units
    base = np.floor(scaled).astype(np.int64)
    missing = units - int(base.sum())
    base[np.argsort(-(scaled - base), kind="stable")[:missing]] += 1
    return [float(round(int(u) / units, decimals)) for u in base]


def _describe(run: RunOutputs, mixture: str, by: str) -> str:
    if mixture == "final":
        return f"the weights of the last history record (update {run.records[-1]['update']}, step {int(run.steps[-1])})"
    unit = "stream samples" if by == "samples" else "optimizer steps"
    return (
        f"time average over the run of every history record's weights, each weighted by the {unit} it was "
        f"in force; {run.end_note}"
    )


def read_training_config(
    output_dir: Path, config: str | Path | None
) -> tuple[dict[str, Any] | None, str | None]:
    """The run's training YAML: `config` if given, else LLaMA-Board's `output_dir/training_args.yaml`."""
    path = Path(config) if config is not None else output_dir / WEBUI_CONFIG
    if not path.is_file():
        if config is not None:
            raise RunOutputsError(f"--config {path}: no such file. Pass the training YAML of the run.")
        return None, None
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(loaded, dict):
        raise RunOutputsError(
            f"{path}: expected a YAML mapping of training arguments, got {type(loaded).__name__}."
        )
    return loaded, str(path)


def _split(value: Any) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(x).strip() for x in items if str(x).strip()]


_NO_COLUMN = object()  # the history does not say (written before the key existed)


def interleave_datasets(
    domains: list[str], config: dict[str, Any] | None, recorded_column: Any = _NO_COLUMN
) -> tuple[list[str] | None, str, bool]:
    """The `dataset:` order for `interleave_probs` (None: not expressible), a note, and whether it is checked.

    `recorded_column` is the initial history record's `domain_column` (None: one domain per `dataset:`
    entry); `config` the run's training YAML. Either one settles the question; with neither, the
    default (one domain per dataset) is assumed and the note says so.
    """
    column = config.get("dids_domain_column") if config is not None else None
    if recorded_column is not _NO_COLUMN and recorded_column:
        column = recorded_column
    if column:
        return (
            None,
            f"the run's domains are the values of the column `{column}` inside its datasets, not separate "
            "`dataset:` entries; stock LLaMA-Factory's `interleave_probs` gives one probability per dataset "
            "and cannot express this mixture. Use static.yaml with the plugin, or split the data into one "
            "dataset per domain",
            True,
        )
    if config is not None:
        datasets = _split(config.get("dataset"))
        if sorted(datasets) != sorted(domains):
            return (
                None,
                f"the training YAML's `dataset:` {datasets[:8]} is not the run's domains {domains[:8]}, so no "
                "one-to-one dataset -> probability mapping exists",
                True,
            )
        return datasets, "every domain is one `dataset:` entry (checked against the training YAML)", True
    if recorded_column is not _NO_COLUMN:
        return list(domains), "every domain is one `dataset:` entry (recorded in history.jsonl)", True
    return (
        list(domains),
        "the history does not record how domains were formed and no training YAML was found (pass --config): "
        "assumes every domain is one `dataset:` entry of that name (the plugin's default without "
        "`dids_domain_column`). If the run used `dids_domain_column`, this file is wrong: use static.yaml",
        False,
    )


def _number(p: float) -> str:
    return np.format_float_positional(p, trim="-")


def _fragment(comments: list[str], body: dict[str, Any]) -> str:
    head = "".join(f"# {line}\n" for line in comments)
    return head + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _write_static(path: Path, header: list[str], domains: list[str], probs: list[float]) -> Path:
    comments = [
        *header,
        "Paste into a training YAML over the same domains (same `dataset:` / `dids_domain_column`).",
    ]
    body = {"dids_strategy": "static", "dids_static_weights": dict(zip(domains, probs, strict=True))}
    path.write_text(_fragment(comments, body), encoding="utf-8")
    return path


def _write_interleave(
    path: Path,
    header: list[str],
    datasets: list[str],
    by_name: dict[str, float],
    note: str,
    mix_strategy: str,
    decimals: int,
) -> Path:
    """`dataset` / `mix_strategy` / `interleave_probs` in `datasets` order, weight-0 datasets left out."""
    used = [d for d in datasets if by_name[d] > 0]
    dropped = [d for d in datasets if by_name[d] <= 0]
    comments = [
        f"{header[0]}, for stock LLaMA-Factory (no plugin)",
        *header[1:],
        f"`interleave_probs` follow the `dataset:` order: {note}.",
        f"{mix_strategy} stops at the {'first' if mix_strategy == 'interleave_under' else 'last'} dataset "
        "exhausted, so the run length differs from a dids_budget run.",
    ]
    if dropped:  # never drawn, and `interleave_over` would wait for them forever
        comments.append(f"weight-0 datasets left out (they would never be drawn): {', '.join(dropped)}")
    probs = rounded_probabilities(np.array([by_name[d] for d in used]), decimals)
    body = {
        "dataset": ",".join(used),
        "mix_strategy": mix_strategy,
        "interleave_probs": ",".join(_number(p) for p in probs),
    }
    path.write_text(_fragment(comments, body), encoding="utf-8")
    return path


def _check_options(by: str, mix_strategy: str) -> None:
    if by not in AVERAGING:
        raise ValueError(f"`by` must be one of {', '.join(AVERAGING)}, got {by!r}.")
    if mix_strategy not in INTERLEAVE_STRATEGIES:
        raise ValueError(
            f"`mix_strategy` must be one of {', '.join(INTERLEAVE_STRATEGIES)}, got {mix_strategy!r}."
        )


def _interleave_target(
    run: RunOutputs, train_config: dict[str, Any] | None
) -> tuple[list[str] | None, str, bool, list[str]]:
    """interleave.yaml's datasets (None: no file), its note, whether the training YAML checked it, warnings."""
    recorded = (
        run.records[0].get("domain_column", _NO_COLUMN) if run.records[0]["update"] == 0 else _NO_COLUMN
    )
    datasets, note, checked = interleave_datasets(run.domains, train_config, recorded)
    warnings = [] if checked else [f"interleave.yaml: {note}"]
    if datasets is None:
        warnings.append(f"no interleave.yaml: {note}")
    return datasets, note, checked, warnings


def _source_entry(run: RunOutputs, output_dir: Path, config_source: str | None) -> dict[str, Any]:
    """mixture.json's `source`: the run the mixture was learned in."""
    return {
        "output_dir": str(output_dir.resolve()),
        "history": str((output_dir / HISTORY_FILE).resolve()),
        "strategy": run.strategy,
        "updates": run.num_updates,
        "final_step": run.end_step,
        "total_samples": run.total_samples,
        "superseded_records": run.superseded,
        "training_config": config_source,
    }


def _candidates(run: RunOutputs, decimals: int) -> dict[str, Any]:
    """mixture.json's `candidates`: the other mixtures one could export from the run."""
    realised = realised_fractions(run)
    return {
        "final": rounded_probabilities(learned_mixture(run, "final"), decimals),
        "mean_by_samples": rounded_probabilities(time_averaged_weights(run, "samples"), decimals),
        "mean_by_steps": rounded_probabilities(time_averaged_weights(run, "steps"), decimals),
        "realised_fractions": None
        if not np.isfinite(realised).all()
        else [round(float(x), decimals) for x in realised],
    }


def export_mixture(
    output_dir: str | Path,
    dest: str | Path | None = None,
    *,
    mixture: str = "mean",
    by: str = "samples",
    config: str | Path | None = None,
    mix_strategy: str = "interleave_under",
    decimals: int = 6,
) -> Export:
    """Write mixture.json, static.yaml and (when possible) interleave.yaml into `dest` (default output_dir/dids_export).

    Raises:
        RunOutputsError: unreadable run outputs (see `run_outputs.load_run`) or a missing `config` file.
        ValueError: an unknown `mixture`, `by` or `mix_strategy`.
    """
    _check_options(by, mix_strategy)
    output_dir = Path(output_dir)
    run = load_run(output_dir)
    dest = Path(dest) if dest is not None else output_dir / EXPORT_DIR
    dest.mkdir(parents=True, exist_ok=True)
    probs = rounded_probabilities(learned_mixture(run, mixture, by), decimals)
    how = _describe(run, mixture, by)
    train_config, config_source = read_training_config(output_dir, config)
    datasets, note, checked, warnings = _interleave_target(run, train_config)
    source = f"{output_dir.resolve()} ({run.strategy}, {run.num_updates} updates, {run.end_step} steps)"
    header = [f"Learned domain mixture of {source}", f"mixture: {mixture} = {how}"]
    static_path = _write_static(dest / EXPORT_STATIC, header, run.domains, probs)
    interleave_path = dest / EXPORT_INTERLEAVE
    if datasets is not None:
        by_name = dict(zip(run.domains, probs, strict=True))
        _write_interleave(interleave_path, header, datasets, by_name, note, mix_strategy, decimals)
    else:
        interleave_path.unlink(missing_ok=True)  # no stale file from an earlier export
        interleave_path = None

    payload = {
        "schema_version": EXPORT_SCHEMA,
        "domains": run.domains,
        "weights": probs,
        "mixture": mixture,
        "averaging": by if mixture == "mean" else None,
        "how_computed": how,
        "source": _source_entry(run, output_dir, config_source),
        "candidates": _candidates(run, decimals),
        "static": static_path.name,
        "interleave": {
            "file": interleave_path.name if interleave_path else None,
            "checked_against_training_yaml": checked,
            "note": note,
        },
    }
    json_path = dest / EXPORT_JSON
    json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return Export(run.domains, probs, json_path, static_path, interleave_path, note, warnings)
