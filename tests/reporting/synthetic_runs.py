"""Synthetic run output directories (history.jsonl, trainer_state.json) with hand-chosen values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def record(
    update: int,
    step: int,
    position: int,
    weights: list[float],
    counts: list[int],
    domains: list[str],
    *,
    strategy: str = "dids",
    tasks: list[str] | None = None,
    task_losses: list[float] | None = None,
    impact: np.ndarray | None = None,
    **extra,
) -> dict:
    """One history.jsonl record in the schema `DomainMixture` writes."""
    out = {
        "schema": 1,
        "update": update,
        "step": step,
        "stream_position": position,
        "strategy": strategy,
        "domains": domains,
        "weights_before": None,
        "weights": list(map(float, weights)),
        "realised_counts": list(map(int, counts)),
        "signals": {},
        "task_losses": task_losses,
        "tasks": tasks or [],
        "seconds": 0.0 if update == 0 else 0.05,
    }
    if update > 0:
        out["terms"] = {}
        if impact is not None:
            out["terms"] = {
                "impact": impact.tolist(),
                "impact_normalised": (impact / impact.sum(axis=0, keepdims=True)).tolist(),
                "l_c": [0.1] * impact.shape[1],
                "l_p": [0.1] * impact.shape[1],
                "utility": np.linspace(-1.0, 1.0, impact.shape[0]).tolist(),
                "task_weights": [1.0 / impact.shape[1]] * impact.shape[1],
                "p_hat": list(map(float, weights)),
            }
    out.update(extra)
    return out


def write_run(
    out: Path, records: list[dict], *, final_step: int | None = None, log: list[dict] | None = None
) -> Path:
    """Write `records` to out/history.jsonl and, with `final_step`, a trainer_state.json holding `log`."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "history.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    if final_step is not None:
        state = {"global_step": final_step, "log_history": log or []}
        (out / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
    return out


TWO = ["code", "prose"]


def two_domain_run(out: Path, **kwargs) -> Path:
    """Hand-checkable run: weights [.5,.5] from position 0, [.8,.2] from 24, [.2,.8] from 44; 4 samples
    per step (20 trained by step 5, 40 by step 10); final step 15 (60 samples)."""
    records = [
        record(0, 0, 0, [0.5, 0.5], [0, 0], TWO, domain_column=None),
        record(1, 5, 24, [0.8, 0.2], [12, 8], TWO),
        record(2, 10, 44, [0.2, 0.8], [26, 14], TWO),
    ]
    return write_run(out, records, final_step=15, **kwargs)


def many_domain_run(out: Path, k: int = 72, m: int = 2, updates: int = 12, seed: int = 0) -> Path:
    """A dids-like run over k domains and m tasks with random weights, impacts and decaying task losses."""
    rng = np.random.default_rng(seed)
    domains = [f"dom_{i:03d}" for i in range(k)]
    tasks = [f"task_{j}" for j in range(m)]
    weights = np.full(k, 1 / k)
    losses = np.array([3.0 + j for j in range(m)])
    records = [record(0, 0, 0, weights, [0] * k, domains, tasks=tasks, task_losses=losses.tolist())]
    counts = np.zeros(k, dtype=int)
    log = []
    for u in range(1, updates + 1):
        step = 10 * u
        counts += rng.multinomial(80, weights)
        weights = rng.dirichlet(np.full(k, 0.3))
        impact = rng.uniform(0.1, 1.0, size=(k, m))
        losses = 2.0 + (losses - 2.0) * 0.8
        records.append(
            record(
                u,
                step,
                80 * u + 16,
                weights,
                counts.tolist(),
                domains,
                tasks=tasks,
                task_losses=losses.tolist(),
                impact=impact,
            )
        )
        entry = {"step": step, "loss": 1.0}
        entry.update({f"dids/target/{d}": float(w) for d, w in zip(domains, weights, strict=True)})
        entry.update(
            {f"dids/realised/{d}": float(c / counts.sum()) for d, c in zip(domains, counts, strict=True)}
        )
        log.append(entry)
    return write_run(out, records, final_step=10 * updates + 5, log=log)
