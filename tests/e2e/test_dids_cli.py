"""`dids_strategy: dids` end to end: planted target, torchrun x2 agreement, resume, LoRA + checkpointing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from conftest import base_config, read_jsonl, run_train

pytestmark = pytest.mark.slow

DOMAINS = ["demo_code", "demo_docs", "demo_comments"]


def dids_config(assets, out, **overrides):
    keys = dict(
        dids_strategy="dids",
        dids_target_datasets="demo_target_code",
        dids_target_samples=24,
        dids_probe_samples=8,
        dids_update_interval=5,
        dids_budget=160,
        per_device_eval_batch_size=8,
    )
    keys.update(overrides)
    return base_config(assets, out, **keys)


def _updates(out):
    return [r for r in read_jsonl(out / "history.jsonl") if r["update"] > 0]


def test_planted_target_gains_weight(demo_assets, tmp_path):
    """The target set is held-out code: over the run the code domain must be favoured, prose disfavoured."""
    out = tmp_path / "out"
    run_train(dids_config(demo_assets, out, dids_budget=320, dids_probe_samples=12), tmp_path)
    history = read_jsonl(out / "history.jsonl")
    assert history[0]["tasks"] == ["demo_target_code"] and len(history[0]["task_losses"]) == 1
    updates = _updates(out)
    assert [r["step"] for r in updates] == list(range(5, 81, 5))
    mean_weights = np.mean([r["weights"] for r in updates], axis=0)
    assert mean_weights[0] == max(mean_weights) and mean_weights[0] > 1 / 3
    assert min(mean_weights[1:]) < 1 / 3
    # how often code was the closest domain (smallest FIM distance) to the code target
    closest = [int(np.argmin(np.asarray(r["terms"]["impact"])[:, 0])) for r in updates]
    assert closest.count(0) > len(closest) / 2
    for r in updates:  # nothing non-finite ever reaches the weights
        assert np.isfinite(r["weights"]).all() and abs(sum(r["weights"]) - 1) < 1e-9
        assert set(r["terms"]) >= {"impact", "impact_normalised", "l_c", "l_p", "utility", "p_hat"}
        assert r["seconds"] > 0
    task_losses = [r["task_losses"][0] for r in history]
    assert task_losses[-1] < task_losses[0]  # the target loss went down
    logs = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("dids/task_loss/demo_target_code" in log for log in logs)
    last = [log for log in logs if "dids/impact/demo_code" in log][-1]
    # the logged impact is the last update's score per domain (mean over tasks); the default's, the cosine
    # centred over domains, sums to 0
    logged = [last[f"dids/impact/{d}"] for d in DOMAINS]
    np.testing.assert_allclose(logged, np.mean(updates[-1]["terms"]["impact_normalised"], axis=1), atol=1e-6)
    assert abs(sum(logged)) < 1e-5
    assert {"dids/l_c/demo_target_code", "dids/l_p/demo_target_code", "dids/update_seconds"} <= set(last)


@pytest.mark.distributed
@pytest.mark.parametrize("source", ["probe", "train", "train+sketch"])
def test_two_processes_agree_with_one(demo_assets, tmp_path, source):
    """Identical weights on every rank (broadcast), and close to a single-process run on the same data; with
    train-side domain gradients (exact or sketched) each rank sums its own rows and the update all-reduces
    them."""
    single, double = tmp_path / "single", tmp_path / "double"
    keys = dict(dids_budget=80, dids_domain_gradients=source.split("+")[0])
    if source.endswith("sketch"):
        keys["dids_domain_sketch_dim"] = 512
    # the same global batch (8) in both runs: 1 x 8 and 2 x 4
    run_train(dids_config(demo_assets, single, per_device_train_batch_size=8, **keys), tmp_path / "a")
    run_train(dids_config(demo_assets, double, **keys), tmp_path / "b", nproc=2)
    a, b = _updates(single), _updates(double)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [5, 10]
    first_a, first_b = a[0], b[0]
    np.testing.assert_allclose(first_b["task_losses"], first_a["task_losses"], rtol=1e-4)
    np.testing.assert_allclose(first_b["terms"]["impact"], first_a["terms"]["impact"], rtol=2e-2, atol=1e-9)
    np.testing.assert_allclose(first_b["weights"], first_a["weights"], atol=2e-2)


def test_resume_continues_the_same_mixture(demo_assets, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    common = dict(save_strategy="steps", save_steps=10, dids_trace_samples=True)
    run_train(dids_config(demo_assets, full, **common), tmp_path / "a")
    resumed.mkdir()
    import shutil

    shutil.copytree(full / "checkpoint-10", resumed / "checkpoint-10")
    state = json.loads((resumed / "checkpoint-10" / "dids_state.json").read_text())
    assert len(state["task_loss_history"]) == 3  # L_0 and the updates at steps 5 and 10
    config = dids_config(demo_assets, resumed, **common)
    config.update(overwrite_output_dir=False, resume_from_checkpoint=str(resumed / "checkpoint-10"))
    run_train(config, tmp_path / "b")
    ref = {r["step"]: r for r in _updates(full)}
    for r in read_jsonl(resumed / "history.jsonl"):
        np.testing.assert_allclose(r["weights"], ref[r["step"]]["weights"], rtol=1e-6)
    assert [r["step"] for r in read_jsonl(resumed / "history.jsonl")] == [15, 20, 25, 30, 35, 40]


def test_train_side_gradients_resume_mid_interval(demo_assets, tmp_path):
    """`dids_domain_gradients: train` saved at step 10, between the updates at 8 and 12: the checkpoint keeps
    the interval's sums, and the resumed run's weights equal the uninterrupted run's."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    common = dict(
        save_strategy="steps",
        save_steps=10,
        dids_update_interval=4,
        dids_budget=80,
        dids_domain_gradients="train",
    )
    run_train(dids_config(demo_assets, full, **common), tmp_path / "a")
    assert (full / "checkpoint-10" / "dids_domain_gradients.pt").exists()
    resumed.mkdir()
    import shutil

    shutil.copytree(full / "checkpoint-10", resumed / "checkpoint-10")
    config = dids_config(demo_assets, resumed, **common)
    config.update(overwrite_output_dir=False, resume_from_checkpoint=str(resumed / "checkpoint-10"))
    run_train(config, tmp_path / "b")
    ref = {r["step"]: r for r in _updates(full)}
    history = read_jsonl(resumed / "history.jsonl")
    assert [r["step"] for r in history] == [12, 16, 20]
    # the update at 12 sums the rows of steps 9-12: two from before the checkpoint, two after
    assert [sum(r["terms"]["impact_terms"]["domain_rows"]) for r in history] == [16, 16, 16]
    for r in history:
        np.testing.assert_allclose(r["terms"]["impact"], ref[r["step"]]["terms"]["impact"], rtol=1e-5)
        np.testing.assert_allclose(r["weights"], ref[r["step"]]["weights"], rtol=1e-6)


@pytest.mark.parametrize("source", ["probe", "train"])
def test_lora_with_gradient_checkpointing(demo_assets, tmp_path, source):
    out = tmp_path / "out"
    config = dids_config(
        demo_assets,
        out,
        finetuning_type="lora",
        lora_target="all",
        lora_rank=4,
        gradient_checkpointing=True,
        dids_budget=80,
        dids_domain_gradients=source,
    )
    config.pop("disable_gradient_checkpointing", None)
    run_train(config, tmp_path)
    updates = _updates(out)
    assert len(updates) == 4 and all(np.isfinite(r["terms"]["impact"]).all() for r in updates)
    # train: every domain gradient comes from the rows trained in the interval (5 steps x 4 rows), none probed
    rows = [r["terms"]["impact_terms"]["domain_rows"] for r in updates]
    assert all(sum(n) == (20 if source == "train" else 24) for n in rows), rows
    # the LoRA factors are what the probe sees, and they moved
    assert (out / "adapter_model.safetensors").exists()
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert any("lora_B" in k and adapter[k].abs().sum() > 0 for k in adapter)
