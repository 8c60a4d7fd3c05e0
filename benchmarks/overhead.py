#!/usr/bin/env python
"""What llamafactory-dids costs: training wall time, and interpreter start-up time.

    python benchmarks/overhead.py                      # defaults: 200 steps, 3 repeats, ~5 min on 2 cores
    python benchmarks/overhead.py --json overhead.json --check

Method: benchmarks/README.md, overhead.py. Exit code 0 unless `--check` is given and a target is missed.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _harness as h  # benchmarks/ is on sys.path when a script runs
from _harness import Figure

BATCH = 8
TRAIN_RATIO_TARGET = 1.02
STARTUP_TARGET_MS = 2.0
PTH_NAME = "llamafactory_dids.pth"
VARIANTS = ("stock", "plugin", "plugin_noloss")
QUICK = {"steps": 40, "repeats": 1, "startup_runs": 30, "warmup": False}


def _worker(timings_path: str, config_path: str) -> None:
    """Run one training exactly like `llamafactory-cli train CONFIG`, recording optimizer-step times."""
    import yaml
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        wall: list[float] = []
        cpu: list[float] = []

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            self.wall.append(time.perf_counter())
            self.cpu.append(time.process_time())

        on_train_begin = on_step_end

    from llamafactory.train.tuner import run_exp  # imported here: the start-up hook patches it now

    timer = StepTimer()
    with open(config_path, encoding="utf-8") as f:
        run_exp(yaml.safe_load(f), callbacks=[timer])
    import llamafactory_dids
    from llamafactory_dids.integration.patch import is_applied

    timings = {"wall": timer.wall, "cpu": timer.cpu, "plugin_applied": is_applied()}
    timings["plugin_source"] = os.path.dirname(llamafactory_dids.__file__)
    Path(timings_path).write_text(json.dumps(timings), encoding="utf-8")


# ------------------------------------------------------------------------------- A. training time


def train_config(assets: Any, output_dir: Path, variant: str, steps: int, packing: bool) -> dict[str, Any]:
    from llamafactory_dids.demo import demo_training_config

    config = demo_training_config(
        assets,
        output_dir,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,  # below 1: a fraction of the run (transformers 5 deprecates warmup_ratio)
    )
    if packing:
        config["packing"] = True
    if variant == "stock":
        config["max_steps"] = steps
    else:
        config.update(dids_strategy="uniform", dids_budget=steps * BATCH)
        if variant == "plugin_noloss":
            config["dids_log_domain_loss"] = False
    return config


def run_training(workdir: Path, assets: Any, variant: str, steps: int, args: Any, tag: str) -> dict[str, Any]:
    timings_path = workdir / "runs" / f"{tag}.timings.json"
    timings_path.parent.mkdir(parents=True, exist_ok=True)
    run = h.train(
        workdir / "runs" / tag,
        lambda out: train_config(assets, out, variant, steps, args.packing),
        args.threads,
        cmd=[sys.executable, os.path.abspath(__file__), "--worker", str(timings_path)],
        LLAMAFACTORY_DIDS_DISABLE="1" if variant == "stock" else None,
    )
    timings = json.loads(timings_path.read_text(encoding="utf-8"))
    if timings["plugin_applied"] != (variant != "stock"):
        raise RuntimeError(f"run {tag}: plugin applied = {timings['plugin_applied']}, expected the opposite.")
    step_wall, step_cpu = (
        [b - a for a, b in zip(t, t[1:], strict=False)] for t in (timings["wall"], timings["cpu"])
    )
    out = {"variant": variant, "tag": tag, **run.timings(), "train_loss": float(run.results["train_loss"])}
    out.update(steps=len(step_wall), plugin_source=timings["plugin_source"])
    out["step_ms"] = [round(1000 * s, 3) for s in step_wall[1:]]  # first step (warm-up) excluded
    out["step_cpu_ms"] = [round(1000 * s, 3) for s in step_cpu[1:]]
    return out


def measure_training(workdir: Path, assets: Any, args: Any) -> dict[str, Any]:
    if args.warmup:
        print(f"[train] warm-up run (stock, {min(args.steps, 10)} steps, not counted)", flush=True)
        run_training(workdir, assets, "stock", min(args.steps, 10), args, "warmup")
    runs: list[dict[str, Any]] = []
    for r, variant in h.rotated(VARIANTS, args.repeats):  # no variant always runs first
        runs.append(
            run := {**run_training(workdir, assets, variant, args.steps, args, f"{variant}-{r}"), "repeat": r}
        )
        print(
            f"[train] repeat {r} {variant:<14} train_runtime {run['train_runtime_s']:7.3f} s   "
            f"process {run['process_wall_s']:6.1f} s   median step {h.median(run['step_ms']):6.1f} ms   "
            f"steps {run['steps']}   flos {run['total_flos']:.4g}",
            flush=True,
        )
    summary: dict[str, Any] = {}
    by_round = {(r["variant"], r["repeat"]): r["train_runtime_s"] for r in runs}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        if len(steps_seen := {r["steps"] for r in mine}) != 1:
            raise RuntimeError(f"{variant}: runs disagree on the number of steps: {sorted(steps_seen)}")
        times = [r["train_runtime_s"] for r in mine]
        summary[variant] = {"steps": steps_seen.pop(), "spread": (max(times) - min(times)) / h.median(times)}
        for key in ("train_runtime_s", "process_wall_s", "total_flos"):
            summary[variant][key] = h.median([r[key] for r in mine])
        for key in ("step_ms", "step_cpu_ms"):
            summary[variant][key] = h.median([s for r in mine for s in r[key]])
        ratios = [by_round[(variant, r)] / by_round[("stock", r)] for r in range(args.repeats)]
        summary[variant]["paired_ratios"] = ratios
    if summary["stock"]["steps"] != summary["plugin"]["steps"]:
        raise RuntimeError(
            f"stock ran {summary['stock']['steps']} steps but the plugin {summary['plugin']['steps']}: "
            "the comparison is not like for like."
        )
    return {"runs": runs, "summary": summary}


# -------------------------------------------------------------------------------- B. start-up time

_IMPORTTIME = re.compile(r"^import time:\s*(\d+)\s*\|\s*(\d+)\s*\|(\s*)(\S+)\s*$")

# Run as `python -S -c CODE`: reproduces site.py's start-up (`site.main()`), skipping the .pth file named
# SKIP and timing, in-process, how long site.py takes to process our .pth (read it, run its line, and
# whatever that line imports). Prints that time in ns (-1 in the arm that skips it).
_AB_CODE = (
    "import site, time\n"
    "_add, _ns = site.addpackage, []\n"
    "def _addpackage(sitedir, name, known_paths, _skip={skip!r}, _ours={ours!r}):\n"
    "    if name == _skip:\n"
    "        return known_paths\n"
    "    if name != _ours:\n"
    "        return _add(sitedir, name, known_paths)\n"
    "    t0 = time.perf_counter_ns()\n"
    "    out = _add(sitedir, name, known_paths)\n"
    "    _ns.append(time.perf_counter_ns() - t0)\n"
    "    return out\n"
    "site.addpackage = _addpackage\n"
    "site.main()\n"
    "print(_ns[0] if _ns else -1)\n"
)

# The meta-path finder the hook leaves in sys.meta_path is asked first about every later import.
_FINDER_CODE = (
    "import sys, timeit\n"
    "hooks = [f for f in sys.meta_path if 'dids' in (type(f).__name__ + type(f).__module__).lower()]\n"
    "if not hooks:\n"
    "    print(-1)\n"
    "else:\n"
    "    n = 200000\n"
    "    t = min(timeit.repeat(lambda: hooks[0].find_spec('json.decoder', None, None), number=n, repeat=5))\n"
    "    print(1e9 * t / n)\n"
)
_COUNT_CODE = "import sys; n = len(sys.modules); import llamafactory.train.tuner; print(len(sys.modules) - n)"


def find_pth() -> Path | None:
    import site

    dirs = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    return next((Path(d) / PTH_NAME for d in dirs if (Path(d) / PTH_NAME).is_file()), None)


def importtime_us(env: dict[str, str]) -> int:
    """Microseconds of the plugin's modules imported at start-up by one `python -X importtime -c pass`:
    the cumulative column of the outermost `llamafactory_dids*` rows (0 when the .pth imports none)."""
    cmd = [sys.executable, "-X", "importtime", "-c", "pass"]
    stderr = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stderr
    rows = []
    for line in stderr.splitlines():
        m = _IMPORTTIME.match(line)
        if m and m.group(4).split(".")[0] == "llamafactory_dids":
            rows.append((len(m.group(3)), int(m.group(2))))
    top = min((depth for depth, _ in rows), default=0)
    return sum(us for depth, us in rows if depth == top)


def _run(cmd: list[str], env: dict[str, str]) -> str:
    return subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def measure_startup(workdir: Path, runs: int) -> dict[str, Any]:
    pth = find_pth()
    out: dict[str, Any] = {"pth": str(pth) if pth else None, "runs": runs}
    if pth is None:
        print(f"[startup] {PTH_NAME} is not installed in this environment: nothing to measure", flush=True)
        return out
    out["pth_text"] = pth.read_text(encoding="utf-8")
    cache = {"PYTHONPYCACHEPREFIX": str(workdir / "pycache"), "PYTHONDONTWRITEBYTECODE": None}
    modes = {"as_is": h.offline_env(), "bytecode_cache": h.offline_env(**cache)}
    with_cmd = [sys.executable, "-S", "-c", _AB_CODE.format(skip="<no such file>.pth", ours=PTH_NAME)]
    without_cmd = [sys.executable, "-S", "-c", _AB_CODE.format(skip=PTH_NAME, ours=PTH_NAME)]
    for mode, env in modes.items():  # the hook stays active: offline_env drops LLAMAFACTORY_DIDS_DISABLE
        for _ in range(3):  # warm the page cache (and, in bytecode_cache mode, fill the cache)
            importtime_us(env)
            _run(with_cmd, env)
        imports = [importtime_us(env) for _ in range(runs)]
        pth_ns: list[int] = []
        arms = {
            "without": lambda env=env: _run(without_cmd, env),
            "with": lambda env=env, ns=pth_ns: ns.append(int(_run(with_cmd, env))),
            "plain": lambda env=env: _run([sys.executable, "-c", "pass"], env),
        }
        s = h.interleaved(arms, runs)  # which arm goes first alternates, so drifts in machine speed cancel
        if min(pth_ns) < 0:
            raise RuntimeError(f"site.py did not process {pth} in the timed arm ({mode}).")
        diffs = [a - b for a, b in zip(s["with"], s["without"], strict=True)]
        out[mode] = r = {
            "pth_ms": h.median(pth_ns) / 1e6,
            "pth_ms_p90": statistics.quantiles(pth_ns, n=10)[-1] / 1e6,
            "importtime_ms": h.median(imports) / 1000,
            "wall_plain_ms": 1000 * h.median(s["plain"]),
            "wall_with_pth_ms": 1000 * h.median(s["with"]),
            "wall_without_pth_ms": 1000 * h.median(s["without"]),
            "wall_paired_diff_ms": 1000 * h.median(diffs),
        }
        print(
            f"[startup] {mode:<14} .pth processing {r['pth_ms']:.3f} ms (p90 {r['pth_ms_p90']:.3f}); "
            f"importtime of plugin modules {r['importtime_ms']:.3f} ms; python -c pass {r['wall_plain_ms']:.1f} ms; "
            f"A/B with {r['wall_with_pth_ms']:.2f} / without {r['wall_without_pth_ms']:.2f} ms, "
            f"paired diff {r['wall_paired_diff_ms']:+.3f} ms",
            flush=True,
        )
    finder = out["finder_ns_per_import"] = float(_run([sys.executable, "-c", _FINDER_CODE], h.offline_env()))
    count_env = h.offline_env(LLAMAFACTORY_DIDS_DISABLE="1")  # count only: do not patch
    count = out["modules_imported_by_tuner"] = int(
        _run([sys.executable, "-c", _COUNT_CODE], count_env).split()[-1]
    )
    if finder >= 0:
        out["finder_ms_for_tuner_import"] = finder * count / 1e6
        print(f"[startup] meta-path finder: {finder:.0f} ns per later import x {count} modules of the tuner")
    return out


# ------------------------------------------------------------------------------------------ report


def report(training: dict[str, Any] | None, startup: dict[str, Any] | None) -> list[Figure]:
    """Every figure; the detail rows are printed here only, the others by `run_all.py` too."""
    out: list[Figure] = []

    def detail(name: str, text: str, *values: float) -> None:
        out.append(h.detail(name, text.format(*values)))

    if training is not None:
        stock, plugin, noloss = (training["summary"][v] for v in VARIANTS)
        t0, t1, t2 = (v["train_runtime_s"] for v in (stock, plugin, noloss))
        ratio, work, pr = t1 / t0, plugin["total_flos"] / stock["total_flos"], plugin["paired_ratios"]
        detail(
            "train_runtime median: stock / plugin / plugin no domain loss (s)",
            "{:.3f} / {:.3f} / {:.3f}",
            t0,
            t1,
            t2,
        )
        one_round = ", 1 round: indicative only)" if len(pr) < 2 else ")"
        text = f"{ratio:.4f} ({t1:.2f} / {t0:.2f} s{one_round}"
        name = "training time ratio plugin / stock LLaMA-Factory"
        out.append(Figure(name, ratio, target=TRAIN_RATIO_TARGET, comparator="<=", text=text))
        detail(
            "  per-round ratios plugin/stock: min / median / max",
            "{:.3f} / {:.3f} / {:.3f}",
            min(pr),
            h.median(pr),
            max(pr),
        )
        name = "  run-to-run spread of stock train_runtime (resolution of the ratio)"
        out.append(Figure(name, 100 * stock["spread"], unit="%"))
        detail("  plugin without domain loss / stock", "{:.4f}", t2 / t0)
        detail("  domain-loss cost: plugin / plugin without it", "{:.4f}", t1 / t2)
        detail("  work ratio plugin/stock (total_flos, padding included)", "{:.4f}", work)
        detail("  train_runtime ratio per unit of work", "{:.4f}", ratio / work)
        steps = (stock["step_ms"], plugin["step_ms"], noloss["step_ms"])
        detail("  median step time: stock / plugin / no domain loss (ms)", "{:.2f} / {:.2f} / {:.2f}", *steps)
        detail("  median step time ratio plugin/stock", "{:.4f}", steps[1] / steps[0])
        walls = (stock["process_wall_s"], plugin["process_wall_s"])
        detail("  process wall time median: stock / plugin (s)", "{:.1f} / {:.1f}", *walls)
    for mode, label in (("as_is", "as is"), ("bytecode_cache", "bytecode cache")):
        if startup is not None and mode in startup:
            m, name = startup[mode], f"start-up: site.py on llamafactory_dids.pth ({label})"
            out.append(Figure(name, m["pth_ms"], unit="ms", target=STARTUP_TARGET_MS, comparator="<"))
            detail(f"  importtime of plugin modules at start-up ({label}) (ms)", "{:.3f}", m["importtime_ms"])
            detail(
                f"  wall A/B paired diff, with - without .pth ({label}) (ms)",
                "{:+.3f}",
                m["wall_paired_diff_ms"],
            )
            detail(f"  wall python -c pass ({label}) (ms)", "{:.1f}", m["wall_plain_ms"])
    if startup is not None and "finder_ms_for_tuner_import" in startup:
        name = "meta-path finder, per later import (ns) / over `import llamafactory.train.tuner` (ms)"
        detail(
            name, "{:.0f} / {:.2f}", startup["finder_ns_per_import"], startup["finder_ms_for_tuner_import"]
        )
    return out


# -------------------------------------------------------------------------------------------- main


def build_parser() -> Any:
    p = h.parser(__doc__, quick="40 steps, 1 round, 30 start-up runs, no warm-up")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per training run (default 200)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the variants (default 3)")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    p.add_argument("--startup-runs", type=int, default=200, help="runs per arm for the start-up figures")
    p.add_argument("--examples-per-domain", type=int, default=200, help="demo dataset size per domain")
    p.add_argument("--packing", action="store_true", help="train with `packing: true` (equal work per batch)")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed warm-up run")
    p.add_argument("--skip-training", action="store_true", help="only measure start-up")
    p.add_argument("--skip-startup", action="store_true", help="only measure training")
    p.add_argument("--worker", nargs=2, metavar=("TIMINGS", "CONFIG"), help=h.argparse.SUPPRESS)
    return p


def measure(args: Any) -> tuple[list[Figure], dict[str, Any]] | None:
    """Run what `args` asks for (or, with --worker, one training run); the figures and the JSON payload."""
    if args.worker:
        return _worker(*args.worker)
    started = time.perf_counter()
    training = startup = None
    with h.workdir(args.workdir, "dids-overhead-") as workdir:
        if not args.skip_startup:
            startup = measure_startup(workdir, args.startup_runs)
        if not args.skip_training:
            assets = h.demo_assets(workdir, examples_per_domain=args.examples_per_domain)
            training = measure_training(workdir, assets, args)
    figures = report(training, startup)
    elapsed = time.perf_counter() - started
    print(f"\n({elapsed:.0f} s in all; python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    keys = ("steps", "repeats", "packing", "threads", "examples_per_domain", "startup_runs")
    settings = {**{k: getattr(args, k) for k in keys}, "batch": BATCH, "python": sys.executable}
    payload = {"settings": settings, "table": [f.as_dict() for f in figures], "training": training}
    return figures, {**payload, "startup": startup, "seconds": round(elapsed, 1)}


figures, main = h.entry("overhead.py", build_parser, measure, QUICK)

if __name__ == "__main__":
    sys.exit(main())
