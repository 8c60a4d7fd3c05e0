#!/usr/bin/env python
"""What llamafactory-dids costs: training wall time, and interpreter start-up time.

Run it from the environment that has the plugin installed (the interpreter running this script is
the one measured):

    python benchmarks/overhead.py                      # defaults: 200 steps, 3 repeats, ~5 min on 2 cores
    python benchmarks/overhead.py --json overhead.json --check

Everything runs offline in a temporary work directory (or `--workdir`): the tiny Llama, tokenizer and the
three demo datasets come from `llamafactory_dids.demo.build_demo_assets`.

A. Training wall time, plugin vs stock LLaMA-Factory
----------------------------------------------------
The same tiny SFT run (datasets demo_code, demo_docs, demo_comments; full fine-tuning; cutoff_len 256;
per-device batch 8; `report_to: none`; `save_strategy: no`; `logging_steps: 10`) in three variants:

- `stock`:  `LLAMAFACTORY_DIDS_DISABLE=1` (the start-up hook installs nothing, LLaMA-Factory is not
  patched), no `dids_*` keys, `max_steps: STEPS`;
- `plugin`: hook active, `dids_strategy: uniform`, `dids_budget: STEPS * 8` and no `max_steps`, which
  gives the same number of optimizer steps; per-domain loss logging on (the default);
- `plugin_noloss`: as `plugin` with `dids_log_domain_loss: false`, to show what the per-domain loss costs.

The runs are interleaved `--repeats` times (round 0: stock, plugin, plugin_noloss; round 1 starts
with plugin, round 2 with plugin_noloss, ...) so that slow phases of a shared machine hit every variant
alike and no variant always runs first; one short untimed warm-up run comes before. Each run is its
own process (`python overhead.py --worker CONFIG TIMINGS`, which calls LLaMA-Factory's own
`llamafactory.train.tuner.run_exp` exactly as `llamafactory-cli train CONFIG` does, plus one passive
step-timing callback). Each training process gets `OMP_NUM_THREADS=MKL_NUM_THREADS=--threads`
(default 1): on a small shared machine two OpenMP threads stall on each other whenever a neighbour
takes a core, and run times then swing by 3x between identical runs, which buries a 2 % effect.

Per run the script records:

- `train_runtime` from `output_dir/train_results.json`: the Trainer's own timer around the training
  loop, i.e. no interpreter start-up, model or data loading, tokenisation or final save. The target
  applies to the ratio of the medians, plugin / stock <= 1.02. Also printed: the per-round ratios and
  the run-to-run spread of the stock runs, which is the resolution of the verdict;
- the total process wall time (start-up, imports, data loading and saving included), for reference;
- the median time between consecutive optimizer steps (first step excluded, pooled over the repeats),
  from the callback: less sensitive to short bursts of noise than the total (informational);
- `total_flos` from `train_results.json`: the Trainer counts every input id, padding included, so the
  plugin/stock ratio of this figure says whether both variants did the same work. They do not quite:
  the two samplers pick different rows, so the padded batch lengths differ by a few percent at
  60 steps and about 1 % at 200. The runtime ratio divided by the work ratio is printed too
  (informational: step time is not purely proportional to tokens).

`--packing` adds `packing: true` (every batch is then ~8 x 256 tokens in both variants, so the work is
equal by construction); the default is the unpacked run described above.

B. Start-up time the hook adds to `python -c pass`
--------------------------------------------------
Installing the plugin adds `llamafactory_dids.pth` to site-packages, and site.py runs its line in every
interpreter (`LLAMAFACTORY_DIDS_DISABLE=1` is checked by that line, so it does not make the .pth free).
What the line does is the plugin's business (an earlier version imported `llamafactory_dids._startup`;
the current one installs a meta-path finder with inline stdlib code and imports nothing), so the
measurement does not depend on it. Over `--startup-runs` runs per arm (default 200):

1. Target figure: the time site.py spends on our .pth, measured inside the interpreter. Each run is
   `python -S -c CODE` where CODE imports `site`, wraps `site.addpackage` and calls `site.main()` -- the
   very function site.py runs at start-up without `-S` (venv, every .pth, sitecustomize). The wrapper
   times the `addpackage` call for `llamafactory_dids.pth` with `time.perf_counter_ns` (reading the file,
   executing its line, anything that line imports) and prints it. Median. Target: < 2 ms.
2. `python -X importtime -c pass`: the cumulative time of the outermost `llamafactory_dids*` rows, i.e.
   the plugin modules imported at start-up (0 when the .pth imports none). Median (informational).
3. A wall-time A/B of whole processes, alternating the arms: the same `python -S -c CODE`, where the
   baseline arm's wrapper skips `llamafactory_dids.pth` and the other arm skips nothing. The arms differ
   only in whether our .pth runs. Median of the paired differences (informational: process start-up
   varies by more than the effect; it cross-checks 1.). `python -c pass` itself is timed too.
4. The finder the hook leaves at the front of `sys.meta_path` is asked first about every later import.
   Its cost per import (ns, `timeit` in a fresh interpreter, with a non-target module name) times the
   number of modules `import llamafactory.train.tuner` imports (informational).

1. to 3. are taken twice: in the environment as it is, and with a bytecode cache
(`PYTHONPYCACHEPREFIX=WORKDIR/pycache`, `PYTHONDONTWRITEBYTECODE` unset; the cache lives in the work
directory, nothing is written next to the sources). This matters when the .pth imports plugin modules:
without a cache (e.g. `PYTHONDONTWRITEBYTECODE=1` with an editable install) they are compiled from
source at every start, whereas pip byte-compiles a regular install. The target is checked on both.

Output: a table (figure, value, target, pass/fail). The exit code is 0 (it is a measurement) unless
`--check` is given and a target is missed (exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _figures import Figure  # benchmarks/ is on sys.path when a script runs
from _runs import new_run, offline_env

BATCH = 8
TRAIN_RATIO_TARGET = 1.02
STARTUP_TARGET_MS = 2.0
PTH_NAME = "llamafactory_dids.pth"
VARIANTS = ("stock", "plugin", "plugin_noloss")

# --------------------------------------------------------------------------------- worker process


def _worker(config_path: str, timings_path: str) -> None:
    """Run one training exactly like `llamafactory-cli train CONFIG`, recording optimizer-step times."""
    import yaml
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.wall: list[float] = []
            self.cpu: list[float] = []

        def _mark(self) -> None:
            self.wall.append(time.perf_counter())
            self.cpu.append(time.process_time())

        def on_train_begin(self, args, state, control, **kwargs):
            self._mark()

        def on_step_end(self, args, state, control, **kwargs):
            self._mark()

    from llamafactory.train.tuner import run_exp  # imported here: the start-up hook patches it now

    timer = StepTimer()
    with open(config_path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    run_exp(config, callbacks=[timer])
    import llamafactory_dids
    from llamafactory_dids.integration.patch import is_applied

    timings = {"wall": timer.wall, "cpu": timer.cpu, "plugin_applied": is_applied()}
    timings["plugin_source"] = os.path.dirname(llamafactory_dids.__file__)
    with open(timings_path, "w", encoding="utf-8") as f:
        json.dump(timings, f)


# ------------------------------------------------------------------------------------- helpers


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


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
        config["dids_strategy"] = "uniform"
        config["dids_budget"] = steps * BATCH
        if variant == "plugin_noloss":
            config["dids_log_domain_loss"] = False
    return config


def run_training(
    workdir: Path, assets: Any, variant: str, steps: int, packing: bool, threads: int, tag: str
) -> dict[str, Any]:
    run_dir, output_dir, config_path = new_run(
        workdir, tag, lambda out: train_config(assets, out, variant, steps, packing)
    )
    timings_path = run_dir / "timings.json"
    env = offline_env(LLAMAFACTORY_DIDS_DISABLE="1" if variant == "stock" else None)
    if threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(config_path), str(timings_path)]
    start = time.perf_counter()
    with open(run_dir / "train.log", "w", encoding="utf-8") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=run_dir)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (run_dir / "train.log").read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"training run {tag} failed (exit {proc.returncode}); log tail:\n{tail}")
    results = json.loads((output_dir / "train_results.json").read_text(encoding="utf-8"))
    timings = json.loads(timings_path.read_text(encoding="utf-8"))
    marks_wall, marks_cpu = timings["wall"], timings["cpu"]
    step_wall = [b - a for a, b in zip(marks_wall, marks_wall[1:], strict=False)]
    step_cpu = [b - a for a, b in zip(marks_cpu, marks_cpu[1:], strict=False)]
    expected_applied = variant != "stock"
    if timings["plugin_applied"] != expected_applied:
        raise RuntimeError(
            f"run {tag}: plugin applied = {timings['plugin_applied']}, expected {expected_applied}."
        )
    return {
        "variant": variant,
        "tag": tag,
        "train_runtime_s": float(results["train_runtime"]),
        "process_wall_s": round(wall, 4),
        "total_flos": float(results["total_flos"]),
        "train_loss": float(results["train_loss"]),
        "steps": len(step_wall),
        "plugin_source": timings["plugin_source"],
        "step_ms": [round(1000 * s, 3) for s in step_wall[1:]],  # first step (warm-up) excluded
        "step_cpu_ms": [round(1000 * s, 3) for s in step_cpu[1:]],
    }


def measure_training(
    workdir: Path, assets: Any, steps: int, repeats: int, packing: bool, threads: int, warmup: bool
) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    if warmup:
        print(f"[train] warm-up run (stock, {min(steps, 10)} steps, not counted)", flush=True)
        run_training(workdir, assets, "stock", min(steps, 10), packing, threads, "warmup")
    for r in range(repeats):
        shift = r % len(VARIANTS)  # rotate the order each round: no variant always runs first
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            run = run_training(workdir, assets, variant, steps, packing, threads, f"{variant}-{r}")
            run["repeat"] = r
            runs.append(run)
            print(
                f"[train] repeat {r} {variant:<14} train_runtime {run['train_runtime_s']:7.3f} s   "
                f"process {run['process_wall_s']:6.1f} s   median step {_median(run['step_ms']):6.1f} ms   "
                f"steps {run['steps']}   flos {run['total_flos']:.4g}",
                flush=True,
            )
    summary: dict[str, Any] = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        steps_seen = {r["steps"] for r in mine}
        if len(steps_seen) != 1:
            raise RuntimeError(f"{variant}: runs disagree on the number of steps: {sorted(steps_seen)}")
        summary[variant] = {
            "steps": steps_seen.pop(),
            "train_runtime_s": _median([r["train_runtime_s"] for r in mine]),
            "process_wall_s": _median([r["process_wall_s"] for r in mine]),
            "step_ms": _median([s for r in mine for s in r["step_ms"]]),
            "step_cpu_ms": _median([s for r in mine for s in r["step_cpu_ms"]]),
            "total_flos": _median([r["total_flos"] for r in mine]),
        }
    by_round = {(r["variant"], r["repeat"]): r["train_runtime_s"] for r in runs}
    for variant in ("plugin", "plugin_noloss"):
        summary[variant]["paired_ratios"] = [
            by_round[(variant, r)] / by_round[("stock", r)] for r in range(repeats)
        ]
    for variant in VARIANTS:
        times = [r["train_runtime_s"] for r in runs if r["variant"] == variant]
        summary[variant]["spread"] = (max(times) - min(times)) / _median(times)
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

    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    for d in dirs:
        candidate = Path(d) / PTH_NAME
        if candidate.is_file():
            return candidate
    return None


def importtime_us(env: dict[str, str]) -> int:
    """Microseconds of the plugin's modules imported at start-up by one `python -X importtime -c pass`.

    Sums the cumulative column of the outermost `llamafactory_dids*` rows (nested rows are already
    included in their parent's cumulative time); 0 when the .pth imports no module of the plugin.
    """
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in proc.stderr.splitlines():
        m = _IMPORTTIME.match(line)
        if m and m.group(4).split(".")[0] == "llamafactory_dids":
            rows.append((len(m.group(3)), int(m.group(2))))
    if not rows:
        return 0
    top = min(depth for depth, _ in rows)
    return sum(us for depth, us in rows if depth == top)


def _run_timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, env=env, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    return time.perf_counter() - start, proc.stdout.strip()


def measure_startup(workdir: Path, runs: int) -> dict[str, Any]:
    pth = find_pth()
    out: dict[str, Any] = {"pth": str(pth) if pth else None, "runs": runs}
    if pth is None:
        print(f"[startup] {PTH_NAME} is not installed in this environment: nothing to measure", flush=True)
        return out
    out["pth_text"] = pth.read_text(encoding="utf-8")
    modes = {
        "as_is": offline_env(),
        "bytecode_cache": offline_env(
            PYTHONPYCACHEPREFIX=str(workdir / "pycache"), PYTHONDONTWRITEBYTECODE=None
        ),
    }
    with_cmd = [sys.executable, "-S", "-c", _AB_CODE.format(skip="<no such file>.pth", ours=PTH_NAME)]
    without_cmd = [sys.executable, "-S", "-c", _AB_CODE.format(skip=PTH_NAME, ours=PTH_NAME)]
    plain_cmd = [sys.executable, "-c", "pass"]
    for mode, env in modes.items():  # the hook stays active: _clean_env drops LLAMAFACTORY_DIDS_DISABLE
        for _ in range(3):  # warm the page cache (and, in bytecode_cache mode, fill the cache)
            importtime_us(env)
            _run_timed(with_cmd, env)
        imports = [importtime_us(env) for _ in range(runs)]
        with_s, without_s, plain_s, pth_ns = [], [], [], []
        for i in range(runs):
            # alternate which arm goes first, so drifts in machine speed cancel
            for arm in ("without", "with") if i % 2 == 0 else ("with", "without"):
                if arm == "with":
                    seconds, printed = _run_timed(with_cmd, env)
                    with_s.append(seconds)
                    pth_ns.append(int(printed))
                else:
                    without_s.append(_run_timed(without_cmd, env)[0])
            plain_s.append(_run_timed(plain_cmd, env)[0])
        if min(pth_ns) < 0:
            raise RuntimeError(f"site.py did not process {pth} in the timed arm ({mode}).")
        diffs = [a - b for a, b in zip(with_s, without_s, strict=True)]
        out[mode] = {
            "pth_ms": _median(pth_ns) / 1e6,
            "pth_ms_p90": statistics.quantiles(pth_ns, n=10)[-1] / 1e6,
            "importtime_ms": _median(imports) / 1000,
            "wall_plain_ms": 1000 * _median(plain_s),
            "wall_with_pth_ms": 1000 * _median(with_s),
            "wall_without_pth_ms": 1000 * _median(without_s),
            "wall_paired_diff_ms": 1000 * _median(diffs),
        }
        r = out[mode]
        print(
            f"[startup] {mode:<14} .pth processing {r['pth_ms']:.3f} ms (p90 {r['pth_ms_p90']:.3f}); "
            f"importtime of plugin modules {r['importtime_ms']:.3f} ms; python -c pass {r['wall_plain_ms']:.1f} ms; "
            f"A/B with {r['wall_with_pth_ms']:.2f} / without {r['wall_without_pth_ms']:.2f} ms, "
            f"paired diff {r['wall_paired_diff_ms']:+.3f} ms",
            flush=True,
        )
    env = offline_env()
    out["finder_ns_per_import"] = float(_run_timed([sys.executable, "-c", _FINDER_CODE], env)[1])
    count_env = offline_env(LLAMAFACTORY_DIDS_DISABLE="1")  # count only: do not patch
    out["modules_imported_by_tuner"] = int(
        _run_timed([sys.executable, "-c", _COUNT_CODE], count_env)[1].split()[-1]
    )
    if out["finder_ns_per_import"] >= 0:
        out["finder_ms_for_tuner_import"] = (
            out["finder_ns_per_import"] * out["modules_imported_by_tuner"] / 1e6
        )
        print(
            f"[startup] meta-path finder: {out['finder_ns_per_import']:.0f} ns per later import; "
            f"`import llamafactory.train.tuner` imports {out['modules_imported_by_tuner']} modules "
            f"-> {out['finder_ms_for_tuner_import']:.2f} ms",
            flush=True,
        )
    return out


# ------------------------------------------------------------------------------------------ report


def build_table(training: dict[str, Any] | None, startup: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(figure: str, value: float, text: str, target: str = "", ok: bool | None = None) -> None:
        """`text` is a format string for `value` (e.g. "{:.3f}") or the finished text."""
        rows.append(
            {"figure": figure, "value": value, "text": text.format(value), "target": target, "ok": ok}
        )

    if training is not None:
        s = training["summary"]
        stock, plugin, noloss = s["stock"], s["plugin"], s["plugin_noloss"]
        ratio = plugin["train_runtime_s"] / stock["train_runtime_s"]
        flos_ratio = plugin["total_flos"] / stock["total_flos"]
        row(
            "train_runtime median: stock / plugin / plugin no domain loss (s)",
            stock["train_runtime_s"],
            f"{stock['train_runtime_s']:.3f} / {plugin['train_runtime_s']:.3f} / {noloss['train_runtime_s']:.3f}",
        )
        row(
            "training time ratio plugin/stock (train_runtime medians)",
            ratio,
            f"{ratio:.4f}",
            f"<= {TRAIN_RATIO_TARGET}",
            ratio <= TRAIN_RATIO_TARGET,
        )
        pr = plugin["paired_ratios"]
        row(
            "  per-round ratios plugin/stock: min / median / max",
            _median(pr),
            " / ".join(f"{x:.3f}" for x in (min(pr), _median(pr), max(pr))),
        )
        row(
            "  run-to-run spread of stock train_runtime (max-min)/median",
            stock["spread"],
            f"{100 * stock['spread']:.1f} %",
        )
        row(
            "  plugin without domain loss / stock",
            noloss["train_runtime_s"] / stock["train_runtime_s"],
            "{:.4f}",
        )
        row(
            "  domain-loss cost: plugin / plugin without it",
            plugin["train_runtime_s"] / noloss["train_runtime_s"],
            "{:.4f}",
        )
        row("  work ratio plugin/stock (total_flos, padding included)", flos_ratio, "{:.4f}")
        row("  train_runtime ratio per unit of work", ratio / flos_ratio, "{:.4f}")
        row(
            "  median step time: stock / plugin / no domain loss (ms)",
            stock["step_ms"],
            f"{stock['step_ms']:.2f} / {plugin['step_ms']:.2f} / {noloss['step_ms']:.2f}",
        )
        row("  median step time ratio plugin/stock", plugin["step_ms"] / stock["step_ms"], "{:.4f}")
        row(
            "  process wall time median: stock / plugin (s)",
            stock["process_wall_s"],
            f"{stock['process_wall_s']:.1f} / {plugin['process_wall_s']:.1f}",
        )
    if startup is not None:
        for mode, label in (("as_is", "environment as is"), ("bytecode_cache", "with bytecode cache")):
            if mode not in startup:
                continue
            m = startup[mode]
            ms = m["pth_ms"]
            row(
                f"start-up added by the hook: site.py on our .pth ({label}) (ms)",
                ms,
                "{:.3f}",
                f"< {STARTUP_TARGET_MS}",
                ms < STARTUP_TARGET_MS,
            )
            row(f"  importtime of plugin modules at start-up ({label}) (ms)", m["importtime_ms"], "{:.3f}")
            row(
                f"  wall A/B paired diff, with - without .pth ({label}) (ms)",
                m["wall_paired_diff_ms"],
                "{:+.3f}",
            )
            row(f"  wall python -c pass ({label}) (ms)", m["wall_plain_ms"], "{:.1f}")
        if "finder_ms_for_tuner_import" in startup:
            row(
                "meta-path finder, per later import (ns) / over `import llamafactory.train.tuner` (ms)",
                startup["finder_ns_per_import"],
                f"{startup['finder_ns_per_import']:.0f} / {startup['finder_ms_for_tuner_import']:.2f}",
            )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    width = max(len(r["figure"]) for r in rows)
    print()
    print(f"{'figure':<{width}}  {'value':>22}  {'target':>8}  result")
    print("-" * (width + 44))
    for r in rows:
        result = "" if r["ok"] is None else ("PASS" if r["ok"] else "FAIL")
        print(f"{r['figure']:<{width}}  {r['text']:>22}  {r['target']:>8}  {result}")


# -------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=200, help="optimizer steps per training run (default 200)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved rounds of the training variants (default 3)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="work directory (default: a temporary one, removed)"
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="OUT", help="also write every figure to this JSON file"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--startup-runs", type=int, default=200, help="runs per arm for the start-up figures (default 200)"
    )
    parser.add_argument(
        "--examples-per-domain", type=int, default=200, help="demo dataset size per domain (default 200)"
    )
    parser.add_argument(
        "--packing", action="store_true", help="train with `packing: true` (equal work per batch)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP/MKL threads of each training process (default 1; 0 leaves torch's default)",
    )
    parser.add_argument(
        "--no-warmup", dest="warmup", action="store_false", help="skip the untimed warm-up run"
    )
    parser.add_argument("--skip-training", action="store_true", help="only measure start-up")
    parser.add_argument("--skip-startup", action="store_true", help="only measure training")
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "TIMINGS"), help=argparse.SUPPRESS)
    return parser


def measure(args: argparse.Namespace) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Run what `args` asks for in a work directory; returns (training, startup) results (None if skipped)."""
    cleanup = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="dids-overhead-")) if cleanup else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        training = startup = None
        if not args.skip_startup:
            startup = measure_startup(workdir, args.startup_runs)
        if not args.skip_training:
            from llamafactory_dids.demo import build_demo_assets

            assets = build_demo_assets(workdir / "assets", examples_per_domain=args.examples_per_domain)
            training = measure_training(
                workdir, assets, args.steps, args.repeats, args.packing, args.threads, args.warmup
            )
    finally:
        if cleanup:
            shutil.rmtree(workdir, ignore_errors=True)
    return training, startup


def to_figures(training: dict[str, Any] | None, startup: dict[str, Any] | None, command: str) -> list[Figure]:
    """The figures with targets (and the context needed to judge them) as `Figure` records."""
    out: list[Figure] = []
    if training is not None:
        s = training["summary"]
        stock, plugin = s["stock"], s["plugin"]
        ratio = plugin["train_runtime_s"] / stock["train_runtime_s"]
        out.append(
            Figure(
                "training time ratio plugin / stock LLaMA-Factory",
                ratio,
                target=TRAIN_RATIO_TARGET,
                comparator="<=",
                text=f"{ratio:.4f} ({plugin['train_runtime_s']:.2f} / {stock['train_runtime_s']:.2f} s"
                + (", 1 round: indicative only)" if len(plugin["paired_ratios"]) < 2 else ")"),
                command=command,
            )
        )
        out.append(
            Figure(
                "  run-to-run spread of stock train_runtime (resolution of the ratio)",
                100 * stock["spread"],
                unit="%",
                command=command,
            )
        )
    if startup is not None:
        for mode, label in (("as_is", "as is"), ("bytecode_cache", "bytecode cache")):
            if mode in startup:
                out.append(
                    Figure(
                        f"start-up: site.py on llamafactory_dids.pth ({label})",
                        startup[mode]["pth_ms"],
                        unit="ms",
                        target=STARTUP_TARGET_MS,
                        comparator="<",
                        command=command,
                    )
                )
    return out


def figures(argv: list[str] | None = None) -> list[Figure]:
    """Measure as `python benchmarks/overhead.py ARGV` does and return the figures (see _figures.py)."""
    argv = list(argv or [])
    training, startup = measure(build_parser().parse_args(argv))
    print_table(build_table(training, startup))
    return to_figures(training, startup, " ".join(["python benchmarks/overhead.py", *argv]))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    if args.worker:
        _worker(*args.worker)
        return 0

    started = time.perf_counter()
    training, startup = measure(args)
    rows = build_table(training, startup)
    print_table(rows)
    elapsed = time.perf_counter() - started
    print(f"\n({elapsed:.0f} s in all; python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    if args.json is not None:
        payload = {
            "settings": {
                "steps": args.steps,
                "repeats": args.repeats,
                "batch": BATCH,
                "packing": args.packing,
                "threads": args.threads,
                "examples_per_domain": args.examples_per_domain,
                "startup_runs": args.startup_runs,
                "python": sys.executable,
            },
            "table": rows,
            "training": training,
            "startup": startup,
            "seconds": round(elapsed, 1),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    missed = [r["figure"] for r in rows if r["ok"] is False]
    if args.check and missed:
        print(f"missed: {'; '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
