"""Local lm-eval tasks for the evaluation tests: task YAMLs over JSONL files written here, no downloads.

Each task mirrors the split layout of one of the paper's downstream tasks in lm-eval:
  dids_toy_mc         train + validation, scored on validation   (piqa, boolq, truthfulqa)
  dids_toy_split      train + validation + test, scored on test  (mmlu, mathqa, pubmedqa)
  dids_toy_trainonly  train + test                               (gsm8k, minerva_math)
  dids_toy_testonly   test only                                  (bbh subtasks)
  dids_toy_gen        generation with a reference answer, train + test
  dids_toy_notarget   generation without a reference answer      (ifeval)
  dids_toy_group      group of dids_toy_mc and dids_toy_split    (mmlu, bbh as groups)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

SPLITS = {
    "dids_toy_mc": {"train": 8, "validation": 20},
    "dids_toy_split": {"train": 8, "validation": 12, "test": 10},
    "dids_toy_trainonly": {"train": 14, "test": 6},
    "dids_toy_testonly": {"test": 9},
    "dids_toy_gen": {"train": 6, "test": 5},
    "dids_toy_notarget": {"test": 4},
}
ROLE_KEYS = {"train": "training_split", "validation": "validation_split", "test": "test_split"}


def toy_docs(task: str, split: str, n: int) -> list[dict]:
    """Deterministic arithmetic questions; the correct choice is at index `label`."""
    rng = random.Random(f"{task}:{split}")
    docs = []
    for i in range(n):
        a, b = rng.randint(1, 49), rng.randint(1, 49)
        choices = [str(a + b), str(a + b + 1), str(a * b + 3)]
        label = rng.randrange(3)
        choices[0], choices[label] = choices[label], choices[0]
        docs.append(
            {"question": f"What is {a} plus {b}?", "choices": choices, "label": label, "uid": f"{split}-{i}"}
        )
    return docs


def write_toy_tasks(root: Path) -> Path:
    """Write every toy task (YAML + JSONL data) under `root`; return the include_path folder."""
    root.mkdir(parents=True, exist_ok=True)
    for task, splits in SPLITS.items():
        data_files = {}
        for split, n in splits.items():
            path = root / f"{task}.{split}.jsonl"
            path.write_text("".join(json.dumps(d) + "\n" for d in toy_docs(task, split, n)), encoding="utf-8")
            data_files[split] = str(path)
        config = {
            "task": task,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": data_files},
            **{ROLE_KEYS[s]: s for s in splits},
            "doc_to_text": "Question: {{question}}\nAnswer:",
        }
        if task in ("dids_toy_gen", "dids_toy_notarget"):
            config.update(
                output_type="generate_until",
                doc_to_target="{{choices[label]}}" if task == "dids_toy_gen" else 0,
                generation_kwargs={"until": ["\n"], "max_gen_toks": 4, "do_sample": False},
                metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
            )
        else:
            config.update(
                output_type="multiple_choice",
                doc_to_choice="{{choices}}",
                doc_to_target="{{label}}",
                metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            )
        (root / f"{task}.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    group = {
        "group": "dids_toy_group",
        "task": ["dids_toy_mc", "dids_toy_split"],
        "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}],
    }
    (root / "dids_toy_group.yaml").write_text(yaml.safe_dump(group), encoding="utf-8")
    return root
