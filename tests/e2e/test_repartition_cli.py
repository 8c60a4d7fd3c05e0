"""`llamafactory-dids repartition` end to end: the CLI, torchrun data parallelism, and training on its output.

References: a single-process run (the two-rank run must write the same bytes), the domain map (the training
run must sample exactly the domains it lists), and the CLI's error path (exit code 2, message on stderr).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO, read_jsonl, run_train, train_env

pytestmark = pytest.mark.slow

CLI = [str(Path(sys.executable).parent / "llamafactory-dids")]


def overrides(assets, out, **extra):
    values = {
        "model_name_or_path": str(assets.model_dir),
        "dataset_dir": str(assets.dataset_dir),
        "output_dir": str(out),
        "cutoff_len": 96,
        "max_samples": 24,
        "dids_domains_per_source": 2,
        "dids_projection_dim": 128,
        "dids_shard_size": 16,
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def repartition(args, nproc=1):
    config = str(REPO / "examples" / "yaml" / "repartition_demo.yaml")
    if nproc > 1:
        command = [str(BIN / "torchrun"), f"--nproc_per_node={nproc}", "-m", "llamafactory_dids.cli"]
    else:
        command = CLI
    return subprocess.run(
        [*command, "repartition", config, *args],
        # one thread per process in both runs (torchrun sets it for its ranks): the features must not depend
        # on the rank split, and a different thread count may change float summation order in the kernels
        env=train_env(extra={"OMP_NUM_THREADS": "1"}),
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )


def test_repartition_then_train_on_its_domains(demo_assets, tmp_path):
    out = tmp_path / "repartition"
    result = repartition(overrides(demo_assets, out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"[dids] repartitioned dataset: {out / 'data.jsonl'}" in result.stdout
    assert "features: 100%" in result.stderr  # the progress bar
    domain_map = json.loads((out / "domain_map.json").read_text())
    assert len(read_jsonl(out / "data.jsonl")) == domain_map["num_rows"] == 72

    config = yaml.safe_load((REPO / "examples" / "yaml" / "sft_repartitioned_demo.yaml").read_text())
    config.update(
        model_name_or_path=str(demo_assets.model_dir),
        dataset_dir=str(out),
        output_dir=str(tmp_path / "train"),
        cutoff_len=96,
        dids_budget=48,
        logging_steps=2,
    )
    run_train(config, tmp_path / "train")
    history = read_jsonl(tmp_path / "train" / "history.jsonl")
    assert sorted(history[0]["domains"]) == sorted(domain_map["domains"])
    assert history[0]["weights"] == pytest.approx([1 / 6] * 6)


@pytest.mark.distributed
def test_two_ranks_write_what_one_rank_writes(demo_assets, tmp_path):
    single, double = tmp_path / "one", tmp_path / "two"
    result = repartition(overrides(demo_assets, single))
    assert result.returncode == 0, result.stderr[-3000:]
    result = repartition(overrides(demo_assets, double), nproc=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("data.jsonl", "dataset_info.json", "report.md"):
        assert (double / name).read_bytes() == (single / name).read_bytes(), name
    shards = sorted(p.name for p in (single / "features").glob("shard_*.npy"))
    assert len(shards) == 5  # 72 rows / 16: both ranks computed some
    for name in shards:
        assert (double / "features" / name).read_bytes() == (single / "features" / name).read_bytes()


def test_bad_input_exits_2_with_the_message(demo_assets, tmp_path):
    result = repartition(overrides(demo_assets, tmp_path / "o", dids_source_column="topic"))
    assert result.returncode == 2
    assert "error: `dids_source_column: topic` is not a column of dataset 'demo_code'" in result.stderr
    assert not (tmp_path / "o" / "features").exists()  # nothing heavy started
