"""report and export on the outputs of a real `dids_strategy: dids` run (one short run shared by the module)."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest
import yaml

from llamafactory_dids.algorithms.strategies import resolve_static_weights
from llamafactory_dids.cli import main
from llamafactory_dids.config import parse_dids_config
from llamafactory_dids.reporting import plots
from llamafactory_dids.reporting.run_outputs import load_run, realised_fractions, time_averaged_weights

from conftest import base_config, read_jsonl, run_train

pytestmark = pytest.mark.slow

DOMAINS = ["demo_code", "demo_docs", "demo_comments"]


@pytest.fixture(scope="module")
def dids_run(demo_assets, tmp_path_factory):
    """24 steps of 4 samples, an update every 4 steps (6 updates), one target task."""
    work = tmp_path_factory.mktemp("dids_run")
    out = work / "out"
    config = base_config(
        demo_assets,
        out,
        dids_strategy="dids",
        dids_target_datasets="demo_target_code",
        dids_target_samples=24,
        dids_probe_samples=4,
        dids_update_interval=4,
        dids_budget=96,
        dids_normaliser="clamp",
        dids_ema_beta=0.3,
        per_device_eval_batch_size=8,
        logging_steps=4,  # a log entry at every update, the last one included
    )
    run_train(config, work)
    return out


def test_report_on_a_real_run(dids_run, tmp_path, capsys):
    assert main(["report", str(dids_run), "--out", str(tmp_path)]) == 0
    assert "skipped" not in capsys.readouterr().out
    markdown = (tmp_path / "report.md").read_text()
    for name in ("weights", "impact", "rule", "task_losses", "fractions"):
        assert f"]({name}.png)" in markdown
        assert matplotlib.image.imread(tmp_path / f"{name}.png").shape[1] == round(11.0 * plots.DPI)
    assert "6 mixture updates over 24 optimizer steps" in markdown
    assert "96 samples by the final step 24" in markdown


def test_run_outputs_agree_with_the_run(dids_run):
    run = load_run(dids_run)
    records = read_jsonl(dids_run / "history.jsonl")
    assert run.records[0]["domain_column"] is None  # recorded by the trainer
    assert run.steps.tolist() == list(range(0, 25, 4)) and run.final_step == 24 and run.total_samples == 96
    np.testing.assert_array_equal(run.weights[-1], records[-1]["weights"])
    # the log's final realised fractions are the history's last counts (both counted at step 24)
    counts = np.asarray(records[-1]["realised_counts"], dtype=np.float64)
    np.testing.assert_allclose(realised_fractions(run), counts / counts.sum(), atol=1e-6)
    assert run.log_source.endswith("trainer_state.json") and run.log[-1]["step"] == 24


def test_plotted_fit_is_the_one_the_last_update_used(dids_run, tmp_path):
    run = load_run(dids_run)
    last = run.update_records()[-1]["terms"]
    _, notes = plots.plot_task_losses(run, tmp_path / "losses.png")
    assert last["trajectory_fitted"] == [True]  # 7 points: the fit succeeded in the run
    assert notes[0].endswith(f"l_p = {last['l_p'][0]:.4g}")


def test_export_of_a_real_run_validates(dids_run, tmp_path):
    assert main(["export", str(dids_run), "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "mixture.json").read_text())
    run = load_run(dids_run)
    np.testing.assert_allclose(payload["weights"], time_averaged_weights(run), atol=1e-6)
    cfg = parse_dids_config(yaml.safe_load((tmp_path / "static.yaml").read_text()))
    np.testing.assert_allclose(resolve_static_weights(cfg.dids_static_weights, DOMAINS), payload["weights"])
    interleave = yaml.safe_load((tmp_path / "interleave.yaml").read_text())
    assert payload["interleave"]["checked_against_training_yaml"]
    kept = [d for d, w in zip(DOMAINS, payload["weights"], strict=True) if w > 0]
    assert interleave["dataset"] == ",".join(kept)
