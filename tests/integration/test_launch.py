"""The launcher of `llamafactory-cli train` under torchrun: torchrun found without activation, and the
workers' config checks run once before torchrun starts (same problems, same order)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from llamafactory_dids.config import DIDSConfigError
from llamafactory_dids.integration import launch

from conftest import base_config

BIN = str(Path(sys.executable).parent)


def worker_problems(config: dict) -> list[str]:
    """What every torchrun worker raises: the patched `get_train_args` on the same config."""
    import llamafactory_dids

    llamafactory_dids.apply()
    from llamafactory.train import tuner

    with pytest.raises(DIDSConfigError) as raised:
        tuner.get_train_args(config)
    return raised.value.problems


def launcher_problems(argv: list[str]) -> list[str]:
    with pytest.raises(DIDSConfigError) as raised:
        launch.check_before_torchrun(argv)
    return raised.value.problems


def write(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_torchrun_is_put_on_path_only_when_missing(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert launch.put_torchrun_on_path() == BIN
    assert os.environ["PATH"] == f"{BIN}{os.pathsep}/usr/bin:/bin"
    assert launch.put_torchrun_on_path() is None  # found now: PATH stays as it is
    assert os.environ["PATH"] == f"{BIN}{os.pathsep}/usr/bin:/bin"


def test_without_a_torchrun_next_to_python_path_stays(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    assert launch.put_torchrun_on_path() is None
    assert os.environ["PATH"] == "/usr/bin:/bin"


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        pytest.param(
            {"dids_strategy": "bogus", "dids_bugdet": 8},
            [
                "Unknown key `dids_bugdet`. Did you mean `dids_budget`? (`llamafactory-dids keys` lists every key.)",
                "`dids_strategy` must be one of uniform, natural, static, dids, dga, doge, doremi, velocitune, "
                "got 'bogus'. Set e.g. `dids_strategy: uniform`, or remove the key to keep LLaMA-Factory's "
                "sampling.",
            ],
            id="keys",
        ),
        pytest.param(
            {
                "dids_strategy": "static",
                "dids_static_weights": {"demo_code": 0.5, "demo_doc": 0.5},
                "dids_budget": 64,
                "max_steps": 5,
                "mix_strategy": "interleave_under",
            },
            [
                "`mix_strategy: interleave_under` conflicts with `dids_strategy`: the domain sampler does the "
                "mixing. Use `mix_strategy: concat` (the default) and set the mixture with `dids_*` keys "
                "(e.g. `dids_strategy: static` with `dids_static_weights`).",
                "`dids_budget` sets the run length, so `max_steps: 5` conflicts with it. Remove one of them.",
                "`dids_static_weights` does not match the training domains (unknown domains ['demo_doc']; no "
                "weight for ['demo_docs', 'demo_comments']). The domains are: ['demo_code', 'demo_docs', "
                "'demo_comments']. Give one weight per domain (0 excludes a domain).",
            ],
            id="host-and-data",
        ),
    ],
)
def test_launcher_raises_what_the_workers_raise(demo_assets, tmp_path, keys, expected):
    config = base_config(demo_assets, tmp_path / "out", **keys)
    assert launcher_problems([str(write(config, tmp_path / "c.yaml"))]) == expected
    assert worker_problems(config) == expected


def test_launcher_reads_overrides_and_argv_pairs(demo_assets, tmp_path):
    path = write(base_config(demo_assets, tmp_path / "out", dids_strategy="uniform"), tmp_path / "c.yaml")
    assert launcher_problems([str(path), "dids_budget=0"]) == [
        "`dids_budget` must be a positive integer, got 0."
    ]
    argv = [
        "--stage",
        "sft",
        "--dataset",
        "demo_code,demo_docs",
        "--dataset_dir",
        str(demo_assets.dataset_dir),
    ]
    argv += ["--dids_strategy", "static", "--dids_static_weights", "1,2,3", "--max_steps", "5"]
    assert launcher_problems([*argv, "--dids_budget", "8"]) == [
        "`dids_budget` sets the run length, so `max_steps: 5` conflicts with it. Remove one of them.",
        "`dids_static_weights` has 3 weights but there are 2 domains ['demo_code', 'demo_docs']. Give one "
        "weight per domain in this order, or a mapping domain -> weight.",
    ]


def test_launcher_leaves_valid_stock_and_host_rejected_configs_to_the_run(demo_assets, tmp_path):
    valid = base_config(demo_assets, tmp_path / "out", dids_strategy="natural", dids_budget=64)
    stock = base_config(demo_assets, tmp_path / "out")
    host_error = base_config(demo_assets, tmp_path / "out", dids_strategy="uniform", finetuning_type="bogus")
    for name, config in (("valid", valid), ("stock", stock), ("host", host_error)):
        assert launch.check_before_torchrun([str(write(config, tmp_path / f"{name}.yaml"))]) is None
    assert launch.check_before_torchrun([str(tmp_path / "missing.yaml")]) is None  # the host reports it


class Original:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return "launched"


@pytest.fixture
def one_device(monkeypatch):
    import llamafactory.extras.misc

    monkeypatch.setattr(llamafactory.extras.misc, "get_device_count", lambda: 1)
    for name in ("FORCE_TORCHRUN", "USE_MCA", "USE_RAY", "USE_KT"):
        monkeypatch.delenv(name, raising=False)


def test_wrapped_launch_checks_before_torchrun_only(demo_assets, tmp_path, monkeypatch, one_device):
    bad = write(base_config(demo_assets, tmp_path / "out", dids_bugdet=8), tmp_path / "bad.yaml")
    original = Original()
    wrapped = launch.wrap_launch(original)
    assert wrapped.__wrapped__ is original
    monkeypatch.setattr(sys, "argv", ["llamafactory-cli", "train", str(bad)])
    assert wrapped() == "launched"  # single process: `get_train_args` validates in the same process
    monkeypatch.setattr(sys, "argv", ["llamafactory-cli", "version"])
    monkeypatch.setenv("FORCE_TORCHRUN", "1")
    assert wrapped() == "launched" and original.calls == 2  # not `train`: nothing to check
    monkeypatch.setattr(sys, "argv", ["llamafactory-cli", "train", str(bad)])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    with pytest.raises(DIDSConfigError, match="Unknown key `dids_bugdet`"):
        wrapped()
    assert original.calls == 2  # torchrun never started
    assert os.environ["PATH"].split(os.pathsep)[0] == BIN
    assert sys.argv == ["llamafactory-cli", "train", str(bad)]  # the host pops `train` itself
