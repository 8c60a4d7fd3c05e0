"""Domain ids survive LLaMA-Factory's preprocessing: every row keeps the domain it came from.

Reference: the stock pipeline run on one domain's dataset alone must produce exactly the rows that the
DIDS pipeline labels with that domain (same tokens, same order), for plain SFT, packing, neat packing,
pt block concatenation and `max_samples`; with `val_size` the train and eval rows of each domain
together are exactly that domain's rows.
"""

from __future__ import annotations

from collections import Counter

import pytest
from datasets import ClassLabel

from conftest import base_config

DOMAINS = ["demo_code", "demo_docs", "demo_comments"]


def load(assets, out, **overrides):
    import llamafactory_dids

    llamafactory_dids.apply()
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.model import load_tokenizer
    from llamafactory.train import tuner
    from llamafactory.train.pt import workflow as pt_workflow
    from llamafactory.train.sft import workflow as sft_workflow

    config = base_config(assets, out, **overrides)
    model_args, data_args, training_args, finetuning_args, _ = tuner.get_train_args(config)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    workflow = pt_workflow if finetuning_args.stage == "pt" else sft_workflow
    return workflow.get_dataset(
        template, model_args, data_args, training_args, stage=finetuning_args.stage, **tokenizer_module
    )


def rows_by_domain(dataset):
    names = dataset.features["domain_ids"].names
    out = {name: [] for name in names}
    for ids, d in zip(dataset["input_ids"], dataset["domain_ids"], strict=True):
        out[names[d]].append(tuple(ids))
    return out


def stock_rows(assets, out, dataset, **overrides):
    module = load(assets, out, dataset=dataset, **overrides)  # no dids keys: the stock pipeline
    assert "domain_ids" not in module["train_dataset"].column_names
    return [tuple(ids) for ids in module["train_dataset"]["input_ids"]]


CASES = {
    "sft": {},
    "sft_packing": {"packing": True, "cutoff_len": 256},
    "sft_neat_packing": {"packing": True, "neat_packing": True, "cutoff_len": 256},
    "sft_max_samples": {"max_samples": 17},
    "pt_blocks": {"stage": "pt", "cutoff_len": 64},
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_domain_matches_the_stock_pipeline_on_that_domain_alone(demo_assets, tmp_path, case):
    overrides = CASES[case]
    module = load(demo_assets, tmp_path / "dids", dids_strategy="uniform", **overrides)
    train = module["train_dataset"]
    assert isinstance(train.features["domain_ids"], ClassLabel)
    assert train.features["domain_ids"].names == DOMAINS  # `dataset:` order
    got = rows_by_domain(train)
    for name in DOMAINS:
        assert got[name] == stock_rows(demo_assets, tmp_path / name, name, **overrides), name


def test_domain_column_and_val_size(demo_assets, tmp_path):
    module = load(
        demo_assets,
        tmp_path / "dids",
        dataset="demo_mixed",
        dids_strategy="uniform",
        dids_domain_column="domain",
        val_size=0.2,
    )
    train, evaluation = module["train_dataset"], module["eval_dataset"]
    names = train.features["domain_ids"].names
    assert names == ["code", "comments", "docs"]  # labels from the column, sorted
    assert len(train) + len(evaluation) == 180 and len(evaluation) == 36
    together = Counter()
    for split in (train, evaluation):
        for ids, d in zip(split["input_ids"], split["domain_ids"], strict=True):
            together[(names[d], tuple(ids))] += 1
    for label in names:
        reference = Counter(stock_rows(demo_assets, tmp_path / label, f"demo_{label}"))
        assert Counter({ids: n for (name, ids), n in together.items() if name == label}) == reference


def test_trace_row_ids_are_added_on_request(demo_assets, tmp_path):
    module = load(demo_assets, tmp_path, dids_strategy="uniform", dids_trace_samples=True)
    assert module["train_dataset"]["dids_row_ids"] == list(range(len(module["train_dataset"])))


def test_missing_domain_column_is_a_clear_error(demo_assets, tmp_path):
    with pytest.raises(
        ValueError, match=r"`dids_domain_column: topic` is not a column of dataset 'demo_code'"
    ):
        load(demo_assets, tmp_path, dids_strategy="uniform", dids_domain_column="topic")


def test_observation_rows_put_the_loss_rows_first_and_nest_across_row_counts():
    """The task losses read a seeded subset of `dids_target_samples` rows; the gradient windows read at least
    the paper's 200; a smaller loss subset lies inside a larger one (same seed), and with 200 loss rows the
    selection is the earlier one: the seeded 200 in file order."""
    import numpy as np

    from llamafactory_dids.integration.loader import observation_rows

    small, paper = observation_rows(500, 16, seed=7), observation_rows(500, 200, seed=7)
    assert len(small) == len(paper) == 200 and len(set(small)) == 200
    assert small[:16] == sorted(small[:16]) and small[16:] == sorted(small[16:])
    assert set(small) == set(paper) and set(small[:16]) <= set(observation_rows(500, 40, seed=7)[:40])
    assert paper == sorted(np.random.default_rng([7, 3]).permutation(500)[:200].tolist())
    assert sorted(observation_rows(30, 16, seed=7)) == list(range(30))  # fewer rows than asked: all of them
    assert len(observation_rows(500, 300, seed=7)) == 300
