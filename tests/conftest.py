"""Shared fixtures: the embedded tiny model and data, and a helper that runs `llamafactory-cli train`."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llamafactory_dids.cli import find_llamafactory_cli
from llamafactory_dids.demo import DemoAssets, build_demo_assets, demo_training_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory) -> DemoAssets:
    """A small build of the demo assets (60 rows per domain), shared by the whole session."""
    return build_demo_assets(tmp_path_factory.mktemp("assets"), examples_per_domain=60, seed=0)


def base_config(assets: DemoAssets, output_dir: Path, **overrides) -> dict:
    """The demo's tiny SFT config over the three domains, smaller and faster for tests, with overrides."""
    small = {"cutoff_len": 128, "per_device_train_batch_size": 4, "logging_steps": 5, "seed": 7}
    return demo_training_config(assets, output_dir, **{**small, **overrides})


BIN = Path(sys.executable).parent
GLOO_EXIT_ABORT = "terminate called without an active exception"
CLI = find_llamafactory_cli() or "llamafactory-cli"


def train_env(nproc: int = 1, extra: dict | None = None) -> dict:
    """Environment for a training subprocess: this interpreter's bin first (torchrun), plugin on."""
    env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("LLAMAFACTORY_DIDS_DISABLE", None)
    env.update(extra or {})
    if nproc > 1:
        env.update({"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(nproc)})
    return env


def run_train(
    config: dict,
    workdir: Path,
    *,
    nproc: int = 1,
    args: tuple[str, ...] = (),
    env: dict | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run the unchanged `llamafactory-cli train` on `config` written as YAML into `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    for _attempt in range(2):
        result = subprocess.run(
            [CLI, "train", str(path), *args],
            env=train_env(nproc, env),
            capture_output=True,
            text=True,
            timeout=900,
            cwd=workdir,
        )
        # torch's gloo backend can abort a worker while the interpreter exits after training completed
        # ("terminate called without an active exception", SIGABRT; pytorch/pytorch#190489): torchrun then
        # kills the other ranks before they finish writing. A race outside the plugin: run again, once.
        if not (nproc > 1 and result.returncode != 0 and GLOO_EXIT_ABORT in result.stdout + result.stderr):
            break
    if check and result.returncode != 0:
        raise AssertionError(
            f"llamafactory-cli failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return result


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_trace(output_dir: Path) -> dict[int, list[int]]:
    """step -> row ids trained at that step, over all ranks (rank order)."""
    steps: dict[int, list[int]] = {}
    for path in sorted((output_dir / "dids_trace").glob("rank*.jsonl")):
        for record in read_jsonl(path):
            steps.setdefault(record["step"], []).extend(record["rows"])
    return steps


def host_argument_warnings(config: dict) -> list[str]:
    """What transformers logs at WARNING while LLaMA-Factory's parser builds the arguments of `config`.

    The `dids_*` keys are left out (the plugin pops them before this parser runs); transformers' loggers
    do not propagate to the root logger, so a handler on its library logger collects the messages.
    """
    from llamafactory.hparams.parser import _TRAIN_ARGS
    from transformers import HfArgumentParser

    from llamafactory_dids.config import split_dids_keys

    messages: list[str] = []
    collect = logging.Handler(logging.WARNING)
    collect.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    library = logging.getLogger("transformers")
    level = library.level
    library.addHandler(collect)
    library.setLevel(logging.WARNING)  # an earlier test may have quietened it
    try:
        HfArgumentParser(_TRAIN_ARGS).parse_dict(split_dids_keys(config)[1], allow_extra_keys=False)
    finally:
        library.removeHandler(collect)
        library.setLevel(level)
    return messages
