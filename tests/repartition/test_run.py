"""`run_repartition` on the demo assets: the output contract, determinism, resume, and bad input.

References: the input files themselves (every row back, in order, unchanged but for two columns), a second
uninterrupted run (bit-identical outputs after an interrupted one), and the exact error messages.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from llamafactory_dids.repartition import (
    RepartitionConfigError,
    RepartitionInputError,
    parse_repartition_config,
    run_repartition,
)
from llamafactory_dids.repartition import cache as cache_module

from conftest import read_jsonl

DATASETS = ["demo_code", "demo_docs", "demo_comments"]


def small_config(assets, out, **overrides):
    config = {
        "model_name_or_path": str(assets.model_dir),
        "dataset": ",".join(DATASETS),
        "dataset_dir": str(assets.dataset_dir),
        "template": "default",
        "cutoff_len": 64,
        "max_samples": 14,
        "output_dir": str(out),
        "dids_domains_per_source": 2,
        "dids_projection_dim": 64,
        "dids_factor_dim": 8,
        "dids_batch_size": 4,
        "dids_shard_size": 10,
        "dids_clusterer": "sklearn",
    }
    config.update(overrides)
    return {k: v for k, v in config.items() if v is not None}


def source_rows(assets, name, limit=14):
    rows = json.loads((assets.dataset_dir / f"{name}.json").read_text(encoding="utf-8"))
    return rows[:limit]


def features_of(out):
    root = Path(out) / "features"
    return np.concatenate([np.load(p) for p in sorted(root.glob("shard_*.npy"))])


@pytest.fixture(scope="module")
def first_run(demo_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("repartition") / "out"
    run_repartition(small_config(demo_assets, out))
    return out


def test_every_row_comes_back_in_order_with_its_domain(demo_assets, first_run):
    rows = read_jsonl(first_run / "data.jsonl")
    expected = [row for name in DATASETS for row in source_rows(demo_assets, name)]
    assert len(rows) == len(expected) == 42
    for row, original, source in zip(rows, expected, np.repeat(DATASETS, 14), strict=True):
        assert {k: v for k, v in row.items() if not k.startswith("dids_")} == original
        assert row["dids_source"] == source and row["dids_domain"].startswith(source + "_")
    info = json.loads((first_run / "dataset_info.json").read_text())
    assert info == {
        "dids_repartitioned": {
            "file_name": "data.jsonl",
            "formatting": "alpaca",
            "columns": {"prompt": "instruction", "query": "input", "response": "output"},
        }
    }
    domain_map = json.loads((first_run / "domain_map.json").read_text())
    assert domain_map["schema_version"] == 1
    assert set(domain_map["domains"]) == {f"{s}_{j:02d}" for s in DATASETS for j in range(2)}
    for name, domain in domain_map["domains"].items():
        members = [i for i, r in enumerate(rows) if r["dids_domain"] == name]
        assert domain["size"] == len(members) and domain["example_rows"] == members[:5]
        assert domain["source"] == rows[members[0]]["dids_source"]
        assert 0 < domain["centroid"]["cosine_mean"] <= 1
    assert domain_map["sources"]["demo_docs"]["domains"] == ["demo_docs_00", "demo_docs_01"]
    assert "## demo_code (14 rows)" in (first_run / "report.md").read_text()
    assert features_of(first_run).shape == (42, 64)


def test_without_a_label_column_the_outputs_hold_no_label_figures(first_run):
    domain_map = json.loads((first_run / "domain_map.json").read_text())
    assert "labels" not in domain_map and all("label" not in d for d in domain_map["domains"].values())
    report = (first_run / "report.md").read_text()
    assert (
        "purity" not in report
        and "| domain | size | cohesion | min cos | examples |\n|---|---:|---:|---:|---|" in report
    )


def test_label_column_judges_the_domains(demo_assets, tmp_path):
    """One mixed source whose rows carry their kind (`domain`: code, docs, comments): the figures in the outputs
    are those of the rows and domains in data.jsonl, counted again here."""
    from sklearn.metrics import completeness_score, homogeneity_score

    out = tmp_path / "labelled"
    config = small_config(
        demo_assets,
        out,
        dataset="demo_mixed",
        max_samples=30,
        dids_domains_per_source=3,
        dids_label_column="domain",
    )
    run_repartition(config)
    rows = read_jsonl(out / "data.jsonl")
    labels, domains = [r["domain"] for r in rows], [r["dids_domain"] for r in rows]
    domain_map = json.loads((out / "domain_map.json").read_text())
    figures = domain_map["labels"]
    assert figures["column"] == "domain" and figures["labels"] == dict(sorted(Counter(labels).items()))
    majority_rows = 0
    for name, domain in domain_map["domains"].items():
        counts = Counter(label for label, d in zip(labels, domains, strict=True) if d == name)
        top = max(counts.values())
        majority_rows += top
        assert domain["label"]["majority"] == min(label for label, n in counts.items() if n == top)
        assert domain["label"]["share"] == pytest.approx(top / sum(counts.values()))
    assert figures["purity"] == pytest.approx(majority_rows / 30)
    assert figures["source_purity"] == pytest.approx(max(Counter(labels).values()) / 30)  # one source
    assert figures["homogeneity"] == pytest.approx(homogeneity_score(labels, domains))
    assert figures["completeness"] == pytest.approx(completeness_score(labels, domains))
    report = (out / "report.md").read_text()
    assert "Against the known labels in `domain` (3: " in report
    assert f"purity {figures['purity']:.3f} (the sources alone: {figures['source_purity']:.3f})" in report
    assert "| domain | size | cohesion | min cos | majority label | share | examples |" in report
    name, first = next(iter(domain_map["domains"].items()))
    assert f"| {name} | {first['size']} | " in report
    assert f"| {first['label']['majority']} | {first['label']['share']:.3f} | " in report


def test_a_random_proxy_is_flagged_by_its_fit_against_token_frequencies(demo_assets, first_run):
    """The demo model is randomly initialised: it must not beat the unigram entropy of the rows it scores."""
    fit = json.loads((first_run / "domain_map.json").read_text())["run"]["proxy_fit"]
    assert fit["rows"] == 42 and fit["tokens"] > 0
    assert fit["loss"] > fit["unigram_entropy"] > 0
    assert "NOT below it" in (first_run / "report.md").read_text()


def test_training_loader_reads_the_output_with_its_domains(first_run, tmp_path):
    from datasets import load_dataset

    from llamafactory_dids.config import parse_dids_config
    from llamafactory_dids.data.domains import read_label_column

    info = json.loads((first_run / "dataset_info.json").read_text())["dids_repartitioned"]
    data = load_dataset("json", data_files=str(first_run / info["file_name"]), split="train")
    cfg = parse_dids_config({"dids_strategy": "uniform", "dids_domain_column": "dids_domain"})
    labels = read_label_column(data, cfg.dids_domain_column, "dids_repartitioned")
    assert len(labels) == 42 and len(set(labels)) == 6


def test_same_seed_same_output_and_resume_after_interruption(demo_assets, first_run, tmp_path, monkeypatch):
    out = tmp_path / "interrupted"
    real_save = cache_module.FeatureCache.save
    calls = {"n": 0}

    def failing_save(self, shard, features):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed while computing the third shard
        real_save(self, shard, features)

    monkeypatch.setattr(cache_module.FeatureCache, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        run_repartition(small_config(demo_assets, out))
    assert sorted(p.name for p in (out / "features").glob("shard_*.npy")) == [
        "shard_00000.npy",
        "shard_00001.npy",
    ]
    assert not (out / "data.jsonl").exists()
    monkeypatch.setattr(cache_module.FeatureCache, "save", real_save)
    computed = []
    monkeypatch.setattr(
        cache_module.FeatureCache,
        "save",
        lambda self, shard, feats: (computed.append(shard), real_save(self, shard, feats))[1],
    )
    run_repartition(small_config(demo_assets, out))
    assert computed == [2, 3, 4]  # the cached shards were not recomputed
    assert np.array_equal(features_of(out), features_of(first_run))
    assert (out / "data.jsonl").read_text() == (first_run / "data.jsonl").read_text()


def test_changed_feature_settings_refuse_the_old_cache(demo_assets, first_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(first_run, out)
    run_repartition(
        small_config(demo_assets, out, dids_domains_per_source=3)
    )  # clustering only: reuses features
    assert len(json.loads((out / "domain_map.json").read_text())["domains"]) == 9
    with pytest.raises(
        ValueError, match=r"other settings or data \(.*proj_dim: 64 -> 32\).*Delete that folder"
    ):
        run_repartition(small_config(demo_assets, out, dids_projection_dim=32))
    with pytest.raises(ValueError, match=r"normalise_layers: True -> False"):
        run_repartition(small_config(demo_assets, out, dids_normalise_layers=False))


def test_source_column_and_total_domain_count(demo_assets, tmp_path):
    out = tmp_path / "mixed"
    config = small_config(
        demo_assets,
        out,
        dataset="demo_mixed",
        max_samples=40,
        dids_source_column="domain",
        dids_domains_per_source=None,
        dids_num_domains=5,
    )
    run_repartition(config)
    rows = read_jsonl(out / "data.jsonl")
    mixed = json.loads((demo_assets.dataset_dir / "demo_mixed.json").read_text())[:40]
    assert [r["dids_source"] for r in rows] == [r["domain"] for r in mixed]
    domain_map = json.loads((out / "domain_map.json").read_text())
    assert len(domain_map["domains"]) == 5
    sizes = {s: info["rows"] for s, info in domain_map["sources"].items()}
    assert sum(sizes.values()) == 40
    assert all(r["dids_domain"].startswith(r["dids_source"] + "_") for r in rows)


@pytest.mark.parametrize("features", ["exact", "semantic"])
def test_other_feature_kinds(demo_assets, tmp_path, features):
    out = tmp_path / features
    run_repartition(small_config(demo_assets, out, dids_features=features, max_samples=6))
    rows = read_jsonl(out / "data.jsonl")
    assert len(rows) == 18
    dim = (
        64
        if features == "exact"
        else json.loads((out / "domain_map.json").read_text())["run"]["embedding_dim"]
    )
    assert features_of(out).shape == (18, dim)


# ----------------------------------------------------------------------------------------- bad input
def write_dataset(assets, tmp_path, name, content):
    data = tmp_path / "data"
    shutil.copytree(assets.dataset_dir, data, dirs_exist_ok=True)
    info = json.loads((data / "dataset_info.json").read_text())
    info[name] = dict(info["demo_code"], file_name=f"{name}.json")
    (data / "dataset_info.json").write_text(json.dumps(info))
    (data / f"{name}.json").write_text(content)
    return data


def test_older_key_names_are_aliases_of_the_training_names():
    base = {"model_name_or_path": "m", "output_dir": "o", "dataset": "d", "dids_num_domains": 4}
    old = parse_repartition_config({**base, "dids_proj_dim": 64, "dids_layers_fraction": 0.5})
    new = parse_repartition_config({**base, "dids_projection_dim": 64, "dids_probe_layers_fraction": 0.5})
    assert old == new and new.dids_projection_dim == 64 and new.dids_probe_layers_fraction == 0.5
    with pytest.raises(RepartitionConfigError, match=r"`dids_projection_dim` is set twice"):
        parse_repartition_config({**base, "dids_proj_dim": 64, "dids_projection_dim": 32})
    with pytest.raises(RepartitionConfigError, match=r"`dids_probe_layers_fraction` must be in \(0, 1\]"):
        parse_repartition_config({**base, "dids_layers_fraction": 0})


def test_config_errors_are_collected():
    with pytest.raises(RepartitionConfigError) as err:
        parse_repartition_config(
            {
                "dataset": "a,a",
                "dids_projection_dim": 0,
                "dids_clusterr": "faiss",
                "dids_normalise_layers": "maybe",
            }
        )
    text = str(err.value)
    assert (
        "Unknown key `dids_clusterr`. Did you mean `dids_clusterer`? "
        "(`llamafactory-dids keys repartition` lists every key.)" in text
    )
    assert "`model_name_or_path` is required" in text and "`output_dir` is required" in text
    assert (
        "lists a dataset twice" in text and "`dids_projection_dim` must be a positive integer, got 0" in text
    )
    assert "Set the number of domains" in text
    assert "`dids_normalise_layers` must be true or false, got 'maybe'" in text
    with pytest.raises(
        RepartitionConfigError, match="`dids_label_column` must be a non-empty string, got ''"
    ):
        parse_repartition_config(
            {
                "model_name_or_path": "m",
                "output_dir": "o",
                "dataset": "d",
                "dids_num_domains": 4,
                "dids_label_column": "",
            }
        )
    with pytest.raises(RepartitionConfigError, match="either `dids_num_domains`"):
        parse_repartition_config(
            {
                "model_name_or_path": "m",
                "output_dir": "o",
                "dataset": "d",
                "dids_num_domains": 4,
                "dids_domains_per_source": 2,
            }
        )


def test_missing_source_column(demo_assets, tmp_path):
    with pytest.raises(
        RepartitionInputError, match=r"`dids_source_column: topic` is not a column of dataset 'demo_code'"
    ):
        run_repartition(small_config(demo_assets, tmp_path / "o", dids_source_column="topic"))


def test_missing_or_empty_label(demo_assets, tmp_path):
    with pytest.raises(
        RepartitionInputError,
        match=r"`dids_label_column: domain` is not a column of dataset 'demo_code' \(.*demo_code.json; columns: ",
    ):
        run_repartition(small_config(demo_assets, tmp_path / "o", dids_label_column="domain"))
    row = {"instruction": "Say hi.", "input": "", "output": "hi"}
    content = json.dumps([{**row, "lang": "en"}, row, {**row, "lang": ""}])
    data = write_dataset(demo_assets, tmp_path, "unlabelled", content)
    config = small_config(
        demo_assets, tmp_path / "o", dataset="unlabelled", dataset_dir=str(data), dids_label_column="lang"
    )
    with pytest.raises(
        RepartitionInputError, match=r"Dataset 'unlabelled' \(.*unlabelled.json\), row 1: no `lang`"
    ):
        run_repartition(config)
    assert not (tmp_path / "o" / "features").exists()


def test_empty_source(demo_assets, tmp_path):
    data = write_dataset(demo_assets, tmp_path, "empty", "[]")
    config = small_config(demo_assets, tmp_path / "o", dataset="demo_code,empty", dataset_dir=str(data))
    with pytest.raises(RepartitionInputError, match=r"Empty source\(s\): dataset\(s\) \['empty'\]"):
        run_repartition(config)


def test_fewer_examples_than_clusters(demo_assets, tmp_path):
    config = small_config(demo_assets, tmp_path / "o", max_samples=3, dids_domains_per_source=4)
    with pytest.raises(
        RepartitionInputError, match="Fewer examples than clusters: 'demo_code' has 3 rows with a loss for 4"
    ):
        run_repartition(config)


def test_unreadable_file(demo_assets, tmp_path):
    data = write_dataset(demo_assets, tmp_path, "broken", "[{not json")
    config = small_config(demo_assets, tmp_path / "o", dataset="broken", dataset_dir=str(data))
    with pytest.raises(RepartitionInputError, match=r"Dataset 'broken': cannot read .*broken.json"):
        run_repartition(config)


def test_unknown_dataset_and_missing_model(demo_assets, tmp_path):
    with pytest.raises(RepartitionInputError, match=r"names \['nope'\] not defined in"):
        run_repartition(small_config(demo_assets, tmp_path / "o", dataset="nope"))
    with pytest.raises(RepartitionInputError, match="is not a model directory"):
        run_repartition(small_config(demo_assets, tmp_path / "o", model_name_or_path=str(tmp_path)))


def test_model_without_linear_layers_for_the_factored_path(demo_assets, tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    model_dir = tmp_path / "gpt2"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=2048, n_embd=16, n_layer=2, n_head=2)).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(demo_assets.model_dir).save_pretrained(model_dir)
    config = small_config(demo_assets, tmp_path / "o", model_name_or_path=str(model_dir))
    with pytest.raises(
        RepartitionInputError, match=r"not the weight of an|are not: .*c_attn.*dids_features: exact"
    ):
        run_repartition(config)


def test_an_unsupported_host_is_refused_before_anything_loads(demo_assets, tmp_path, monkeypatch, capsys):
    import importlib.metadata

    from llamafactory_dids.cli import main
    from llamafactory_dids.integration.patch import HostVersionError
    from llamafactory_dids.repartition import run as run_module

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda n: "5.7.0" if n == "transformers" else real(n))

    def must_not_load(*args, **kwargs):
        raise AssertionError("loaded something before the host version check")

    for name in ("check_model_path", "_distributed", "tokenizer_and_template", "load_inputs"):
        monkeypatch.setattr(run_module, name, must_not_load)
    out = tmp_path / "o"
    message = (
        "llamafactory-dids supports transformers>=4.55,<=5.6.0, but 5.7.0 is installed. Install supported "
        "versions (pip install 'llamafactory>=0.9.5,<0.9.6' 'transformers>=4.55,<=5.6.0')."
    )
    with pytest.raises(HostVersionError) as err:
        run_repartition(small_config(demo_assets, out))
    assert str(err.value) == message
    config = tmp_path / "repartition.yaml"
    config.write_text(json.dumps(small_config(demo_assets, out)))  # JSON is YAML
    assert main(["repartition", str(config)]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not out.exists()
