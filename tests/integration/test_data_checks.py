"""Problems of the data files and of `dids_static_weights` against the domains fail before any model loads."""

from __future__ import annotations

import json
import shutil

import pytest

from llamafactory_dids.config import DIDSConfigError

from conftest import base_config


def get_train_args(config):
    import llamafactory_dids

    llamafactory_dids.apply()
    from llamafactory.train import tuner

    return tuner.get_train_args(config)


@pytest.fixture
def no_model_or_data(monkeypatch):
    """Loading the model or any dataset during argument parsing fails the test."""
    import llamafactory.data.loader
    import llamafactory.model

    def refuse(*args, **kwargs):
        raise AssertionError("a model or a dataset was loaded")

    monkeypatch.setattr(llamafactory.model, "load_model", refuse)
    monkeypatch.setattr(llamafactory.data.loader, "_load_single_dataset", refuse)


@pytest.fixture
def data_dir(demo_assets, tmp_path):
    """A copy of the demo dataset_dir with an empty, a `[]` and a blank-lines jsonl dataset added."""
    data = tmp_path / "data"
    shutil.copytree(demo_assets.dataset_dir, data)
    info = json.loads((data / "dataset_info.json").read_text())
    for name, file_name, content in (
        ("demo_empty", "empty.json", ""),
        ("demo_brackets", "brackets.json", "[]\n"),
        ("demo_blank", "blank.jsonl", "\n\n"),
    ):
        info[name] = dict(info["demo_code"], file_name=file_name)
        (data / file_name).write_text(content)
    (data / "dataset_info.json").write_text(json.dumps(info))
    return data


def test_static_weights_naming_an_unknown_domain_fail_before_loading(demo_assets, tmp_path, no_model_or_data):
    config = base_config(
        demo_assets,
        tmp_path,
        dids_strategy="static",
        dids_static_weights={"demo_code": 0.5, "demo_doc": 0.3, "demo_comments": 0.2},
    )
    with pytest.raises(DIDSConfigError) as err:
        get_train_args(config)
    assert err.value.problems == [
        "`dids_static_weights` does not match the training domains (unknown domains ['demo_doc']; no weight "
        "for ['demo_docs']). The domains are: ['demo_code', 'demo_docs', 'demo_comments']. Give one weight "
        "per domain (0 excludes a domain)."
    ]


def test_static_weights_list_of_the_wrong_length_fails_before_loading(
    demo_assets, tmp_path, no_model_or_data
):
    config = base_config(demo_assets, tmp_path, dids_strategy="static", dids_static_weights=[0.5, 0.5])
    with pytest.raises(DIDSConfigError, match=r"`dids_static_weights` has 2 weights but there are 3 domains"):
        get_train_args(config)


def test_static_weights_checked_against_labels_read_from_the_files(demo_assets, tmp_path, no_model_or_data):
    config = base_config(
        demo_assets,
        tmp_path,
        dataset="demo_mixed",
        dids_domain_column="domain",
        dids_strategy="static",
        dids_static_weights={"code": 1, "docs": 1, "comment": 1},
    )
    with pytest.raises(DIDSConfigError) as err:
        get_train_args(config)
    assert err.value.problems == [
        "`dids_static_weights` does not match the training domains (unknown domains ['comment']; no weight "
        "for ['comments']). The domains are: ['code', 'comments', 'docs']. Give one weight per domain "
        "(0 excludes a domain). (labels of `domain` read from the files)"
    ]


def test_matching_labels_pass_and_max_samples_defers_the_label_check(demo_assets, tmp_path):
    weights = {"code": 1, "docs": 1, "comments": 1}
    config = base_config(
        demo_assets,
        tmp_path,
        dataset="demo_mixed",
        dids_domain_column="domain",
        dids_strategy="static",
        dids_static_weights=weights,
    )
    assert get_train_args(config)[1].dids.dids_static_weights == {k: 1.0 for k in weights}
    # with max_samples only the first rows count: their labels are checked once loaded, not here
    config.update(dids_static_weights={"code": 1}, max_samples=5)
    assert get_train_args(config)[1].dids.dids_static_weights == {"code": 1.0}


def test_empty_and_bracket_files_are_named_with_their_domain(
    demo_assets, tmp_path, data_dir, no_model_or_data
):
    config = base_config(
        demo_assets,
        tmp_path,
        dataset_dir=str(data_dir),
        dataset="demo_code,demo_empty,demo_brackets,demo_blank",
        dids_strategy="uniform",
        dids_target_datasets="demo_empty",
    )
    with pytest.raises(DIDSConfigError) as err:
        get_train_args(config)
    assert err.value.problems == [
        f"Dataset `demo_empty` (domain `demo_empty`) reads {data_dir / 'empty.json'}, which is empty. "
        "Add rows to it or remove `demo_empty` from `dataset:`.",
        f"Dataset `demo_brackets` (domain `demo_brackets`) reads {data_dir / 'brackets.json'}, which holds "
        "only `[]` (no rows). Add rows to it or remove `demo_brackets` from `dataset:`.",
        f"Dataset `demo_blank` (domain `demo_blank`) reads {data_dir / 'blank.jsonl'}, which is empty. "
        "Add rows to it or remove `demo_blank` from `dataset:`.",
    ]


def test_empty_target_file_and_undefined_dataset_are_named(demo_assets, tmp_path, data_dir, no_model_or_data):
    config = base_config(
        demo_assets,
        tmp_path,
        dataset_dir=str(data_dir),
        dids_strategy="uniform",
        dids_target_datasets="demo_brackets,demo_nowhere",
    )
    with pytest.raises(DIDSConfigError) as err:
        get_train_args(config)
    assert err.value.problems == [
        f"Dataset `demo_brackets` (the task of `dids_target_datasets: demo_brackets`) reads "
        f"{data_dir / 'brackets.json'}, which holds only `[]` (no rows). Add rows to it or remove "
        "`demo_brackets` from `dids_target_datasets:`.",
        "Dataset `demo_nowhere` (the task of `dids_target_datasets: demo_nowhere`): Undefined dataset "
        "demo_nowhere in dataset_info.json.",
    ]


def test_host_conflicts_and_data_problems_are_reported_together(demo_assets, tmp_path, data_dir):
    config = base_config(
        demo_assets,
        tmp_path,
        dataset_dir=str(data_dir),
        dataset="demo_code,demo_empty",
        dids_strategy="uniform",
        disable_shuffling=True,
    )
    with pytest.raises(DIDSConfigError, match=r"\(2 problem\(s\)\)") as err:
        get_train_args(config)
    assert err.value.problems[0].startswith("`disable_shuffling: true` conflicts with `dids_strategy`")
    assert err.value.problems[1].startswith("Dataset `demo_empty` (domain `demo_empty`) reads")
