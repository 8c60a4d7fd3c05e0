"""The files a command leaves behind: their names and schema versions, and the reader of the mixture history.

Role: the one place that names what a run writes (no numpy, no torch), so the writer and every reader
agree. Modules import these constants instead of spelling the names again.

Training run (`output_dir`, written by `integration`):
- `history.jsonl` (`HISTORY_FILE`, records of schema `HISTORY_VERSION`): one record per mixture update,
  update 0 being the initial mixture; read by `read_history`.
- `dids_final.json` (`FINAL_FILE`, schema `FINAL_VERSION`): the task losses of the final model.
- `checkpoint-N/dids_state.json` (`STATE_FILE`, version `STATE_VERSION`): the mixture state for resume,
  holding the sampler's state (version `SAMPLER_STATE_VERSION`).
- `dids_trace/rank<r>.jsonl` (`TRACE_DIR`): the training rows of every step (`dids_trace_samples`).
- LLaMA-Factory's own `trainer_state.json` and `trainer_log.jsonl` (`TRAINER_STATE`, `TRAINER_LOG`).

After a run: `report` writes `dids_report/report.md` (`REPORT_DIR`, `REPORT_SUMMARY`); `export` writes
`dids_export/mixture.json` (`EXPORT_DIR`, `EXPORT_JSON`, schema `EXPORT_VERSION`), `static.yaml` and
`interleave.yaml`; `compare` writes `compare.json` (schema `COMPARE_VERSION`) and `compare.md`.

Other commands: `repartition` writes `data.jsonl`, `dataset_info.json`, `domain_map.json` (schema
`REPARTITION_VERSION`) and `report.md`, with its feature cache's `manifest.json` (schema
`FEATURE_CACHE_VERSION`); `observe` writes `observation_manifest.json` (schema `MANIFEST_VERSION`);
`eval` writes `eval_results.json` (schema `RESULTS_VERSION`) and `eval_samples.jsonl`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# training run
HISTORY_FILE = "history.jsonl"
HISTORY_VERSION = 1
FINAL_FILE = "dids_final.json"
FINAL_VERSION = 1
STATE_FILE = "dids_state.json"
STATE_VERSION = 1
SAMPLER_STATE_VERSION = 1
TRACE_DIR = "dids_trace"
TRAINER_STATE = "trainer_state.json"  # LLaMA-Factory's / transformers' files, read by `report`
TRAINER_LOG = "trainer_log.jsonl"

# report, export, compare
REPORT_DIR = "dids_report"
REPORT_SUMMARY = "report.md"
EXPORT_DIR = "dids_export"
EXPORT_JSON = "mixture.json"
EXPORT_STATIC = "static.yaml"
EXPORT_INTERLEAVE = "interleave.yaml"
EXPORT_VERSION = 1
COMPARE_JSON = "compare.json"
COMPARE_TABLE = "compare.md"
COMPARE_VERSION = 1

# repartition
REPARTITION_DATA = "data.jsonl"
DATASET_INFO = "dataset_info.json"  # LLaMA-Factory's dataset registry
REPARTITION_DOMAIN_MAP = "domain_map.json"
REPARTITION_REPORT = "report.md"
REPARTITION_VERSION = 1
FEATURE_CACHE_MANIFEST = "manifest.json"
FEATURE_CACHE_VERSION = 1

# observe, eval
OBSERVATION_MANIFEST = "observation_manifest.json"
MANIFEST_VERSION = 1
RESULTS_FILE = "eval_results.json"
SAMPLES_FILE = "eval_samples.jsonl"
RESULTS_VERSION = 1

REQUIRED_HISTORY_KEYS = ("schema", "update", "step", "domains", "weights")


class RunOutputsError(ValueError):
    """A run's output directory cannot be read: names the file, the line and the fix."""


def read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """(line number, value) of every non-blank line; a line that is not JSON is an error naming it."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append((i + 1, json.loads(line)))
        except json.JSONDecodeError as e:
            if i == last:
                raise RunOutputsError(
                    f"{path}, line {i + 1} (the last line): not valid JSON ({e.msg}); the file is truncated, "
                    "probably written by a run that was killed. Delete that line to use the records before it, "
                    "or resume the run from its last checkpoint (which rewrites the history)."
                ) from None
            raise RunOutputsError(
                f"{path}, line {i + 1}: not valid JSON ({e.msg}); the file is corrupt. Restore it, or delete "
                "that line and the following ones to use the records before it."
            ) from None
    return out


def supersede(entries: list[tuple[int, dict[str, Any]]], step_key: str) -> tuple[list[dict[str, Any]], int]:
    """Drop the entries a later one supersedes (same or later step, written before it). Returns (kept, dropped)."""
    kept: list[dict[str, Any]] = []
    dropped = 0
    for _, entry in entries:
        while kept and kept[-1][step_key] >= entry[step_key]:
            kept.pop()
            dropped += 1
        kept.append(entry)
    return kept, dropped


def read_history(output_dir: str | Path, *, missing_ok: bool = False) -> tuple[list[dict[str, Any]], int]:
    """The records of `output_dir/history.jsonl`, validated and resume-resolved. Returns (records, superseded).

    A resumed run keeps the records up to its checkpoint and appends from there; when records go back in
    step (a history written without that truncation), the later records supersede every earlier one at or
    after their step, as the resumed run's timeline does. `superseded` counts the records dropped so.

    Args:
        missing_ok: a missing directory or history file, or an empty history, reads as ([], 0) instead
            of an error (a run that failed or has not trained a step yet).

    Raises:
        RunOutputsError: no history file, an empty one (unless `missing_ok`), a line that is not JSON (the
            last line: truncated), a wrong schema version, a record without the required keys, or records
            over different domains.
    """
    output_dir = Path(output_dir)
    path = output_dir / HISTORY_FILE
    if missing_ok and not path.is_file():
        return [], 0
    if not output_dir.is_dir():
        raise RunOutputsError(f"{output_dir} is not a directory. Pass the `output_dir` of a training run.")
    if not path.is_file():
        raise RunOutputsError(
            f"{output_dir} has no {HISTORY_FILE}: it is not the output_dir of a run trained with a "
            "`dids_strategy` (the mixture history is written there at the first training step). Pass the "
            "`output_dir` of such a run."
        )
    entries = read_jsonl(path)
    if not entries:
        if missing_ok:
            return [], 0
        raise RunOutputsError(f"{path} is empty: the run stopped before its first training step.")
    domains = None
    for line, record in entries:
        if not isinstance(record, dict):
            raise RunOutputsError(
                f"{path}, line {line}: expected a JSON object, got {type(record).__name__}."
            )
        if record.get("schema") != HISTORY_VERSION:
            raise RunOutputsError(
                f"{path}, line {line}: history schema {record.get('schema')!r}, this version of llamafactory-dids "
                f"reads schema {HISTORY_VERSION}. Report it with the llamafactory-dids version that trained the run."
            )
        missing = [k for k in REQUIRED_HISTORY_KEYS if k not in record]
        if missing:
            raise RunOutputsError(f"{path}, line {line}: record without {missing}; the file is corrupt.")
        if domains is None:
            domains = record["domains"]
        if record["domains"] != domains or len(record["weights"]) != len(domains):
            raise RunOutputsError(
                f"{path}, line {line}: record over domains {record['domains'][:8]} with {len(record['weights'])} "
                f"weights, but line {entries[0][0]} has {domains[:8]}: two runs wrote into one output_dir. "
                "Report on a directory holding one run."
            )
    return supersede(entries, "step")
