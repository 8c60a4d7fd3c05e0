"""End to end through the unchanged `llamafactory-cli train`: single process, torchrun x2, resume."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import CLI, REPO, base_config, read_jsonl, read_trace, run_train, train_env

pytestmark = pytest.mark.slow

DOMAINS = ["demo_code", "demo_docs", "demo_comments"]
STATIC = {"demo_code": 0.6, "demo_docs": 0.3, "demo_comments": 0.1}


def _domains_of_rows(output_dir: Path) -> dict[int, int]:
    rows = {}
    for path in (output_dir / "dids_trace").glob("rank*.jsonl"):
        for record in read_jsonl(path):
            rows.update(zip(record["rows"], record["domains"], strict=True))
    return rows


def test_static_mixture_single_process(demo_assets, tmp_path):
    out = tmp_path / "out"
    config = base_config(
        demo_assets,
        out,
        dids_strategy="static",
        dids_static_weights=STATIC,
        dids_budget=200,
        dids_trace_samples=True,
        report_to="tensorboard",
        logging_steps=10,
    )
    run_train(config, tmp_path)
    # run length is the budget: 200 samples / batch 4 = 50 steps
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 50
    trace = read_trace(out)
    assert sorted(trace) == list(range(50)) and sum(len(r) for r in trace.values()) == 200
    # history: one initial record with the normalised static weights
    history = read_jsonl(out / "history.jsonl")
    assert len(history) == 1 and history[0]["domains"] == DOMAINS and history[0]["update"] == 0
    np.testing.assert_allclose(history[0]["weights"], [0.6, 0.3, 0.1])
    assert history[0]["domain_sizes"] == [60, 60, 60]
    # realised fractions over 200 draws: within 4 binomial standard errors of the targets
    counts = np.bincount(list(_domains_of_rows(out).values()), minlength=3)
    logs = [log for log in state["log_history"] if "dids/realised/demo_code" in log]
    realised = np.array([logs[-1][f"dids/realised/{d}"] for d in DOMAINS])
    assert abs(realised.sum() - 1) < 1e-5
    assert (np.abs(realised - np.array([0.6, 0.3, 0.1])) < 4 * np.sqrt(0.25 / 200)).all()
    assert all(np.isfinite(logs[-1][f"dids/loss/{d}"]) for d in DOMAINS)
    assert logs[-1]["dids/target/demo_code"] == pytest.approx(0.6)
    assert counts.sum() <= 180  # distinct rows: no row was drawn twice inside a pass
    # the scalars reach TensorBoard through the Trainer's report_to
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(out.glob("runs/*")) if list(out.glob("runs/*")) else out)).Reload()
    tags = events.Tags()["scalars"]
    assert {
        "train/dids/target/demo_code",
        "train/dids/realised/demo_docs",
        "train/dids/loss/demo_comments",
    } <= set(tags)
    # parameters changed
    start = load_file(str(demo_assets.model_dir / "model.safetensors"))
    end = load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(start[k], end[k]) for k in start)


def test_without_dids_keys_training_is_stock(demo_assets, tmp_path):
    out = tmp_path / "out"
    run_train(base_config(demo_assets, out, max_steps=5), tmp_path)
    assert (out / "model.safetensors").exists()
    assert not (out / "history.jsonl").exists() and not (out / "dids_trace").exists()
    logs = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert not any(key.startswith("dids/") for log in logs for key in log)


def test_invalid_override_fails_before_model_load(demo_assets, tmp_path):
    result = run_train(
        base_config(demo_assets, tmp_path / "out", dids_strategy="uniform"),
        tmp_path,
        args=("dids_strategy=bogus", "dids_bugdet=10"),
        check=False,
    )
    assert result.returncode != 0
    text = result.stdout + result.stderr
    # one clean block, no traceback through LLaMA-Factory's launcher
    assert (
        "error: Invalid llamafactory-dids configuration (2 problem(s)):\n"
        "  - Unknown key `dids_bugdet`. Did you mean `dids_budget`? (`llamafactory-dids keys` lists every key.)\n"
        "  - `dids_strategy` must be one of uniform, natural, static, dids, dga, doge, doremi, velocitune, "
        "got 'bogus'." in result.stderr
    )
    assert "Traceback" not in text
    assert "Loading checkpoint" not in text and not (tmp_path / "out" / "model.safetensors").exists()


def _example(name: str, assets, out: Path) -> dict:
    config = yaml.safe_load((REPO / "examples" / "yaml" / name).read_text())
    config.update(
        model_name_or_path=str(assets.model_dir), dataset_dir=str(assets.dataset_dir), output_dir=str(out)
    )
    return config


def test_lora_with_domain_column_and_val_size(demo_assets, tmp_path):
    out = tmp_path / "out"
    extra = {"dids_budget": 96, "save_steps": 100, "eval_strategy": "steps", "eval_steps": 12}
    run_train(_example("sft_natural_lora.yaml", demo_assets, out) | extra, tmp_path)
    logs = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("eval_loss" in log for log in logs)  # evaluation batches carry domain ids too
    history = read_jsonl(out / "history.jsonl")
    assert history[0]["domains"] == ["code", "comments", "docs"]
    sizes = np.array(history[0]["domain_sizes"])
    assert sizes.sum() == 162  # 180 rows minus val_size 0.1
    np.testing.assert_allclose(history[0]["weights"], sizes / sizes.sum())
    assert (out / "adapter_model.safetensors").exists()


def test_pt_stage_uniform(demo_assets, tmp_path):
    out = tmp_path / "out"
    run_train(_example("pt_uniform_packing.yaml", demo_assets, out) | {"save_steps": 1000}, tmp_path)
    history = read_jsonl(out / "history.jsonl")
    np.testing.assert_allclose(history[0]["weights"], [1 / 3] * 3)
    logs = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("dids/loss/code" in log for log in logs)


def _run_and_kill_after_checkpoint(config: dict, workdir: Path, nproc: int, step: int) -> None:
    """Start training, kill the whole process group once checkpoint-`step` holds the DIDS state."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [CLI, "train", str(path)],
        env=train_env(nproc),
        cwd=workdir,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = Path(config["output_dir"]) / f"checkpoint-{step}" / "dids_state.json"
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    # torchrun starts its workers in sessions of their own: kill the whole tree, not just the group
    tree = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    for child in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    proc.wait()
    psutil.wait_procs(tree, timeout=30)
    assert marker.exists(), "the interrupted run never wrote its checkpoint"


@pytest.mark.parametrize("nproc", [1, pytest.param(2, marks=pytest.mark.distributed)])
def test_resume_replays_the_identical_sample_stream(demo_assets, tmp_path, nproc):
    common = dict(
        dids_strategy="static",
        dids_static_weights=STATIC,
        dids_budget=240,
        dids_trace_samples=True,
        dids_update_interval=7,
        save_strategy="steps",
        save_steps=8,
        logging_steps=4,
    )
    full = tmp_path / "full"
    run_train(base_config(demo_assets, full, **common), tmp_path / "a", nproc=nproc)
    broken = tmp_path / "broken"
    config = base_config(demo_assets, broken, **common)
    _run_and_kill_after_checkpoint(config, tmp_path / "b", nproc, step=8)
    config.update(overwrite_output_dir=False, resume_from_checkpoint=str(broken / "checkpoint-8"))
    run_train(config, tmp_path / "b", nproc=nproc)

    steps = 240 // (4 * nproc)
    reference, resumed = read_trace(full), read_trace(broken)
    assert sorted(reference) == list(range(steps))
    assert resumed == reference  # every step trained the same rows, before and after the interruption
    # demo_code (weight 0.6 of 240 draws, 60 rows) is exhausted and reshuffled on the way
    ref_history, res_history = read_jsonl(full / "history.jsonl"), read_jsonl(broken / "history.jsonl")
    assert [(h["step"], h["weights"]) for h in res_history] == [
        (h["step"], h["weights"]) for h in ref_history
    ]
    assert [h["step"] for h in ref_history] == [0, *range(7, steps + 1, 7)]
    # the final models agree: same data, same optimizer state after the restore
    a = load_file(str(full / "model.safetensors"))
    b = load_file(str(broken / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
