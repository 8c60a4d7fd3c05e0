"""`llamafactory-dids export`: the exported mixture against hand computations; the YAML validates."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from llamafactory_dids.algorithms.strategies import resolve_static_weights
from llamafactory_dids.cli import main
from llamafactory_dids.config import parse_dids_config
from llamafactory_dids.reporting.export import export_mixture, rounded_probabilities
from llamafactory_dids.reporting.run_outputs import RunOutputsError

from synthetic_runs import TWO, record, two_domain_run, write_run

THREE = ["code", "docs", "comments"]


def three_domain_run(out, **initial_extra):
    records = [
        record(0, 0, 0, [1 / 3, 1 / 3, 1 / 3], [0, 0, 0], THREE, **initial_extra),
        record(1, 10, 40, [0.6, 0.0, 0.4], [14, 13, 13], THREE),
    ]
    return write_run(out, records, final_step=20)


def test_mean_export_is_the_hand_computed_average(tmp_path):
    result = export_mixture(two_domain_run(tmp_path / "run"))
    assert result.json_path.parent == tmp_path / "run" / "dids_export"
    payload = json.loads(result.json_path.read_text())
    assert payload["schema_version"] == 1 and payload["domains"] == TWO
    assert payload["weights"] == [0.52, 0.48]  # (24 x .5 + 20 x .8 + 16 x .2) / 60
    assert payload["mixture"] == "mean" and payload["averaging"] == "samples"
    assert (
        "stream samples" in payload["how_computed"]
        and "60 samples by the final step 15" in payload["how_computed"]
    )
    assert payload["candidates"]["mean_by_steps"] == [0.5, 0.5]
    assert payload["candidates"]["final"] == [0.2, 0.8]
    assert payload["source"]["strategy"] == "dids" and payload["source"]["final_step"] == 15
    assert payload["source"]["total_samples"] == 60


def test_final_export_is_the_last_record(tmp_path):
    result = export_mixture(two_domain_run(tmp_path / "run"), tmp_path / "x", mixture="final")
    payload = json.loads(result.json_path.read_text())
    assert payload["weights"] == [0.2, 0.8] and payload["averaging"] is None
    assert "last history record (update 2, step 10)" in payload["how_computed"]


def test_static_yaml_validates_and_round_trips(tmp_path):
    result = export_mixture(two_domain_run(tmp_path / "run"), tmp_path / "x", mixture="mean", by="steps")
    fragment = yaml.safe_load(result.static_path.read_text())
    assert fragment == {"dids_strategy": "static", "dids_static_weights": {"code": 0.5, "prose": 0.5}}
    cfg = parse_dids_config(fragment)  # the plugin's own validation
    assert cfg.dids_strategy == "static"
    np.testing.assert_allclose(resolve_static_weights(cfg.dids_static_weights, TWO), result.weights)
    assert result.static_path.read_text().startswith("# Learned domain mixture of ")


def test_rounded_probabilities_sum_to_one():
    w = np.random.default_rng(0).dirichlet(np.ones(72))
    p = rounded_probabilities(w, 6)
    assert sum(round(x * 1e6) for x in p) == 10**6  # exactly 1 in units of 1e-6
    assert np.abs(np.asarray(p) - w).max() < 1e-6


def test_interleave_when_every_domain_is_a_dataset(tmp_path):
    """The run recorded `domain_column: None`: one dataset per domain; weight-0 datasets are left out."""
    result = export_mixture(three_domain_run(tmp_path / "run", domain_column=None), mixture="final")
    assert result.warnings == []
    text = result.interleave.read_text()
    fragment = yaml.safe_load(text)
    assert fragment == {
        "dataset": "code,comments",
        "mix_strategy": "interleave_under",
        "interleave_probs": "0.6,0.4",
    }
    assert "weight-0 datasets left out (they would never be drawn): docs" in text
    from llamafactory.hparams import DataArguments  # stock LLaMA-Factory accepts it

    args = DataArguments(**fragment)
    assert args.dataset == ["code", "comments"] and args.interleave_probs == [0.6, 0.4]
    payload = json.loads(result.json_path.read_text())
    assert (
        payload["interleave"]["file"] == "interleave.yaml"
        and payload["interleave"]["checked_against_training_yaml"]
    )


def test_interleave_follows_the_training_yaml_dataset_order(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"dataset": "comments, code,docs", "mix_strategy": "concat"}))
    result = export_mixture(
        three_domain_run(tmp_path / "run"), mixture="final", config=config, mix_strategy="interleave_over"
    )
    fragment = yaml.safe_load(result.interleave.read_text())
    assert fragment == {
        "dataset": "comments,code",
        "mix_strategy": "interleave_over",
        "interleave_probs": "0.4,0.6",
    }
    assert json.loads(result.json_path.read_text())["source"]["training_config"] == str(config)


def test_no_interleave_for_domains_from_a_column(tmp_path):
    out = three_domain_run(tmp_path / "run", domain_column="dids_domain")
    (out / "dids_export").mkdir()
    (out / "dids_export" / "interleave.yaml").write_text("stale")
    result = export_mixture(out)
    assert result.interleave is None and not (out / "dids_export" / "interleave.yaml").exists()
    assert "column `dids_domain`" in result.interleave_note and "cannot express" in result.interleave_note
    assert any(w.startswith("no interleave.yaml: ") for w in result.warnings)
    payload = json.loads(result.json_path.read_text())
    assert payload["interleave"]["file"] is None and "cannot express" in payload["interleave"]["note"]
    parse_dids_config(yaml.safe_load(result.static_path.read_text()))  # the plugin route still works


def test_column_from_the_training_yaml(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"dataset": "dids_repartitioned", "dids_domain_column": "dids_domain"}))
    result = export_mixture(three_domain_run(tmp_path / "run"), config=config)
    assert result.interleave is None and "column `dids_domain`" in result.interleave_note


def test_training_yaml_over_other_datasets(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"dataset": "code,docs"}))
    result = export_mixture(three_domain_run(tmp_path / "run"), config=config)
    assert result.interleave is None and "is not the run's domains" in result.interleave_note


def test_unchecked_interleave_says_so(tmp_path):
    """An older history without `domain_column` and no training YAML: written, with a warning."""
    out = three_domain_run(tmp_path / "run")  # no `domain_column` key in the initial record
    result = export_mixture(out, mixture="final")
    assert result.interleave is not None
    assert result.warnings and "pass --config" in result.warnings[0]
    assert "If the run used `dids_domain_column`, this file is wrong" in result.interleave.read_text()


def test_export_refusals(tmp_path):
    with pytest.raises(RunOutputsError, match="has no history.jsonl"):
        export_mixture(tmp_path)
    out = two_domain_run(tmp_path / "run")
    with pytest.raises(RunOutputsError, match="--config .*nope.yaml: no such file"):
        export_mixture(out, config=tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="`mixture` must be one of mean, final"):
        export_mixture(out, mixture="median")
    with pytest.raises(ValueError, match="`mix_strategy` must be one of"):
        export_mixture(out, mix_strategy="concat")


def test_cli_export(tmp_path, capsys):
    out = three_domain_run(tmp_path / "run", domain_column="topic")
    assert main(["export", str(out), "--mixture", "final"]) == 0
    captured = capsys.readouterr()
    assert "dids_strategy: static" in captured.out and "comments: 0.4" in captured.out
    assert "interleave YAML  not written" in captured.out
    assert (
        "warning: no interleave.yaml: the run's domains are the values of the column `topic`" in captured.err
    )
    (out / "history.jsonl").write_text(
        (out / "history.jsonl").read_text().replace('"schema": 1', '"schema": 7')
    )
    assert main(["export", str(out)]) == 2
    assert "history schema 7" in capsys.readouterr().err
