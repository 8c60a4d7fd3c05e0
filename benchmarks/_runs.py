"""Shared by the benchmark scripts: a fresh run directory with the training YAML written into it, the
environment of an offline training subprocess, and alpaca rows encoded as LLaMA-Factory's supervised
processor does.

Scripts import this file as `_runs` (benchmarks/ is on sys.path when a script runs); the quality package
imports it as `benchmarks._runs`.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from llamafactory_dids.utils import IGNORE_INDEX


def new_run(
    workdir: Path, tag: str, make_config: Callable[[Path], dict[str, Any]]
) -> tuple[Path, Path, Path]:
    """Empty `workdir/runs/tag`, write `make_config(output_dir)` as its config.yaml.

    Returns (run_dir, output_dir, config_path).
    """
    import yaml

    run_dir = workdir / "runs" / tag
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    output_dir = run_dir / "output"
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(make_config(output_dir)), encoding="utf-8")
    return run_dir, output_dir, config_path


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
