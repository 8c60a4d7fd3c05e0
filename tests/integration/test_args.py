"""`dids_*` keys are popped before LLaMA-Factory's parser, validated, and attached to its arguments."""

from __future__ import annotations

import pytest

from llamafactory_dids.config import DIDSConfigError
from llamafactory_dids.integration.args import pop_dids_keys

from conftest import base_config


def get_train_args(config):
    import llamafactory_dids

    llamafactory_dids.apply()
    from llamafactory.train import tuner

    return tuner.get_train_args(config)


def test_pop_from_dict_and_argv():
    found, rest = pop_dids_keys({"dids_strategy": "uniform", "stage": "sft"})
    assert found == {"dids_strategy": "uniform"} and rest == {"stage": "sft"}
    argv = [
        "--stage",
        "sft",
        "--dids_strategy",
        "natural",
        "--dids_budget=64",
        "--dids_trace_samples",
        "--do_train",
    ]
    found, rest = pop_dids_keys(argv)
    assert found == {"dids_strategy": "natural", "dids_budget": "64", "dids_trace_samples": "true"}
    assert rest == ["--stage", "sft", "--do_train"]


def test_config_attached_and_budget_sets_one_epoch(demo_assets, tmp_path):
    config = base_config(demo_assets, tmp_path, dids_strategy="natural", dids_budget=64, num_train_epochs=3)
    _, data_args, training_args, finetuning_args, _ = get_train_args(config)
    assert data_args.dids is finetuning_args.dids
    assert data_args.dids.dids_strategy == "natural" and data_args.dids.dids_budget == 64
    assert data_args.dids.dids_seed == 7  # the run's seed
    assert training_args.num_train_epochs == 1


def test_without_dids_keys_arguments_are_stock(demo_assets, tmp_path):
    import llamafactory_dids

    config = base_config(demo_assets, tmp_path, num_train_epochs=3)
    patched = get_train_args(dict(config))
    llamafactory_dids.revert()
    try:
        from llamafactory.train import tuner

        stock = tuner.get_train_args(dict(config))
    finally:
        llamafactory_dids.apply()
    assert not hasattr(patched[1], "dids") and not hasattr(patched[3], "dids")
    skip = {"distributed_state"}  # a per-call cached object without value equality
    for ours, theirs in zip(patched, stock, strict=True):
        assert {k: v for k, v in vars(ours).items() if k not in skip} == {
            k: v for k, v in vars(theirs).items() if k not in skip
        }


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"dids_strategy": "magic"}, r"`dids_strategy` must be one of uniform, natural, static"),
        ({"dids_strategy": "uniform", "dids_typo": 1}, r"Unknown key `dids_typo`"),
        (
            {"dids_strategy": "uniform", "streaming": True, "max_steps": 5},
            r"`streaming: true` cannot be sampled",
        ),
        ({"dids_strategy": "uniform", "disable_shuffling": True}, r"`disable_shuffling: true` conflicts"),
        ({"dids_strategy": "uniform", "mix_strategy": "interleave_over"}, r"`mix_strategy: interleave_over`"),
    ],
)
def test_bad_keys_fail_before_any_model_loads(demo_assets, tmp_path, extra, match, monkeypatch):
    import llamafactory.model

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(llamafactory.model, "load_model", no_model)
    with pytest.raises(DIDSConfigError, match=match):
        get_train_args(base_config(demo_assets, tmp_path, **extra))
