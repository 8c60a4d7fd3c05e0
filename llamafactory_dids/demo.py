"""Embedded default assets for the demo command and the tests.

Builds, fully offline and deterministically, a tiny Llama (random init), a byte-level BPE tokenizer
trained for it, and a small multi-domain instruction dataset made of real text: the Python standard
library of the running interpreter (function sources, docstrings and maintainers' comment blocks).
The result is a LLaMA-Factory ``dataset_dir`` plus a model directory loadable with ``AutoModel*``.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import inspect
import json
import logging
import os
import random
import shutil
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .utils import write_text_atomic

logger = logging.getLogger(__name__)

__all__ = ["DOMAINS", "DemoAssets", "build_demo_assets"]

#: Domain names, in the order used for every derived file.
DOMAINS: tuple[str, ...] = ("code", "docs", "comments")

_FORMAT_VERSION = 2
TARGET_ROWS = 40  # held-out rows per domain in each `demo_target_<domain>` observation set
_MARKER = ".complete"
_MAX_CHARS = 600
_MIN_DOC_CHARS = 80
_MIN_COMMENT_LINES = 3
_VOCAB_SIZE = 2048
_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
_SKIP_DIRS = frozenset(
    {"site-packages", "test", "tests", "idlelib", "lib2to3", "ensurepip", "turtledemo", "__pycache__"}
)
_ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}


@dataclass(frozen=True)
class DemoAssets:
    """Locations of a built demo workdir."""

    root: Path  # the workdir
    model_dir: Path  # root / "tiny-llama": HF model + tokenizer
    dataset_dir: Path  # root / "data": LLaMA-Factory dataset_dir (with dataset_info.json)


def demo_training_config(assets: DemoAssets, output_dir: str | Path, **overrides: Any) -> dict[str, Any]:
    """A tiny SFT run over the three demo domains as a LLaMA-Factory config dict.

    The one base config of the tests and the benchmarks; `overrides` replace keys, `None` removes one.
    """
    config: dict[str, Any] = {
        "model_name_or_path": str(assets.model_dir),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": ",".join(f"demo_{name}" for name in DOMAINS),
        "dataset_dir": str(assets.dataset_dir),
        "template": "default",
        "cutoff_len": 256,
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": 8,
        "learning_rate": 1.0e-3,
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 42,
    }
    config.update(overrides)
    return {k: v for k, v in config.items() if v is not None}


def build_demo_assets(
    workdir: str | Path, *, examples_per_domain: int = 400, seed: int = 0, force: bool = False
) -> DemoAssets:
    """Build (or reuse) the demo model, tokenizer and datasets under ``workdir``.

    Idempotent: a marker written last records the build parameters; a later call with the same
    parameters returns at once unless ``force``. An interrupted build leaves no marker and is redone.
    """
    if examples_per_domain < 1:
        raise ValueError(f"examples_per_domain must be >= 1, got {examples_per_domain}")
    root = Path(workdir).expanduser().resolve()
    assets = DemoAssets(root=root, model_dir=root / "tiny-llama", dataset_dir=root / "data")
    params = {
        "format": _FORMAT_VERSION,
        "examples_per_domain": int(examples_per_domain),
        "seed": int(seed),
        "python": sys.version,
    }
    root.mkdir(parents=True, exist_ok=True)
    with _build_lock(root):
        if not force and _is_complete(assets, params):
            logger.debug("Demo assets already built in %s", root)
            return assets
        _build(assets, params)
    return assets


# --------------------------------------------------------------------------- build orchestration


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """Serialise concurrent builders of one workdir (e.g. several ranks) with an advisory lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(root / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_complete(assets: DemoAssets, params: dict[str, Any]) -> bool:
    try:
        recorded = json.loads((assets.root / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        recorded == params
        and (assets.model_dir / "config.json").is_file()
        and (assets.dataset_dir / "dataset_info.json").is_file()
    )


def _build(assets: DemoAssets, params: dict[str, Any]) -> None:
    start = time.perf_counter()
    (assets.root / _MARKER).unlink(missing_ok=True)
    staging = assets.root / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        domains = _build_domains(params["examples_per_domain"], params["seed"])
        texts = _write_datasets(staging / "data", domains, params["seed"])
        tokenizer = build_tokenizer(staging / "tiny-llama", texts)
        n_params = build_model(staging / "tiny-llama", tokenizer, params["seed"])
        for final in (assets.model_dir, assets.dataset_dir):
            shutil.rmtree(final, ignore_errors=True)
            os.replace(staging / final.name, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_text_atomic(assets.root / _MARKER, json.dumps(params, sort_keys=True) + "\n")
    logger.info(
        "Built demo assets in %s (%d rows/domain, vocab %d, %d parameters) in %.1fs",
        assets.root,
        params["examples_per_domain"],
        len(tokenizer),
        n_params,
        time.perf_counter() - start,
    )


# --------------------------------------------------------------------------- real-text corpus


def _stdlib_files() -> list[tuple[str, Path]]:
    """``(module name, path)`` of the stdlib's ``.py`` files, sorted, minus tests/tools/vendored code."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and d.isidentifier())
        rel = Path(dirpath).relative_to(stdlib).parts
        for filename in sorted(filenames):
            stem, ext = os.path.splitext(filename)
            if ext != ".py" or not stem.isidentifier():
                continue
            parts = rel if stem == "__init__" else (*rel, stem)
            if parts:
                found.append((".".join(parts), Path(dirpath, filename)))
    found.sort(key=lambda item: item[0])
    return found


def truncate(text: str, limit: int = _MAX_CHARS) -> str:
    """Cut ``text`` to at most ``limit`` chars, at a line (else word) boundary when one is close."""
    text = text.strip()
    if len(text) <= limit:
        return text
    cut = text[:limit]
    for sep in ("\n", " "):
        pos = cut.rfind(sep)
        if pos >= limit // 2:
            return cut[:pos].rstrip()
    return cut.rstrip()


def _definitions(body: list[ast.stmt], prefix: str = "") -> Iterator[tuple[str, ast.AST]]:
    """Module-level and class-level functions/classes with their qualified names (no nested defs)."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            qualname = f"{prefix}{node.name}"
            yield qualname, node
            if isinstance(node, ast.ClassDef):
                yield from _definitions(node.body, f"{qualname}.")


def _docstring_node(node: ast.AST) -> ast.Expr | None:
    body = getattr(node, "body", None)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        if isinstance(body[0].value.value, str):
            return body[0]
    return None


def _function_source(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> str | None:
    """Source of a function (decorators included), dedented, with its docstring lines removed."""
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    end = node.end_lineno or node.lineno
    drop: set[int] = set()
    doc = _docstring_node(node)
    if doc is not None:
        rest = node.body[1:]
        if not rest:
            return None  # nothing but a docstring
        if doc.lineno <= node.lineno or (doc.end_lineno or doc.lineno) >= rest[0].lineno:
            return None  # docstring shares a line with code: cannot cut it out cleanly
        drop = set(range(doc.lineno, (doc.end_lineno or doc.lineno) + 1))
    indent = lines[start - 1][: node.col_offset]
    kept = []
    for lineno in range(start, end + 1):
        if lineno in drop:
            continue
        line = lines[lineno - 1]
        kept.append(line[len(indent) :] if line.startswith(indent) else line)
    source = "\n".join(kept).strip("\n")
    return source or None


def _string_lines(tree: ast.AST) -> set[int]:
    """Line numbers that continue a multi-line string literal (a ``#`` there is not a comment)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) or (
            isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes))
        ):
            end = getattr(node, "end_lineno", None) or node.lineno
            if end > node.lineno:
                inside.update(range(node.lineno + 1, end + 1))
    return inside


def _comment_blocks(lines: list[str], in_string: set[int]) -> Iterator[str]:
    """Prose of runs of >= 3 consecutive whole-line ``#`` comments, '#' stripped and joined."""
    run: list[str] = []
    for lineno, line in enumerate([*lines, ""], start=1):
        stripped = line.strip()
        if stripped.startswith("#") and lineno not in in_string and not stripped.startswith("#!"):
            run.append(stripped.lstrip("#").strip())
            continue
        if len(run) >= _MIN_COMMENT_LINES:
            paragraphs, current = [], []
            for text in [*run, ""]:
                if text:
                    current.append(text)
                elif current:
                    paragraphs.append(" ".join(current))
                    current = []
            prose = "\n".join(paragraphs)
            if _looks_like_prose(prose):
                yield prose
        run = []


def _looks_like_prose(text: str) -> bool:
    """Keep sentences, drop commented-out code, ascii art and tables."""
    if len(text) < 60 or len(text.split()) < 8 or "coding:" in text:
        return False
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    return letters >= 0.7 * len(visible)


def collect_candidates() -> dict[str, list[dict[str, str]]]:
    """Every candidate alpaca row of each domain, in a deterministic (sorted-file) order, deduplicated."""
    candidates: dict[str, list[dict[str, str]]] = {name: [] for name in DOMAINS}
    seen: dict[str, set[str]] = {name: set() for name in DOMAINS}

    def add(domain: str, instruction: str, output: str) -> None:
        output = truncate(output)
        if output and output not in seen[domain]:
            seen[domain].add(output)
            candidates[domain].append({"instruction": instruction, "input": "", "output": output})

    for module, path in _stdlib_files():
        try:
            source = importlib.util.decode_source(path.read_bytes())
            tree = ast.parse(source, filename=str(path))
        except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
            continue
        lines = source.split("\n")  # decode_source translates newlines like the parser does
        for qualname, node in _definitions(tree.body):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                code = _function_source(node, lines)
                if code:
                    add("code", f"Write the Python function `{qualname}` from module `{module}`.", code)
            doc = ast.get_docstring(node, clean=False)
            if doc:
                doc = inspect.cleandoc(doc)
                if len(doc) >= _MIN_DOC_CHARS:
                    add("docs", f"Explain what `{module}.{qualname}` does.", doc)
        for block in _comment_blocks(lines, _string_lines(tree)):
            add("comments", f"Continue the maintainer's note in `{module}`.", block)
    return candidates


def _build_domains(examples_per_domain: int, seed: int) -> dict[str, list[dict[str, str]]]:
    candidates = collect_candidates()
    domains: dict[str, list[dict[str, str]]] = {}
    for name in DOMAINS:
        pool = candidates[name]
        if len(pool) < examples_per_domain:
            raise ValueError(
                f"Domain {name!r} has only {len(pool)} candidate rows in the standard library, "
                f"fewer than examples_per_domain={examples_per_domain}"
            )
        # String seeds hash with SHA-512: stable across runs and PYTHONHASHSEED values.
        domains[name] = random.Random(f"{seed}:{name}").sample(pool, examples_per_domain)
        # held-out observation rows of the same domain (downstream targets), disjoint from training
        chosen = {row["output"] for row in domains[name]}
        rest = [row for row in pool if row["output"] not in chosen]
        domains[f"target_{name}"] = random.Random(f"{seed}:target:{name}").sample(
            rest, min(TARGET_ROWS, len(rest))
        )
        logger.debug("Domain %s: %d of %d candidates", name, examples_per_domain, len(pool))
    return domains


# --------------------------------------------------------------------------- dataset files


def _dump_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def _write_datasets(dataset_dir: Path, domains: dict[str, list[dict[str, str]]], seed: int) -> list[str]:
    """Write the per-domain, mixed and pretraining files plus dataset_info.json; return the texts."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    info: dict[str, dict[str, Any]] = {}
    for name in DOMAINS:
        _dump_json(dataset_dir / f"demo_{name}.json", domains[name])
        info[f"demo_{name}"] = {
            "file_name": f"demo_{name}.json",
            "formatting": "alpaca",
            "columns": dict(_ALPACA_COLUMNS),
        }

    for name in DOMAINS:  # downstream observation sets: held-out rows of each domain
        _dump_json(dataset_dir / f"demo_target_{name}.json", domains[f"target_{name}"])
        info[f"demo_target_{name}"] = {
            "file_name": f"demo_target_{name}.json",
            "formatting": "alpaca",
            "columns": dict(_ALPACA_COLUMNS),
        }

    mixed = [{**row, "domain": name} for name in DOMAINS for row in domains[name]]
    random.Random(f"{seed}:mixed").shuffle(mixed)
    _dump_json(dataset_dir / "demo_mixed.json", mixed)
    # LLaMA-Factory keeps only the registered columns; the plugin reads "domain" from the file itself.
    info["demo_mixed"] = {
        "file_name": "demo_mixed.json",
        "formatting": "alpaca",
        "columns": dict(_ALPACA_COLUMNS),
    }

    text_rows = [{"text": f"{row['instruction']}\n{row['output']}", "domain": row["domain"]} for row in mixed]
    _dump_json(dataset_dir / "demo_text.json", text_rows)
    info["demo_text"] = {"file_name": "demo_text.json", "columns": {"prompt": "text"}}

    _dump_json(dataset_dir / "dataset_info.json", info)
    return [row["text"] for row in text_rows]


# --------------------------------------------------------------------------- tokenizer and model


def build_tokenizer(model_dir: Path, texts: list[str]):
    """Train a byte-level BPE on ``texts`` and save it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=list(_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    unk, bos, eos, pad = _SPECIAL_TOKENS
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=unk,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        # No implicit BOS/EOS: transformers 5 does not persist add_bos_token for tokenizer.json-backed
        # tokenizers, so a BOS post-processor would disagree with the reloaded `add_bos_token` (False).
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(model_dir)
    return tokenizer


def build_model(model_dir: Path, tokenizer, seed: int) -> int:
    """Randomly initialise the tiny Llama with ``seed`` and save it (safetensors); return #params."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Writing model shards" would go to stderr
    try:
        model.save_pretrained(model_dir, safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return sum(p.numel() for p in model.parameters())
