"""Every shipped example YAML (examples/yaml/**) is valid for the command it is written for, and every file
it names exists, or is written by an earlier step of the same walkthrough.

Kinds, by file name: `repartition_*` (llamafactory-dids repartition), `observe_*` and `eval_*`
(llamafactory-dids observe / eval), anything else a training YAML (llamafactory-cli train).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from llamafactory_dids.cli import DEMO_WORKDIR
from llamafactory_dids.config import check_host_arguments, parse_dids_config, split_dids_keys
from llamafactory_dids.evaluation import parse_eval_config, parse_observe_config
from llamafactory_dids.evaluation.config import OBSERVATION_MANIFEST
from llamafactory_dids.evaluation.observe import dataset_name

from conftest import REPO, host_argument_warnings

EXAMPLES = sorted((REPO / "examples" / "yaml").rglob("*.yaml"))

REPARTITION_DATASET = "dids_repartitioned"  # the dataset_info.json entry repartition writes


def kind(path: Path) -> str:
    for prefix in ("repartition", "observe", "eval"):
        if path.name.startswith(prefix + "_"):
            return prefix
    return "train"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def produced_dirs() -> dict[str, str]:
    """Folder -> the step that writes it: output_dir of every shipped YAML, and the demo's workdir."""
    out = {str(DEMO_WORKDIR): "llamafactory-dids demo"}
    for path in EXAMPLES:
        if "output_dir" in (config := load(path)):
            out[config["output_dir"]] = path.name
    return out


def produced_by(value: str) -> str | None:
    for folder, step in produced_dirs().items():
        if value == folder or value.startswith(folder.rstrip("/") + "/"):
            return step
    return None


def test_there_are_examples():
    names = {str(p.relative_to(REPO / "examples" / "yaml")) for p in EXAMPLES}
    assert names >= {"demo_sft.yaml", "sft_natural_lora.yaml", "pt_uniform_packing.yaml"}
    assert names >= {
        "paper/repartition_tulu3_qwen05b.yaml",
        "paper/observe_tasks.yaml",
        "paper/train_llama31_8b_dids_zero3.yaml",
        "paper/train_llama31_8b_dids_lora_1gpu.yaml",
        "paper/eval_llama31_8b.yaml",
    }


@pytest.mark.parametrize("path", [p for p in EXAMPLES if kind(p) == "train"], ids=lambda p: p.name)
def test_training_example_parses(path: Path, monkeypatch):
    from llamafactory.hparams.parser import _TRAIN_ARGS
    from transformers import HfArgumentParser

    monkeypatch.chdir(REPO)  # relative paths (deepspeed config) are relative to the checkout
    config = load(path)
    dids, rest = split_dids_keys(config)
    cfg = parse_dids_config(dids)
    assert cfg.enabled
    if rest.get("bf16") and not torch.cuda.is_available():
        rest["bf16"] = False  # TrainingArguments refuses bf16 without a GPU at parse time; the key is known
    # LLaMA-Factory's own parser accepts every other key (raises on unknown keys)
    _, data_args, training_args, finetuning_args, _ = HfArgumentParser(_TRAIN_ARGS).parse_dict(
        rest, allow_extra_keys=False
    )
    check_host_arguments(
        cfg, data_args=data_args, training_args=training_args, finetuning_args=finetuning_args
    )
    # no key the installed transformers deprecates (`warmup_ratio`, `logging_dir`, ...)
    assert [m for m in host_argument_warnings(rest) if "deprecated" in m] == []


@pytest.mark.parametrize("path", [p for p in EXAMPLES if kind(p) == "repartition"], ids=lambda p: p.name)
def test_repartition_example_parses(path: Path):
    from llamafactory_dids.repartition import parse_repartition_config

    cfg = parse_repartition_config(load(path))
    assert cfg.output_dir and cfg.dataset


@pytest.mark.parametrize(
    "path", [p for p in EXAMPLES if kind(p) in ("eval", "observe")], ids=lambda p: p.name
)
def test_evaluation_example_parses(path: Path):
    parse = parse_eval_config if kind(path) == "eval" else parse_observe_config
    parse(load(path))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_referenced_files_exist(path: Path):
    """Paths exist in the checkout, or are written by an earlier step; datasets are registered where read."""
    config = load(path)
    for key in ("deepspeed", "dataset_dir", "observations", "model_name_or_path"):
        value = config.get(key)
        if value is None or produced_by(value):
            continue
        if key == "model_name_or_path":
            assert not (REPO / value).exists() and value.count("/") == 1, f"{value}: expected a hub id"
            continue
        assert (REPO / value).exists(), f"{path.name}: `{key}: {value}` does not exist and no step writes it"
    dataset_dir = config.get("dataset_dir")
    if kind(path) in ("train", "repartition") and dataset_dir and not produced_by(dataset_dir):
        info = json.loads((REPO / dataset_dir / "dataset_info.json").read_text())
        assert set(config["dataset"].split(",")) <= set(info)


def test_repartition_demo_names_the_command_that_builds_its_proxy():
    """The demo's proxy is not shipped: the YAML's comment gives the commands that create it, and they parse."""
    from llamafactory_dids.cli import build_parser
    from llamafactory_dids.repartition.proxy import PROXIES

    path = REPO / "examples" / "yaml" / "repartition_demo.yaml"
    model, text = load(path)["model_name_or_path"], path.read_text()
    assert f"###   {PROXIES['smollm2'].install}\n###   llamafactory-dids proxy smollm2 {model}\n" in text
    args = build_parser().parse_args(["proxy", "smollm2", model])
    assert (args.name, args.out_dir, args.force) == ("smollm2", model, False)


def test_paper_walkthrough_is_consistent():
    """repartition -> observe -> train -> eval: each step reads what the previous one writes."""
    paper = {
        kind(p) + ("_lora" if "lora" in p.name else ""): load(p) for p in EXAMPLES if p.parent.name == "paper"
    }
    repartition, observe, evaluate = paper["repartition"], paper["observe"], paper["eval"]
    observed = [
        dataset_name(parse_observe_config(observe).dataset_prefix, t) for t in observe["tasks"].split(",")
    ]
    assert observe["output_dir"] == repartition["output_dir"]  # one dataset_dir for the training run
    for train in (paper["train"], paper["train_lora"]):
        assert train["dataset_dir"] == repartition["output_dir"] and train["dataset"] == REPARTITION_DATASET
        assert train["dids_domain_column"] == "dids_domain"
        assert train["dids_target_datasets"].split(",") == observed
    assert evaluate["model_name_or_path"] == paper["train"]["output_dir"]
    assert evaluate["observations"] == f"{observe['output_dir']}/{OBSERVATION_MANIFEST}"
    # the 9 downstream tasks of Table 1; the observation sets are the same tasks minus IFEval (no references)
    assert len(evaluate["tasks"].split(",")) == 9
    assert set(evaluate["tasks"].split(",")) - set(observe["tasks"].split(",")) == {"ifeval"}
    # App. B.4: global batch 128 (8 GPUs under ZeRO-3, 1 GPU for the LoRA variant), lr 5e-4, clip 1, wd 0.1
    zero3, lora = paper["train"], paper["train_lora"]
    assert zero3["per_device_train_batch_size"] * zero3["gradient_accumulation_steps"] * 8 == 128
    assert lora["per_device_train_batch_size"] * lora["gradient_accumulation_steps"] == 128
    for train in (zero3, lora):
        assert (train["learning_rate"], train["max_grad_norm"], train["weight_decay"]) == (5.0e-4, 1.0, 0.1)
        assert (train["lr_scheduler_type"], train["cutoff_len"], train["dids_budget"]) == (
            "linear",
            8192,
            100000,
        )
    stage = json.loads((REPO / zero3["deepspeed"]).read_text())["zero_optimization"]["stage"]
    assert stage == 3 and lora["finetuning_type"] == "lora" and "deepspeed" not in lora
