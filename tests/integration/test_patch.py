"""apply/revert swap the host globals idempotently; the .pth start-up hook reaches fresh interpreters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import llamafactory_dids
from llamafactory_dids.integration import patch

from conftest import REPO

PATCHED = [
    ("llamafactory.train.tuner", "get_train_args"),
    ("llamafactory.data.loader", "get_dataset_list"),
    ("llamafactory.data.loader", "align_dataset"),
    ("llamafactory.data.loader", "_get_dataset_processor"),
    ("llamafactory.train.sft.workflow", "get_dataset"),
    ("llamafactory.train.pt.workflow", "get_dataset"),
    ("llamafactory.train.sft.workflow", "CustomSeq2SeqTrainer"),
    ("llamafactory.train.pt.workflow", "CustomTrainer"),
    ("llamafactory.launcher", "launch"),
]


def _current():
    import importlib

    return {(m, a): getattr(importlib.import_module(m), a) for m, a in PATCHED}


def test_apply_revert_idempotent():
    llamafactory_dids.apply()  # the start-up hook may already have applied it
    applied = _current()
    llamafactory_dids.apply()
    assert _current() == applied  # second apply changes nothing
    llamafactory_dids.revert()
    stock = _current()
    assert not patch.is_applied()
    for key in PATCHED:
        assert stock[key] is not applied[key]
        assert getattr(applied[key], "__wrapped__", None) is stock[key] or issubclass(
            applied[key], stock[key]
        )
    llamafactory_dids.revert()
    assert _current() == stock
    llamafactory_dids.apply()
    again = _current()
    from llamafactory.train.sft.trainer import CustomSeq2SeqTrainer

    assert (
        again[("llamafactory.train.sft.workflow", "CustomSeq2SeqTrainer")].__mro__[2] is CustomSeq2SeqTrainer
    )


def test_version_check_names_the_range(monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.9.9")
    with pytest.raises(RuntimeError, match=r"supports llamafactory>=0.9.5,<0.9.6, but 0.9.9 is installed"):
        patch.check_host_versions()


def _versions(**fake):
    """`importlib.metadata.version` reporting the `fake` versions for some packages."""
    import importlib.metadata

    real = importlib.metadata.version
    return lambda name: fake.get(name) or real(name)


def test_version_check_names_an_unsupported_transformers(monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", _versions(transformers="5.7.0"))
    with pytest.raises(patch.HostVersionError) as err:
        patch.check_host_versions()
    assert str(err.value) == (
        "llamafactory-dids supports transformers>=4.55,<=5.6.0, but 5.7.0 is installed. Install supported "
        "versions (pip install 'llamafactory>=0.9.5,<0.9.6' 'transformers>=4.55,<=5.6.0') or set "
        "LLAMAFACTORY_DIDS_DISABLE=1 to run LLaMA-Factory without the plugin."
    )
    with pytest.raises(patch.HostVersionError, match=r"5\.7\.0 is installed\. .*<=5\.6\.0'\)\.$"):
        patch.check_host_versions(disable_hint=False)  # the plugin's own commands: no way around it


def test_version_check_passes_the_installed_host():
    import importlib.metadata

    assert patch.check_host_versions() == {
        "llamafactory": importlib.metadata.version("llamafactory"),
        "transformers": importlib.metadata.version("transformers"),
    }


def test_supported_versions_are_the_pyproject_pins():
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {req.name: req.specifier for req in map(Requirement, dependencies)}
    assert pins["llamafactory"] == SpecifierSet(llamafactory_dids.SUPPORTED_LLAMAFACTORY)
    assert pins["transformers"] == SpecifierSet(llamafactory_dids.SUPPORTED_TRANSFORMERS)


def test_apply_refuses_an_unsupported_host_and_changes_nothing(monkeypatch):
    import importlib.metadata
    import logging

    llamafactory_dids.revert()
    stock = _current()
    ours = logging.getLogger("llamafactory_dids")
    handlers = list(ours.handlers)
    monkeypatch.setattr(importlib.metadata, "version", _versions(transformers="4.54.1"))
    try:
        with pytest.raises(patch.HostVersionError, match=r"transformers>=4\.55,<=5\.6\.0, but 4\.54\.1"):
            llamafactory_dids.apply()
        assert not patch.is_applied() and _current() == stock
        assert sys.excepthook is sys.__excepthook__ and ours.handlers == handlers
    finally:
        monkeypatch.undo()
        llamafactory_dids.apply()


def _logging_state():
    import logging

    ours = logging.getLogger("llamafactory_dids")
    host = logging.getLogger("llamafactory")
    return ours.handlers[:], ours.level, ours.propagate, host.handlers[:], host.level, host.propagate


def test_revert_restores_every_global_and_the_logging_apply_changed(monkeypatch):
    import importlib
    import logging

    import llamafactory.train.tuner  # noqa: F401  (LLaMA-Factory's logger gets its handler)

    llamafactory_dids.revert()
    # as in a fresh process: the plugin's logger without handlers (earlier tests may leave pytest's there)
    monkeypatch.setattr(logging.getLogger("llamafactory_dids"), "handlers", [])
    keys = [(m, a) for m, a, _ in patch._replacements()] + [patch.EXCEPTHOOK_KEY]
    before = {(m, a): getattr(importlib.import_module(m), a) for m, a in keys}
    logging_before = _logging_state()
    llamafactory_dids.apply()
    assert all(getattr(importlib.import_module(m), a) is not before[(m, a)] for m, a in keys)
    shared = _logging_state()
    assert len(shared[0]) == len(logging_before[3]) > len(logging_before[0])  # one copy per host handler
    assert shared[2] is False
    llamafactory_dids.revert()
    assert {(m, a): getattr(importlib.import_module(m), a) for m, a in keys} == before
    assert _logging_state() == logging_before
    llamafactory_dids.revert()  # idempotent
    assert _logging_state() == logging_before
    llamafactory_dids.apply()


def test_swapped_restores_the_original_even_on_error():
    import torch

    original = torch.load
    with patch.swapped(torch, "load", len) as previous:
        assert torch.load is len and previous is original
    assert torch.load is original
    with pytest.raises(ZeroDivisionError), patch.swapped(torch, "load", len):
        1 / 0  # noqa: B018
    assert torch.load is original


PROBE = (
    "import sys; import llamafactory_dids.integration.patch as p; "
    "import llamafactory.train.tuner as t; "
    "print(p.is_applied(), getattr(t.get_train_args, '__module__', ''))"
)


def _probe(env_extra):
    env = {**os.environ, **env_extra}
    env.pop("LLAMAFACTORY_DIDS_DISABLE", None) if "LLAMAFACTORY_DIDS_DISABLE" not in env_extra else None
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_startup_hook_patches_a_fresh_interpreter():
    assert _probe({}) == "True llamafactory_dids.integration.args"


LAUNCHER_PROBE = (
    "import sys; import llamafactory.launcher as l; import llamafactory_dids.integration.patch as p; "
    "print(l.launch.__module__, 'llamafactory.train.tuner' in sys.modules, p.is_applied()); "
    "import llamafactory.train.tuner; "
    "print(l.launch.__module__, l.launch.__wrapped__.__module__, p.is_applied())"
)


def test_startup_hook_wraps_the_launcher_alone_then_the_rest():
    """`llamafactory-cli` imports the launcher first: under torchrun that process never imports the tuner."""
    env = {k: v for k, v in os.environ.items() if k != "LLAMAFACTORY_DIDS_DISABLE"}
    out = subprocess.run(
        [sys.executable, "-c", LAUNCHER_PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    launcher_imported, tuner_imported = out.stdout.splitlines()[-2:]
    # launch wrapped; the tuner neither imported nor patched
    assert launcher_imported == "llamafactory_dids.integration.launch False False"
    # launch wrapped once, the rest applied
    assert tuner_imported == "llamafactory_dids.integration.launch llamafactory.launcher True"


def test_apply_launcher_then_apply_wraps_each_global_once():
    llamafactory_dids.revert()
    patch.apply_launcher()
    import llamafactory.launcher

    launcher_only = llamafactory.launcher.launch
    assert not patch.is_applied() and launcher_only.__wrapped__.__module__ == "llamafactory.launcher"
    patch.apply()
    assert patch.is_applied() and llamafactory.launcher.launch is launcher_only
    patch.apply_launcher()
    assert llamafactory.launcher.launch is launcher_only
    llamafactory_dids.revert()
    assert llamafactory.launcher.launch is launcher_only.__wrapped__
    llamafactory_dids.apply()


def test_startup_hook_can_be_switched_off():
    assert _probe({"LLAMAFACTORY_DIDS_DISABLE": "1"}) == "False llamafactory.hparams.parser"


def test_installed_pth_is_the_checkouts():
    """site.py runs the installed copy of the .pth file: after it changes, the package must be reinstalled."""
    import sysconfig

    installed = Path(sysconfig.get_paths()["purelib"]) / "llamafactory_dids.pth"
    assert installed.read_text() == (REPO / "llamafactory_dids.pth").read_text(), (
        f"{installed} is stale: run `pip install -e .` (or copy llamafactory_dids.pth there)"
    )


def test_startup_hook_imports_nothing_heavy():
    code = "import sys; print(sorted(m for m in ('torch', 'numpy', 'llamafactory', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]"
    hooks = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; print(sum(type(f).__name__ == 'LlamaFactoryDIDSHook' for f in sys.meta_path))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert hooks.stdout.strip() == "1"  # the .pth file installed exactly one hook


def test_config_errors_reach_the_top_as_one_error_block(capsys, monkeypatch):
    from llamafactory_dids.config import DIDSConfigError

    seen = []
    hook = patch.print_config_problems(lambda *exc: seen.append(exc[0]))
    error = DIDSConfigError(["`dids_budget` must be a positive integer, got 0."])
    monkeypatch.delenv("RANK", raising=False)
    hook(DIDSConfigError, error, None)
    assert capsys.readouterr().err == (
        "error: Invalid llamafactory-dids configuration (1 problem(s)):\n"
        "  - `dids_budget` must be a positive integer, got 0.\n"
    )
    monkeypatch.setenv("RANK", "1")  # other torchrun ranks stay silent: the block shows once
    hook(DIDSConfigError, error, None)
    assert capsys.readouterr().err == ""
    hook(KeyError, KeyError("x"), None)  # everything else keeps its traceback
    assert seen == [KeyError]


def test_apply_installs_the_hook_and_revert_restores_it():
    llamafactory_dids.apply()
    assert sys.excepthook.__qualname__.startswith("print_config_problems")
    llamafactory_dids.revert()
    assert sys.excepthook is sys.__excepthook__
    llamafactory_dids.apply()
