#!/usr/bin/env python
"""What one `dids_strategy: dids` mixture update costs, against a uniform run and against its floor.

    python benchmarks/dids_update.py                          # 25 updates, 2 rounds: ~2.5 min on 2 busy cores
    python benchmarks/dids_update.py --quick                  # 10 updates, 1 round, k in (72, 256): ~1 min
    python benchmarks/dids_update.py --json dids_update.json --workdir /tmp/dids-bench
    python benchmarks/dids_update.py --domain-gradients train # domain side from the training backward
    python benchmarks/dids_update.py --updates 4 --budget 992 # the paper's density: 31 steps per update

Method (training runs, the floor of forward and backward passes, the impact's peak memory for k = 72, 256
and 1152 domains): benchmarks/README.md, dids_update.py. The exit code is 0: it is a measurement.
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
EXAMPLES_PER_DOMAIN = 300
MEMORY_TASKS = 3
MEMORY_ROWS_PER_DOMAIN = 2
MEMORY_ROW_LENGTH = 64
MEMORY_CALLS = 2  # impact calls per k (the table gives the largest peak)
FLOOR_PARTS = ("task_loss", "task_grads", "domain_grads")

# ------------------------------------------------------------------------ 1, 2. training runs


def train_config(assets: Any, output_dir: Path, strategy: str, args: Any) -> dict[str, Any]:
    from llamafactory_dids.demo import demo_training_config

    dids = {"dids_target_datasets": TARGET, "dids_target_samples": TARGET_SAMPLES}
    dids.update(dids_probe_samples=PROBE_SAMPLES, dids_num_updates=args.updates, dids_normaliser="clamp")
    dids.update(dids_ema_beta=0.3, dids_domain_gradients=args.domain_gradients)
    return demo_training_config(
        assets,
        output_dir,
        dataset=",".join(DOMAINS),
        cutoff_len=CUTOFF,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH,
        seed=42,
        dids_strategy=strategy,
        dids_budget=args.budget,
        **(dids if strategy == "dids" else {}),
    )


def run_training(workdir: Path, assets: Any, strategy: str, args: Any, r: int) -> dict[str, Any]:
    tag = f"{strategy}-{r}"
    run = h.train(workdir / "runs" / tag, lambda out: train_config(assets, out, strategy, args), args.threads)
    updates = [rec for rec in run.history() if rec["update"] > 0]
    out = {"strategy": strategy, "tag": tag, "repeat": r, **run.timings()}
    out["steps"] = int(run.json("trainer_state.json")["global_step"])
    out["update_seconds"] = [float(rec["seconds"]) for rec in updates]
    out["update_steps"] = [int(rec["step"]) for rec in updates]
    if strategy == "dids":
        if not updates:
            raise RuntimeError(f"run {tag}: no DIDS update in {run.output_dir}")
        last = updates[-1]
        out.update(final_weights=[round(w, 4) for w in last["weights"]], num_domains=len(last["domains"]))
        out["num_tasks"] = len(last.get("tasks") or [])
    return out


# --------------------------------------------------------------------------------- 3. the floor


class Floor:
    """The passes of one update, timed on the demo model in this process."""

    def __init__(self, assets: Any, threads: int):
        import numpy as np

        from llamafactory_dids.runtime.probe import select_probe_parameters

        h.set_threads(threads)
        h.quiet_transformers()
        tokenizer, self.pad_id = h.tokenizer(assets.model_dir)
        self.model = h.load_model(assets.model_dir)
        self.params = [p for _, p in select_probe_parameters(self.model, layers_fraction=0.1)]
        self.num_probe_parameters = sum(p.numel() for p in self.params)

        def load(name: str) -> list[dict[str, list[int]]]:
            rows = h.encode_file(assets.dataset_dir / f"{name}.json", tokenizer, CUTOFF)
            return [r for r in rows if any(x != IGNORE_INDEX for x in r["labels"][1:])]

        target = load(TARGET)
        # the loader's seeded subset (`load_target_sets`: dids_seed unset -> 0)
        keep = np.sort(np.random.default_rng([0, 3]).permutation(len(target))[:TARGET_SAMPLES])
        self.target_rows = [target[i] for i in keep]
        self.domain_rows = [load(d) for d in DOMAINS]
        self.rng = np.random.default_rng(1)
        self.passes = {
            "task_loss_forwards": math.ceil(len(self.target_rows) / BATCH),
            "task_grad_passes": min(PROBE_SAMPLES, len(self.target_rows)),
            "domain_grad_passes": len(DOMAINS) * PROBE_SAMPLES,
        }

    def _grad_pass(self, row: dict[str, list[int]]) -> None:
        import torch

        with torch.enable_grad():
            loss = self.model(**h.collate([row], self.pad_id)).loss
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
    """A function returning the bytes glibc malloc has handed out (mallinfo2: uordblks + hblkhd; torch's CPU
    tensors are malloc'ed, so this follows live tensor memory without RSS's noise), or -1 without glibc 2.33."""
    import ctypes

    class _MallInfo2(ctypes.Structure):
        names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
        _fields_ = [(name, ctypes.c_size_t) for name in names.split()]

    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return lambda: -1
    fn.restype = _MallInfo2

    def in_use() -> int:
        info = fn()
        return int(info.uordblks + info.hblkhd)

    return in_use


def _memory_worker(model_dir: str, k: int, threads: int) -> None:
    """Fresh process: peak memory growth and wall time of `GradientProbe.impact` with k domains."""
    import gc
    import resource
    import threading

    import numpy as np
    import psutil
    import torch

    h.set_threads(threads)
    h.quiet_transformers()
    torch.manual_seed(0)
    model = h.load_model(model_dir)
    g, n = torch.Generator().manual_seed(0), MEMORY_ROW_LENGTH

    def rows(count: int) -> list[dict[str, Any]]:
        ids = [torch.randint(4, model.config.vocab_size, (n,), generator=g).tolist() for _ in range(count)]
        return [{"input_ids": x, "labels": [IGNORE_INDEX] * (n // 4) + x[n // 4 :]} for x in ids]

    train, tasks = rows(k * MEMORY_ROWS_PER_DOMAIN), [rows(8) for _ in range(MEMORY_TASKS)]

    def probe_for(domains: int) -> Any:
        pools = np.arange(domains * MEMORY_ROWS_PER_DOMAIN).reshape(domains, MEMORY_ROWS_PER_DOMAIN)
        options = {"probe_samples": 2, "layers_fraction": 0.1, "seed": 0}
        return h.probe(model, lambda b: h.collate(b, 0, multiple=1), train, list(pools), tasks, **options)

    probe_for(2).impact(0)  # warm-up, identical for every k
    probe, process, heap, calls = probe_for(k), psutil.Process(), _heap_in_use(), []
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    for call in range(MEMORY_CALLS):
        gc.collect()
        before = {"rss": process.memory_info().rss, "heap": heap()}
        peak, done = dict(before), threading.Event()

        def sample(peak: dict[str, int] = peak, done: threading.Event = done) -> None:
            while True:
                peak["rss"] = max(peak["rss"], process.memory_info().rss)
                peak["heap"] = max(peak["heap"], heap())
                if done.is_set():
                    return
                time.sleep(0.001)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        seconds, impact = h.timed(probe.impact, call + 1)
        done.set()
        sampler.join()
        growth = {key: (peak[key] - before[key]) / 2**20 for key in peak}
        calls.append(
            {
                "seconds": seconds,
                "rss_before_mb": before["rss"] / 2**20,
                "rss_peak_growth_mb": growth["rss"],
                "heap_peak_growth_mb": growth["heap"] if before["heap"] >= 0 else None,
                "impact_finite": bool(np.isfinite(impact).all()),
                "impact_shape": list(impact.shape),
            }
        )
    heaps = [c["heap_peak_growth_mb"] for c in calls if c["heap_peak_growth_mb"] is not None]
    seconds = h.median([c["seconds"] for c in calls])
    result = {
        "k": k,
        "m": MEMORY_TASKS,
        "calls": calls,
        "seconds": seconds,
        "seconds_per_domain": seconds / k,
    }
    result["rss_peak_growth_mb"] = max(c["rss_peak_growth_mb"] for c in calls)
    result["heap_peak_growth_mb"] = max(heaps) if heaps else None
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["maxrss_growth_mb"] = (maxrss_after - maxrss_before) / 2**20
    result["probe_parameters"] = probe.num_probe_parameters
    result["all_domain_gradients_mb"] = k * probe.num_probe_parameters * 4 / 2**20
    print("RESULT " + json.dumps(result), flush=True)


def measure_memory(assets: Any, k: int, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-worker", str(assets.model_dir), str(k)]
    cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, env=h.offline_env(threads), capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory worker k={k} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


# ------------------------------------------------------------------------------------------ main


def build_parser() -> Any:
    p = h.parser(__doc__, quick="10 updates, 1 round, k in (72, 256)")
    p.add_argument("--updates", type=int, default=25, help="dids_num_updates (default 25; --quick 10)")
    default_budget = f"dids_budget in samples (default {STEPS_PER_UPDATE * BATCH} x updates)"
    p.add_argument("--budget", type=int, default=None, help=default_budget)
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
        seconds, payload = h.timed(_measure, args, workdir)
    figures = report(payload)
    print(
        f"\nDIDS update cost: tiny Llama on CPU, {args.threads} thread(s), k={len(DOMAINS)} domains, m=1 task, "
        f"{args.updates} updates over {args.budget // BATCH} steps, {args.repeats} round(s), domain gradients "
        f"from the {args.domain_gradients}\n(total benchmark wall time {seconds:.0f} s)"
    )
    return figures, {**payload, "table": [f.as_dict() for f in figures]}


def _measure(args: Any, workdir: Path) -> dict[str, Any]:
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
            runs.append(run := run_training(workdir, assets, strategy, args, r))
            ups = run["update_seconds"]
            extra = (
                f"   updates {len(ups)} (median {h.median(ups):.3f} s, max {max(ups):.3f} s)" if ups else ""
            )
            print(
                f"[train] round {r} {strategy:<8} train_runtime {run['train_runtime_s']:7.2f} s   "
                f"process {run['process_wall_s']:6.1f} s   steps {run['steps']}{extra}",
                flush=True,
            )
        these = [floor.once() for _ in range(args.floor_reps)]
        floor_samples.extend(these)
        parts = {key: h.median([s[key] for s in these]) for key in ("total", *FLOOR_PARTS)}
        print(
            f"[floor] round {r}: median per update: " + ", ".join(f"{k} {v:.4f} s" for k, v in parts.items())
        )

    if len(steps := {r["steps"] for r in runs}) != 1:
        raise RuntimeError(f"runs disagree on the number of optimizer steps: {sorted(steps)}")
    dids_runs, uniform_runs = ([r for r in runs if r["strategy"] == s] for s in ("dids", "uniform"))
    update_seconds = [s for r in dids_runs for s in r["update_seconds"]]
    dids_runtime, uniform_runtime = (
        h.median([r["train_runtime_s"] for r in g]) for g in (dids_runs, uniform_runs)
    )
    by_round = {(r["strategy"], r["repeat"]): r["train_runtime_s"] for r in runs}
    paired = [by_round[("dids", i)] / by_round[("uniform", i)] for i in range(args.repeats)]
    update_share = h.median([sum(r["update_seconds"]) / r["train_runtime_s"] for r in dids_runs])
    flos = [h.median([r["total_flos"] for r in group]) for group in (dids_runs, uniform_runs)]
    # train-side domain gradients: the update runs no domain pass, so none is in its floor
    probed_domains = args.domain_gradients == "probe"
    floor_total = h.median([s["total"] - (0 if probed_domains else s["domain_grads"]) for s in floor_samples])
    print(f"[train] dids/uniform train_runtime per round: {[round(x, 3) for x in paired]}", flush=True)
    memory = []
    for k in (72, 256) if args.quick else (72, 256, 1152):
        memory.append(res := measure_memory(assets, k, args.threads))
        print(
            f"[memory] k={k}: {_memory_text(res)}; {1000 * res['seconds_per_domain']:.2f} ms/domain",
            flush=True,
        )
    config = {"updates": args.updates, "budget": args.budget, "steps": steps.pop(), "repeats": args.repeats}
    config.update(threads=args.threads, batch=BATCH, cutoff_len=CUTOFF, target_samples=TARGET_SAMPLES)
    config.update(probe_samples=PROBE_SAMPLES, domains=list(DOMAINS), target=TARGET)
    config.update(domain_gradients=args.domain_gradients)
    config.update(examples_per_domain=EXAMPLES_PER_DOMAIN, probe_parameters=floor.num_probe_parameters)
    per_update = {"median": h.median(update_seconds), "max": max(update_seconds), "all": update_seconds}
    runtime = {"dids_median_s": dids_runtime, "uniform_median_s": uniform_runtime}
    runtime.update(ratio=dids_runtime / uniform_runtime, paired_ratios=paired, update_share=update_share)
    outside = h.median([r["train_runtime_s"] - sum(r["update_seconds"]) for r in dids_runs])
    runtime.update(dids_outside_updates_s=outside, total_flos_ratio=flos[0] / flos[1])
    floor_parts = {key: h.median([s[key] for s in floor_samples]) for key in FLOOR_PARTS}
    floor_out = {"passes": floor.passes, "seconds_per_update": floor_total, "parts_s": floor_parts}
    floor_out.update(measured_over_floor=h.median(update_seconds) / floor_total, samples=floor_samples)
    return {
        "config": config,
        "per_update_seconds": per_update,
        "train_runtime": runtime,
        "floor": floor_out,
        "memory": memory,
        "runs": runs,
    }


def _peak(res: dict[str, Any]) -> float:
    heap = res["heap_peak_growth_mb"]
    return heap if heap is not None else res["rss_peak_growth_mb"]


def _memory_text(res: dict[str, Any]) -> str:
    kind = "heap" if res["heap_peak_growth_mb"] is not None else "RSS"
    return (
        f"{_peak(res):.2f} MB {kind} (RSS {res['rss_peak_growth_mb']:.2f}, ru_maxrss {res['maxrss_growth_mb']:.2f}; "
        f"all k gradients {res['all_domain_gradients_mb']:.1f} MB)"
    )


def report(payload: dict[str, Any]) -> list[Figure]:
    """Every figure; the detail rows are printed here only, the others by `run_all.py` too."""
    per_update, runtime, floor = payload["per_update_seconds"], payload["train_runtime"], payload["floor"]
    passes, parts, uniform, memory = (
        floor["passes"],
        floor["parts_s"],
        runtime["uniform_median_s"],
        payload["memory"],
    )
    fwd_bwd = passes["task_grad_passes"] + passes["domain_grad_passes"]
    out = [
        Figure("dids: seconds per mixture update (median)", per_update["median"], unit="s"),
        h.detail("per-update seconds, max (dids)", f"{per_update['max']:.3f} s"),
        h.detail(
            "floor passes per update",
            f"{passes['task_loss_forwards']} fwd (batch {BATCH}) + {fwd_bwd} fwd+bwd (1 row)",
        ),
        h.detail("floor seconds per update", f"{floor['seconds_per_update']:.3f} s"),
        h.detail(
            "  of which task loss / task grads / domain grads",
            " / ".join(f"{parts[k]:.3f}" for k in FLOOR_PARTS) + " s",
        ),
        Figure("  dids: measured / floor of forward+backward passes", floor["measured_over_floor"]),
        h.detail("train_runtime, dids (median)", f"{runtime['dids_median_s']:.2f} s"),
        h.detail("train_runtime, uniform (median)", f"{uniform:.2f} s"),
        h.detail(
            "dids run outside updates / uniform run",
            f"{runtime['dids_outside_updates_s'] / uniform:.3f} (work ratio, total_flos: {runtime['total_flos_ratio']:.3f})",
        ),
        Figure(
            "dids: whole-run train_runtime dids / uniform",
            runtime["ratio"],
            text=f"{runtime['ratio']:.3f} ({100 * runtime['update_share']:.1f} % of the run inside updates)",
        ),
        *(h.detail(f"impact peak memory growth, k={r['k']} (m={r['m']})", _memory_text(r)) for r in memory),
        *(
            h.detail(
                f"impact seconds per domain, k={r['k']}",
                f"{1000 * r['seconds_per_domain']:.2f} ms ({r['seconds']:.2f} s per call)",
            )
            for r in memory
        ),
    ]
    if len(memory) > 1:
        lo, hi = memory[0], memory[-1]
        ratio = _peak(hi) / max(_peak(lo), 1e-9)
        text = f"{ratio:.2f} (k={hi['k']}: {_peak(hi):.2f} MB, k={lo['k']}: {_peak(lo):.2f} MB)"
        name = "dids: impact peak memory growth, largest k / smallest k"
        out.append(Figure(name, ratio, text=text, target_text="~1: flat in k (README)"))
    from llamafactory_dids.runtime.probe import GRAM_EXACT_BYTES, GRAM_SKETCH_DIM

    for r in memory:  # the default impact (`pool_cosine`) also keeps every domain's gradient for its Gram
        exact_mb, sketched_mb = 2 * r["all_domain_gradients_mb"], r["k"] * GRAM_SKETCH_DIM * 8 / 2**20
        gram_mb = exact_mb if exact_mb <= GRAM_EXACT_BYTES / 2**20 else sketched_mb  # the probe's own rule
        text = f"+{gram_mb:.1f} MB (k x probed parameters x 8 bytes up to 1 GiB, else k x sketch: {sketched_mb:.1f} MB)"
        out.append(h.detail(f"  the default's Gram vectors on top, k={r['k']} (from the shapes)", text))
    return out


figures, main = h.entry("dids_update.py", build_parser, measure, {"updates": 10, "repeats": 1})

if __name__ == "__main__":
    sys.exit(main())
