"""Commands the README and docs show: blocks marked `<!-- runnable -->` run as written; the activation
that puts `torchrun` on PATH (LLaMA-Factory launches it from PATH) works from a bare shell."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

ACTIVATE = Path(sys.executable).parent / "activate"
MARKED = re.compile(r"<!-- runnable -->\n```bash\n(.*?)```", re.S)
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _bare_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "LLAMAFACTORY_DIDS_DISABLE")}
    env["PATH"] = "/usr/bin:/bin"  # nothing of the venv on PATH until activated
    return env


def _activated(command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", f"source {ACTIVATE} && {command}"],
        cwd=REPO,
        env={**_bare_env(), **kwargs.pop("env", {})},
        capture_output=True,
        text=True,
        **kwargs,
    )


BLOCKS = [
    pytest.param(block, id=f"{path.name}:{i}")
    for path in DOCS
    for i, block in enumerate(MARKED.findall(path.read_text(encoding="utf-8")))
]


def test_docs_mark_runnable_blocks():
    assert len(BLOCKS) >= 1


@pytest.mark.parametrize("block", BLOCKS)
def test_runnable_block_runs_as_written(block):
    for line in block.splitlines():
        command = line.split("  #")[0].strip()
        if command and not command.startswith("#"):
            result = _activated(command, timeout=120)
            assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"


def test_activation_puts_the_venv_tools_on_path():
    result = _activated("command -v torchrun llamafactory-cli llamafactory-dids", timeout=60)
    bin_dir = str(ACTIVATE.parent)
    assert result.stdout.split() == [
        f"{bin_dir}/{name}" for name in ("torchrun", "llamafactory-cli", "llamafactory-dids")
    ]


@pytest.mark.slow
def test_documented_torchrun_form_reaches_the_workers(demo_assets, tmp_path):
    """`FORCE_TORCHRUN=1 ... llamafactory-cli train` after activation: torchrun starts (no FileNotFoundError)
    and the worker's config error prints as one block."""
    config = tmp_path / "bad.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(demo_assets.model_dir),
                "stage": "sft",
                "do_train": True,
                "finetuning_type": "full",
                "dataset": "demo_code",
                "dataset_dir": str(demo_assets.dataset_dir),
                "template": "default",
                "output_dir": str(tmp_path / "out"),
                "dids_strategy": "uniform",
                "dids_bugdet": 8,
            }
        )
    )
    result = _activated(
        f"llamafactory-cli train {config}",
        env={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "1"},
        timeout=300,
    )
    assert result.returncode != 0
    assert "FileNotFoundError" not in result.stderr
    block = (
        "error: Invalid llamafactory-dids configuration (1 problem(s)):\n"
        "  - Unknown key `dids_bugdet`. Did you mean `dids_budget`? (`llamafactory-dids keys` lists every key.)\n"
    )
    assert result.stderr.count(block) == 1
