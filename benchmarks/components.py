#!/usr/bin/env python
"""Per-step cost of each piece of work llamafactory-dids adds to a training step, measured in-process.

    python benchmarks/components.py              # ~1 min on 2 cores
    python benchmarks/components.py --json components.json

Method (in full in benchmarks/README.md, components.py): one process, `--threads` threads, the plugin's
real classes, plugin and stock arms alternating: a full training step of the tiny demo Llama with the
stock `ForCausalLMLoss` vs `RecordingCausalLMLoss` + `DomainMixture.record_batch`; the loss alone;
`record_batch`; `log_metrics`; `DomainMixtureSampler` vs `RandomSampler` per index; the `DomainCollator`
wrapper; each per optimizer step (batch 8, `logging_steps` 10), with minor page faults per step. For
stable figures pin the allocator:

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 python benchmarks/components.py
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from llamafactory_dids.utils import IGNORE_INDEX

import _harness as h  # benchmarks/ is on sys.path when a script runs
from _harness import Figure

BATCH = 8
LOGGING_STEPS = 10


def _median_us(fn: Callable[[], Any], reps: int) -> float:
    return 1e6 * statistics.median(h.timed(fn)[0] for _ in range(reps))


def build_parser() -> Any:
    p = h.parser(__doc__, quick="40 steps per arm")
    p.add_argument("--steps", type=int, default=200, help="training steps per arm (default 200)")
    return p


def measure(args: Any) -> tuple[list[Figure], dict[str, Any]]:
    """Time every component; the figures, and the raw figures and per-step costs in us."""
    with h.workdir(args.workdir, "dids-components-") as workdir:
        measured, per_step = _measure(args, workdir)
    return report(measured, per_step), {"figures": measured, "per_step_us": dict(per_step)}


def _measure(args: Any, workdir: Any) -> tuple[dict[str, float], list[tuple[str, float]]]:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    try:
        from llamafactory_dids.algorithms.registry import build_strategy
    except ImportError:  # releases before the strategy registry
        from llamafactory_dids.algorithms.strategies import build_strategy
    from llamafactory_dids.data.domains import DomainCollator
    from llamafactory_dids.data.sampler import DomainMixtureSampler
    from llamafactory_dids.integration.loss import RecordingCausalLMLoss
    from llamafactory_dids.runtime.mixture import DomainMixture

    torch.set_num_threads(args.threads or torch.get_num_threads())
    torch.manual_seed(0)
    h.quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(h.demo_assets(workdir, examples_per_domain=20).model_dir)
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
    return measured, per_step


def report(measured: dict[str, float], per_step: list[tuple[str, float]]) -> list[Figure]:
    """The per-step costs (the run_all figures) after the raw timings behind them (detail rows)."""
    m, step_us = measured, measured["stock_step_us"]
    total = sum(us for name, us in per_step if not name.startswith(" "))
    raw = [
        (
            "stock / plugin training step, median (ms)",
            f"{step_us / 1000:.2f} / {m['plugin_step_us'] / 1000:.2f}",
        ),
        (
            "minor page faults per step, median: stock / plugin",
            f"{m['stock_step_minor_faults']:.0f} / {m['plugin_step_minor_faults']:.0f}",
        ),
        (
            "loss fwd+bwd alone: ForCausalLMLoss / RecordingCausalLMLoss (us)",
            f"{m['loss_fwd_bwd_stock_us']:.0f} / {m['loss_fwd_bwd_recording_us']:.0f}",
        ),
        (
            "sampler per index: DomainMixtureSampler / RandomSampler (us)",
            f"{m['sampler_per_index_us']:.2f} / {m['random_sampler_per_index_us']:.3f}",
        ),
    ]
    out = [Figure(name, None, text=text, detail=True) for name, text in raw]
    out.append(
        Figure(
            "plugin work per optimizer step, in process (share of the step)",
            100 * total / step_us,
            unit="%",
            text=f"{total / 1000:.3f} ms of {step_us / 1000:.1f} ms ({100 * total / step_us:.2f} %)",
        )
    )
    return out + [Figure(f"  {name.strip()}", us, unit="us") for name, us in per_step]


figures, main = h.entry("components.py", build_parser, measure, {"steps": 40})

if __name__ == "__main__":
    sys.exit(main())
