"""Every shipped example YAML parses: `dids_*` keys validate and the rest is accepted by LLaMA-Factory."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llamafactory_dids.config import parse_dids_config, split_dids_keys

from conftest import REPO

# `repartition_*.yaml` are `llamafactory-dids repartition` configs, not training YAMLs
REPARTITION = sorted((REPO / "examples" / "yaml").glob("repartition_*.yaml"))
EXAMPLES = sorted(set((REPO / "examples" / "yaml").glob("*.yaml")) - set(REPARTITION))


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"demo_sft.yaml", "sft_natural_lora.yaml", "pt_uniform_packing.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_parses(path: Path):
    from llamafactory.hparams.parser import _TRAIN_ARGS
    from transformers import HfArgumentParser

    config = yaml.safe_load(path.read_text())
    dids, rest = split_dids_keys(config)
    assert parse_dids_config(dids).enabled
    # LLaMA-Factory's own parser accepts every other key (raises on unknown keys)
    HfArgumentParser(_TRAIN_ARGS).parse_dict(rest, allow_extra_keys=False)


@pytest.mark.parametrize("path", REPARTITION, ids=lambda p: p.name)
def test_repartition_example_parses(path: Path):
    from llamafactory_dids.repartition import parse_repartition_config

    cfg = parse_repartition_config(yaml.safe_load(path.read_text()))
    assert cfg.output_dir and cfg.dataset
