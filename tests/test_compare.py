"""`llamafactory-dids compare`: planning the runs (keys per strategy, reference order) and the table."""

from __future__ import annotations

import pytest

from llamafactory_dids.compare import CompareError, markdown_table, parse_overrides, plan_runs

BASE = {
    "output_dir": "out",
    "dids_strategy": "dids",
    "dids_target_datasets": "t",
    "dids_update_interval": 5,
    "dids_static_weights": {"a": 1, "b": 2},
}


def test_plan_runs_order_reference_and_keys():
    runs = dict(plan_runs(BASE, ["dga", "doremi", "static", "uniform"]))
    assert list(runs) == ["uniform", "dga", "doremi", "static"]  # the reference trains first
    assert (
        runs["doremi"]["dids_reference_dir"] == "out/uniform" and runs["doremi"]["output_dir"] == "out/doremi"
    )
    assert "dids_static_weights" not in runs["dga"] and runs["static"]["dids_static_weights"] == {
        "a": 1,
        "b": 2,
    }
    assert all(r["dids_strategy"] == s for s, r in runs.items())
    assert "dids_reference_dir" not in runs["uniform"]
    given = dict(plan_runs({**BASE, "dids_reference_dir": "ref"}, ["velocitune"]))
    assert given["velocitune"]["dids_reference_dir"] == "ref"


@pytest.mark.parametrize(
    ("config", "strategies", "match"),
    [
        (BASE, ["dga", "magic"], r"unknown strategies \['magic'\]"),
        (BASE, ["dga", "dga"], r"lists a strategy twice"),
        ({**BASE, "dids_target_datasets": None}, ["dga"], r"set `dids_target_datasets`"),
        ({k: v for k, v in BASE.items() if k != "output_dir"}, ["dga"], r"has no `output_dir`"),
        (BASE, ["doremi", "dga"], r"add `uniform` to --strategies"),
    ],
)
def test_plan_runs_errors(config, strategies, match):
    with pytest.raises(CompareError, match=match):
        plan_runs(config, strategies)


def test_overrides_are_yaml_values():
    assert parse_overrides(["dids_budget=100", "dids_smoothing=0.01", "x=[a, b]", "y="]) == {
        "dids_budget": 100,
        "dids_smoothing": 0.01,
        "x": ["a", "b"],
        "y": None,
    }
    with pytest.raises(CompareError, match="is not key=value"):
        parse_overrides(["dids_budget"])


def test_markdown_table_has_one_row_per_strategy():
    rows = [
        {
            "strategy": "uniform",
            "status": "ok",
            "task_losses": {"t": 2.5},
            "mean_task_loss": 2.5,
            "weights": {"a": 0.5, "b": 0.5},
            "wall_seconds": 12.0,
            "mixing_seconds": 0.5,
        },
        {
            "strategy": "dga",
            "status": "failed (exit 1)",
            "task_losses": None,
            "weights": None,
            "wall_seconds": 3.0,
            "mixing_seconds": 0.0,
        },
    ]
    lines = markdown_table(rows).splitlines()
    assert lines[0] == "| strategy | loss t | mean loss | final weights | wall s | mixing s | status |"
    assert lines[2] == "| uniform | 2.5000 | 2.5000 | a 0.500, b 0.500 | 12.0 | 0.50 | ok |"
    assert lines[3] == "| dga | - | - | - | 3.0 | 0.00 | failed (exit 1) |"
