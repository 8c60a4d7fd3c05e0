#!/usr/bin/env python
"""Per-step cost of each piece of work llamafactory-dids adds to a training step, measured in-process.

    python benchmarks/components.py              # ~1 min on 2 cores
    python benchmarks/components.py --json components.json

For stable figures pin the allocator: `MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824`.

Method: benchmarks/README.md, components.py.
"""

from __future__ import annotations

import resource
import sys
from typing import Any

from llamafactory_dids.utils import IGNORE_INDEX

import _harness as h  # benchmarks/ is on sys.path when a script runs
from _harness import Figure

BATCH = 8
LOGGING_STEPS = 10


def build_parser() -> Any:
    p = h.parser(__doc__, quick="40 steps per arm")
    p.add_argument("--steps", type=int, default=200, help="training steps per arm (default 200)")
    return p


def measure(args: Any) -> tuple[list[Figure], dict[str, Any]]:
    """Time every component; the figures, and the raw figures and per-step costs in us."""
    with h.workdir(args.workdir, "dids-components-") as workdir:
        measured, per_step = _measure(args, workdir)
    return report(measured, per_step), {"figures": measured, "per_step_us": dict(per_step)}


def _median_us(fn: Any, reps: int) -> float:
    return 1e6 * h.median(h.interleaved({"fn": fn}, reps)["fn"])


def _measure(args: Any, workdir: Any) -> tuple[dict[str, float], list[tuple[str, float]]]:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from llamafactory_dids.algorithms.registry import build_strategy
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
        ids = [torch.randint(4, vocab, (int(n),)).tolist() for n in rng.integers(60, 257, size=BATCH)]
        rows = [{"input_ids": x, "labels": [IGNORE_INDEX] * (len(x) // 3) + x[len(x) // 3 :]} for x in ids]
        batches.append(h.collate(rows, 0))  # first third is the prompt
    domain_ids = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

    stock_loss = model.loss_function
    recorder = RecordingCausalLMLoss()
    strategy = build_strategy("uniform", ["code", "docs", "comments"], np.array([200, 200, 200]))
    mixture = DomainMixture(
        strategy, seed=0, on_exhausted="reshuffle", min_weight=0.0, output_dir=str(workdir / "mixture")
    )
    mixture.build_sampler(np.repeat([0, 1, 2], 200), 200 * BATCH)
    faults: dict[bool, list[int]] = {False: [], True: []}
    step = [0]

    def train_step(plugin: bool) -> None:
        batch = batches[step[0] // 2 % 16]
        step[0] += 1
        num_items = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        model.loss_function = recorder if plugin else stock_loss
        minflt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        recorder.armed = plugin
        model(**batch, num_items_in_batch=num_items).loss.backward()
        if plugin:
            mixture.record_batch(domain_ids, *recorder.take())
        optimizer.step()
        optimizer.zero_grad()
        faults[plugin].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - minflt)

    print(f"[components] training steps: {args.steps} per arm, alternating", flush=True)
    arms = {"plugin": lambda: train_step(True), "stock": lambda: train_step(False)}
    h.interleaved(arms, 10)  # warm-up
    faults[False].clear()
    faults[True].clear()
    steps = h.interleaved(arms, args.steps)
    step_us = 1e6 * h.median(steps["stock"])
    loss_work_us = 1e6 * h.median([p - s for p, s in zip(steps["plugin"], steps["stock"], strict=True)])

    logits = torch.randn(BATCH, 256, vocab)
    labels = torch.randint(4, vocab, (BATCH, 256))
    labels[:, :80] = IGNORE_INDEX
    num_items = (labels[:, 1:] != IGNORE_INDEX).sum()

    def loss_only(fn: Any, arm: bool) -> None:
        recorder.armed = arm
        fn(logits.clone().requires_grad_(True), labels, vocab, num_items_in_batch=num_items).backward()
        if arm:
            recorder.take()

    losses = h.interleaved(
        {"stock": lambda: loss_only(stock_loss, False), "rec": lambda: loss_only(recorder, True)}, 300
    )
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
        "stock_step_minor_faults": h.median(faults[False]),
        "plugin_step_minor_faults": h.median(faults[True]),
        "plugin_step_us": 1e6 * h.median(steps["plugin"]),
        "domain_loss_work_per_step_us": loss_work_us,
        "loss_fwd_bwd_stock_us": 1e6 * h.median(losses["stock"]),
        "loss_fwd_bwd_recording_us": 1e6 * h.median(losses["rec"]),
        "record_batch_us": record_us,
        "log_metrics_us": log_us,
        "sampler_per_index_us": sampler_us,
        "random_sampler_per_index_us": random_us,
        "collator_wrapper_us": collator_us,
    }
    loss_alone = measured["loss_fwd_bwd_recording_us"] - measured["loss_fwd_bwd_stock_us"]
    per_step = [
        ("RecordingCausalLMLoss + record_batch (full step, paired)", loss_work_us),
        ("  RecordingCausalLMLoss - ForCausalLMLoss (loss fwd+bwd alone)", loss_alone),
        ("  DomainMixture.record_batch", record_us),
        ("DomainMixture.log_metrics / logging_steps", log_us / LOGGING_STEPS),
        ("DomainMixtureSampler - RandomSampler (x batch)", (sampler_us - random_us) * BATCH),
        ("DomainCollator wrapper", collator_us),
    ]
    return measured, per_step


def report(m: dict[str, float], per_step: list[tuple[str, float]]) -> list[Figure]:
    """The per-step costs (the run_all figures) after the raw timings behind them (detail rows)."""
    step_us = m["stock_step_us"]
    total = sum(us for name, us in per_step if not name.startswith(" "))
    return [
        h.detail(
            "stock / plugin training step, median (ms)",
            f"{step_us / 1000:.2f} / {m['plugin_step_us'] / 1000:.2f}",
        ),
        h.detail(
            "minor page faults per step, median: stock / plugin",
            f"{m['stock_step_minor_faults']:.0f} / {m['plugin_step_minor_faults']:.0f}",
        ),
        h.detail(
            "loss fwd+bwd alone: ForCausalLMLoss / RecordingCausalLMLoss (us)",
            f"{m['loss_fwd_bwd_stock_us']:.0f} / {m['loss_fwd_bwd_recording_us']:.0f}",
        ),
        h.detail(
            "sampler per index: DomainMixtureSampler / RandomSampler (us)",
            f"{m['sampler_per_index_us']:.2f} / {m['random_sampler_per_index_us']:.3f}",
        ),
        Figure(
            "plugin work per optimizer step, in process (share of the step)",
            100 * total / step_us,
            unit="%",
            text=f"{total / 1000:.3f} ms of {step_us / 1000:.1f} ms ({100 * total / step_us:.2f} %)",
        ),
        *(Figure(f"  {name.strip()}", us, unit="us") for name, us in per_step),
    ]


figures, main = h.entry("components.py", build_parser, measure, {"steps": 40})

if __name__ == "__main__":
    sys.exit(main())
