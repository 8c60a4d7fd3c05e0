"""`llamafactory-dids compare`: several strategies on one training YAML, one table.

Role: command-line layer around unchanged `llamafactory-cli train` runs (paper Table 1 protocol: same
domains, data, observation sets and budget for every strategy). Each strategy trains once into
`output_dir/<strategy>` with only `dids_strategy` changed (keys another strategy does not read, such as
`dids_static_weights` or `dids_reference_dir`, are dropped for it). Every run measures the target tasks
the same way: the task losses of the final model on the fixed observation rows of
`dids_target_datasets`, written by the mixture into `dids_final.json` (static strategies included).
doremi and velocitune need a reference run: without `dids_reference_dir` in the YAML, the `uniform` run
of the same comparison is the reference (it is trained first).

Outputs in output_dir: `configs/<strategy>.yaml`, `logs/<strategy>.log`, `compare.json`, `compare.md`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import config as dids_config
from .run_files import COMPARE_JSON, COMPARE_TABLE, COMPARE_VERSION, FINAL_FILE, read_history
from .runtime.runs import read_final
from .utils import OverrideError, read_yaml_config
from .utils import parse_overrides as _parse_overrides


def strategy_only_keys() -> dict[str, tuple[str, ...]]:
    """Keys only one family of strategies reads (the config validation refuses them for the others)."""
    return {"dids_static_weights": ("static",), "dids_reference_dir": dids_config.REFERENCE_STRATEGIES}


class CompareError(ValueError):
    """A comparison that cannot start (bad strategies or config); the message says how to fix it."""


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`key=value` strings to a dict, typed as `utils.parse_override` documents (YAML values)."""
    try:
        return _parse_overrides(items)
    except OverrideError as e:
        raise CompareError(str(e)) from None


def plan_runs(config: dict[str, Any], strategies: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """One (strategy, training config) per strategy, in run order (a reference `uniform` run first).

    Raises:
        CompareError: unknown or repeated strategies, no target sets or output_dir, no reference.
    """
    names, reference_strategies = dids_config.STRATEGIES, dids_config.REFERENCE_STRATEGIES
    unknown = [s for s in strategies if s not in names]
    if unknown or not strategies:
        raise CompareError(f"unknown strategies {unknown}; choose from {', '.join(names)}.")
    if len(set(strategies)) != len(strategies):
        raise CompareError(f"--strategies lists a strategy twice: {list(strategies)}.")
    if not config.get("dids_target_datasets"):
        raise CompareError(
            "compare measures every strategy on the downstream tasks: set `dids_target_datasets` in the YAML "
            "(or as an override dids_target_datasets=name1,name2)."
        )
    if not config.get("output_dir"):
        raise CompareError("the YAML has no `output_dir`; each strategy trains into output_dir/<strategy>.")
    root = Path(config["output_dir"])
    reference = config.get("dids_reference_dir")
    order = list(strategies)
    if any(s in reference_strategies for s in order) and not reference:
        if "uniform" not in order:
            raise CompareError(
                f"{', '.join(s for s in order if s in reference_strategies)} compare against a reference run: "
                "add `uniform` to --strategies (it then serves as the reference) or set `dids_reference_dir`."
            )
        order.remove("uniform")
        order.insert(0, "uniform")
        reference = str(root / "uniform")
    runs = []
    only = strategy_only_keys()
    for strategy in order:
        run = {k: v for k, v in config.items() if strategy in only.get(k, (strategy,))}
        run["dids_strategy"] = strategy
        run["output_dir"] = str(root / strategy)
        if strategy in reference_strategies:
            run["dids_reference_dir"] = reference
        runs.append((strategy, run))
    return runs


def summarise_run(strategy: str, output_dir: Path, returncode: int, seconds: float) -> dict[str, Any]:
    """One row of the table from a finished run's output directory."""
    final = read_final(output_dir) if returncode == 0 else None
    history, _ = read_history(output_dir, missing_ok=True)
    row: dict[str, Any] = {
        "strategy": strategy,
        "status": "ok" if returncode == 0 and final is not None else f"failed (exit {returncode})",
        "output_dir": str(output_dir),
        "wall_seconds": round(seconds, 2),
        "mixing_seconds": round(sum(r.get("seconds", 0.0) for r in history), 3),
        "num_updates": sum(1 for r in history if r.get("update", 0) > 0),
        "task_losses": None,
        "weights": None,
    }
    if returncode == 0 and final is None:
        row["status"] = f"no {FINAL_FILE} (no target sets measured)"
    if final is not None:
        row["task_losses"] = dict(zip(final["tasks"], final["task_losses"], strict=True))
        row["mean_task_loss"] = sum(final["task_losses"]) / max(len(final["task_losses"]), 1)
        row["weights"] = dict(zip(final["domains"], final["weights"], strict=True))
    return row


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Target-task losses, mean loss, final weights and wall time per strategy, as a markdown table."""
    tasks = next((list(r["task_losses"]) for r in rows if r["task_losses"]), [])
    head = [
        "strategy",
        *[f"loss {t}" for t in tasks],
        "mean loss",
        "final weights",
        "wall s",
        "mixing s",
        "status",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        losses = r["task_losses"] or {}
        weights = r["weights"] or {}
        cells = [
            r["strategy"],
            *[f"{losses[t]:.4f}" if t in losses else "-" for t in tasks],
            f"{r['mean_task_loss']:.4f}" if "mean_task_loss" in r else "-",
            ", ".join(f"{d} {w:.3f}" for d, w in weights.items()) or "-",
            f"{r['wall_seconds']:.1f}",
            f"{r['mixing_seconds']:.2f}",
            r["status"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_compare(
    config_path: str | Path,
    strategies: Sequence[str],
    overrides: Sequence[str] = (),
    *,
    cli: str,
    out: TextIO = sys.stdout,
) -> tuple[int, list[dict[str, Any]]]:
    """Train every strategy, print the table, write `compare.json` / `compare.md`. Returns (exit code, rows)."""
    import yaml

    config = read_yaml_config(config_path)
    config.update(parse_overrides(overrides))
    runs = plan_runs(config, strategies)
    root = Path(config["output_dir"])
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    rows = []
    for strategy, run in runs:
        path = root / "configs" / f"{strategy}.yaml"
        path.write_text(yaml.safe_dump(run, sort_keys=False), encoding="utf-8")
        log = root / "logs" / f"{strategy}.log"
        print(
            f"[dids] compare: training {strategy} -> {run['output_dir']} (log: {log})", file=out, flush=True
        )
        start = time.perf_counter()
        with open(log, "w", encoding="utf-8") as f:
            result = subprocess.run([cli, "train", str(path)], stdout=f, stderr=subprocess.STDOUT, env=env)
        seconds = time.perf_counter() - start
        rows.append(summarise_run(strategy, Path(run["output_dir"]), result.returncode, seconds))
        print(f"[dids] compare: {strategy}: {rows[-1]['status']} in {seconds:.1f} s", file=out, flush=True)
    table = markdown_table(rows)
    (root / COMPARE_TABLE).write_text(table, encoding="utf-8")
    summary = {
        "schema": COMPARE_VERSION,
        "config": str(config_path),
        "strategies": list(strategies),
        "rows": rows,
    }
    (root / COMPARE_JSON).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(table, file=out)
    print(f"[dids] compare: table in {root / COMPARE_TABLE} and {root / COMPARE_JSON}", file=out)
    return (0 if all(r["status"] == "ok" for r in rows) else 1), rows
