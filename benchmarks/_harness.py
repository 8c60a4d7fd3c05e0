"""The benchmarks' one harness: figures and their table, the common command line, the work directory,
training runs through the unchanged CLI, and the row encoding and collation the in-process timings share.

Scripts import it as `_harness` (benchmarks/ is on sys.path when a script runs); the quality package as
`benchmarks._harness`. Every script exposes `figures(argv) -> list[Figure]`, measuring as
`python benchmarks/<script>.py ARGV` does; `run_all.py` gathers them into one table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import operator
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llamafactory_dids.utils import IGNORE_INDEX

COMPARATORS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq}

# ------------------------------------------------------------------------------------- figures


@dataclass
class Figure:
    """One figure. `target` + `comparator` make it pass/fail; without them it is informational.

    `text` overrides how the value is shown (e.g. "14.3 / 14.2 s"); `target_text` describes a target that
    is not a number (shown, no verdict). `detail` rows are printed by the script only, not by `run_all.py`.
    """

    name: str
    value: float | None
    unit: str = ""
    target: float | None = None
    comparator: str | None = None
    text: str | None = None
    target_text: str | None = None
    command: str = ""
    detail: bool = False

    def __post_init__(self) -> None:
        if self.comparator is not None and self.comparator not in COMPARATORS:
            raise ValueError(f"comparator must be one of {', '.join(COMPARATORS)}, got {self.comparator!r}.")
        if (self.target is None) != (self.comparator is None):
            raise ValueError(f"figure {self.name!r}: give both `target` and `comparator`, or neither.")

    @property
    def passed(self) -> bool | None:
        """True/False against the target; None when informational or not measured (value None or NaN)."""
        if self.comparator is None or self.value is None or math.isnan(self.value):
            return None
        return bool(COMPARATORS[self.comparator](self.value, self.target))

    def value_text(self) -> str:
        if self.text is not None:
            return self.text
        return "-" if self.value is None else f"{self.value:.4g}{(' ' + self.unit) if self.unit else ''}"

    def target_description(self) -> str:
        if self.comparator is not None:
            return f"{self.comparator} {self.target:g}{(' ' + self.unit) if self.unit else ''}"
        return self.target_text or ""

    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: ""}[self.passed]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Figure:
        return cls(**{k: v for k, v in data.items() if k != "passed"})


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns under a dashed rule; the last column is not padded."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    widths[-1] = len(header[-1])
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    ]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def print_figures(figures: Sequence[Figure]) -> None:
    """A script's own table: every figure (detail rows included) with its target and verdict."""
    rows = [(f.name, f.value_text(), f.target_description(), f.verdict()) for f in figures]
    print("\n" + format_table(("figure", "value", "target", "result"), rows))


def summary_figures(figures: Sequence[Figure], command: str) -> list[Figure]:
    """What `run_all.py` shows: the figures without detail rows, each with the command measuring it."""
    return [Figure(**{**asdict(f), "command": command}) for f in figures if not f.detail]


def detail(name: str, text: str) -> Figure:
    """A detail row: a figure shown as `text`, printed by its script only."""
    return Figure(name, None, text=text, detail=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if len(values) else float("nan")


def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def interleaved(
    arms: Mapping[str, Callable[[], Any]], rounds: int, warmup: int = 0
) -> dict[str, list[float]]:
    """Seconds of every arm, each called once per round, the order reversed every other round so that
    drifts in machine speed cancel; the first `warmup` rounds are not recorded."""
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(warmup + rounds):
        for name in list(arms) if r % 2 == 0 else list(arms)[::-1]:
            elapsed = timed(arms[name])[0]
            if r >= warmup:
                seconds[name].append(elapsed)
    return seconds


def rotated(variants: Sequence[str], repeats: int) -> Iterator[tuple[int, str]]:
    """(round, variant) for `repeats` rounds of every variant, the order rotated each round."""
    for r in range(repeats):
        shift = r % len(variants)
        yield from ((r, v) for v in [*variants[shift:], *variants[:shift]])


def set_threads(threads: int) -> None:
    """torch's intra-op threads (0: leave torch's default)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------- command line


def parser(doc: str, *, threads: int | None = 1, quick: str = "", workdir: Path | None = None) -> Any:
    """An argument parser with the common flags: --workdir (default `workdir`, else a temporary one),
    --json, --threads (when the script has threads; 0 = torch's default) and --quick (when `quick` says
    what it does)."""
    p = argparse.ArgumentParser(description=doc.strip().split("\n")[0])
    where = f"default {workdir}" if workdir else "default: a temporary one, removed"
    p.add_argument("--workdir", type=Path, default=workdir, help=f"work directory ({where})")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write every figure here")
    if threads is not None:
        p.add_argument("--threads", type=int, default=threads, help=f"OMP/torch threads (default {threads})")
    if quick:
        p.add_argument("--quick", action="store_true", help=f"smaller settings: {quick}")
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None, quick: Mapping[str, Any] = ()) -> Any:
    """Parse `argv`; with --quick, each key of `quick` left at its default takes the quick value."""
    args = p.parse_args(argv)
    for key, value in dict(quick).items() if getattr(args, "quick", False) else ():
        if getattr(args, key) == p.get_default(key):
            setattr(args, key, value)
    return args


def command(script: str, argv: Sequence[str] | None) -> str:
    return " ".join(["python benchmarks/" + script, *(argv or [])])


def write_json(path: Path | None, payload: Any) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


@contextlib.contextmanager
def workdir(given: Path | None, prefix: str) -> Iterator[Path]:
    """`given` (created, kept), or a new temporary directory removed on exit, whatever happens."""
    path = given.resolve() if given else Path(tempfile.mkdtemp(prefix=prefix))
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        if given is None:
            shutil.rmtree(path, ignore_errors=True)


def demo_assets(workdir: Path, **kwargs: Any) -> Any:
    from llamafactory_dids.demo import build_demo_assets

    return build_demo_assets(workdir / "assets", **kwargs)


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def entry(
    script: str, build_parser: Callable[[], argparse.ArgumentParser], measure: Callable, quick=()
) -> Any:
    """`(figures, main)` of a script. `measure(args)` prints its progress and returns (figures, JSON
    payload), or None when it has nothing to report (a worker process). `figures(argv)` prints the script's
    table and returns what `run_all.py` shows; `main(argv)` prints the table, writes `--json`, and with
    `--check` exits 1 when a target is missed."""

    def figures(argv: list[str] | None = None) -> list[Figure]:
        found, _ = measure(parse(build_parser(), argv, quick))
        print_figures(found)
        return summary_figures(found, command(script, argv))

    def main(argv: list[str] | None = None) -> int:
        args = parse(build_parser(), argv, quick)
        if (measured := measure(args)) is None:
            return 0
        print_figures(measured[0])
        write_json(args.json, measured[1])
        missed = [f.name for f in measured[0] if f.passed is False]
        if getattr(args, "check", False) and missed:
            print(f"missed: {'; '.join(missed)}", file=sys.stderr)
            return 1
        return 0

    return figures, main


# ------------------------------------------------------------------------------------ training runs


def offline_env(threads: int = 0, **extra: str | None) -> dict[str, str]:
    """os.environ for a training subprocess: hub access off, the plugin enabled, this interpreter's
    scripts first on PATH, `threads` OpenMP/MKL threads when above 0; each `extra` key set (None: removed)."""
    env = dict(os.environ)
    env.pop("LLAMAFACTORY_DIDS_DISABLE", None)
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def torchrun_env(nproc: int) -> dict[str, str | None]:
    """The `offline_env` extras of a run on `nproc` processes (`llamafactory-cli` launches torchrun)."""
    if nproc <= 1:
        return {"FORCE_TORCHRUN": None}
    port = str(random.randint(20000, 40000))
    return {
        "FORCE_TORCHRUN": "1",
        "NPROC_PER_NODE": str(nproc),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port,
    }


def train_cli() -> list[str]:
    from llamafactory_dids.cli import find_llamafactory_cli

    return [find_llamafactory_cli() or "llamafactory-cli", "train"]


def dids_cli() -> list[str]:
    exe = shutil.which("llamafactory-dids", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "llamafactory_dids.cli"]


@dataclass
class Run:
    """A finished process run: its directory, the config's output_dir, exit code, wall seconds, log."""

    run_dir: Path
    output_dir: Path
    returncode: int
    seconds: float
    log: Path

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]

    def json(self, name: str) -> dict[str, Any]:
        return json.loads((self.output_dir / name).read_text(encoding="utf-8"))

    @property
    def results(self) -> dict[str, Any]:
        return self.json("train_results.json")

    def timings(self) -> dict[str, float]:
        """The Trainer's `train_runtime` and `total_flos` (NaN when absent), and the process's wall seconds."""
        results = self.results
        flos = float(results.get("total_flos", float("nan")))
        return {
            "train_runtime_s": float(results["train_runtime"]),
            "total_flos": flos,
            "process_wall_s": self.seconds,
        }

    def history(self) -> list[dict[str, Any]]:
        return history(self.output_dir)

    def update_seconds(self) -> list[float]:
        return update_seconds(self.output_dir)


def history(output_dir: Path) -> list[dict[str, Any]]:
    """The run's mixture history records (history.jsonl; none when it has none)."""
    from llamafactory_dids.run_files import read_history

    return read_history(output_dir, missing_ok=True)[0]


def update_seconds(output_dir: Path) -> list[float]:
    """Wall seconds of every mixture update of a run (history records with update > 0)."""
    return [float(r["seconds"]) for r in history(output_dir) if r.get("update", 0) > 0]


def launch(
    cmd: Sequence[str], run_dir: Path, config: Mapping[str, Any] | None, env: Mapping[str, str], check=True
) -> Run:
    """Write `config` as run_dir/config.yaml (appended to `cmd`; run_dir emptied first unless the config
    resumes from a checkpoint), run `cmd` with its output in run_dir/run.log. Raises with the log's tail
    when it fails, unless `check` is false."""
    import yaml

    if not (config or {}).get("resume_from_checkpoint"):
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = list(cmd)
    if config is not None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(dict(config)), encoding="utf-8")
        cmd.append(str(run_dir / "config.yaml"))
    log = run_dir / "run.log"
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        code = subprocess.run(cmd, env=dict(env), stdout=f, stderr=subprocess.STDOUT, cwd=run_dir).returncode
    output_dir = Path((config or {}).get("output_dir", run_dir / "output"))
    run = Run(run_dir, output_dir, code, time.perf_counter() - start, log)
    if check and code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {code}); log tail:\n{run.tail()}")
    return run


def train(
    run_dir: Path,
    make_config: Callable[[Path], dict[str, Any]],
    threads: int = 0,
    cmd=None,
    **env: str | None,
) -> Run:
    """`llamafactory-cli train` (or `cmd`) on `make_config(run_dir / "output")`, offline, `threads` threads."""
    return launch(cmd or train_cli(), run_dir, make_config(run_dir / "output"), offline_env(threads, **env))


# ------------------------------------------------------------------------------------ rows, batches


def encode_alpaca_rows(
    tokenizer: Any, rows: Sequence[Mapping[str, str]], cutoff_len: int
) -> list[dict[str, list[int]]]:
    """Alpaca rows -> `input_ids` / `labels` as LLaMA-Factory's supervised processor builds them with the
    `default` template (prompt tokens masked with IGNORE_INDEX, source/target lengths cut by `infer_seqlen`)."""
    from llamafactory.data.processor.processor_utils import infer_seqlen
    from llamafactory.data.template import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    template = get_template_and_fix_tokenizer(
        tokenizer, DataArguments(template="default", cutoff_len=cutoff_len)
    )
    encoded = []
    for row in rows:
        prompt = row["instruction"] + (("\n" + row["input"]) if row.get("input") else "")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]
        source, target = template.encode_oneturn(tokenizer, messages)
        extra = 1 if template.efficient_eos else 0
        source_len, target_len = infer_seqlen(len(source), len(target), cutoff_len - extra)
        source, target = source[:source_len], target[:target_len]
        input_ids, labels = source + target, [IGNORE_INDEX] * source_len + target
        if template.efficient_eos:
            input_ids, labels = input_ids + [tokenizer.eos_token_id], labels + [tokenizer.eos_token_id]
        encoded.append({"input_ids": input_ids, "labels": labels})
    return encoded


def collate(rows: Sequence[Mapping[str, list[int]]], pad_id: int, multiple: int = 8) -> dict[str, Any]:
    """Right-padded `input_ids` / `attention_mask` / `labels` tensors, width rounded up to `multiple`
    (LLaMA-Factory's SFT collator pads to a multiple of 8 when training)."""
    import torch

    width = -(-max(len(r["input_ids"]) for r in rows) // multiple) * multiple
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], mask[i, :n], labels[i, :n] = torch.tensor(r["input_ids"]), 1, torch.tensor(r["labels"])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def encode_file(path: Path, tokenizer: Any, cutoff_len: int) -> list[dict[str, list[int]]]:
    """The alpaca rows of a dataset JSON file, encoded by `encode_alpaca_rows`."""
    return encode_alpaca_rows(tokenizer, json.loads(path.read_text(encoding="utf-8")), cutoff_len)


def tokenizer(path: str | Path) -> tuple[Any, int]:
    """The tokenizer in `path` and its pad id (0 when it has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return tok, tok.pad_token_id if tok.pad_token_id is not None else 0


def load_model(path: str | Path) -> Any:
    """A causal LM from `path` on CPU, in eval mode, without the KV cache."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    model.config.use_cache = False
    return model.eval()


def probe(
    model: Any, collate_fn: Callable, rows: Sequence[Any], pools: Any, tasks: Any, cls=None, **options
) -> Any:
    """A `GradientProbe` on CPU drawing `rows[i]` for the pools' indices, with the benchmarks' defaults
    (fisher_batch_size 1, eval_batch_size 8, metric fim, lm_head excluded); `options` override them."""
    import torch

    from llamafactory_dids.runtime.probe import GradientProbe

    defaults = {"fisher_batch_size": 1, "eval_batch_size": 8, "metric": "fim", "include_lm_head": False}
    rows_of = lambda idx: [rows[int(i)] for i in idx]  # noqa: E731
    options = {"device": torch.device("cpu"), **defaults, **options}
    return (cls or GradientProbe)(model, collate_fn, rows_of, pools, tasks, **options)
