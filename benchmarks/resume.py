#!/usr/bin/env python
"""Does a resumed llamafactory-dids run see exactly the batches the uninterrupted run saw?

    python benchmarks/resume.py                  # single process
    python benchmarks/resume.py --nproc 2        # torchrun, 2 CPU processes (gloo)
    python benchmarks/resume.py --nproc 1 2 --json resume.json --check

Method: benchmarks/README.md, resume.py. Exit code 0 unless `--check` is given and a target is missed.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from llamafactory_dids.run_files import STATE_FILE, TRACE_DIR, TRAINER_STATE

import _harness as h  # benchmarks/ is on sys.path when a script runs
from _harness import Figure

DOMAINS = ("demo_code", "demo_docs", "demo_comments")
COUNTS = ("counts_from_k_full", "counts_from_k_resumed", "counts_whole_run_full")


def train_config(assets: Any, output_dir: Path, args: Any, save_steps: int) -> dict[str, Any]:
    from llamafactory_dids.demo import demo_training_config

    return demo_training_config(
        assets,
        output_dir,
        dataset=",".join(DOMAINS),
        dids_strategy="static",
        dids_static_weights=dict(zip(DOMAINS, args.weights, strict=True)),
        dids_budget=args.budget,
        dids_on_exhausted="reshuffle",
        dids_trace_samples=True,
        logging_steps=1,
        save_strategy="steps",
        save_steps=save_steps,
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,  # below 1: a fraction of the run (transformers 5 deprecates warmup_ratio)
    )


def read_traces(output_dir: Path) -> dict[tuple[int, int], list[dict[str, Any]]]:
    """(rank, step) -> the trace records of that step (one per micro-batch), in file order."""
    out: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    files = sorted((output_dir / TRACE_DIR).glob("rank*.jsonl"))
    if not files:
        raise RuntimeError(f"no trace files in {output_dir / TRACE_DIR}")
    for path in files:
        rank = int(path.stem.removeprefix("rank"))
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                out[(rank, int(record["step"]))].append(record)
    return dict(out)


def domain_counts(records: list[dict[str, Any]], names: list[str]) -> dict[str, int]:
    counts = Counter(d for r in records for d in r["domains"])
    return {name: counts.get(i, 0) for i, name in enumerate(names)}


def logged_losses(output_dir: Path) -> dict[int, float]:
    state = json.loads((output_dir / TRAINER_STATE).read_text(encoding="utf-8"))
    return {int(e["step"]): float(e["loss"]) for e in state["log_history"] if "loss" in e}


def check_resume(assets: Any, workdir: Path, nproc: int, args: Any) -> dict[str, Any]:
    per_step = args.batch * nproc
    total_steps = -(-args.budget // per_step)
    k = args.save_steps or max(1, (total_steps * 2) // 5)
    if not 0 < k < total_steps:
        raise SystemExit(f"--save-steps {k} must lie strictly inside the run (1..{total_steps - 1}).")
    base = workdir / f"nproc{nproc}"
    shutil.rmtree(base, ignore_errors=True)
    full_dir, resumed_dir = base / "full" / "output", base / "resumed" / "output"
    env = h.torchrun_env(nproc)

    print(
        f"[nproc {nproc}] uninterrupted run: {total_steps} steps of {per_step} samples, checkpoint every {k}"
    )
    full_s = h.train(
        base / "full", lambda out: train_config(assets, out, args, k), args.threads, **env
    ).seconds
    checkpoint = full_dir / f"checkpoint-{k}"
    if not checkpoint.is_dir():
        raise RuntimeError(f"{checkpoint} was not written")
    shutil.copytree(checkpoint, resumed_dir / checkpoint.name)
    resume = {"resume_from_checkpoint": str(resumed_dir / checkpoint.name), "overwrite_output_dir": False}
    print(f"[nproc {nproc}] resumed run from a copy of {checkpoint.name}", flush=True)
    run = h.train(
        base / "resumed", lambda out: {**train_config(assets, out, args, k), **resume}, args.threads, **env
    )

    state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    names, sizes = list(state["domains"]), list(state["domain_sizes"])
    full, resumed = read_traces(full_dir), read_traces(resumed_dir)
    expected = {key: recs for key, recs in full.items() if key[1] >= k}
    early = sorted(key for key in resumed if key[1] < k)
    mismatched = sorted(key for key in expected if key in resumed and resumed[key] != expected[key])
    missing = sorted(key for key in expected if key not in resumed)
    extra = sorted(key for key in resumed if key[1] >= k and key not in expected)
    compared = sorted(key for key in expected if key in resumed)
    first_resumed = min((step for _, step in resumed), default=None)

    final = max(full_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))  # k's at least
    events = json.loads((final / STATE_FILE).read_text(encoding="utf-8"))["sampler"].get("events", [])
    loss_full, loss_resumed = logged_losses(full_dir), logged_losses(resumed_dir)
    loss_steps = sorted(s for s in loss_full if s > k and s in loss_resumed)
    loss_diff = max((abs(loss_full[s] - loss_resumed[s]) for s in loss_steps), default=float("nan"))
    result = {
        "nproc": nproc,
        "ranks": sorted({rank for rank, _ in full}),
        "total_steps": total_steps,
        "checkpoint_step": k,
        "first_resumed_step": first_resumed,
        "steps_compared": len({step for _, step in compared}),
        "records_compared": len(compared),
        "mismatches": len(mismatched) + len(missing) + len(extra) + len(early),
        "mismatched_records": [list(key) for key in mismatched[:20]],
        "missing_records": [list(key) for key in missing[:20]],
        "extra_records": [list(key) for key in extra[:20] + early[:20]],
        "domain_sizes": dict(zip(names, sizes, strict=True)),
        "counts_from_k_full": domain_counts([r for key in compared for r in expected[key]], names),
        "counts_from_k_resumed": domain_counts([r for key in compared for r in resumed[key]], names),
        "counts_whole_run_full": domain_counts([r for recs in full.values() for r in recs], names),
        "exhaustion_events": events,
        "exhaustion_events_after_k": sum(1 for e in events if e["position"] >= k * per_step),
        "loss_steps_compared": len(loss_steps),
        "loss_max_abs_diff": loss_diff,
        "seconds": {"full": round(full_s, 1), "resumed": round(run.seconds, 1)},
    }
    result["ok"] = result["mismatches"] == 0 and result["records_compared"] > 0 and first_resumed == k
    return result


def report(r: dict[str, Any]) -> None:
    names = list(r["domain_sizes"])
    by_domain = Counter(names[e["domain"]] for e in r["exhaustion_events"])
    events = ", ".join(f"{n} x{c}" for n, c in by_domain.items()) or "none"
    lines = {
        "first step in the resumed trace": r["first_resumed_step"],
        "steps compared": f"{r['steps_compared']} ({r['records_compared']} rank x step records)",
        "mismatches": r["mismatches"],
        **{
            f"  {k} (rank, step)": r[f"{k}_records"]
            for k in ("mismatched", "missing", "extra")
            if r[f"{k}_records"]
        },
        "exhaustion events (final state)": f"{len(r['exhaustion_events'])} ({events}; "
        f"{r['exhaustion_events_after_k']} after the checkpoint's stream position)",
        "logged loss after k, max |diff|": f"{r['loss_max_abs_diff']:.3g} over {r['loss_steps_compared']} steps",
        "wall time full / resumed": f"{r['seconds']['full']} s / {r['seconds']['resumed']} s",
        "result": "PASS" if r["ok"] else "FAIL",
    }
    print(
        f"\n=== nproc {r['nproc']} (ranks {r['ranks']}): checkpoint-{r['checkpoint_step']} of {r['total_steps']} steps"
    )
    print("\n".join(f"{k:<32}: {v}" for k, v in lines.items()))
    rows = [
        (name, str(size), *(str(r[key][name]) for key in COUNTS), f"{r[COUNTS[-1]][name] / size:.2f}")
        for name, size in r["domain_sizes"].items()
    ]
    print(
        h.format_table(("domain", "rows", "steps>=k full", "steps>=k resumed", "whole run", "passes"), rows)
    )


def build_parser() -> Any:
    p = h.parser(__doc__, quick="one process (--nproc 1)")
    p.add_argument("--nproc", type=int, nargs="+", default=[1], help="process counts to test (default 1)")
    p.add_argument("--budget", type=int, default=320, help="dids_budget in samples (default 320)")
    p.add_argument("--batch", type=int, default=8, help="per-device batch size (default 8)")
    p.add_argument(
        "--save-steps", type=int, default=None, help="K: resume from checkpoint-K (default ~40%% of the run)"
    )
    p.add_argument(
        "--weights",
        type=float,
        nargs=3,
        default=[0.7, 0.2, 0.1],
        metavar=("CODE", "DOCS", "COMMENTS"),
        help="static weights of demo_code, demo_docs, demo_comments (default 0.7 0.2 0.1)",
    )
    p.add_argument("--examples-per-domain", type=int, default=40, help="demo rows per domain (default 40)")
    p.add_argument("--check", action="store_true", help="exit 1 if a comparison fails")
    return p


def measure(args: Any) -> tuple[list[Figure], dict[str, Any]]:
    """Run the uninterrupted and resumed runs for every `--nproc`; print each comparison."""
    results = []
    with h.workdir(args.workdir, "dids-resume-") as workdir:
        assets = h.demo_assets(workdir, examples_per_domain=args.examples_per_domain)
        for nproc in args.nproc:
            results.append(check_resume(assets, workdir, nproc, args))
            report(results[-1])
    return to_figures(results), {"settings": vars(args), "results": results}


def to_figures(results: list[dict[str, Any]]) -> list[Figure]:
    out = []
    for r in results:
        label = f"{r['nproc']} process{'es' if r['nproc'] > 1 else ''}"
        text = f"{r['mismatches']} in {r['records_compared']} rank x step records"
        name = f"resume: mismatched rows after checkpoint-{r['checkpoint_step']} ({label})"
        out.append(Figure(name, r["mismatches"], "", 0, "==", text=text))
        out.append(
            Figure(f"  resume: rank x step records compared ({label})", r["records_compared"], "", 0, ">")
        )
    return out


figures, main = h.entry("resume.py", build_parser, measure, {"nproc": [1]})

if __name__ == "__main__":
    sys.exit(main())
