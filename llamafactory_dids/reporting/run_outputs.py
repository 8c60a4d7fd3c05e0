"""Read one training run's mixture outputs and aggregate them (after the run; no torch).

Role: the reader behind `llamafactory-dids report` and `export`, downstream of the schedule step
(repartition -> impact -> schedule -> sampler): it reads what `runtime.mixture.DomainMixture` wrote.

- `history.jsonl`: one record per mixture update (update 0 is the initial mixture), schema
  `HISTORY_VERSION`, read by `run_files.read_history`. A resumed run keeps the records up to its checkpoint and appends from there; when
  records go back in step (a history written without that truncation), the later records supersede
  every earlier one at or after their step, as the resumed run's timeline does.
- the per-step `dids/*` scalars (`dids/target/<domain>`, `dids/realised/<domain>`, `dids/loss/<domain>`,
  `dids/task_loss/<task>`, `dids/impact/<domain>`): `Trainer.log` puts them in `log_history` of
  `trainer_state.json` (the output_dir's, or the newest checkpoint's for an interrupted run);
  LLaMA-Factory's `trainer_log.jsonl` is read when it carries them. Entries repeated by a resume are
  superseded the same way.

Time average of the mixture (what `export --mixture mean` writes): with w_i the weights of record i,
in force from its stream position p_i to p_{i+1} (the sampler's schedule; the last one until the end
of the run, N samples),

    w_mean = sum_i n_i w_i / sum_i n_i,    n_i = min(p_{i+1}, N) - min(p_i, N)     (by stream samples)

or with n_i = s_{i+1} - s_i in optimizer steps (`by="steps"`; the last record until the final step).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..run_files import (
    HISTORY_FILE,
    HISTORY_VERSION,
    TRAINER_LOG,
    TRAINER_STATE,
    RunOutputsError,
    read_history,
    read_jsonl,
    supersede,
)

HISTORY_SCHEMA = HISTORY_VERSION  # the name this module exported before `run_files` owned it

AVERAGING = ("samples", "steps")


@dataclass
class RunOutputs:
    """The mixture history of one run, resume-resolved, as arrays.

    Attributes:
        weights: float [n, k], the probabilities set by each record (row 0: the initial mixture).
        steps: int [n], the optimizer step of each record.
        stream_positions: int [n], the sampler stream position from which each record's weights apply.
        realised_counts: int [n, k], samples trained per domain up to each record.
        task_losses: float [n, m], the downstream task losses L_0..L_t at each record (None: no tasks).
        final_step: the run's last optimizer step (None when no trainer state or log says).
        total_samples: training samples (stream positions) drawn by `final_step` (None when unknown).
    """

    output_dir: Path
    records: list[dict[str, Any]]
    superseded: int
    strategy: str
    domains: list[str]
    tasks: list[str]
    steps: np.ndarray
    weights: np.ndarray
    stream_positions: np.ndarray
    realised_counts: np.ndarray
    task_losses: np.ndarray | None
    log: list[dict[str, Any]] = field(default_factory=list)
    log_source: str | None = None
    final_step: int | None = None
    total_samples: int | None = None
    end_note: str = ""

    @property
    def num_domains(self) -> int:
        return len(self.domains)

    @property
    def num_updates(self) -> int:
        return sum(1 for r in self.records if r["update"] > 0)

    @property
    def end_step(self) -> int:
        return self.final_step if self.final_step is not None else int(self.steps[-1])

    def update_records(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["update"] > 0]

    def impact_records(self) -> list[dict[str, Any]]:
        """Update records that carry DIDS impact terms (empty for strategies without them)."""
        return [
            r for r in self.update_records() if (r.get("terms") or {}).get("impact_normalised") is not None
        ]

    def impact_normalised(self) -> np.ndarray:
        """float [u, k, m]: each DIDS update's normalised impact (columns sum to 1 over domains)."""
        records = self.impact_records()
        if not records:
            raise RunOutputsError(
                f"{self.output_dir / HISTORY_FILE}: strategy {self.strategy!r} records no impact terms."
            )
        return np.asarray([r["terms"]["impact_normalised"] for r in records], dtype=np.float64)

    def log_series(self, prefix: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Steps [s] and, per name after `prefix` (e.g. "dids/realised/"), its values [s] (NaN if absent)."""
        entries = [e for e in self.log if any(k.startswith(prefix) for k in e)]
        names = sorted({k[len(prefix) :] for e in entries for k in e if k.startswith(prefix)})
        steps = np.asarray([e["step"] for e in entries], dtype=np.int64)
        values = {
            n: np.asarray([float(e.get(prefix + n, math.nan)) for e in entries], dtype=np.float64)
            for n in names
        }
        return steps, values


# ------------------------------------------------------------------------------------------ reading


def _newest_trainer_state(output_dir: Path) -> Path | None:
    candidates = [output_dir / TRAINER_STATE] + [
        p / TRAINER_STATE for p in output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
    ]
    best, best_step = None, -1
    for path in candidates:
        if not path.is_file():
            continue
        try:
            step = int(json.loads(path.read_text(encoding="utf-8")).get("global_step", -1))
        except (ValueError, OSError):
            continue  # an unreadable checkpoint state: the others (or trainer_log.jsonl) still serve
        if step > best_step:
            best, best_step = path, step
    return best


def read_training_log(output_dir: str | Path) -> tuple[list[dict[str, Any]], int | None, str | None]:
    """The logged `dids/*` entries (each with "step"), the run's final step, and the file they came from.

    `trainer_state.json` (output_dir's or the newest checkpoint's) is preferred: the Trainer restores it
    on resume, so its `log_history` is already the resumed timeline. `trainer_log.jsonl` (appended across
    resumes) serves for the final step, and for the entries when it carries `dids/*` keys.
    """
    output_dir = Path(output_dir)
    entries: list[dict[str, Any]] = []
    final_step: int | None = None
    source: str | None = None
    state_path = _newest_trainer_state(output_dir)
    if state_path is not None:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        final_step = int(state["global_step"])
        entries = [
            dict(e)
            for e in state.get("log_history", [])
            if "step" in e and any(k.startswith("dids/") for k in e)
        ]
        source = str(state_path)
    log_path = output_dir / TRAINER_LOG
    if log_path.is_file():
        lines = [(n, e) for n, e in read_jsonl(log_path) if isinstance(e, dict) and "current_steps" in e]
        kept, _ = supersede(lines, "current_steps")
        if kept:
            last = int(kept[-1]["current_steps"])
            final_step = last if final_step is None else max(final_step, last)
        if not entries:
            entries = [
                {**e, "step": int(e["current_steps"])} for e in kept if any(k.startswith("dids/") for k in e)
            ]
            source = str(log_path) if entries else source
    return entries, final_step, source


def load_run(output_dir: str | Path) -> RunOutputs:
    """Read `output_dir`'s history and training log into a `RunOutputs` (see the module docstring).

    Raises:
        RunOutputsError: see `read_history`.
    """
    output_dir = Path(output_dir)
    records, superseded = read_history(output_dir)
    first = records[0]
    k = len(first["domains"])
    tasks = list(first.get("tasks") or [])
    task_losses = None
    if tasks and all(r.get("task_losses") is not None for r in records):
        task_losses = np.asarray([r["task_losses"] for r in records], dtype=np.float64)
    run = RunOutputs(
        output_dir=output_dir,
        records=records,
        superseded=superseded,
        strategy=str(first.get("strategy", "?")),
        domains=list(first["domains"]),
        tasks=tasks,
        steps=np.asarray([r["step"] for r in records], dtype=np.int64),
        weights=np.asarray([r["weights"] for r in records], dtype=np.float64),
        stream_positions=np.asarray([r.get("stream_position", 0) for r in records], dtype=np.int64),
        realised_counts=np.asarray([r.get("realised_counts") or [0] * k for r in records], dtype=np.int64),
        task_losses=task_losses,
    )
    run.log, run.final_step, run.log_source = read_training_log(output_dir)
    if run.final_step is not None and run.final_step < run.steps[-1]:
        run.final_step = int(run.steps[-1])  # a trainer state older than the history (interrupted run)
    _estimate_total_samples(run)
    return run


def _estimate_total_samples(run: RunOutputs) -> None:
    """N, the samples trained by the final step: counted at the last update, scaled to the final step."""
    trained = run.realised_counts.sum(axis=1)
    last = int(np.flatnonzero(run.steps > 0)[-1]) if (run.steps > 0).any() else None
    if last is None or trained[last] <= 0:
        run.end_note = "no update after step 0: the initial mixture is the whole run's mixture"
        return
    per_step = trained[last] / run.steps[last]
    if run.final_step is None:
        run.total_samples = int(trained[last])
        run.end_note = (
            f"the run's last step is unknown (no {TRAINER_STATE} or {TRAINER_LOG}): averaged up to the last "
            f"update (step {int(run.steps[last])}, {int(trained[last])} samples)"
        )
        return
    run.total_samples = int(round(per_step * run.final_step))
    run.end_note = (
        f"{run.total_samples} samples by the final step {run.final_step}, at {per_step:g} samples per "
        f"optimizer step as counted up to step {int(run.steps[last])}"
    )


# -------------------------------------------------------------------------------------- aggregation


def weight_spans(run: RunOutputs, by: str = "samples") -> np.ndarray:
    """float [n]: how long each record's weights were in force, in stream samples or optimizer steps."""
    if by not in AVERAGING:
        raise ValueError(f"`by` must be one of {', '.join(AVERAGING)}, got {by!r}.")
    if by == "steps":
        ends = np.append(run.steps[1:], run.end_step)
        return np.maximum(ends - run.steps, 0).astype(np.float64)
    if run.total_samples is None:
        return np.zeros(len(run.records))
    total = run.total_samples
    starts = np.minimum(run.stream_positions, total)
    ends = np.minimum(np.append(run.stream_positions[1:], total), total)
    return np.maximum(ends - starts, 0).astype(np.float64)


def time_averaged_weights(run: RunOutputs, by: str = "samples") -> np.ndarray:
    """float [k]: the mixture averaged over the run (module docstring); the last weights if no span."""
    spans = weight_spans(run, by)
    if spans.sum() <= 0:
        return run.weights[-1].copy()
    return spans @ run.weights / spans.sum()


def weights_at_progress(run: RunOutputs, fractions: Sequence[float]) -> np.ndarray:
    """float [len(fractions), k]: the weights in force at each fraction (0..1) of the run's optimizer steps.

    The paper's Table 9 view: 0 is the initial mixture, 1 the last one; in between, the newest record at
    or before step `fraction * final_step`.
    """
    out = []
    for f in fractions:
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"fractions must lie in [0, 1], got {f}.")
        step = f * run.end_step
        index = int(np.searchsorted(run.steps, step, side="right")) - 1
        out.append(run.weights[max(index, 0)] if f < 1.0 else run.weights[-1])
    return np.asarray(out)


def realised_fractions(run: RunOutputs) -> np.ndarray:
    """float [k]: the share of trained samples per domain at the end (log if it has it, else the history)."""
    steps, realised = run.log_series("dids/realised/")
    if len(steps) and set(realised) == set(run.domains):
        values = np.asarray([realised[d][-1] for d in run.domains])
        if np.isfinite(values).all() and steps[-1] >= run.steps[-1]:
            return values
    counts = run.realised_counts[-1].astype(np.float64)
    return counts / counts.sum() if counts.sum() > 0 else np.full(run.num_domains, np.nan)


def top_domains(values: np.ndarray, n: int) -> list[int]:
    """Indices of the `n` largest entries of `values` [k], largest first (ties: lower index first)."""
    order = np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")
    return [int(i) for i in order[: max(n, 0)]]
