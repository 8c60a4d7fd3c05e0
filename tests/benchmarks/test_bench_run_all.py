"""benchmarks/run_all.py plumbing with fake scripts: figure records, target verdicts, failures, table; and
the training configs the benchmarks write parse without a deprecation warning."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from llamafactory_dids.demo import DemoAssets

from conftest import host_argument_warnings

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


run_all = _load("run_all")
Figure = sys.modules["_harness"].Figure

GOOD = """
from _harness import Figure

def figures(argv=None):
    quick = "--quick" in (argv or [])
    return [
        Figure("ratio", 1.01, target=1.02, comparator="<=", command="python good.py " + " ".join(argv or [])),
        Figure("start-up", 3.0, unit="ms", target=2.0, comparator="<"),
        {"name": "spread", "value": 5.0 if quick else 2.0, "unit": "%"},
    ]
"""
BROKEN = """
def figures(argv=None):
    print("measuring ...")
    raise RuntimeError("the machine caught fire")
"""
NO_FUNCTION = "print('a script without figures()')\n"


@pytest.mark.parametrize(
    ("value", "comparator", "target", "expected"),
    [
        (1.02, "<=", 1.02, True),
        (1.03, "<=", 1.02, False),
        (1.99, "<", 2.0, True),
        (2.0, "<", 2.0, False),
        (0, "==", 0, True),
        (1, "==", 0, False),
        (5, ">", 0, True),
        (0, ">", 0, False),
        (3, ">=", 3, True),
        (math.nan, "<=", 1.0, None),
        (None, "<=", 1.0, None),
    ],
)
def test_figure_verdicts(value, comparator, target, expected):
    assert Figure("f", value, target=target, comparator=comparator).passed is expected


def test_figure_validation_and_text():
    assert Figure("info", 3.0).passed is None
    with pytest.raises(ValueError, match="comparator must be one of"):
        Figure("f", 1.0, target=1.0, comparator="~")
    with pytest.raises(ValueError, match="give both `target` and `comparator`"):
        Figure("f", 1.0, target=1.0)
    f = Figure("t", 0.20512, unit="ms", target=2.0, comparator="<")
    assert f.value_text() == "0.2051 ms" and f.target_description() == "< 2 ms"
    assert Figure("m", 1.1, target_text="~1: flat in k").target_description() == "~1: flat in k"
    assert Figure.from_dict(f.as_dict()) == f and f.as_dict()["passed"] is True


@pytest.fixture
def fake_scripts(tmp_path, monkeypatch):
    root = tmp_path / "benchmarks"
    root.mkdir()
    (root / "good.py").write_text(GOOD)
    (root / "broken.py").write_text(BROKEN)
    (root / "plain.py").write_text(NO_FUNCTION)
    scripts = (
        run_all.Script("good", "good.py", argv=("--full",), quick_argv=("--quick",)),
        run_all.Script("broken", "broken.py"),
        run_all.Script("plain", "plain.py"),
        run_all.Script("future", "future/run.py"),
    )
    monkeypatch.setattr(run_all, "SCRIPTS", scripts)
    monkeypatch.setattr(run_all, "HERE", root)
    return root


def test_run_script_outcomes(fake_scripts, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    good = run_all.run_script(run_all.SCRIPTS[0], quick=True, log_dir=logs)
    assert good.status == "ok"
    assert [(f.name, f.passed) for f in good.figures] == [
        ("ratio", True),
        ("start-up", False),
        ("spread", None),
    ]
    assert good.figures[0].command == "python good.py --quick" and good.figures[2].value == 5.0
    broken = run_all.run_script(run_all.SCRIPTS[1], quick=False, log_dir=logs)
    assert broken.status == "failed" and "RuntimeError: the machine caught fire" in broken.detail
    assert "measuring ..." in (logs / "broken.log").read_text()
    plain = run_all.run_script(run_all.SCRIPTS[2], quick=False, log_dir=logs)
    assert plain.status == "not available" and "has no `figures(argv)` function" in plain.detail
    future = run_all.run_script(run_all.SCRIPTS[3], quick=False, log_dir=logs)
    assert future.status == "not available" and "benchmarks/future/run.py does not exist yet" in future.detail


def test_main_table_json_and_check(fake_scripts, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = run_all.main(["--json", str(out), "--logs", str(tmp_path / "logs"), "--check"])
    assert code == 1  # one target missed and one script failed
    printed = capsys.readouterr().out
    table = printed[printed.index("figure  ") :]
    lines = table.splitlines()
    assert lines[0].split() == ["figure", "value", "target", "result", "command"]
    ratio = next(line for line in lines if line.startswith("ratio "))
    assert ratio.split()[:5] == ["ratio", "1.01", "<=", "1.02", "PASS"] and ratio.endswith(
        "python good.py --full"
    )
    assert next(line for line in lines if line.startswith("start-up ")).split()[:7] == [
        "start-up",
        "3",
        "ms",
        "<",
        "2",
        "ms",
        "FAIL",
    ]
    assert any(line.startswith("[future]") and "NOT AVAILABLE" in line for line in lines)
    spread = next(line for line in lines if line.startswith("spread "))
    assert spread.split() == ["spread", "2", "%"]  # informational: no target, no verdict, no command
    assert any(line.startswith("[broken]") and "FAILED" in line for line in lines)
    assert "1 passed, 1 failed, 1 informational; scripts failed 1, not available 2" in printed
    payload = json.loads(out.read_text())
    assert payload["summary"] == {
        "passed": 1,
        "failed": 1,
        "informational": 1,
        "scripts_failed": 1,
        "scripts_not_available": 2,
    }
    assert [s["status"] for s in payload["scripts"]] == ["ok", "failed", "not available", "not available"]


def test_only_and_no_check(fake_scripts, tmp_path, capsys):
    assert run_all.main(["--only", "good", "--logs", str(tmp_path / "logs")]) == 0
    assert "[bench] broken" not in capsys.readouterr().out


def test_registered_scripts_expose_figures():
    """Every script present in benchmarks/ that run_all lists has the `figures(argv)` entry point."""
    present = [s for s in run_all.SCRIPTS if (BENCH / s.path).is_file()]
    assert {s.name for s in present} >= {"overhead", "components", "resume", "dids_update"}
    for script in present:
        assert run_all.availability(script, BENCH) is None, script.name


@pytest.mark.parametrize("name", ["overhead", "resume"])
def test_benchmark_training_configs_use_no_deprecated_key(name, tmp_path):
    module = _load(name)
    assets = DemoAssets(root=tmp_path, model_dir=tmp_path / "tiny-llama", dataset_dir=tmp_path / "data")
    if name == "overhead":
        config = module.train_config(assets, tmp_path / "out", "plugin", 200, False)
    else:
        config = module.train_config(assets, tmp_path / "out", module.build_parser().parse_args([]), 8)
    assert config["warmup_steps"] == 0.05  # a fraction of the run, as warmup_ratio was
    assert [m for m in host_argument_warnings(config) if "deprecated" in m] == []
    legacy = {k: v for k, v in config.items() if k != "warmup_steps"} | {"warmup_ratio": 0.05}
    assert any("warmup_ratio is deprecated" in m for m in host_argument_warnings(legacy))  # the check sees it
