"""The paper's baselines end to end through `llamafactory-cli train`, resume of a stateful one, and the
`llamafactory-dids compare` command (and `export` of a DoGE proxy's weights). Tiny budgets: 10 steps, 2 updates per run; one
comparison trains uniform (the reference), doremi, dga and velocitune; a resume test trains doge twice."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import BIN, base_config, read_jsonl, run_train, train_env

pytestmark = pytest.mark.slow

DOMAINS = ["demo_code", "demo_docs", "demo_comments"]
TASK = "demo_target_code"
COMPARED = ["doremi", "uniform", "dga", "velocitune"]


def baseline_config(assets, out, strategy, **overrides):
    keys = dict(
        dids_strategy=strategy,
        dids_target_datasets=TASK,
        dids_target_samples=16,
        dids_probe_samples=4,
        dids_update_interval=5,
        dids_budget=40,
        per_device_eval_batch_size=8,
    )
    keys.update(overrides)
    return base_config(assets, out, **keys)


def _updates(out):
    return [r for r in read_jsonl(out / "history.jsonl") if r["update"] > 0]


def _check_run(out, strategy):
    """Two updates of a valid mixture with the strategy's terms, and the final task losses measured."""
    updates = _updates(out)
    assert [r["step"] for r in updates] == [5, 10]
    for r in updates:
        assert r["strategy"] == strategy and r["tasks"] == [TASK]
        assert np.isfinite(r["weights"]).all() and abs(sum(r["weights"]) - 1) < 1e-9
        assert np.asarray(r["terms"]["alignment"]).shape == (3, 1)
        assert len(r["task_losses"]) == 1 and np.isfinite(r["task_losses"][0])
    assert any(not np.allclose(r["weights"], 1 / 3) for r in updates)  # the mixture moved
    final = json.loads((out / "dids_final.json").read_text())
    assert final["strategy"] == strategy and final["tasks"] == [TASK] and final["step"] == 10
    np.testing.assert_allclose(final["weights"], updates[-1]["weights"], rtol=1e-12)
    assert np.isfinite(final["task_losses"]).all()
    return updates, final


@pytest.fixture(scope="module")
def compared(demo_assets, tmp_path_factory):
    """`llamafactory-dids compare` on four strategies; uniform trains first and is the reference of doremi
    and velocitune; an override given after the strategies reaches every run."""
    work = tmp_path_factory.mktemp("compare")
    config = baseline_config(demo_assets, work / "out", "dids")
    (work / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    cli = shutil.which("llamafactory-dids", path=str(BIN)) or "llamafactory-dids"
    command = [cli, "compare", str(work / "config.yaml"), "--strategies", *COMPARED, "dids_smoothing=0.01"]
    result = subprocess.run(command, env=train_env(), capture_output=True, text=True, timeout=1800, cwd=work)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return work / "out", result.stdout


def test_compare_prints_one_table_measured_the_same_way(compared):
    out, stdout = compared
    summary = json.loads((out / "compare.json").read_text())
    rows = {r["strategy"]: r for r in summary["rows"]}
    assert list(rows) == ["uniform", "doremi", "dga", "velocitune"]  # the reference first
    for name, row in rows.items():
        final = json.loads((out / name / "dids_final.json").read_text())
        assert row["status"] == "ok" and row["task_losses"] == {TASK: final["task_losses"][0]}
        assert row["weights"] == dict(zip(DOMAINS, final["weights"], strict=True)) and row["wall_seconds"] > 0
        assert row["num_updates"] == 2
    # the static run observed the task at the start and at every update, and kept its weights
    uniform = read_jsonl(out / "uniform" / "history.jsonl")
    assert [len(r["task_losses"]) for r in uniform] == [1] * 3
    np.testing.assert_allclose(list(rows["uniform"]["weights"].values()), [1 / 3] * 3)
    assert yaml.safe_load((out / "configs" / "doremi.yaml").read_text())["dids_smoothing"] == 0.01
    table = (out / "compare.md").read_text()
    assert table in stdout and f"loss {TASK}" in table and all(f"| {s} |" in table for s in rows)


def test_doremi_uses_the_reference_runs_final_losses(compared):
    out = compared[0]
    reference = json.loads((out / "uniform" / "dids_final.json").read_text())["task_losses"]
    updates, _ = _check_run(out / "doremi", "doremi")
    for r in updates:
        assert r["terms"]["reference_losses"] == reference
        np.testing.assert_allclose(
            r["terms"]["excess_loss"], np.clip(np.subtract(r["task_losses"], reference), 0, None)
        )


def test_dga_runs_an_ema_over_its_iterates(compared):
    updates, _ = _check_run(compared[0] / "dga", "dga")
    previous = [1 / 3] * 3
    for r in updates:  # default dids_ema_beta 0.1: p_t = 0.1 p_{t-1} + 0.9 a_t
        np.testing.assert_allclose(
            r["weights"], 0.1 * np.asarray(previous) + 0.9 * np.asarray(r["terms"]["iterate"])
        )
        previous = r["weights"]


def test_velocitune_measures_velocity_towards_reference_targets(compared):
    out = compared[0] / "velocitune"
    updates, _ = _check_run(out, "velocitune")
    initial = read_jsonl(out / "history.jsonl")[0]["task_losses"]
    # the reference measured at 20 and 40 samples only: too few points for the scaling fit, so its last loss
    reference = json.loads((compared[0] / "uniform" / "dids_final.json").read_text())["task_losses"]
    for r in updates:
        assert r["terms"]["initial_losses"] == initial and r["terms"]["target_losses"] == reference
        velocity = (r["task_losses"][0] - reference[0]) / (initial[0] - reference[0])
        np.testing.assert_allclose(r["terms"]["velocity"], [velocity])


def test_doge_resume_continues_the_same_mixture_and_exports_static_weights(demo_assets, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    common = dict(save_strategy="steps", save_steps=5, dids_step_size=5.0)
    run_train(baseline_config(demo_assets, full, "doge", **common), tmp_path / "a")
    updates, final = _check_run(full, "doge")
    np.testing.assert_allclose(final["average_weights"], np.mean([r["weights"] for r in updates], axis=0))
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-5", resumed / "checkpoint-5")
    state = json.loads((resumed / "checkpoint-5" / "dids_state.json").read_text())
    assert state["strategy_state"]["num_steps"] == 1
    config = baseline_config(demo_assets, resumed, "doge", **common)
    config.update(overwrite_output_dir=False, resume_from_checkpoint=str(resumed / "checkpoint-5"))
    run_train(config, tmp_path / "b")
    assert [r["step"] for r in read_jsonl(resumed / "history.jsonl")] == [10]
    np.testing.assert_allclose(
        read_jsonl(resumed / "history.jsonl")[0]["weights"], updates[1]["weights"], rtol=1e-6
    )
    resumed_final = json.loads((resumed / "dids_final.json").read_text())
    np.testing.assert_allclose(resumed_final["average_weights"], final["average_weights"], rtol=1e-6)
    # offline DoGE: the time average of the weights in force (steps 1-5 uniform, 6-10 the first update's)
    subprocess.run(
        [sys.executable, "-m", "llamafactory_dids.cli", "export", str(full), "--average", "steps"],
        capture_output=True,
        check=True,
        env=train_env(),
    )
    keys = yaml.safe_load((full / "dids_export" / "static.yaml").read_text())
    assert keys["dids_strategy"] == "static"
    weights = [keys["dids_static_weights"][d] for d in DOMAINS]
    np.testing.assert_allclose(
        weights, (np.full(3, 1 / 3) + np.asarray(updates[0]["weights"])) / 2, atol=2e-6
    )


@pytest.mark.distributed
def test_dga_two_processes_agree_with_one(demo_assets, tmp_path):
    """The alignment is all-reduced and the weights broadcast: torchrun x2 matches one process."""
    single, double = tmp_path / "single", tmp_path / "double"
    # the same global batch (8) in both runs: 1 x 8 and 2 x 4
    common = dict(dids_budget=80, dids_step_size=5.0)
    run_train(
        baseline_config(demo_assets, single, "dga", per_device_train_batch_size=8, **common), tmp_path / "a"
    )
    run_train(baseline_config(demo_assets, double, "dga", **common), tmp_path / "b", nproc=2)
    a, b = _updates(single), _updates(double)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [5, 10]
    np.testing.assert_allclose(b[0]["task_losses"], a[0]["task_losses"], rtol=1e-4)
    np.testing.assert_allclose(b[0]["terms"]["alignment"], a[0]["terms"]["alignment"], rtol=2e-2, atol=1e-9)
    np.testing.assert_allclose(b[0]["weights"], a[0]["weights"], atol=2e-2)
    final = json.loads((double / "dids_final.json").read_text())
    np.testing.assert_allclose(
        final["task_losses"], json.loads((single / "dids_final.json").read_text())["task_losses"], rtol=5e-2
    )
