"""`eval`: lm-eval scores of a tiny local model on local tasks, equal to a direct lm-eval call, with the
observation docs kept out of scoring; model/backend resolution and the disjointness rules in isolation."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys

import pytest
from toy_lm_eval_tasks import SPLITS, toy_docs, write_toy_tasks

from llamafactory_dids.cli import main
from llamafactory_dids.evaluation import EvalConfigError, parse_eval_config, parse_observe_config
from llamafactory_dids.evaluation.config import EVAL_KEYS, OBSERVE_KEYS, EvalConfig, ObserveConfig
from llamafactory_dids.evaluation.harness import (
    find_manifest,
    plan_scored_docs,
    resolve_model,
    run_evaluation,
    select_backend,
)
from llamafactory_dids.evaluation.observe import build_observation_sets
from llamafactory_dids.evaluation.tasks import doc_hash, require_lm_eval

pytestmark = pytest.mark.filterwarnings("ignore")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    return write_toy_tasks(tmp_path_factory.mktemp("toy_tasks"))


@pytest.fixture(scope="module")
def observations(tasks_dir, tmp_path_factory):
    """5 validation docs of dids_toy_mc (the split eval scores) and 4 of dids_toy_split (not scored)."""
    out = tmp_path_factory.mktemp("obs")
    raw = {"tasks": "dids_toy_mc,dids_toy_split", "n": 5, "output_dir": str(out), "seed": 0}
    raw.update(include_path=[str(tasks_dir)], include_builtin_tasks=False)
    return build_observation_sets(parse_observe_config(raw))


def reference(model_dir, tasks_dir, tasks, samples=None, peft=None, chat=False):
    """lm-eval called directly: the same model, shots, batch and docs."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    extra = {"peft": peft, "tokenizer": peft} if peft else {}
    lm = HFLM(pretrained=str(model_dir), device="cpu", batch_size=8, **extra)
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        num_fewshot=3,
        samples=samples,
        apply_chat_template=chat,
        fewshot_as_multiturn=chat,
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
    )


def per_doc(samples: list[dict]) -> dict[int, list]:
    return {int(s["doc_id"]): json.loads(json.dumps(s["filtered_resps"])) for s in samples}  # tuples as lists


def eval_args(model_dir, tasks_dir, out, *extra):
    return [
        *("eval", "--model-name-or-path", str(model_dir), "--include-path", str(tasks_dir)),
        *(
            "--include-builtin-tasks",
            "false",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--output-path",
            str(out),
        ),
        *extra,
    ]


def test_scores_equal_direct_lm_eval_and_skip_observation_docs(
    demo_assets, tasks_dir, observations, tmp_path
):
    out = tmp_path / "eval_results.json"
    # the group expands to its two leaf tasks; observation docs are matched per leaf task
    args = eval_args(demo_assets.model_dir, tasks_dir, out, "--tasks", "dids_toy_group")
    args += ["--apply-chat-template", "false", "--observations", str(observations), "--log-samples"]
    assert main(args) == 0
    results = json.loads(out.read_text())

    manifest = json.loads(observations.read_text())
    observed = manifest["tasks"]["dids_toy_mc"]["leaves"]["dids_toy_mc"]["doc_ids"]
    kept = [i for i in range(SPLITS["dids_toy_mc"]["validation"]) if i not in observed]
    assert results["scored_doc_ids"] == {"dids_toy_mc": kept, "dids_toy_split": list(range(10))}
    checks = results["observations"]
    assert checks["manifest"] == str(observations) and checks["policy"] == "exclude"
    assert checks["tasks"]["dids_toy_mc"] == {
        "eval_split": "validation",
        "num_docs": 20,
        "observation_split": "validation",
        "observation_docs": 5,
        "excluded_doc_ids": observed,
        "scored": 15,
    }
    # observation docs of dids_toy_split come from validation, the scored split is test: nothing to exclude
    assert checks["tasks"]["dids_toy_split"]["excluded_doc_ids"] == []
    assert checks["tasks"]["dids_toy_split"]["observation_split"] == "validation"
    assert results["schema_version"] == 1 and results["model"]["backend"] == "hf"
    assert results["n_shot"] == {"dids_toy_group": 3, "dids_toy_mc": 3, "dids_toy_split": 3}
    assert results["settings"]["num_fewshot"] == 3 and results["settings"]["apply_chat_template"] is False

    ref = reference(
        demo_assets.model_dir, tasks_dir, ["dids_toy_mc", "dids_toy_split"], {"dids_toy_mc": kept}
    )
    for task in ("dids_toy_mc", "dids_toy_split"):
        assert results["results"][task]["acc,none"] == ref["results"][task]["acc,none"]
    logged = [json.loads(line) for line in (tmp_path / "eval_samples.jsonl").read_text().splitlines()]
    ours = per_doc([s for s in logged if s["task"] == "dids_toy_mc"])
    assert ours == per_doc(ref["samples"]["dids_toy_mc"])  # the same loglikelihoods, doc by doc


def test_lora_adapter_with_chat_template(demo_assets, tasks_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = demo_assets.model_dir
    adapter = tmp_path / "adapter"
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    model.save_pretrained(adapter)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = CHAT_TEMPLATE  # as LLaMA-Factory saves its `template:` with an output
    tokenizer.save_pretrained(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)

    out = tmp_path / "res.json"
    assert main([*eval_args(adapter, tasks_dir, out, "--tasks", "dids_toy_split"), "--log-samples"]) == 0
    results = json.loads(out.read_text())
    assert results["model"] == {
        "pretrained": str(base),
        "adapter": str(adapter),
        "tokenizer": str(adapter),
        "model_name_or_path": str(adapter),
        "backend": "hf",
    }
    assert results["observations"]["manifest"] is None  # nothing given or next to the run
    logged = [json.loads(line) for line in (tmp_path / "eval_samples.jsonl").read_text().splitlines()]
    assert all("<|user|>" in s["arguments"][0][0] for s in logged)  # prompts went through the template
    ref = reference(base, tasks_dir, ["dids_toy_split"], peft=str(adapter), chat=True)
    assert results["results"]["dids_toy_split"]["acc,none"] == ref["results"]["dids_toy_split"]["acc,none"]
    assert per_doc(logged) == per_doc(ref["samples"]["dids_toy_split"])

    # the demo tokenizer has no chat template: asking for one fails before any model is loaded
    with pytest.raises(ValueError, match="has no chat template.*apply_chat_template: false"):
        run_evaluation(parse_eval_config({"model_name_or_path": str(base), "tasks": "dids_toy_split"}))


def test_overlap_refused_and_found_next_to_the_run(demo_assets, tasks_dir, observations, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(demo_assets.model_dir, run / "model")
    shutil.copy(observations, run / "observation_manifest.json")  # next to the run: the output's parent
    keys = {"model_name_or_path": str(run / "model"), "tasks": "dids_toy_mc", "apply_chat_template": False}
    config = parse_eval_config({**keys, "include_path": str(tasks_dir), "include_builtin_tasks": False})
    assert find_manifest(config) == run / "observation_manifest.json"
    args = eval_args(run / "model", tasks_dir, tmp_path / "r.json", "--tasks", "dids_toy_mc")
    assert main([*args, "--apply-chat-template", "false", "--overlap", "refuse"]) == 2
    assert "5 doc(s) of the scored split 'validation' are observation docs" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_plan_scored_docs_rules():
    docs = [{"q": i} for i in range(6)]
    hashes = [doc_hash(d) for d in docs]
    same = {"split": "validation", "doc_ids": [1, 4], "doc_hashes": [hashes[1], hashes[4]]}
    ids, record = plan_scored_docs("t", "validation", docs, same, "exclude", None)
    assert ids == [0, 2, 3, 5] and record["excluded_doc_ids"] == [1, 4]
    assert plan_scored_docs("t", "validation", docs, same, "exclude", 2)[0] == [0, 2]
    assert plan_scored_docs("t", "validation", docs, None, "refuse", None)[0] == list(range(6))
    # another split whose docs duplicate scored ones: excluded by content
    other = {"split": "train", "doc_ids": [0], "doc_hashes": [hashes[3]]}
    assert plan_scored_docs("t", "test", docs, other, "exclude", None)[0] == [0, 1, 2, 4, 5]
    with pytest.raises(
        ValueError, match=r"'t': 2 doc\(s\) of the scored split 'validation'.*overlap: refuse"
    ):
        plan_scored_docs("t", "validation", docs, same, "refuse", None)
    stale = {"split": "validation", "doc_ids": [1], "doc_hashes": [hashes[2]]}
    with pytest.raises(ValueError, match="doc 1 of split 'validation' is not the doc it recorded"):
        plan_scored_docs("t", "validation", docs, stale, "exclude", None)
    everything = {"split": "validation", "doc_ids": list(range(6)), "doc_hashes": hashes}
    with pytest.raises(ValueError, match="no doc of split 'validation' is left to score"):
        plan_scored_docs("t", "validation", docs, everything, "exclude", None)


def test_toy_docs_are_distinct_across_splits():
    """The reference above relies on no content duplicates between the toy splits."""
    docs = [
        doc_hash(d)
        for split, n in SPLITS["dids_toy_split"].items()
        for d in toy_docs("dids_toy_split", split, n)
    ]
    assert len(set(docs)) == len(docs)


@pytest.mark.parametrize(
    ("requested", "has_vllm", "has_cuda", "expected"),
    [
        ("auto", True, True, "vllm"),
        ("auto", True, False, "hf"),
        ("auto", False, True, "hf"),
        ("hf", True, True, "hf"),
        ("vllm", True, True, "vllm"),
    ],
)
def test_select_backend(requested, has_vllm, has_cuda, expected):
    assert select_backend(requested, has_vllm=has_vllm, has_cuda=has_cuda) == expected


def test_select_backend_errors():
    with pytest.raises(ValueError, match="vllm is not installed.*backend: hf"):
        select_backend("vllm", has_vllm=False, has_cuda=True)
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        select_backend("vllm", has_vllm=True, has_cuda=False)


def test_resolve_model(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    assert resolve_model(str(full)).adapter is None
    with pytest.raises(ValueError, match="only for LoRA adapters.*no adapter_config.json"):
        resolve_model(str(full), "base")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/base"}))
    spec = resolve_model(str(adapter))
    assert (spec.pretrained, spec.adapter, spec.tokenizer) == ("/models/base", str(adapter), "/models/base")
    assert resolve_model(str(adapter), "/other").pretrained == "/other"
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": None}))
    with pytest.raises(ValueError, match="records no `base_model_name_or_path`; pass the base model"):
        resolve_model(str(adapter))


def test_missing_lm_eval_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match=r"pip install \"llamafactory-dids\[eval\]\""):
        require_lm_eval()


def test_every_evaluation_key_has_one_kind():
    """`config.parse_keys` sets only the keys its tables name: each field in exactly one kind (or parsed
    by its own function: `batch_size`), so no key is accepted and silently dropped."""
    for cls, kinds, own in ((EvalConfig, EVAL_KEYS, ["batch_size"]), (ObserveConfig, OBSERVE_KEYS, [])):
        declared = [key for kind, keys in kinds.items() if kind != "required" for key in keys] + own
        assert sorted(declared) == sorted(f.name for f in dataclasses.fields(cls))
        assert set(kinds["required"]) <= set(declared)


def test_bad_eval_configuration():
    with pytest.raises(EvalConfigError) as error:
        parse_eval_config({"tasks": "x", "backend": "tpu", "batch_size": "big", "overlap": "ignore"})
    text = str(error.value)
    assert "`backend` must be one of auto, hf, vllm, got 'tpu'" in text
    assert "`batch_size` must be a positive integer, `auto` or `auto:N`, got 'big'" in text
    assert "`overlap` must be one of exclude, refuse" in text and "`model_name_or_path` is required" in text
    config = parse_eval_config({"model_name_or_path": "m", "tasks": "a, b", "apply_chat_template": "chatml"})
    assert config.tasks == ["a", "b"] and config.apply_chat_template == "chatml" and config.num_fewshot == 3
