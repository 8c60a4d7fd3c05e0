"""`dids_*` keys: parsing, defaults and every validation branch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from llamafactory_dids import config as dids_config
from llamafactory_dids.algorithms.registry import STRATEGY_CLASSES
from llamafactory_dids.config import (
    DIDSConfig,
    DIDSConfigError,
    check_host_arguments,
    known_keys,
    parse_dids_config,
    split_dids_keys,
)


def test_strategy_names_come_from_the_strategy_classes():
    assert dids_config.STRATEGIES == tuple(STRATEGY_CLASSES)
    assert dids_config.DYNAMIC_STRATEGIES == ("dids", "dga", "doge", "doremi", "velocitune")
    assert dids_config.REFERENCE_STRATEGIES == ("doremi", "velocitune")
    with pytest.raises(AttributeError, match="no attribute 'NOPE'"):
        dids_config.NOPE  # noqa: B018


def test_importing_the_config_loads_no_numpy_or_torch():
    """Validation reads the strategy table on first use; the import itself stays stdlib-only."""
    import subprocess
    import sys

    code = (
        "import sys, llamafactory_dids.config; "
        "print(sorted(m for m in ('numpy', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr
    # validating reads the strategy table and the rule's tables (numpy), never torch: the launcher checks
    # the config before torchrun starts, in a process that has not imported torch
    code = (
        "import sys; from llamafactory_dids.config import parse_dids_config; parse_dids_config({"
        "'dids_strategy': 'dids', 'dids_target_datasets': ['a'], 'dids_num_updates': 3, "
        "'dids_fisher_estimator': 'kfac'}); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_empty_config_is_disabled():
    cfg = parse_dids_config({})
    assert cfg == DIDSConfig()
    assert not cfg.enabled


def test_valid_config_parses_and_coerces_cli_strings():
    cfg = parse_dids_config(
        {
            "dids_strategy": "Static",
            "dids_static_weights": "0.5,0.25,0.25",
            "dids_budget": "1000",
            "dids_update_interval": 10.0,
            "dids_on_exhausted": "drop",
            "dids_min_weight": "0.01",
            "dids_log_domain_loss": "false",
            "dids_trace_samples": True,
            "dids_domain_column": "domain",
            "dids_seed": 3,
        }
    )
    assert cfg.dids_strategy == "static"
    assert cfg.dids_static_weights == [0.5, 0.25, 0.25]
    assert cfg.dids_budget == 1000 and cfg.dids_update_interval == 10
    assert cfg.dids_on_exhausted == "drop" and cfg.dids_min_weight == 0.01
    assert cfg.dids_log_domain_loss is False and cfg.dids_trace_samples is True
    assert cfg.dids_domain_column == "domain" and cfg.dids_seed == 3


def test_mapping_weights_are_kept_by_name():
    cfg = parse_dids_config({"dids_strategy": "static", "dids_static_weights": {"a": 1, "b": 3}})
    assert cfg.dids_static_weights == {"a": 1.0, "b": 3.0}


def test_split_keys():
    dids, rest = split_dids_keys({"dids_strategy": "uniform", "stage": "sft"})
    assert dids == {"dids_strategy": "uniform"} and rest == {"stage": "sft"}


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (
            {"dids_strategy": "uniform", "dids_bogus": 1},
            r"Unknown key `dids_bogus`\. Known `dids_\*` keys: dids_strategy, .* "
            r"\(`llamafactory-dids keys` explains each\)\.",
        ),
        (
            {"dids_strategy": "static", "dids_static_weight": {"a": 1}},
            r"Unknown key `dids_static_weight`\. Did you mean `dids_static_weights`\? "
            r"\(`llamafactory-dids keys` lists every key\.\)",
        ),
        (
            {"dids_strategy": "magic"},
            r"`dids_strategy` must be one of uniform, natural, static, dids, dga, doge, doremi, velocitune, got 'magic'",
        ),
        (
            {"dids_strategy": "uniform", "dids_domain_column": ""},
            r"`dids_domain_column` must be a column name",
        ),
        ({"dids_strategy": "uniform", "dids_budget": 0}, r"`dids_budget` must be a positive integer, got 0"),
        ({"dids_strategy": "uniform", "dids_budget": "many"}, r"`dids_budget` must be a positive integer"),
        (
            {"dids_strategy": "uniform", "dids_update_interval": -1},
            r"`dids_update_interval` must be a positive",
        ),
        (
            {"dids_strategy": "uniform", "dids_num_updates": 1.5},
            r"`dids_num_updates` must be a positive integer",
        ),
        ({"dids_strategy": "uniform", "dids_seed": -2}, r"`dids_seed` must be a non-negative integer"),
        (
            {"dids_strategy": "uniform", "dids_domain_gradients": "batch"},
            r"`dids_domain_gradients` must be one of probe, train, got 'batch'",
        ),
        (
            {"dids_strategy": "uniform", "dids_domain_sketch_dim": 64},
            r"`dids_domain_sketch_dim` sketches train-side domain gradients: add `dids_domain_gradients: train`",
        ),
        (
            {
                "dids_strategy": "uniform",
                "dids_domain_gradients": "train",
                "dids_domain_sketch_dim": 64,
                "dids_projection_dim": 128,
            },
            r"`dids_domain_sketch_dim` and `dids_projection_dim` are two ways .* set one of them",
        ),
        (
            {"dids_strategy": "uniform", "dids_on_exhausted": "crash"},
            r"`dids_on_exhausted` must be one of reshuffle, drop",
        ),
        (
            {"dids_strategy": "uniform", "dids_min_weight": 1.5},
            r"`dids_min_weight` must be in \[0, 1\), got 1.5",
        ),
        (
            {"dids_strategy": "uniform", "dids_log_domain_loss": "maybe"},
            r"`dids_log_domain_loss` must be true or false",
        ),
        ({"dids_strategy": "static", "dids_static_weights": {"a": -1}}, r"non-negative numbers, got 'a': -1"),
        (
            {"dids_strategy": "static", "dids_static_weights": [1, "x"]},
            r"must be a list of non-negative numbers",
        ),
        (
            {"dids_strategy": "static", "dids_static_weights": 3},
            r"must be a mapping domain -> weight or a list",
        ),
        ({"dids_strategy": "static", "dids_static_weights": [0, 0]}, r"positive total"),
        ({"dids_strategy": "static"}, r"`dids_strategy: static` needs `dids_static_weights`"),
        (
            {"dids_strategy": "uniform", "dids_static_weights": [1, 2]},
            r"only used by `dids_strategy: static`",
        ),
        ({"dids_budget": 10}, r"`dids_budget` set without `dids_strategy`"),
        (
            {"dids_strategy": "uniform", "dids_update_interval": 5, "dids_num_updates": 3},
            r"either `dids_update_interval` \(steps\) or `dids_num_updates`",
        ),
    ],
)
def test_invalid_values_name_the_key(raw, match):
    with pytest.raises(DIDSConfigError, match=match):
        parse_dids_config(raw)


def test_all_problems_are_reported_at_once():
    with pytest.raises(DIDSConfigError) as info:
        parse_dids_config({"dids_strategy": "magic", "dids_budget": -1, "dids_x": 1})
    assert len(info.value.problems) == 3
    assert "3 problem(s)" in str(info.value)


def _host(**kw):
    data = SimpleNamespace(streaming=False, mix_strategy="concat", tokenized_path=None)
    training = SimpleNamespace(max_steps=-1, deepspeed=None)
    finetuning = SimpleNamespace(stage="sft", disable_shuffling=False)
    for key, value in kw.items():
        for ns in (data, training, finetuning):
            if hasattr(ns, key):
                setattr(ns, key, value)
    return {"data_args": data, "training_args": training, "finetuning_args": finetuning}


@pytest.mark.parametrize(
    ("host", "match"),
    [
        ({"streaming": True}, r"`streaming: true` cannot be sampled by domain"),
        ({"disable_shuffling": True}, r"`disable_shuffling: true` conflicts with `dids_strategy`"),
        ({"mix_strategy": "interleave_under"}, r"`mix_strategy: interleave_under` conflicts"),
        ({"stage": "dpo"}, r"supports `stage: sft` and `stage: pt`, got `stage: dpo`"),
        ({"max_steps": 100}, r"`dids_budget` sets the run length, so `max_steps: 100` conflicts"),
    ],
)
def test_host_conflicts(host, match):
    cfg = parse_dids_config({"dids_strategy": "uniform", "dids_budget": 64})
    with pytest.raises(DIDSConfigError, match=match):
        check_host_arguments(cfg, **_host(**host))


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"dids_strategy": "dids", "dids_update_interval": 5}, r"needs `dids_target_datasets`"),
        ({"dids_strategy": "dids", "dids_target_datasets": ["t"]}, r"set `dids_update_interval`"),
        (
            {"dids_strategy": "dga", "dids_update_interval": 5},
            r"`dids_strategy: dga` needs `dids_target_datasets`",
        ),
        (
            {"dids_strategy": "doge", "dids_target_datasets": ["t"]},
            r"`dids_strategy: doge` updates the mixture",
        ),
        (
            {"dids_strategy": "doremi", "dids_target_datasets": "t", "dids_update_interval": 5},
            r"`dids_strategy: doremi` needs `dids_reference_dir`",
        ),
        ({"dids_strategy": "uniform", "dids_reference_dir": "ref"}, r"only used by doremi and velocitune"),
        (
            {"dids_strategy": "uniform", "dids_reference_dir": " "},
            r"must be the output_dir of a reference run",
        ),
        ({"dids_strategy": "uniform", "dids_step_size": 0}, r"`dids_step_size` must be in \(0, inf\)"),
        ({"dids_strategy": "uniform", "dids_smoothing": 1.0}, r"`dids_smoothing` must be in \[0, 1\)"),
        (
            {"dids_strategy": "dids", "dids_target_datasets": [], "dids_num_updates": 3},
            r"must be a list of dataset",
        ),
        ({"dids_strategy": "uniform", "dids_ema_beta": 1.0}, r"`dids_ema_beta` must be in \[0, 1\)"),
        ({"dids_strategy": "uniform", "dids_temperature": 0}, r"`dids_temperature` must be in \(0, inf\)"),
        ({"dids_strategy": "uniform", "dids_probe_layers_fraction": 0}, r"must be in \(0, 1\]"),
        (
            {"dids_strategy": "uniform", "dids_normaliser": "max"},
            r"`dids_normaliser` must be one of softmax, clamp",
        ),
        ({"dids_strategy": "uniform", "dids_impact_metric": "cos"}, r"must be one of fim, inner_product"),
        ({"dids_strategy": "uniform", "dids_variant": "lit"}, r"`dids_variant` must be one of directional"),
        ({"dids_strategy": "uniform", "dids_impact": "kl"}, r"`dids_impact` must be one of distance"),
        ({"dids_strategy": "uniform", "dids_prior": "zipf"}, r"`dids_prior` must be one of uniform, natural"),
        (
            {"dids_strategy": "uniform", "dids_evidence_decay": 1},
            r"`dids_evidence_decay` must be in \[0, 1\)",
        ),
        ({"dids_strategy": "uniform", "dids_pool_control": "maybe"}, r"`dids_pool_control` must be true or"),
        (
            {"dids_strategy": "uniform", "dids_variant": "reference", "dids_normaliser": "softmax"},
            r"`dids_variant: reference` runs the authors' code as it is, so `dids_normaliser` cannot be set",
        ),
        (
            {"dids_strategy": "uniform", "dids_variant": "reference", "dids_temperature": 0.5},
            r"`dids_variant: reference` runs the authors' code as it is, so `dids_temperature` cannot be set",
        ),
        (
            {"dids_strategy": "uniform", "dids_pool_control": True, "dids_variant": "paper"},
            r"`dids_pool_control: true` compares cosines, but the impact is 'distance' \(the `paper` "
            r"variant\)\. Add `dids_impact: cosine`",
        ),
        (
            {"dids_strategy": "uniform", "dids_pool_control": "true", "dids_impact": "distance"},
            r"but the impact is 'distance' \(`dids_impact`\)",
        ),
        (
            {"dids_strategy": "uniform", "dids_variant": "paper", "dids_evidence_allocation": "proportional"},
            r"`dids_evidence_allocation` shape how the `evidence` normaliser reads the tasks' evidence, but the "
            r"normaliser is 'softmax' \(the `paper` variant\)\. Add `dids_normaliser: evidence`",
        ),
        (
            {"dids_strategy": "uniform", "dids_normaliser": "clamp", "dids_task_combination": "split"},
            r"`dids_task_combination` shape .* normaliser is 'clamp' \(`dids_normaliser`\)",
        ),
        (
            {"dids_strategy": "uniform", "dids_task_combination": "mean"},
            r"`dids_task_combination` must be one of",
        ),
        ({"dids_strategy": "uniform", "dids_probe_samples": 0}, r"`dids_probe_samples` must be a positive"),
        (
            {"dids_strategy": "uniform", "dids_projection_dim": -1},
            r"`dids_projection_dim` must be 0 \(exact\)",
        ),
    ],
)
def test_dids_keys_validation(raw, match):
    with pytest.raises(DIDSConfigError, match=match):
        parse_dids_config(raw)


def test_evidence_keys_with_the_evidence_normaliser_are_valid():
    cfg = parse_dids_config(
        {
            "dids_strategy": "dids",
            "dids_target_datasets": ["t"],
            "dids_num_updates": 5,
            "dids_variant": "paper",
            "dids_normaliser": "evidence",
            "dids_task_combination": "split",
            "dids_evidence_allocation": "proportional",
        }
    )
    assert (cfg.dids_task_combination, cfg.dids_evidence_allocation) == ("split", "proportional")


def test_pool_control_with_the_cosine_is_valid():
    cfg = parse_dids_config({"dids_strategy": "uniform", "dids_impact": "cosine", "dids_pool_control": True})
    assert cfg.dids_pool_control is True and cfg.dids_impact == "cosine"


def test_dids_keys_parse():
    cfg = parse_dids_config(
        {
            "dids_strategy": "dids",
            "dids_target_datasets": "gsm, mmlu",
            "dids_num_updates": 25,
            "dids_ema_beta": 0.2,
            "dids_impact_metric": "inner_product",
            "dids_use_trajectory": "false",
        }
    )
    assert cfg.dids_target_datasets == ["gsm", "mmlu"] and cfg.dids_num_updates == 25
    assert cfg.dids_ema_beta == 0.2 and cfg.dids_impact_metric == "inner_product"
    assert cfg.dids_use_trajectory is False
    # the rule: the default variant, components left to it unless set
    assert cfg.dids_variant == "directional" and cfg.dids_normaliser is None and cfg.dids_impact is None
    cfg = parse_dids_config(
        {
            "dids_strategy": "dids",
            "dids_target_datasets": "gsm",
            "dids_num_updates": 5,
            "dids_variant": "PAPER",
            "dids_impact": "cosine",
            "dids_importance_correction": "false",
            "dids_normaliser": "evidence",
            "dids_evidence_decay": 0,
        }
    )
    assert (cfg.dids_variant, cfg.dids_impact, cfg.dids_importance_correction) == ("paper", "cosine", False)
    assert cfg.dids_normaliser == "evidence" and cfg.dids_evidence_decay == 0.0


def test_baseline_keys_parse_and_static_strategies_may_observe_targets():
    cfg = parse_dids_config(
        {
            "dids_strategy": "velocitune",
            "dids_target_datasets": "t",
            "dids_update_interval": 5,
            "dids_reference_dir": "runs/uniform",
            "dids_step_size": "0.5",
            "dids_smoothing": 0,
        }
    )
    assert cfg.dids_reference_dir == "runs/uniform" and cfg.dids_step_size == 0.5 and cfg.dids_smoothing == 0
    assert parse_dids_config(
        {"dids_strategy": "uniform", "dids_target_datasets": "t"}
    ).dids_target_datasets == ["t"]
    cfg = parse_dids_config({"dids_strategy": "dga", "dids_target_datasets": "t", "dids_update_interval": 5})
    check_host_arguments(cfg, **_host(deepspeed={"zero_optimization": {"stage": 3}}))  # the sharded probe


def test_host_check_passes_and_ignores_disabled_config():
    check_host_arguments(parse_dids_config({"dids_strategy": "uniform"}), **_host())
    check_host_arguments(DIDSConfig(), **_host(streaming=True))


def test_every_field_has_help():
    import dataclasses

    assert all(f.metadata.get("help") for f in dataclasses.fields(DIDSConfig))
    assert all(k.startswith("dids_") for k in known_keys())


def test_the_impact_metric_is_the_variants_unless_set():
    """`directional` measures in the identity metric (docs/dids.md, "The impact: the cosine, without the
    Fisher"), `paper` and `reference` in the Fisher's; an explicit `dids_impact_metric` wins."""
    dids = {"dids_strategy": "dids", "dids_target_datasets": ["t"], "dids_num_updates": 4}
    metric = dids_config.impact_metric
    assert metric(parse_dids_config(dids)) == "inner_product"
    for variant in ("paper", "reference"):
        assert metric(parse_dids_config({**dids, "dids_variant": variant})) == "fim"
    assert metric(parse_dids_config({**dids, "dids_impact_metric": "fim"})) == "fim"
    assert metric(parse_dids_config({"dids_strategy": "uniform"})) == "fim"  # the probe only observes losses


def test_the_observation_rows_are_the_variants_unless_set():
    """`directional` reads 16 rows per task for its losses (docs/dids.md, "The observation rows"), `paper`,
    `reference` and every other strategy the paper's 200; an explicit `dids_target_samples` wins."""
    dids = {"dids_strategy": "dids", "dids_target_datasets": ["t"], "dids_num_updates": 4}
    rows = dids_config.target_samples
    assert rows(parse_dids_config(dids)) == 16
    for variant in ("paper", "reference"):
        assert rows(parse_dids_config({**dids, "dids_variant": variant})) == 200
    assert rows(parse_dids_config({**dids, "dids_target_samples": 40})) == 40
    assert rows(parse_dids_config({"dids_strategy": "uniform"})) == 200
    with pytest.raises(ValueError, match="dids_target_samples"):
        parse_dids_config({**dids, "dids_target_samples": 0})
