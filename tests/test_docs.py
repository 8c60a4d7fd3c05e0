"""Commands the README and docs show: blocks marked `<!-- runnable -->` run as written; the activation
that puts `torchrun` on PATH works from a bare shell, and so does the un-activated torchrun form
(`FORCE_TORCHRUN=1 NPROC_PER_NODE=2 .venv/bin/llamafactory-cli train ...`), whose config errors print as
one block before torchrun starts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import CLI, REPO, base_config, read_trace, run_train

ACTIVATE = Path(sys.executable).parent / "activate"
MARKED = re.compile(r"<!-- runnable -->\n```bash\n(.*?)```", re.S)
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _bare_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "LLAMAFACTORY_DIDS_DISABLE")}
    env["PATH"] = "/usr/bin:/bin"  # nothing of the venv on PATH until activated
    return env


def _activated(command: str, cwd: Path = REPO, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", f"source {ACTIVATE} && {command}"],
        cwd=cwd,
        env={**_bare_env(), **kwargs.pop("env", {})},
        capture_output=True,
        text=True,
        **kwargs,
    )


DEMO_DOMAINS = ["demo_code", "demo_docs", "demo_comments"]


def _demo_output(out: Path) -> None:
    """What `make demo` leaves in dids_demo/output for report and export: the history of its `static` run
    (0.5 / 0.3 / 0.2, 8 samples per step, 200 steps) and the `dids/*` scalars of every 10th step."""
    out.mkdir(parents=True)
    weights = [0.5, 0.3, 0.2]
    first = {
        "schema": 1,
        "update": 0,
        "step": 0,
        "stream_position": 0,
        "strategy": "static",
        "domains": DEMO_DOMAINS,
        "domain_sizes": [400, 400, 400],
        "domain_column": None,
        "weights_before": None,
        "weights": weights,
        "realised_counts": [0, 0, 0],
        "signals": {},
        "task_losses": None,
        "tasks": [],
        "seconds": 0.0,
    }
    (out / "history.jsonl").write_text(json.dumps(first) + "\n")
    log = [
        {"step": step, "loss": 7.0 - step / 100}
        | {f"dids/target/{d}": w for d, w in zip(DEMO_DOMAINS, weights, strict=True)}
        | {f"dids/realised/{d}": w for d, w in zip(DEMO_DOMAINS, weights, strict=True)}
        for step in range(10, 201, 10)
    ]
    (out / "trainer_state.json").write_text(json.dumps({"global_step": 200, "log_history": log}))


@pytest.fixture(scope="module")
def docs_workdir(tmp_path_factory) -> Path:
    """Where the marked blocks run: the checkout's `examples/` and the output a finished `make demo` leaves."""
    work = tmp_path_factory.mktemp("docs")
    (work / "examples").symlink_to(REPO / "examples")
    _demo_output(work / "dids_demo" / "output")
    return work


BLOCKS = [
    pytest.param(block, id=f"{path.name}:{i}")
    for path in DOCS
    for i, block in enumerate(MARKED.findall(path.read_text(encoding="utf-8")))
]


def test_docs_mark_runnable_blocks():
    assert len(BLOCKS) >= 1


@pytest.mark.parametrize("block", BLOCKS)
def test_runnable_block_runs_as_written(block, docs_workdir):
    for line in block.splitlines():
        command = line.split("  #")[0].strip()
        if command and not command.startswith("#"):
            result = _activated(command, cwd=docs_workdir, timeout=120)
            assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"


def test_reporting_block_writes_what_the_docs_list(docs_workdir):
    out = "dids_demo/output"
    report = _activated(
        f"llamafactory-dids report {out} --out {out}/report_check", cwd=docs_workdir, timeout=120
    )
    assert report.returncode == 0, report.stderr[-2000:]
    assert report.stdout.splitlines()[:2] == [
        f"[dids] weights      {out}/report_check/weights.png",
        f"[dids] fractions    {out}/report_check/fractions.png",
    ]
    export = _activated(
        f"llamafactory-dids export {out} --out {out}/export_check --config examples/yaml/demo_sft.yaml",
        cwd=docs_workdir,
        timeout=120,
    )
    assert export.returncode == 0, export.stderr[-2000:]
    static = yaml.safe_load((docs_workdir / out / "export_check" / "static.yaml").read_text())
    assert static == {
        "dids_strategy": "static",
        "dids_static_weights": dict(zip(DEMO_DOMAINS, [0.5, 0.3, 0.2], strict=True)),
    }


def test_activation_puts_the_venv_tools_on_path():
    result = _activated("command -v torchrun llamafactory-cli llamafactory-dids", timeout=60)
    bin_dir = str(ACTIVATE.parent)
    assert result.stdout.split() == [
        f"{bin_dir}/{name}" for name in ("torchrun", "llamafactory-cli", "llamafactory-dids")
    ]


UNACTIVATED = {"PATH": "/usr/bin:/bin"}  # the venv's bin is not on PATH


def _unactivated_torchrun(config: Path, nproc: int, timeout: int) -> subprocess.CompletedProcess:
    """`FORCE_TORCHRUN=1 NPROC_PER_NODE=n .venv/bin/llamafactory-cli train CONFIG` from a bare shell."""
    env = {
        **_bare_env(),
        "FORCE_TORCHRUN": "1",
        "NPROC_PER_NODE": str(nproc),
        "TOKENIZERS_PARALLELISM": "false",
    }
    return subprocess.run(
        [CLI, "train", str(config)],
        cwd=config.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_bare_shell_has_no_torchrun():
    assert subprocess.run(["bash", "-c", "command -v torchrun"], env=_bare_env()).returncode == 1
    assert Path(CLI) == ACTIVATE.parent / "llamafactory-cli"


@pytest.mark.slow
@pytest.mark.distributed
def test_documented_torchrun_form_trains_without_activation(demo_assets, tmp_path):
    """LLaMA-Factory starts `torchrun` by name; with PATH bare, the plugin finds the venv's own."""
    out = tmp_path / "out"
    config = base_config(
        demo_assets,
        out,
        dids_strategy="static",
        dids_static_weights={"demo_code": 0.6, "demo_docs": 0.3, "demo_comments": 0.1},
        dids_budget=16,
        dids_trace_samples=True,
    )
    result = run_train(config, tmp_path, nproc=2, env=UNACTIVATED)
    assert "FileNotFoundError" not in result.stderr
    assert "Initializing 2 distributed tasks" in result.stdout + result.stderr
    # 16 samples / (4 per device x 2 ranks) = 2 steps, each rank writing its own trace
    assert sorted(p.name for p in (out / "dids_trace").glob("rank*.jsonl")) == ["rank0.jsonl", "rank1.jsonl"]
    trace = read_trace(out)
    assert sorted(trace) == [0, 1] and sum(len(rows) for rows in trace.values()) == 16
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2


BAD_KEY_BLOCK = (
    "error: Invalid llamafactory-dids configuration (1 problem(s)):\n"
    "  - Unknown key `dids_bugdet`. Did you mean `dids_budget`? (`llamafactory-dids keys` lists every key.)\n"
)
BAD_DATA_BLOCK = (
    "error: Invalid llamafactory-dids configuration (2 problem(s)):\n"
    "  - `mix_strategy: interleave_under` conflicts with `dids_strategy`: the domain sampler does the mixing. "
    "Use `mix_strategy: concat` (the default) and set the mixture with `dids_*` keys "
    "(e.g. `dids_strategy: static` with `dids_static_weights`).\n"
    "  - `dids_static_weights` does not match the training domains (unknown domains ['demo_doc']; no weight "
    "for ['demo_docs', 'demo_comments']). The domains are: ['demo_code', 'demo_docs', 'demo_comments']. "
    "Give one weight per domain (0 excludes a domain).\n"
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("keys", "block"),
    [
        pytest.param({"dids_strategy": "uniform", "dids_bugdet": 8}, BAD_KEY_BLOCK, id="key"),
        pytest.param(
            {
                "dids_strategy": "static",
                "dids_static_weights": {"demo_code": 0.5, "demo_doc": 0.5},
                "mix_strategy": "interleave_under",
            },
            BAD_DATA_BLOCK,
            id="data",
        ),
    ],
)
def test_config_error_under_torchrun_is_one_block_and_torchrun_never_starts(
    demo_assets, tmp_path, keys, block
):
    """The launcher runs the workers' checks first: one block, exit 1, no worker, no ChildFailedError."""
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(base_config(demo_assets, tmp_path / "out", **keys)))
    result = _unactivated_torchrun(config, nproc=2, timeout=300)
    assert result.returncode == 1
    assert result.stderr.count(block) == 1 and result.stderr.endswith(block)
    text = result.stdout + result.stderr
    assert "ChildFailedError" not in text and "Traceback" not in text
    assert "Initializing 2 distributed tasks" not in text  # torchrun was never started
    assert not (tmp_path / "out").exists()
