"""Reading finished runs: the reference task losses of DoReMi and Velocitune."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llamafactory_dids.runtime.runs import read_reference

DOMAINS = ["code", "docs"]


def write_run(path, *, tasks=("a", "b"), domains=DOMAINS, final=True, with_losses=True):
    path.mkdir(parents=True)
    records = []
    for update, (counts, losses, weights) in enumerate(
        [
            ([0, 0], [5.0, 6.0], [0.5, 0.5]),
            ([6, 2], [4.0, 5.0], [0.6, 0.4]),
            ([12, 4], [3.0, 4.5], [0.8, 0.2]),
        ]
    ):
        records.append(
            {
                "schema": 1,
                "update": update,
                "step": 5 * update,
                "strategy": "doge",
                "domains": list(domains),
                "weights": weights,
                "tasks": list(tasks),
                "task_losses": losses if with_losses else None,
                "realised_counts": counts,
            }
        )
    (path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if final:
        record = {
            "schema": 1,
            "step": 10,
            "strategy": "doge",
            "domains": list(domains),
            "weights": [0.8, 0.2],
            "realised_counts": [12, 4],
            "tasks": list(tasks),
            "task_losses": [2.9, 4.4],
        }
        (path / "dids_final.json").write_text(json.dumps(record))
    return path


def test_reference_reorders_tasks_and_prefers_the_final_measurement(tmp_path):
    ref = read_reference(write_run(tmp_path / "run"), DOMAINS, ["b", "a"])
    np.testing.assert_allclose(ref.final_losses, [4.4, 2.9])
    np.testing.assert_allclose(ref.samples, [0, 8, 16, 16])
    np.testing.assert_allclose(ref.losses[:, 1], [5.0, 4.0, 3.0, 2.9])
    ref = read_reference(write_run(tmp_path / "nofinal", final=False), DOMAINS, ["a"])
    np.testing.assert_allclose(ref.final_losses, [3.0])  # the last history measurement


@pytest.mark.parametrize(
    ("kwargs", "domains", "tasks", "match"),
    [
        (None, DOMAINS, ["a"], r"is not a directory"),
        ({"final": False, "with_losses": False}, DOMAINS, ["a"], r"holds no task losses"),
        ({}, ["code", "math"], ["a"], r"was trained on domains \['code', 'docs'\]"),
        ({}, DOMAINS, ["a", "gsm"], r"include \['gsm'\] it never measured"),
    ],
)
def test_reference_errors_say_what_is_wrong(tmp_path, kwargs, domains, tasks, match):
    path = tmp_path / "run" if kwargs is None else write_run(tmp_path / "run", **kwargs)
    with pytest.raises(ValueError, match=match):
        read_reference(path, domains, tasks)
