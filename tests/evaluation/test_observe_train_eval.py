"""observe -> train (the observation set as `dids_target_datasets`) -> eval, through the real commands."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from toy_lm_eval_tasks import write_toy_tasks

from llamafactory_dids.cli import main

from conftest import base_config, read_jsonl, run_train

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]


def test_observation_set_drives_training_and_is_kept_out_of_eval(demo_assets, tmp_path):
    tasks = write_toy_tasks(tmp_path / "tasks")
    data = tmp_path / "data"
    shutil.copytree(demo_assets.dataset_dir, data)  # observe adds its datasets to an existing dataset_dir
    local = ["--include-path", str(tasks), "--include-builtin-tasks", "false"]
    assert main(["observe", "--tasks", "dids_toy_mc", "--n", "10", "--output-dir", str(data), *local]) == 0

    out = tmp_path / "out"
    config = base_config(
        demo_assets,
        out,
        dataset_dir=str(data),
        dids_strategy="dids",
        dids_target_datasets="obs_dids_toy_mc",
        dids_target_samples=10,
        dids_probe_samples=4,
        dids_update_interval=5,
        dids_budget=80,
        dids_normaliser="clamp",
        per_device_eval_batch_size=8,
    )
    run_train(config, tmp_path / "train")
    history = read_jsonl(out / "history.jsonl")
    assert history[0]["tasks"] == ["obs_dids_toy_mc"]
    assert all(math.isfinite(r["task_losses"][0]) for r in history) and len(history) > 1

    # the trained output carries LLaMA-Factory's chat template, so the paper's setting (template on) runs
    results_path = out / "eval_results.json"
    eval_args = ["eval", "--model-name-or-path", str(out), "--tasks", "dids_toy_mc", "--device", "cpu"]
    assert main([*eval_args, "--batch-size", "8", "--observations", str(data), *local]) == 0
    results = json.loads(results_path.read_text())  # default location: next to the run
    observed = json.loads((data / "observation_manifest.json").read_text())
    observed_ids = observed["tasks"]["dids_toy_mc"]["leaves"]["dids_toy_mc"]["doc_ids"]
    assert results["settings"]["apply_chat_template"] is True
    assert results["observations"]["tasks"]["dids_toy_mc"]["excluded_doc_ids"] == observed_ids
    assert results["scored_doc_ids"]["dids_toy_mc"] == [i for i in range(20) if i not in observed_ids]
    assert 0.0 <= results["results"]["dids_toy_mc"]["acc,none"] <= 1.0
