#!/usr/bin/env python
"""Per-step cost of each piece of work llamafactory-dids adds to a training step, measured in-process.

    python benchmarks/components.py              # ~1 min on 2 cores
    python benchmarks/components.py --json components.json

`overhead.py` compares whole training runs; on a shared machine their run-to-run spread (a few %) is
as large as the effect it looks for. This script times the plugin's per-step work directly, in one
process with one thread, with the plugin's real classes, alternating plugin and stock arms so that
machine drifts cancel:

- a full training step of the tiny demo Llama (forward + backward + AdamW, gradient checkpointing on as
  LLaMA-Factory enables it, batch 8, lengths 60..256 tokens): the model's stock `ForCausalLMLoss`
  vs the plugin's `RecordingCausalLMLoss` (armed) followed by `DomainMixture.record_batch`, i.e. all
  the per-domain-loss work; paired difference of the medians;
- the loss alone (forward + backward on fixed 8 x 256 x vocab logits): `ForCausalLMLoss` vs
  `RecordingCausalLMLoss`;
- `DomainMixture.record_batch` (every micro-batch), `DomainMixture.log_metrics` (every logging step);
- `DomainMixtureSampler` per index, against torch's `RandomSampler`;
- the `DomainCollator` wrapper around a collator that does nothing (the wrapper's own cost per batch).

The table gives each cost per optimizer step (batch 8, `logging_steps` 10) and as a share of the
median stock training step. Minor page faults per step are printed for both arms: with glibc's default
malloc settings the large activation/gradient buffers are mmap-ed and returned every step, so each
step re-faults tens of MB (thousands of faults, ~15-20 % of the step on this model), and how many
depends on the exact allocation sequence of each arm. That makes the paired full-step difference
swing by +-1-2 ms between runs. For stable figures pin the allocator, e.g.

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 python benchmarks/components.py

(0 faults per step in both arms; the loss-only and per-call figures are unaffected either way).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llamafactory_dids.utils import IGNORE_INDEX

from _figures import Figure  # benchmarks/ is on sys.path when a script runs

BATCH = 8
LOGGING_STEPS = 10


def _median_us(fn: Callable[[], Any], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per arm (default 200)")
    parser.add_argument(
        "--json", type=Path, default=None, metavar="OUT", help="also write the figures to this JSON file"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the demo model is built (default: temporary)"
    )
    return parser


def measure(args: argparse.Namespace) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Time every component (printing as it goes); returns (raw figures in us, per-step costs in us)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    try:
        from llamafactory_dids.algorithms.registry import build_strategy
    except ImportError:  # releases before the strategy registry
        from llamafactory_dids.algorithms.strategies import build_strategy
    from llamafactory_dids.data.domains import DomainCollator
    from llamafactory_dids.data.sampler import DomainMixtureSampler
    from llamafactory_dids.demo import build_demo_assets
    from llamafactory_dids.integration.loss import RecordingCausalLMLoss
    from llamafactory_dids.runtime.mixture import DomainMixture

    torch.set_num_threads(1)
    torch.manual_seed(0)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tmp = tempfile.TemporaryDirectory(prefix="dids-components-")
    workdir = args.workdir or Path(tmp.name)
    assets = build_demo_assets(workdir / "assets", examples_per_domain=20)

    model = AutoModelForCausalLM.from_pretrained(assets.model_dir)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.enable_input_require_grads()
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(16):
        lengths = rng.integers(60, 257, size=BATCH)
        width = int(-(-lengths.max() // 8) * 8)
        ids = torch.randint(4, vocab, (BATCH, width))
        mask = torch.zeros(BATCH, width, dtype=torch.long)
        labels = torch.full((BATCH, width), IGNORE_INDEX)
        for i, n in enumerate(lengths):
            mask[i, :n] = 1
            labels[i, n // 3 : n] = ids[i, n // 3 : n]  # first third is the prompt
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    domain_ids = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

    stock_loss = model.loss_function
    recorder = RecordingCausalLMLoss()
    strategy = build_strategy("uniform", ["code", "docs", "comments"], np.array([200, 200, 200]))
    mixture = DomainMixture(
        strategy, seed=0, on_exhausted="reshuffle", min_weight=0.0, output_dir=str(workdir / "mixture")
    )
    mixture.build_sampler(np.repeat([0, 1, 2], 200), 200 * BATCH)

    faults: dict[bool, list[int]] = {False: [], True: []}

    def train_step(batch: dict[str, torch.Tensor], plugin: bool) -> float:
        num_items = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        model.loss_function = recorder if plugin else stock_loss
        minflt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        if plugin:
            recorder.armed = True
        loss = model(**batch, num_items_in_batch=num_items).loss
        loss.backward()
        if plugin:
            row_loss, row_tokens = recorder.take()
            mixture.record_batch(domain_ids, row_loss, row_tokens)
        optimizer.step()
        optimizer.zero_grad()
        elapsed = time.perf_counter() - start
        faults[plugin].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - minflt)
        return elapsed

    print(f"[components] training steps: {args.steps} per arm, alternating", flush=True)
    for i in range(20):  # warm-up
        train_step(batches[i % 16], bool(i % 2))
    faults[False].clear()
    faults[True].clear()
    stock_s, plugin_s = [], []
    for i in range(args.steps):
        batch = batches[i % 16]
        if i % 2:
            stock_s.append(train_step(batch, False))
            plugin_s.append(train_step(batch, True))
        else:
            plugin_s.append(train_step(batch, True))
            stock_s.append(train_step(batch, False))
    step_us = 1e6 * statistics.median(stock_s)
    loss_work_us = 1e6 * statistics.median([p - s for p, s in zip(plugin_s, stock_s, strict=True)])

    logits = torch.randn(BATCH, 256, vocab)
    labels = torch.randint(4, vocab, (BATCH, 256))
    labels[:, :80] = IGNORE_INDEX
    num_items = (labels[:, 1:] != IGNORE_INDEX).sum()

    def loss_only(fn: Callable[..., torch.Tensor], arm: bool) -> float:
        x = logits.clone().requires_grad_(True)
        start = time.perf_counter()
        if arm:
            recorder.armed = True
        fn(x, labels, vocab, num_items_in_batch=num_items).backward()
        if arm:
            recorder.take()
        return time.perf_counter() - start

    stock_l, rec_l = [], []
    for i in range(300):
        pair = [(stock_l, stock_loss, False), (rec_l, recorder, True)]
        for out, fn, arm in pair if i % 2 else pair[::-1]:
            out.append(loss_only(fn, arm))

    row_loss, row_tokens = torch.rand(BATCH), torch.randint(1, 200, (BATCH,))
    record_us = _median_us(lambda: mixture.record_batch(domain_ids, row_loss, row_tokens), 3000)
    log_us = _median_us(mixture.log_metrics, 500)

    sampler = DomainMixtureSampler(np.repeat([0, 1, 2], 200), [1 / 3] * 3, epoch_length=200 * BATCH, seed=0)
    sampler_us = _median_us(lambda: list(sampler), 20) / (200 * BATCH)
    random_sampler = torch.utils.data.RandomSampler(range(600), num_samples=200 * BATCH)
    random_us = _median_us(lambda: list(random_sampler), 20) / (200 * BATCH)

    features = [
        {
            "input_ids": list(range(150)),
            "attention_mask": [1] * 150,
            "labels": list(range(150)),
            "domain_ids": 1,
        }
        for _ in range(BATCH)
    ]
    collator = DomainCollator(lambda fs: {"n": len(fs)})
    collator_us = _median_us(lambda: collator(features), 3000)

    measured = {
        "stock_step_us": step_us,
        "stock_step_minor_faults": statistics.median(faults[False]),
        "plugin_step_minor_faults": statistics.median(faults[True]),
        "plugin_step_us": 1e6 * statistics.median(plugin_s),
        "domain_loss_work_per_step_us": loss_work_us,
        "loss_fwd_bwd_stock_us": 1e6 * statistics.median(stock_l),
        "loss_fwd_bwd_recording_us": 1e6 * statistics.median(rec_l),
        "record_batch_us": record_us,
        "log_metrics_us": log_us,
        "sampler_per_index_us": sampler_us,
        "random_sampler_per_index_us": random_us,
        "collator_wrapper_us": collator_us,
    }
    per_step = [
        ("RecordingCausalLMLoss + record_batch (full step, paired)", loss_work_us),
        (
            "  RecordingCausalLMLoss - ForCausalLMLoss (loss fwd+bwd alone)",
            measured["loss_fwd_bwd_recording_us"] - measured["loss_fwd_bwd_stock_us"],
        ),
        ("  DomainMixture.record_batch", record_us),
        ("DomainMixture.log_metrics / logging_steps", log_us / LOGGING_STEPS),
        ("DomainMixtureSampler - RandomSampler (x batch)", (sampler_us - random_us) * BATCH),
        ("DomainCollator wrapper", collator_us),
    ]
    print(
        f"\nstock training step (median): {step_us / 1000:.2f} ms; plugin step: {measured['plugin_step_us'] / 1000:.2f} ms"
    )
    print(
        f"minor page faults per step (median): stock {measured['stock_step_minor_faults']:.0f}, "
        f"plugin {measured['plugin_step_minor_faults']:.0f}"
    )
    print(
        f"loss fwd+bwd alone: ForCausalLMLoss {measured['loss_fwd_bwd_stock_us']:.0f} us, RecordingCausalLMLoss {measured['loss_fwd_bwd_recording_us']:.0f} us"
    )
    print(f"sampler per index: DomainMixtureSampler {sampler_us:.2f} us, RandomSampler {random_us:.3f} us\n")
    width = max(len(name) for name, _ in per_step)
    print(f"{'added work per optimizer step':<{width}}  {'us':>9}  {'% of step':>9}")
    print("-" * (width + 22))
    for name, us in per_step:
        print(f"{name:<{width}}  {us:>9.1f}  {100 * us / step_us:>8.3f}%")
    tmp.cleanup()
    return measured, per_step


def figures(argv: list[str] | None = None) -> list[Figure]:
    """Measure as `python benchmarks/components.py ARGV` does; the per-step costs as figures (no targets)."""
    argv = list(argv or [])
    measured, per_step = measure(build_parser().parse_args(argv))
    command = " ".join(["python benchmarks/components.py", *argv])
    step_us = measured["stock_step_us"]
    total = sum(us for name, us in per_step if not name.startswith(" "))
    out = [
        Figure(
            "plugin work per optimizer step, in process (share of the step)",
            100 * total / step_us,
            unit="%",
            text=f"{total / 1000:.3f} ms of {step_us / 1000:.1f} ms ({100 * total / step_us:.2f} %)",
            command=command,
        )
    ]
    for name, us in per_step:
        out.append(Figure(f"  {name.strip()}", us, unit="us", command=command))
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    measured, per_step = measure(args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"figures": measured, "per_step_us": dict(per_step)}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
