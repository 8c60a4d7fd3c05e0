"""`run_files.read_history`: the one reader of history.jsonl, strict by default, lenient on request."""

from __future__ import annotations

import json

import pytest

from llamafactory_dids.reporting import run_outputs
from llamafactory_dids.run_files import HISTORY_FILE, HISTORY_VERSION, RunOutputsError, read_history
from llamafactory_dids.runtime import mixture


def record(step, update, weights=(0.5, 0.5)):
    return {
        "schema": HISTORY_VERSION,
        "update": update,
        "step": step,
        "domains": ["a", "b"],
        "weights": weights,
    }


def test_one_owner_of_the_names():
    assert mixture.HISTORY_FILE is HISTORY_FILE and mixture.HISTORY_VERSION == HISTORY_VERSION
    assert run_outputs.read_history is read_history and run_outputs.RunOutputsError is RunOutputsError


def test_missing_ok_reads_an_absent_or_empty_history_as_no_records(tmp_path):
    assert read_history(tmp_path / "nowhere", missing_ok=True) == ([], 0)
    assert read_history(tmp_path, missing_ok=True) == ([], 0)
    (tmp_path / HISTORY_FILE).write_text("\n", encoding="utf-8")
    assert read_history(tmp_path, missing_ok=True) == ([], 0)
    with pytest.raises(RunOutputsError, match="is empty"):
        read_history(tmp_path)
    with pytest.raises(RunOutputsError, match="is not a directory"):
        read_history(tmp_path / "nowhere")


def test_missing_ok_still_validates_and_resolves_a_resume(tmp_path):
    rows = [record(0, 0), record(5, 1), record(10, 2), record(5, 1, (0.9, 0.1)), record(10, 2)]
    (tmp_path / HISTORY_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    records, superseded = read_history(tmp_path, missing_ok=True)
    assert [r["step"] for r in records] == [0, 5, 10] and superseded == 2
    assert records[1]["weights"] == [0.9, 0.1]
    bad = {**record(15, 3), "schema": HISTORY_VERSION + 1}
    with open(tmp_path / HISTORY_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(bad) + "\n")
    with pytest.raises(RunOutputsError, match="history schema 2"):
        read_history(tmp_path, missing_ok=True)
