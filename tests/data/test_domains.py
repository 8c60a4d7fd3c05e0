"""Domain-id plumbing: per-domain processing, label encoding and the collator, against exact values."""

from __future__ import annotations

import pickle

import pytest
import torch
from datasets import ClassLabel, Dataset

from llamafactory_dids.data.domains import (
    DOMAIN_ID_COLUMN,
    DOMAIN_LABEL_COLUMN,
    ROW_ID_COLUMN,
    DomainAwareProcessor,
    DomainCollator,
    attach_labels,
    domain_vocabulary,
    encode_domain_labels,
    read_label_column,
)


class PackingProcessor:
    """Reference stand-in for a LLaMA-Factory processor: drops empty rows, packs pairs of rows."""

    def preprocess_dataset(self, examples):
        texts = [t for t in examples["text"] if t]
        packed = [texts[i : i + 2] for i in range(0, len(texts), 2)]
        return {
            "input_ids": [[len(t) for t in pack] for pack in packed],
            "text": ["+".join(p) for p in packed],
        }

    def print_data_example(self, example):
        self.printed = example


def test_processor_runs_per_domain_and_labels_every_produced_row():
    examples = {
        "text": ["a", "bb", "", "ccc", "dddd", "e", "ff"],
        DOMAIN_LABEL_COLUMN: ["x", "y", "x", "x", "y", "x", "y"],
    }
    out = DomainAwareProcessor(PackingProcessor()).preprocess_dataset(examples)
    # x rows: a, "", ccc, e -> a, ccc, e -> packs (a+ccc), (e); y rows: bb, dddd, ff -> (bb+dddd), (ff)
    assert out["text"] == ["a+ccc", "e", "bb+dddd", "ff"]
    assert out[DOMAIN_LABEL_COLUMN] == ["x", "x", "y", "y"]
    assert out["input_ids"] == [[1, 3], [1], [2, 4], [2]]


def test_print_example_hides_the_label():
    inner = PackingProcessor()
    DomainAwareProcessor(inner).print_data_example({"text": "a", DOMAIN_LABEL_COLUMN: "x"})
    assert inner.printed == {"text": "a"}


def test_vocabulary_order():
    assert domain_vocabulary(["b", "a", "c", "a"], ["c", "a", "zzz"]) == ["c", "a", "b"]
    assert domain_vocabulary(["10", "2", "1"]) == ["1", "2", "10"]  # repartition ids sort numerically
    assert domain_vocabulary(["b", "a"]) == ["a", "b"]


def test_attach_and_encode_labels():
    ds = attach_labels(Dataset.from_dict({"t": [1, 2, 3]}), ["m", "c", "m"])
    enc = encode_domain_labels(ds, ["c", "m"])
    assert enc[DOMAIN_ID_COLUMN] == [1, 0, 1]
    assert isinstance(enc.features[DOMAIN_ID_COLUMN], ClassLabel)
    assert enc.features[DOMAIN_ID_COLUMN].names == ["c", "m"]
    with pytest.raises(ValueError, match=r"Domain labels \['m'\] are not among the training domains \['c'\]"):
        encode_domain_labels(ds, ["c"])
    kept = encode_domain_labels(ds, ["c"], unknown="keep")
    assert kept[DOMAIN_ID_COLUMN] == [-1, 0, -1]


def test_attach_refuses_a_changed_row_count():
    with pytest.raises(RuntimeError, match=r"Alignment changed the row count \(2 -> 3\)"):
        attach_labels(Dataset.from_dict({"t": [1, 2, 3]}), ["a", "b"])


def test_read_label_column_errors():
    ds = Dataset.from_dict({"t": [1, 2, 3], "domain": ["a", None, " "]})
    with pytest.raises(ValueError, match=r"`dids_domain_column: dom` is not a column of dataset 'mine'"):
        read_label_column(ds, "dom", "mine")
    with pytest.raises(ValueError, match=r"has 2 row\(s\) without a domain label .*first rows: \[1, 2\]"):
        read_label_column(ds, "domain", "mine")
    assert read_label_column(Dataset.from_dict({"d": [3, 4]}), "d", "x") == ["3", "4"]


def test_collator_moves_ids_out_of_the_features():
    seen = []

    def inner(features):
        seen.append(features)
        return {"input_ids": torch.tensor([f["input_ids"] for f in features])}

    features = [
        {"input_ids": [1, 2], DOMAIN_ID_COLUMN: 2, ROW_ID_COLUMN: 10},
        {"input_ids": [3, 4], DOMAIN_ID_COLUMN: 0, ROW_ID_COLUMN: 11},
    ]
    batch = DomainCollator(inner)(features)
    assert seen[0] == [{"input_ids": [1, 2]}, {"input_ids": [3, 4]}]
    assert torch.equal(batch[DOMAIN_ID_COLUMN], torch.tensor([2, 0]))
    assert torch.equal(batch[ROW_ID_COLUMN], torch.tensor([10, 11]))
    assert features[0][DOMAIN_ID_COLUMN] == 2  # the dataset rows are not mutated


class Inner:
    tokenizer = "tok"

    def __call__(self, features):
        return {}


def test_collator_forwards_attributes_and_refuses_partial_ids():
    collator = DomainCollator(Inner())
    assert collator.tokenizer == "tok"
    assert pickle.loads(pickle.dumps(collator)).tokenizer == "tok"  # dataloader workers unpickle it
    with pytest.raises(ValueError, match="only 1 of 2 rows carry 'domain_ids'"):
        collator([{DOMAIN_ID_COLUMN: 1}, {}])
