"""DeepSpeed on CPU (2 processes, gloo): static strategies under ZeRO-2/3, `dids` under ZeRO-2, ZeRO-3 refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import base_config, read_jsonl, read_trace, run_train

pytest.importorskip("deepspeed")
pytestmark = [pytest.mark.slow, pytest.mark.distributed]

ENV = {"DS_ACCELERATOR": "cpu"}


def ds_config(tmp_path, stage: int) -> str:
    path = tmp_path / f"ds_z{stage}.json"
    config = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": stage, "overlap_comm": False, "contiguous_gradients": True},
    }
    path.write_text(json.dumps(config))
    return str(path)


@pytest.mark.parametrize("stage", [2, 3])
def test_static_mixture_under_zero(demo_assets, tmp_path, stage):
    out = tmp_path / "out"
    config = base_config(
        demo_assets,
        out,
        deepspeed=ds_config(tmp_path, stage),
        dids_strategy="static",
        dids_static_weights=[0.6, 0.3, 0.1],
        dids_budget=80,
        dids_trace_samples=True,
    )
    run_train(config, tmp_path, nproc=2, env=ENV)
    trace = read_trace(out)
    assert sorted(trace) == list(range(10)) and all(len(rows) == 8 for rows in trace.values())
    logs = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("dids/loss/demo_code" in log for log in logs)


def test_dids_under_zero2(demo_assets, tmp_path):
    out = tmp_path / "out"
    config = base_config(
        demo_assets,
        out,
        deepspeed=ds_config(tmp_path, 2),
        dids_strategy="dids",
        dids_target_datasets="demo_target_code",
        dids_target_samples=16,
        dids_probe_samples=4,
        dids_update_interval=5,
        dids_budget=80,
        per_device_eval_batch_size=4,
    )
    run_train(config, tmp_path, nproc=2, env=ENV)
    updates = [r for r in read_jsonl(out / "history.jsonl") if r["update"] > 0]
    assert [r["step"] for r in updates] == [5, 10]
    for r in updates:
        assert np.isfinite(r["terms"]["impact"]).all() and abs(sum(r["weights"]) - 1) < 1e-9


def test_dids_under_zero3_is_refused_before_model_load(demo_assets, tmp_path):
    config = base_config(
        demo_assets,
        tmp_path / "out",
        deepspeed=ds_config(tmp_path, 3),
        dids_strategy="dids",
        dids_target_datasets="demo_target_code",
        dids_update_interval=5,
    )
    result = run_train(config, tmp_path, nproc=2, env=ENV, check=False)
    assert result.returncode != 0
    assert "does not support DeepSpeed ZeRO-3 yet" in result.stdout + result.stderr
