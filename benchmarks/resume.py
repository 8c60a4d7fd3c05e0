#!/usr/bin/env python
"""Does a resumed llamafactory-dids run see exactly the batches the uninterrupted run saw?

    python benchmarks/resume.py                  # single process
    python benchmarks/resume.py --nproc 2        # torchrun, 2 CPU processes (gloo)
    python benchmarks/resume.py --nproc 1 2 --json resume.json --check

For each process count N the script (offline, in a temporary work directory or `--workdir`):

1. builds the tiny demo model and the datasets demo_code, demo_docs, demo_comments
   (`llamafactory_dids.demo.build_demo_assets`, `--examples-per-domain` rows each, default 40);
2. runs `llamafactory-cli train` once without interruption (`FORCE_TORCHRUN=1 NPROC_PER_NODE=N` when
   N > 1) with `dids_strategy: static`, uneven weights (default code 0.7, docs 0.2, comments 0.1) and a
   small `dids_budget` (default 320 samples), so that the heavy domain is drawn several times over and
   the sampler's exhaustion path (`dids_on_exhausted: reshuffle`) runs before and after the checkpoint;
   `dids_trace_samples: true` writes the training-set row ids of every optimizer step to
   `output_dir/dids_trace/rank*.jsonl` (`{"step": s, "rows": [...], "domains": [...]}`), and
   `save_steps: K` writes `checkpoint-K` (K defaults to about 40 % of the run);
3. copies only `checkpoint-K` into a fresh output directory and runs again with
   `resume_from_checkpoint: <that copy>` and `overwrite_output_dir: false`;
4. compares, rank by rank, the trace records of every step >= K: row ids and domain ids must be
   identical, no step may be missing or extra, and the resumed trace must start at step K.

It prints the number of steps (and rank x step records) compared, the mismatches, the per-domain
counts of the compared steps in both runs and over the whole uninterrupted run (with each domain's
size, so the reshuffles are visible), the exhaustion events recorded in the final checkpoint, and the
largest difference of the logged training loss after step K (informational: CPU runs are expected to
reproduce it exactly or to rounding).

The exit code is 0 unless `--check` is given and a comparison fails (a mismatch, or nothing compared).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from llamafactory_dids.run_files import STATE_FILE, TRACE_DIR, TRAINER_STATE

from _figures import Figure  # benchmarks/ is on sys.path when a script runs

DOMAINS = ("demo_code", "demo_docs", "demo_comments")


def find_cli() -> str:
    from llamafactory_dids.cli import find_llamafactory_cli

    found = find_llamafactory_cli()
    if found is None:
        raise SystemExit("llamafactory-cli not found next to this interpreter nor on PATH.")
    return found


def train_config(assets: Any, output_dir: Path, args: argparse.Namespace, save_steps: int) -> dict[str, Any]:
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


def run_cli(cli: str, config: dict[str, Any], run_dir: Path, nproc: int) -> float:
    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = dict(os.environ)
    env.pop("LLAMAFACTORY_DIDS_DISABLE", None)
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    # torchrun (launched by llamafactory-cli) must come from this environment even if it is not activated
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if nproc > 1:
        env.update(
            {
                "FORCE_TORCHRUN": "1",
                "NPROC_PER_NODE": str(nproc),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(random.randint(20000, 40000)),
            }
        )
    else:
        env.pop("FORCE_TORCHRUN", None)
    log_path = run_dir / "train.log"
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run([cli, "train", str(config_path)], env=env, stdout=log, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"`llamafactory-cli train {config_path}` failed (exit {proc.returncode}):\n{tail}")
    return elapsed


def read_traces(output_dir: Path) -> dict[tuple[int, int], list[dict[str, Any]]]:
    """(rank, step) -> the trace records of that step (one per micro-batch), in file order."""
    out: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    files = sorted((output_dir / TRACE_DIR).glob("rank*.jsonl"))
    if not files:
        raise RuntimeError(f"no trace files in {output_dir / TRACE_DIR}")
    for path in files:
        rank = int(path.stem.removeprefix("rank"))
        with open(path, encoding="utf-8") as f:
            for line in f:
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


def check_resume(
    cli: str, assets: Any, workdir: Path, nproc: int, args: argparse.Namespace
) -> dict[str, Any]:
    per_step = args.batch * nproc
    total_steps = -(-args.budget // per_step)
    k = args.save_steps or max(1, (total_steps * 2) // 5)
    if not 0 < k < total_steps:
        raise SystemExit(f"--save-steps {k} must lie strictly inside the run (1..{total_steps - 1}).")
    base = workdir / f"nproc{nproc}"
    shutil.rmtree(base, ignore_errors=True)
    full_dir, resumed_dir = base / "full" / "output", base / "resumed" / "output"

    print(
        f"[nproc {nproc}] uninterrupted run: {total_steps} steps of {per_step} samples, checkpoint every {k}",
        flush=True,
    )
    full_s = run_cli(cli, train_config(assets, full_dir, args, k), base / "full", nproc)
    checkpoint = full_dir / f"checkpoint-{k}"
    if not checkpoint.is_dir():
        raise RuntimeError(f"{checkpoint} was not written")
    resumed_dir.mkdir(parents=True)
    shutil.copytree(checkpoint, resumed_dir / checkpoint.name)
    config = train_config(assets, resumed_dir, args, k)
    config.update(
        {"resume_from_checkpoint": str(resumed_dir / checkpoint.name), "overwrite_output_dir": False}
    )
    print(f"[nproc {nproc}] resumed run from a copy of {checkpoint.name}", flush=True)
    resumed_s = run_cli(cli, config, base / "resumed", nproc)

    state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    names, sizes = list(state["domains"]), list(state["domain_sizes"])
    full, resumed = read_traces(full_dir), read_traces(resumed_dir)
    expected = {key: recs for key, recs in full.items() if key[1] >= k}
    early = sorted(key for key in resumed if key[1] < k)
    mismatched = sorted(key for key in expected if key in resumed and resumed[key] != expected[key])
    missing = sorted(key for key in expected if key not in resumed)
    extra = sorted(key for key in resumed if key[1] >= k and key not in expected)
    compared = sorted(key for key in expected if key in resumed)
    ranks = sorted({rank for rank, _ in full})
    first_resumed = min((step for _, step in resumed), default=None)

    final_checkpoints = sorted(full_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    events: list[dict[str, Any]] = []
    if final_checkpoints:
        last_state = json.loads((final_checkpoints[-1] / STATE_FILE).read_text(encoding="utf-8"))
        events = last_state["sampler"].get("events", [])

    loss_full, loss_resumed = logged_losses(full_dir), logged_losses(resumed_dir)
    loss_steps = sorted(s for s in loss_full if s > k and s in loss_resumed)
    loss_diff = max((abs(loss_full[s] - loss_resumed[s]) for s in loss_steps), default=float("nan"))

    all_full = [r for recs in full.values() for r in recs]
    result = {
        "nproc": nproc,
        "ranks": ranks,
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
        "counts_whole_run_full": domain_counts(all_full, names),
        "exhaustion_events": events,
        "exhaustion_events_after_k": sum(1 for e in events if e["position"] >= k * per_step),
        "loss_steps_compared": len(loss_steps),
        "loss_max_abs_diff": loss_diff,
        "seconds": {"full": round(full_s, 1), "resumed": round(resumed_s, 1)},
    }
    result["ok"] = result["mismatches"] == 0 and result["records_compared"] > 0 and first_resumed == k
    return result


def report(r: dict[str, Any]) -> None:
    print(
        f"\n=== nproc {r['nproc']} (ranks {r['ranks']}): resume from checkpoint-{r['checkpoint_step']} of {r['total_steps']} steps"
    )
    print(f"first step in the resumed trace : {r['first_resumed_step']}")
    print(
        f"steps compared                  : {r['steps_compared']} ({r['records_compared']} rank x step records)"
    )
    print(f"mismatches                      : {r['mismatches']}")
    for label, key in (
        ("mismatched", "mismatched_records"),
        ("missing", "missing_records"),
        ("extra", "extra_records"),
    ):
        if r[key]:
            print(f"  {label} (rank, step): {r[key]}")
    width = max(len(n) for n in r["domain_sizes"])
    print(
        f"{'domain':<{width}}  {'rows':>5}  {'steps>=k full':>13}  {'steps>=k resumed':>16}  {'whole run':>9}  {'passes':>6}"
    )
    for name, size in r["domain_sizes"].items():
        whole = r["counts_whole_run_full"][name]
        print(
            f"{name:<{width}}  {size:>5}  {r['counts_from_k_full'][name]:>13}  {r['counts_from_k_resumed'][name]:>16}"
            f"  {whole:>9}  {whole / size:>6.2f}"
        )
    names = list(r["domain_sizes"])
    by_domain = Counter(names[e["domain"]] for e in r["exhaustion_events"])
    print(
        f"exhaustion events (final state)  : {len(r['exhaustion_events'])} "
        f"({', '.join(f'{n} x{c}' for n, c in by_domain.items()) or 'none'}; "
        f"{r['exhaustion_events_after_k']} after the checkpoint's stream position)"
    )
    print(
        f"logged loss after k, max |diff|  : {r['loss_max_abs_diff']:.3g} over {r['loss_steps_compared']} steps"
    )
    print(f"wall time full / resumed         : {r['seconds']['full']} s / {r['seconds']['resumed']} s")
    print(f"result                           : {'PASS' if r['ok'] else 'FAIL'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nproc", type=int, nargs="+", default=[1], help="process counts to test (default 1)"
    )
    parser.add_argument("--budget", type=int, default=320, help="dids_budget in samples (default 320)")
    parser.add_argument("--batch", type=int, default=8, help="per-device batch size (default 8)")
    parser.add_argument(
        "--save-steps", type=int, default=None, help="K: resume from checkpoint-K (default ~40%% of the run)"
    )
    parser.add_argument(
        "--weights",
        type=float,
        nargs=3,
        default=[0.7, 0.2, 0.1],
        metavar=("CODE", "DOCS", "COMMENTS"),
        help="static weights of demo_code, demo_docs, demo_comments (default 0.7 0.2 0.1)",
    )
    parser.add_argument(
        "--examples-per-domain", type=int, default=40, help="demo rows per domain (default 40)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="work directory (default: a temporary one, removed)"
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="OUT", help="also write the results to this JSON file"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a comparison fails")
    return parser


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the uninterrupted and resumed runs for every `--nproc`; print and return each comparison."""
    from llamafactory_dids.demo import build_demo_assets

    cli = find_cli()
    cleanup = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="dids-resume-")) if cleanup else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        assets = build_demo_assets(workdir / "assets", examples_per_domain=args.examples_per_domain)
        for nproc in args.nproc:
            result = check_resume(cli, assets, workdir, nproc, args)
            report(result)
            results.append(result)
    finally:
        if cleanup:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def to_figures(results: list[dict[str, Any]], command: str) -> list[Figure]:
    out = []
    for r in results:
        label = f"{r['nproc']} process{'es' if r['nproc'] > 1 else ''}"
        out.append(
            Figure(
                f"resume: mismatched rows after checkpoint-{r['checkpoint_step']} ({label})",
                r["mismatches"],
                target=0,
                comparator="==",
                text=f"{r['mismatches']} in {r['records_compared']} rank x step records",
                command=command,
            )
        )
        out.append(
            Figure(
                f"  resume: rank x step records compared ({label})",
                r["records_compared"],
                target=0,
                comparator=">",
                command=command,
            )
        )
    return out


def figures(argv: list[str] | None = None) -> list[Figure]:
    """Measure as `python benchmarks/resume.py ARGV` does and return the figures (see _figures.py)."""
    argv = list(argv or [])
    results = measure(build_parser().parse_args(argv))
    return to_figures(results, " ".join(["python benchmarks/resume.py", *argv]))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = measure(args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
        payload["results"] = results
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    if args.check and not all(r["ok"] for r in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
