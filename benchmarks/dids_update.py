#!/usr/bin/env python
"""What one `dids_strategy: dids` mixture update costs, against a uniform run and against its floor.

    python benchmarks/dids_update.py                          # 25 updates, 2 rounds: ~2.5 min on 2 busy cores
    python benchmarks/dids_update.py --quick                  # 10 updates, 1 round, k in (72, 256): ~1 min
    python benchmarks/dids_update.py --json dids_update.json --workdir /tmp/dids-bench
    python benchmarks/dids_update.py --domain-gradients train # domain side from the training backward
    python benchmarks/dids_update.py --updates 4 --budget 992 # the paper's density: 31 steps per update

Offline, in a temporary work directory (or `--workdir`), on the demo assets (tiny Llama: 2 blocks, hidden
64); every training process and in-process timing uses `--threads` threads (default 1).

The training setup (figures 1 and 2): `llamafactory-cli train` on an ordinary SFT YAML, full
fine-tuning, datasets demo_code, demo_docs, demo_comments (k = 3 domains), template `default`,
`cutoff_len: 256`, batch 8 (train and eval), `report_to: none`, `save_strategy: no`,
`dids_budget: 32 x updates` samples (800 = 100 optimizer steps by default).

1. Per-update seconds (`dids`)
   The run adds `dids_strategy: dids`, `dids_target_datasets: demo_target_code` (m = 1 task),
   `dids_target_samples: 24`, `dids_probe_samples: 8`, `dids_num_updates: --updates` (25: one update
   every 4 steps), `dids_normaliser: clamp`, `dids_ema_beta: 0.3`, `dids_domain_gradients:
   --domain-gradients` (probe). Each record of
   `output_dir/history.jsonl` with `update > 0` carries `seconds`: the wall time of
   `DomainMixture.update`, i.e. the task losses, the impact probe (task gradients, Fisher, streamed
   domain gradients), the eq. 13-16 update and the broadcast. Median and maximum over all updates of all
   repeats (the first update of a run pays some warm-up, hence the maximum).

2. Whole-run wall time, `dids` / `uniform`
   The same run with `dids_strategy: uniform` and none of the dids-only keys (same budget, hence the
   same number of optimizer steps). `train_runtime` from `output_dir/train_results.json` (the Trainer's
   timer around the training loop: no start-up, data loading or final save). The runs are interleaved
   `--repeats` times, the order alternating per round; the table gives the median of each and the ratio
   of the medians (per-round ratios in the log and the JSON), plus the share of the dids run spent
   inside updates (sum of `seconds` / `train_runtime`) and the rest of the dids run (train_runtime minus
   the updates) over the uniform run, next to the ratio of `total_flos` (the Trainer counts every input
   id: the two mixtures draw different rows, so the training work itself differs a little).

3. The floor: the forward and backward passes an update cannot avoid
   Counted from the config, per update: ceil(target_samples / per_device_eval_batch_size) batched
   forward passes (no grad) for the task losses; m x probe_samples single-row forward + backward passes
   for the task gradients and Fisher (`dids_fisher_batch_size: 1`); k x probe_samples single-row
   forward + backward passes for the domain gradients (not with `--domain-gradients train`, whose
   update runs none). They are timed directly, in this process, on the
   same model (loaded from the built assets with transformers, eval mode, `use_cache` off) and on rows
   built like LLaMA-Factory builds them (alpaca rows through the `default` template, truncated at cutoff
   256 with LLaMA-Factory's `infer_seqlen`, prompt masked, padded to a multiple of 8): the 24 target
   rows the loader's seeded subset picks, and probe_samples rows of each domain drawn afresh at every
   repetition. A pass is `model(**batch).loss` followed by `torch.autograd.grad` over exactly the
   parameters `select_probe_parameters(model, layers_fraction=0.1)` picks. Floor = median over
   `--floor-reps` repetitions per round, each round measured between that round's training runs.
   Reported: floor seconds per update and measured median / floor (what the update spends beyond the
   passes: collation, arrow row access, accumulation, the update itself).

4. Peak memory and time of the impact computation for k = 72, 256, 1152 domains
   In a fresh subprocess per k: the demo tiny Llama, `GradientProbe` constructed directly (as in
   tests/integration/test_probe.py) with k domain pools of 2 synthetic rows each (64 tokens, first 16
   masked), m = 3 tasks of 8 synthetic rows, `probe_samples: 2`, `fisher_batch_size: 1`, a trivial
   collate. A warm-up `impact` on a 2-domain probe over the same model comes first (allocator and
   autograd warm-up, identical for every k); then `probe.impact` is called MEMORY_CALLS (2) times while
   a thread samples, every millisecond, the process RSS (psutil) and the bytes glibc malloc has handed
   out (`mallinfo2`: uordblks + hblkhd; torch CPU tensors are malloc'ed, so this follows live tensor
   memory without RSS's noise from pages the allocator keeps or touches for the first time). Peak
   growth of a call = max sample - value just before the call; the table gives the largest over the
   calls, heap first (RSS when mallinfo2 is missing), with RSS and the `ru_maxrss` growth over all
   calls as cross-checks (RSS moves by a few MB either way from one call to the next, whatever k;
   ru_maxrss growth is 0 when the calls set no new high-water mark above start-up's).
   For contrast: the size of all k domain gradients (k x probed parameters x 4 bytes), what an
   implementation holding them all would need. The point: the growth stays flat in k (only the k x m
   scalars grow). Also: seconds per domain (median wall time of a call / k).

Output: one table and, with `--json`, every raw figure. The exit code is 0: it is a measurement.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from llamafactory_dids.utils import IGNORE_INDEX

import _harness as h  # benchmarks/ is on sys.path when a script runs
from _harness import Figure

BATCH = 8
DOMAINS = ("demo_code", "demo_docs", "demo_comments")
TARGET = "demo_target_code"
TARGET_SAMPLES = 24
PROBE_SAMPLES = 8
CUTOFF = 256
STEPS_PER_UPDATE = 4
SEED = 42
EXAMPLES_PER_DOMAIN = 300
MEMORY_KS = (72, 256, 1152)
MEMORY_KS_QUICK = (72, 256)
MEMORY_TASKS = 3
MEMORY_ROWS_PER_DOMAIN = 2
MEMORY_PROBE_SAMPLES = 2
MEMORY_ROW_LENGTH = 64
MEMORY_CALLS = 2  # impact calls per k (the table gives the largest peak)
MEMORY_TARGET = "~1: flat in k (README)"

# ------------------------------------------------------------------------ 1, 2. training runs


def train_config(
    assets: Any, output_dir: Path, strategy: str, updates: int, budget: int, domain_gradients: str = "probe"
) -> dict[str, Any]:
    from llamafactory_dids.demo import demo_training_config

    config = demo_training_config(
        assets,
        output_dir,
        dataset=",".join(DOMAINS),
        cutoff_len=CUTOFF,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH,
        seed=SEED,
        dids_strategy=strategy,
        dids_budget=budget,
    )
    if strategy == "dids":
        config.update(
            dids_target_datasets=TARGET,
            dids_target_samples=TARGET_SAMPLES,
            dids_probe_samples=PROBE_SAMPLES,
            dids_num_updates=updates,
            dids_normaliser="clamp",
            dids_ema_beta=0.3,
            dids_domain_gradients=domain_gradients,
        )
    return config


def run_training(workdir: Path, assets: Any, strategy: str, args: Any, tag: str) -> dict[str, Any]:
    run = h.train(
        workdir / "runs" / tag,
        lambda out: train_config(assets, out, strategy, args.updates, args.budget, args.domain_gradients),
        args.threads,
    )
    results, history = run.results, run.history()
    updates_seen = [r for r in history if r["update"] > 0]
    out: dict[str, Any] = {
        "strategy": strategy,
        "tag": tag,
        "train_runtime_s": float(results["train_runtime"]),
        "process_wall_s": round(run.seconds, 3),
        "steps": int(run.json("trainer_state.json")["global_step"]),
        "total_flos": float(results.get("total_flos", float("nan"))),
        "update_seconds": [float(r["seconds"]) for r in updates_seen],
        "update_steps": [int(r["step"]) for r in updates_seen],
    }
    if strategy == "dids":
        if not updates_seen:
            raise RuntimeError(f"run {tag}: no DIDS update in {run.output_dir}")
        last = updates_seen[-1]
        out.update(final_weights=[round(w, 4) for w in last["weights"]], num_domains=len(last["domains"]))
        out["num_tasks"] = len(last.get("tasks") or [])
    return out


# --------------------------------------------------------------------------------- 3. the floor


class Floor:
    """The passes of one update, timed on the demo model in this process."""

    def __init__(self, assets: Any, threads: int):
        import numpy as np
        import torch
        from transformers import AutoTokenizer

        from llamafactory_dids.runtime.probe import select_probe_parameters

        if threads > 0:
            torch.set_num_threads(threads)
        h.quiet_transformers()
        self.tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
        self.model = h.load_model(assets.model_dir)
        self.params = [p for _, p in select_probe_parameters(self.model, layers_fraction=0.1)]
        self.num_probe_parameters = sum(p.numel() for p in self.params)
        self.pad_id = self.tokenizer.pad_token_id

        def load(name: str) -> list[dict[str, str]]:
            return json.loads((assets.dataset_dir / f"{name}.json").read_text(encoding="utf-8"))

        target = self._usable(h.encode_alpaca_rows(self.tokenizer, load(TARGET), CUTOFF))
        # the loader's seeded subset (`load_target_sets`: dids_seed unset -> 0)
        rng = np.random.default_rng([0, 3])
        keep = min(TARGET_SAMPLES, len(target))
        self.target_rows = [target[i] for i in np.sort(rng.permutation(len(target))[:keep])]
        self.domain_rows = [
            self._usable(h.encode_alpaca_rows(self.tokenizer, load(d), CUTOFF)) for d in DOMAINS
        ]
        self.rng = np.random.default_rng(1)
        self.passes = {
            "task_loss_forwards": math.ceil(len(self.target_rows) / BATCH),
            "task_grad_passes": 1 * min(PROBE_SAMPLES, len(self.target_rows)),
            "domain_grad_passes": len(DOMAINS) * PROBE_SAMPLES,
        }

    @staticmethod
    def _usable(rows: list[dict[str, list[int]]]) -> list[dict[str, list[int]]]:
        return [r for r in rows if any(x != IGNORE_INDEX for x in r["labels"][1:])]

    def _grad_pass(self, row: dict[str, list[int]]) -> None:
        import torch

        batch = h.collate([row], self.pad_id)
        with torch.enable_grad():
            loss = self.model(**batch).loss
            torch.autograd.grad(loss, self.params, allow_unused=True)

    def once(self) -> dict[str, float]:
        """One update's passes: task losses, task gradients (m = 1), domain gradients (k = 3)."""
        import torch

        t0 = time.perf_counter()
        with torch.no_grad():
            for start in range(0, len(self.target_rows), BATCH):
                self.model(**h.collate(self.target_rows[start : start + BATCH], self.pad_id))
        t1 = time.perf_counter()
        for row in self.target_rows[:PROBE_SAMPLES]:
            self._grad_pass(row)
        t2 = time.perf_counter()
        for rows in self.domain_rows:
            for i in self.rng.choice(len(rows), size=min(PROBE_SAMPLES, len(rows)), replace=False):
                self._grad_pass(rows[int(i)])
        t3 = time.perf_counter()
        return {"task_loss": t1 - t0, "task_grads": t2 - t1, "domain_grads": t3 - t2, "total": t3 - t0}


# ------------------------------------------------------------------------- 4. memory and k


def _heap_in_use() -> Any:
    """A function returning the bytes glibc malloc has handed out (mallinfo2: uordblks + hblkhd), or -1.

    Torch's CPU tensors are malloc'ed, so this follows live tensor memory without RSS's noise (pages the
    allocator keeps, first touches); absent outside glibc >= 2.33.
    """
    import ctypes

    class _MallInfo2(ctypes.Structure):
        names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
        _fields_ = [(name, ctypes.c_size_t) for name in names.split()]

    try:
        libc = ctypes.CDLL("libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return lambda: -1
    fn.restype = _MallInfo2

    def in_use() -> int:
        info = fn()
        return int(info.uordblks + info.hblkhd)

    return in_use


def _memory_worker(model_dir: str, k: int, threads: int) -> None:
    """Fresh process: peak RSS growth and wall time of `GradientProbe.impact` with k domains."""
    import gc
    import resource
    import threading

    import numpy as np
    import psutil
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    h.quiet_transformers()
    torch.manual_seed(0)
    model = h.load_model(model_dir)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)

    def rows(n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            ids = torch.randint(4, vocab, (MEMORY_ROW_LENGTH,), generator=g).tolist()
            labels = [IGNORE_INDEX] * (MEMORY_ROW_LENGTH // 4) + ids[MEMORY_ROW_LENGTH // 4 :]
            out.append({"input_ids": ids, "attention_mask": [1] * MEMORY_ROW_LENGTH, "labels": labels})
        return out

    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            key: torch.tensor([r[key] for r in batch]) for key in ("input_ids", "attention_mask", "labels")
        }

    train = rows(k * MEMORY_ROWS_PER_DOMAIN)
    tasks = [rows(8) for _ in range(MEMORY_TASKS)]

    def probe_for(num_domains: int) -> Any:
        pools = [
            np.arange(d * MEMORY_ROWS_PER_DOMAIN, (d + 1) * MEMORY_ROWS_PER_DOMAIN)
            for d in range(num_domains)
        ]
        options = {"probe_samples": MEMORY_PROBE_SAMPLES, "layers_fraction": 0.1, "seed": 0}
        return h.probe(model, collate, train, pools, tasks, **options)

    probe_for(2).impact(0)  # warm-up, identical for every k
    probe = probe_for(k)
    process = psutil.Process()
    heap = _heap_in_use()
    calls = []
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    for call in range(MEMORY_CALLS):
        gc.collect()
        rss_before, heap_before = process.memory_info().rss, heap()
        peak = {"rss": rss_before, "heap": heap_before, "samples": 0}
        done = threading.Event()

        def sample(peak: dict[str, int] = peak, done: threading.Event = done) -> None:
            while not done.is_set():
                peak["rss"] = max(peak["rss"], process.memory_info().rss)
                peak["heap"] = max(peak["heap"], heap())
                peak["samples"] += 1
                time.sleep(0.001)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        impact = probe.impact(call + 1)
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        peak["rss"] = max(peak["rss"], process.memory_info().rss)
        peak["heap"] = max(peak["heap"], heap())
        calls.append(
            {
                "seconds": seconds,
                "rss_before_mb": rss_before / 2**20,
                "rss_peak_growth_mb": (peak["rss"] - rss_before) / 2**20,
                "heap_peak_growth_mb": (peak["heap"] - heap_before) / 2**20 if heap_before >= 0 else None,
                "samples": peak["samples"],
                "impact_finite": bool(np.isfinite(impact).all()),
                "impact_shape": list(impact.shape),
            }
        )
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    heaps = [c["heap_peak_growth_mb"] for c in calls if c["heap_peak_growth_mb"] is not None]
    result = {
        "k": k,
        "m": MEMORY_TASKS,
        "calls": calls,
        "seconds": h.median([c["seconds"] for c in calls]),
        "seconds_per_domain": h.median([c["seconds"] for c in calls]) / k,
        "rss_peak_growth_mb": max(c["rss_peak_growth_mb"] for c in calls),
        "heap_peak_growth_mb": max(heaps) if heaps else None,
        "maxrss_growth_mb": (maxrss_after - maxrss_before) / 2**20,
        "probe_parameters": probe.num_probe_parameters,
        "all_domain_gradients_mb": k * probe.num_probe_parameters * 4 / 2**20,
    }
    print("RESULT " + json.dumps(result), flush=True)


def measure_memory(assets: Any, k: int, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-worker", str(assets.model_dir), str(k)]
    proc = subprocess.run(
        [*cmd, "--threads", str(threads)], env=h.offline_env(threads), capture_output=True, text=True
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory worker k={k} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


# ------------------------------------------------------------------------------------------ main


def build_parser() -> Any:
    p = h.parser(__doc__, quick="10 updates, 1 round, k in (72, 256)")
    p.add_argument("--updates", type=int, default=25, help="dids_num_updates (default 25; --quick 10)")
    p.add_argument(
        "--budget",
        type=int,
        default=None,
        help=f"dids_budget in samples (default {STEPS_PER_UPDATE * BATCH} x updates)",
    )
    p.add_argument("--repeats", type=int, default=2, help="dids/uniform rounds (default 2; --quick 1)")
    p.add_argument("--floor-reps", type=int, default=5, help="floor repetitions per round (default 5)")
    p.add_argument(
        "--domain-gradients",
        choices=("probe", "train"),
        default="probe",
        help="dids_domain_gradients of the dids runs (default probe; train: from the training backward)",
    )
    p.add_argument("--memory-worker", nargs=2, metavar=("MODEL_DIR", "K"), help=h.argparse.SUPPRESS)
    return p


def measure(args: Any) -> tuple[list[Figure], dict[str, Any]] | None:
    """Run every measurement (printing as it goes); the figures and every raw figure."""
    if args.memory_worker:
        return _memory_worker(args.memory_worker[0], int(args.memory_worker[1]), args.threads)
    args.budget = args.budget or STEPS_PER_UPDATE * BATCH * args.updates
    with h.workdir(args.workdir, "dids-update-") as workdir:
        payload = _measure(args, workdir)
    return report(payload), payload


def _measure(args: Any, workdir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    print(f"[setup] building demo assets in {workdir / 'assets'}", flush=True)
    assets = h.demo_assets(workdir, examples_per_domain=EXAMPLES_PER_DOMAIN, seed=0)
    floor = Floor(assets, args.threads)
    for _ in range(2):
        floor.once()  # warm-up
    print(
        f"[setup] budget {args.budget} samples = {args.budget // BATCH} steps, {args.updates} updates; floor passes "
        f"per update: {floor.passes}; probed parameters: {floor.num_probe_parameters}",
        flush=True,
    )
    runs: list[dict[str, Any]] = []
    floor_samples: list[dict[str, float]] = []
    for r in range(args.repeats):
        for strategy in ("dids", "uniform") if r % 2 == 0 else ("uniform", "dids"):
            run = {**run_training(workdir, assets, strategy, args, f"{strategy}-{r}"), "repeat": r}
            runs.append(run)
            extra = ""
            if strategy == "dids":
                extra = (
                    f"   updates {len(run['update_seconds'])} (median {h.median(run['update_seconds']):.3f} s, "
                    f"max {max(run['update_seconds']):.3f} s)   final weights {run['final_weights']}"
                )
            print(
                f"[train] round {r} {strategy:<8} train_runtime {run['train_runtime_s']:7.2f} s   "
                f"process {run['process_wall_s']:6.1f} s   steps {run['steps']}{extra}",
                flush=True,
            )
        these = [floor.once() for _ in range(args.floor_reps)]
        floor_samples.extend(these)
        parts = {
            key: h.median([s[key] for s in these])
            for key in ("total", "task_loss", "task_grads", "domain_grads")
        }
        print(
            f"[floor] round {r}: median {parts['total']:.4f} s per update (task loss {parts['task_loss']:.4f}, "
            f"task grads {parts['task_grads']:.4f}, domain grads {parts['domain_grads']:.4f})",
            flush=True,
        )

    dids_runs = [r for r in runs if r["strategy"] == "dids"]
    uniform_runs = [r for r in runs if r["strategy"] == "uniform"]
    if len(steps := {r["steps"] for r in runs}) != 1:
        raise RuntimeError(f"runs disagree on the number of optimizer steps: {sorted(steps)}")
    update_seconds = [s for r in dids_runs for s in r["update_seconds"]]
    dids_runtime = h.median([r["train_runtime_s"] for r in dids_runs])
    uniform_runtime = h.median([r["train_runtime_s"] for r in uniform_runs])
    by_round = {(r["strategy"], r["repeat"]): r["train_runtime_s"] for r in runs}
    paired = [by_round[("dids", i)] / by_round[("uniform", i)] for i in range(args.repeats)]
    update_share = h.median([sum(r["update_seconds"]) / r["train_runtime_s"] for r in dids_runs])
    flos = [h.median([r["total_flos"] for r in group]) for group in (dids_runs, uniform_runs)]
    # train-side domain gradients: the update runs no domain pass, so none is in its floor
    probed_domains = args.domain_gradients == "probe"
    floor_total = h.median([s["total"] - (0 if probed_domains else s["domain_grads"]) for s in floor_samples])
    print(
        f"[train] dids/uniform train_runtime per round: {[round(x, 3) for x in paired]}; "
        f"share of the dids run inside updates: {100 * update_share:.1f} %",
        flush=True,
    )
    memory = []
    for k in MEMORY_KS_QUICK if args.quick else MEMORY_KS:
        memory.append(res := measure_memory(assets, k, args.threads))
        heap = res["heap_peak_growth_mb"]
        per_call = ", ".join(
            (f"heap {c['heap_peak_growth_mb']:.2f} / " if c["heap_peak_growth_mb"] is not None else "")
            + f"RSS {c['rss_peak_growth_mb']:.2f} MB in {c['seconds']:.2f} s"
            for c in res["calls"]
        )
        print(
            f"[memory] k={k:<5} m={res['m']}  impact {res['seconds']:6.2f} s ({1000 * res['seconds_per_domain']:.2f} "
            f"ms/domain)   peak growth: heap {heap if heap is None else round(heap, 2)} MB, RSS "
            f"{res['rss_peak_growth_mb']:.2f} MB, ru_maxrss {res['maxrss_growth_mb']:.2f} MB   all-k gradients "
            f"would be {res['all_domain_gradients_mb']:.1f} MB   (per call: {per_call})",
            flush=True,
        )
    config = {"updates": args.updates, "budget": args.budget, "steps": steps.pop(), "repeats": args.repeats}
    config.update(threads=args.threads, batch=BATCH, cutoff_len=CUTOFF, target_samples=TARGET_SAMPLES)
    config.update(probe_samples=PROBE_SAMPLES, domains=list(DOMAINS), target=TARGET)
    config.update(domain_gradients=args.domain_gradients)
    config.update(examples_per_domain=EXAMPLES_PER_DOMAIN, probe_parameters=floor.num_probe_parameters)
    payload = {
        "config": config,
        "per_update_seconds": {
            "median": h.median(update_seconds),
            "max": max(update_seconds),
            "all": update_seconds,
        },
        "train_runtime": {
            "dids_median_s": dids_runtime,
            "uniform_median_s": uniform_runtime,
            "ratio": dids_runtime / uniform_runtime,
            "paired_ratios": paired,
            "update_share": update_share,
            "dids_outside_updates_s": h.median(
                [r["train_runtime_s"] - sum(r["update_seconds"]) for r in dids_runs]
            ),
            "total_flos_ratio": flos[0] / flos[1],
        },
        "floor": {
            "passes": floor.passes,
            "seconds_per_update": floor_total,
            "parts_s": {
                key: h.median([s[key] for s in floor_samples])
                for key in ("task_loss", "task_grads", "domain_grads")
            },
            "measured_over_floor": h.median(update_seconds) / floor_total,
            "samples": floor_samples,
        },
        "memory": memory,
        "runs": runs,
    }
    figures = report(payload)
    print(
        f"\nDIDS update cost: tiny Llama on CPU, {args.threads} thread(s), k={len(DOMAINS)} domains, m=1 task, "
        f"{args.updates} updates over {args.budget // BATCH} steps, {args.repeats} round(s), domain gradients "
        f"from the {args.domain_gradients}"
    )
    print(f"(total benchmark wall time {time.perf_counter() - started:.0f} s)")
    return {**payload, "table": [f.as_dict() for f in figures]}


def _peak(res: dict[str, Any]) -> float:
    heap = res["heap_peak_growth_mb"]
    return heap if heap is not None else res["rss_peak_growth_mb"]


def report(payload: dict[str, Any]) -> list[Figure]:
    """Every figure; the detail rows are printed here only, the others by `run_all.py` too."""
    per_update, runtime, floor = payload["per_update_seconds"], payload["train_runtime"], payload["floor"]
    passes, parts, uniform = floor["passes"], floor["parts_s"], runtime["uniform_median_s"]
    rows = [
        ("per-update seconds, max (dids)", f"{per_update['max']:.3f} s"),
        (
            "floor passes per update",
            f"{passes['task_loss_forwards']} fwd (batch {BATCH}) + "
            f"{passes['task_grad_passes'] + passes['domain_grad_passes']} fwd+bwd (1 row)",
        ),
        ("floor seconds per update", f"{floor['seconds_per_update']:.3f} s"),
        (
            "  of which task loss / task grads / domain grads",
            f"{parts['task_loss']:.3f} / {parts['task_grads']:.3f} / {parts['domain_grads']:.3f} s",
        ),
    ]
    out = [Figure("dids: seconds per mixture update (median)", per_update["median"], unit="s")]
    out += [Figure(name, None, text=text, detail=True) for name, text in rows]
    out.append(Figure("  dids: measured / floor of forward+backward passes", floor["measured_over_floor"]))
    rows = [
        ("train_runtime, dids (median)", f"{runtime['dids_median_s']:.2f} s"),
        ("train_runtime, uniform (median)", f"{uniform:.2f} s"),
        (
            "dids run outside updates / uniform run",
            f"{runtime['dids_outside_updates_s'] / uniform:.3f} (work ratio, total_flos: {runtime['total_flos_ratio']:.3f})",
        ),
    ]
    out += [Figure(name, None, text=text, detail=True) for name, text in rows]
    out.append(
        Figure(
            "dids: whole-run train_runtime dids / uniform",
            runtime["ratio"],
            text=f"{runtime['ratio']:.3f} ({100 * runtime['update_share']:.1f} % of the run inside updates)",
        )
    )
    memory = payload["memory"]
    for res in memory:
        kind = "heap" if res["heap_peak_growth_mb"] is not None else "RSS"
        text = (
            f"{_peak(res):.2f} MB {kind} (RSS {res['rss_peak_growth_mb']:.2f}, ru_maxrss {res['maxrss_growth_mb']:.2f}; "
            f"all k gradients {res['all_domain_gradients_mb']:.1f} MB)"
        )
        out.append(
            Figure(f"impact peak memory growth, k={res['k']} (m={res['m']})", None, text=text, detail=True)
        )
    for res in memory:
        text = f"{1000 * res['seconds_per_domain']:.2f} ms ({res['seconds']:.2f} s per call)"
        out.append(Figure(f"impact seconds per domain, k={res['k']}", None, text=text, detail=True))
    if len(memory) > 1:
        lo, hi = memory[0], memory[-1]
        ratio = _peak(hi) / max(_peak(lo), 1e-9)
        out.append(
            Figure(
                "dids: impact peak memory growth, largest k / smallest k",
                ratio,
                text=f"{ratio:.2f} (k={hi['k']}: {_peak(hi):.2f} MB, k={lo['k']}: {_peak(lo):.2f} MB)",
                target_text=MEMORY_TARGET,
            )
        )
    return out


figures, main = h.entry("dids_update.py", build_parser, measure, {"updates": 10, "repeats": 1})

if __name__ == "__main__":
    sys.exit(main())
