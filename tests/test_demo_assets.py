"""The embedded demo assets: real-text datasets, tokenizer and tiny Llama, built offline."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from llamafactory_dids.demo import DOMAINS, DemoAssets, build_demo_assets

N = 50
DATASET_FILES = [f"demo_{name}.json" for name in DOMAINS] + ["demo_mixed.json", "demo_text.json"]
ALPACA_KEYS = {"instruction", "input", "output"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> DemoAssets:
    return build_demo_assets(tmp_path_factory.mktemp("demo_a"), examples_per_domain=N, seed=0)


@pytest.fixture(scope="module")
def assets_twin(tmp_path_factory) -> DemoAssets:
    return build_demo_assets(tmp_path_factory.mktemp("demo_b"), examples_per_domain=N, seed=0)


def _load(assets: DemoAssets, filename: str):
    return json.loads((assets.dataset_dir / filename).read_text(encoding="utf-8"))


def test_layout(assets):
    assert assets.model_dir == assets.root / "tiny-llama"
    assert assets.dataset_dir == assets.root / "data"
    for filename in [*DATASET_FILES, "dataset_info.json"]:
        assert (assets.dataset_dir / filename).is_file(), filename
    for filename in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]:
        assert (assets.model_dir / filename).is_file(), filename
    assert (assets.root / ".complete").is_file()


def test_domain_files(assets):
    for name in DOMAINS:
        rows = _load(assets, f"demo_{name}.json")
        assert len(rows) == N
        assert len({row["output"] for row in rows}) == N  # no duplicate targets
        for row in rows:
            assert set(row) == ALPACA_KEYS
            assert row["instruction"].strip() and row["output"].strip()
            assert row["input"] == ""
            assert len(row["output"]) <= 600
    code = _load(assets, "demo_code.json")
    assert all(row["output"].lstrip().startswith(("def ", "async def ", "@")) for row in code)
    assert all(row["instruction"].startswith("Write the Python function `") for row in code)
    docs = _load(assets, "demo_docs.json")
    assert all(len(row["output"]) >= 80 and row["instruction"].startswith("Explain what `") for row in docs)


def test_mixed_is_union_with_domain_column(assets):
    mixed = _load(assets, "demo_mixed.json")
    assert len(mixed) == 3 * N
    assert Counter(row["domain"] for row in mixed) == {name: N for name in DOMAINS}

    def key(row):
        return json.dumps(row, sort_keys=True)

    union = [{**row, "domain": name} for name in DOMAINS for row in _load(assets, f"demo_{name}.json")]
    assert sorted(map(key, mixed)) == sorted(map(key, union))
    # shuffled, not just concatenated
    assert [row["domain"] for row in mixed] != [row["domain"] for row in union]


def test_text_rows(assets):
    mixed = _load(assets, "demo_mixed.json")
    text = _load(assets, "demo_text.json")
    assert len(text) == 3 * N
    assert Counter(row["domain"] for row in text) == {name: N for name in DOMAINS}
    expected = sorted((f"{r['instruction']}\n{r['output']}", r["domain"]) for r in mixed)
    assert sorted((row["text"], row["domain"]) for row in text) == expected


def test_dataset_info_parses_with_llamafactory(assets):
    info = _load(assets, "dataset_info.json")
    targets = {f"demo_target_{name}" for name in DOMAINS}
    assert set(info) == {"demo_code", "demo_docs", "demo_comments", "demo_mixed", "demo_text"} | targets
    parser = pytest.importorskip("llamafactory.data.parser")
    attrs = parser.get_dataset_list(list(info), str(assets.dataset_dir))
    by_name = {attr.dataset_name: attr for attr in attrs}
    for name in DOMAINS:
        attr = by_name[f"demo_{name}.json"]
        assert (attr.load_from, attr.formatting) == ("file", "alpaca")
        assert (attr.prompt, attr.query, attr.response) == ("instruction", "input", "output")
    assert by_name["demo_mixed.json"].formatting == "alpaca"
    assert by_name["demo_text.json"].prompt == "text"


def test_targets_are_held_out_rows_of_their_domain(assets):
    from llamafactory_dids.demo import TARGET_ROWS

    for name in DOMAINS:
        train = {row["output"] for row in _load(assets, f"demo_{name}.json")}
        target = _load(assets, f"demo_target_{name}.json")
        assert len(target) == TARGET_ROWS and not train & {row["output"] for row in target}
        assert all(set(row) == ALPACA_KEYS for row in target)


def test_deterministic(assets, assets_twin):
    import torch
    from safetensors.torch import load_file

    for filename in [*DATASET_FILES, "dataset_info.json"]:
        left = (assets.dataset_dir / filename).read_bytes()
        assert left == (assets_twin.dataset_dir / filename).read_bytes(), filename
    for filename in ["tokenizer.json", "config.json"]:
        assert (assets.model_dir / filename).read_bytes() == (assets_twin.model_dir / filename).read_bytes()
    left = load_file(assets.model_dir / "model.safetensors")
    right = load_file(assets_twin.model_dir / "model.safetensors")
    assert left.keys() == right.keys()
    for name, tensor in left.items():
        assert torch.equal(tensor, right[name]), name


def test_tokenizer_round_trip(assets):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
    assert len(tokenizer) == 2048
    assert (tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<unk>",
        "<s>",
        "</s>",
        "<pad>",
    )
    sample = 'def f(x, *, y=None):\n    """Dé-jà vu."""\n\treturn {"a": x ** 2}  # done\n\n  '
    ids = tokenizer.encode(sample)
    assert len(ids) < len(sample)  # the BPE learned merges
    assert tokenizer.decode(ids) == sample
    assert tokenizer.decode(ids, skip_special_tokens=True) == sample


def test_model_forward(assets):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
    model = AutoModelForCausalLM.from_pretrained(assets.model_dir)
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (64, 2, len(tokenizer))
    assert not config.tie_word_embeddings
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    batch = tokenizer("Explain what `os.path.join` does.", return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_second_call_reuses(assets):
    weights = assets.model_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    start = time.perf_counter()
    again = build_demo_assets(assets.root, examples_per_domain=N, seed=0)
    assert time.perf_counter() - start < 0.5
    assert again == assets
    assert weights.stat().st_mtime_ns == mtime


def test_interrupted_build_is_redone_silently(assets_twin, capfd):
    before = {f: (assets_twin.dataset_dir / f).read_bytes() for f in DATASET_FILES}
    (assets_twin.root / ".complete").unlink()  # as if the build had died before its last step
    (assets_twin.dataset_dir / "demo_code.json").write_text("[]")
    rebuilt = build_demo_assets(assets_twin.root, examples_per_domain=N, seed=0)
    assert rebuilt == assets_twin
    assert (assets_twin.root / ".complete").is_file()
    assert {f: (assets_twin.dataset_dir / f).read_bytes() for f in DATASET_FILES} == before
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_rejects_non_positive_size(tmp_path):
    with pytest.raises(ValueError):
        build_demo_assets(tmp_path, examples_per_domain=0)
