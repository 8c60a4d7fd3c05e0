#!/usr/bin/env python
"""Every benchmark behind one command: one table of figure, measured value, target, verdict, command.

    python benchmarks/run_all.py                   # the scripts' default settings (~15 min on 2 cores)
    python benchmarks/run_all.py --quick           # smaller settings, a few minutes
    python benchmarks/run_all.py --only overhead resume --json bench.json --check

`SCRIPTS` lists the benchmark scripts. Each one exposes `figures(argv) -> list[_harness.Figure]`, which
measures as `python benchmarks/<script> ARGV` would and returns its figures (name, value, unit,
target, comparator); `--quick` passes each script its own `--quick`. Every script runs in its
own process (`run_all.py --worker NAME`), so one script's crash or global state (threads, allocator,
imported modules) does not touch the others; its output goes to a log file, named when it fails.
Scripts listed here but not present are reported as "not available".

Exit code: 0, or 1 with `--check` when a target is missed or a script fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from _harness import Figure, format_table, write_json

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Script:
    """One benchmark script: its path under benchmarks/ and its arguments, full and quick."""

    name: str
    path: str
    argv: tuple[str, ...] = ()
    quick_argv: tuple[str, ...] = ("--quick",)


SCRIPTS: tuple[Script, ...] = (
    Script("overhead", "overhead.py"),
    Script("components", "components.py"),
    Script("resume", "resume.py", argv=("--nproc", "1", "2")),
    Script("dids_update", "dids_update.py"),
    Script("cost_model", "cost_model.py"),  # issue 13: DIDS's extra compute in the paper's setting
    Script("fisher", "fisher.py"),  # issue 3: Fisher estimators' fidelity
    Script("gpu_path", "gpu_path.py"),  # issue 7: says so without a GPU
    Script("repartition", "repartition.py"),  # issue 4: repartition throughput
    Script("repartition_purity", "repartition_purity.py"),  # issue 15: domains vs hidden kinds of text
    Script("quality", "quality/run.py"),  # issue 6: mixture quality
    Script("baselines", "baselines.py", argv=("--budget", "320", "--updates", "8")),  # issue 5: via `compare`
)


@dataclass
class Outcome:
    """A script's figures, or why it has none (status: ok, not available, failed)."""

    script: Script
    status: str
    figures: list[Figure]
    detail: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        record = {"name": self.script.name, "status": self.status, "detail": self.detail}
        return {**record, "seconds": round(self.seconds, 1), "figures": [f.as_dict() for f in self.figures]}


def load_script(path: Path) -> ModuleType:
    """Import a benchmark script by path (benchmarks/ on sys.path for its `_harness` import)."""
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def availability(script: Script, root: Path | None = None) -> str | None:
    """None when the script can run here, else why not."""
    path = (root or HERE) / script.path
    if not path.is_file():
        return f"benchmarks/{script.path} does not exist yet"
    text = path.read_text(encoding="utf-8")
    if not re.search(r"^(def figures\(|figures\b.* = |from \S+ import .*\bfigures\b)", text, re.MULTILINE):
        return f"benchmarks/{script.path} has no `figures(argv)` function"
    return None


def run_script(script: Script, quick: bool, log_dir: Path, root: Path | None = None) -> Outcome:
    """Run one script's `figures()` in a worker process; its output goes to log_dir/NAME.log."""
    root = root or HERE
    reason = availability(script, root)
    if reason is not None:
        return Outcome(script, "not available", [], reason)
    out = log_dir / f"{script.name}.json"
    log = log_dir / f"{script.name}.log"
    argv = list(script.quick_argv if quick else script.argv)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        str(root / script.path),
        str(out),
        *argv,
    ]
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run(
            command, stdout=f, stderr=subprocess.STDOUT, cwd=root.parent, env=os.environ.copy()
        )
    seconds = time.perf_counter() - start
    if proc.returncode != 0 or not out.is_file():
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        return Outcome(script, "failed", [], f"exit {proc.returncode}: {tail[0][:200]} (log: {log})", seconds)
    figures = [Figure.from_dict(d) for d in json.loads(out.read_text(encoding="utf-8"))]
    return Outcome(script, "ok", figures, f"log: {log}", seconds)


def _worker(path: str, out: str, argv: list[str]) -> None:
    module = load_script(Path(path))
    figures = module.figures(argv)
    records = [f.as_dict() if isinstance(f, Figure) else Figure(**f).as_dict() for f in figures]
    Path(out).write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")


def table_rows(outcomes: list[Outcome]) -> list[tuple[str, str, str, str, str]]:
    """(figure, value, target, result, command) for every figure, one row per script without figures.

    A script's command is printed on its first row and again only where it changes.
    """
    rows = []
    for o in outcomes:
        if o.status != "ok":
            rows.append((f"[{o.script.name}]", "-", "", o.status.upper(), o.detail))
            continue
        previous = None
        for f in o.figures:
            command = "" if f.command == previous else f.command  # blank: same as the row above
            previous = f.command
            rows.append((f.name, f.value_text(), f.target_description(), f.verdict(), command))
    return rows


def summary(outcomes: list[Outcome]) -> dict[str, int]:
    figures = [f for o in outcomes for f in o.figures]
    return {
        "passed": sum(f.passed is True for f in figures),
        "failed": sum(f.passed is False for f in figures),
        "informational": sum(f.passed is None for f in figures),
        "scripts_failed": sum(o.status == "failed" for o in outcomes),
        "scripts_not_available": sum(o.status == "not available" for o in outcomes),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"]:  # run_all.py --worker SCRIPT OUT [the script's own arguments]
        _worker(argv[1], argv[2], argv[3:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="each script's quick settings (a few minutes)")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", choices=[s.name for s in SCRIPTS], help="run only these scripts"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the table here")
    parser.add_argument(
        "--logs", type=Path, default=None, help="log directory (default: a new temporary one)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed or a script fails")
    args = parser.parse_args(argv)

    log_dir = args.logs or Path(tempfile.mkdtemp(prefix="dids-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    outcomes = []
    started = time.perf_counter()
    for script in SCRIPTS:  # looked up at call time: tests swap in their own table
        if args.only and script.name not in args.only:
            continue
        print(f"[bench] {script.name} ...", flush=True)
        outcome = run_script(script, args.quick, log_dir)
        outcomes.append(outcome)
        print(
            f"[bench] {script.name}: {outcome.status} ({outcome.seconds:.0f} s) {outcome.detail}", flush=True
        )

    rows = table_rows(outcomes)
    counts = summary(outcomes)
    print()
    print(format_table(("figure", "value", "target", "result", "command"), rows))
    print(
        f"\n{counts['passed']} passed, {counts['failed']} failed, {counts['informational']} informational; "
        f"scripts failed {counts['scripts_failed']}, not available {counts['scripts_not_available']} "
        f"({time.perf_counter() - started:.0f} s{', --quick' if args.quick else ''}; logs in {log_dir})"
    )
    write_json(
        args.json, {"quick": args.quick, "summary": counts, "scripts": [o.as_dict() for o in outcomes]}
    )
    if args.check and (counts["failed"] or counts["scripts_failed"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
