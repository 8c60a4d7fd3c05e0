"""`llamafactory-dids demo` end to end, run from the venv's bin without an activated environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, read_jsonl

pytestmark = pytest.mark.slow


def test_demo_command_trains_and_prints_where_outputs_are(tmp_path):
    out = tmp_path / "output"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "LLAMAFACTORY_DIDS_DISABLE")}
    env["PATH"] = "/usr/bin:/bin"  # nothing of the venv on PATH
    command = [
        str(Path(sys.executable).parent / "llamafactory-dids"),
        "demo",
        "--workdir",
        str(tmp_path / "work"),
        f"output_dir={out}",
        "dids_budget=80",
        "report_to=none",
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"[dids] mixture history:   {out / 'history.jsonl'}" in result.stdout
    assert (
        f"[dids] per-domain logs:   {out / 'trainer_state.json'} (log_history: dids/* keys)" in result.stdout
    )
    assert "TensorBoard" not in result.stdout  # report_to=none
    logged = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert {"dids/loss/demo_code", "dids/target/demo_code", "dids/realised/demo_code"} <= set(logged[0])
    # LLaMA-Factory's own log keeps its fixed keys only: the demo does not point there
    assert not any(k.startswith("dids/") for row in read_jsonl(out / "trainer_log.jsonl") for k in row)
    history = read_jsonl(out / "history.jsonl")
    assert history[0]["domains"] == ["demo_code", "demo_docs", "demo_comments"]
    assert history[0]["weights"] == pytest.approx([0.5, 0.3, 0.2])
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 10  # 80 samples / batch 8
    assert (tmp_path / "work" / "assets" / "tiny-llama" / "model.safetensors").exists()


def test_demo_command_explains_a_missing_config(tmp_path):
    command = [
        str(Path(sys.executable).parent / "llamafactory-dids"),
        "demo",
        "--config",
        str(tmp_path / "x.yaml"),
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "x.yaml not found" in result.stderr
