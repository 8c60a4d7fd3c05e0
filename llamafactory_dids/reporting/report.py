"""`llamafactory-dids report OUTPUT_DIR`: PNG figures of a run's mixture and a markdown summary linking them.

Role: after the run, a readable account of the schedule step (repartition -> impact -> *schedule* ->
sampler): how the weights moved (the paper's Table 9 view: weights at 0 %, 10 %, ..., 100 % of
training), the impacts (eq. 12) and loss trajectories (eq. 14-15) behind them, and whether the sampler
delivered the targets. Figures a run cannot have (impact terms of a static strategy) are skipped with a
note in the summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..run_files import REPORT_DIR
from ..run_files import REPORT_SUMMARY as SUMMARY
from . import plots
from .run_outputs import (
    RunOutputs,
    load_run,
    realised_fractions,
    time_averaged_weights,
    top_domains,
    weights_at_progress,
)

PROGRESS = tuple(i / 10 for i in range(11))


@dataclass
class Report:
    """What `write_report` produced: the summary, the figures drawn (name -> path), the ones skipped."""

    summary: Path
    figures: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _overview(run: RunOutputs) -> list[str]:
    lines = [
        f"- strategy: `{run.strategy}`; {run.num_domains} domains; "
        f"{len(run.tasks)} downstream task(s){': ' + ', '.join(run.tasks) if run.tasks else ''}",
        f"- {run.num_updates} mixture updates over {run.end_step} optimizer steps"
        + (f" (final step from `{Path(run.log_source).name}`)" if run.log_source else ""),
        f"- samples: {run.end_note}",
    ]
    if run.superseded:
        lines.append(
            f"- resumed run: {run.superseded} history record(s) written before a resume were superseded by "
            "the resumed run's records for the same steps"
        )
    if run.impact_records():
        seconds = [float(r.get("seconds", 0.0)) for r in run.update_records()]
        lines.append(f"- update wall time: median {np.median(seconds):.3f} s, max {max(seconds):.3f} s")
    return lines


def _weights_section(run: RunOutputs, top: list[int], mean: np.ndarray) -> list[str]:
    at = weights_at_progress(run, PROGRESS)  # [11, k]
    header = ["domain"] + [f"{round(100 * f)}%" for f in PROGRESS] + ["mean"]
    rows = [[f"`{run.domains[i]}`"] + [_pct(w) for w in at[:, i]] + [_pct(mean[i])] for i in top]
    lines = [
        f"Weights (%) in force at each tenth of the run's optimizer steps (the paper's Table 9 view) for the "
        f"{len(top)} domains of largest time-averaged weight"
        + (
            f" (of {run.num_domains}; the figure draws the others in grey)"
            if len(top) < run.num_domains
            else ""
        )
        + f". Uniform is {100 / run.num_domains:.2f} %.",
        "",
    ]
    return lines + _table(header, rows)


def _fractions_section(run: RunOutputs, top: list[int], mean: np.ndarray) -> list[str]:
    realised = realised_fractions(run)
    if not np.isfinite(realised).all():
        return []
    header = ["domain", "realised %", "target mean %", "target final %", "realised - mean (pp)"]
    rows = [
        [
            f"`{run.domains[i]}`",
            _pct(realised[i]),
            _pct(mean[i]),
            _pct(run.weights[-1][i]),
            f"{100 * (realised[i] - mean[i]):+.2f}",
        ]
        for i in top
    ]
    gap = float(np.abs(realised - mean).max())
    return [
        f"Largest gap between a domain's realised share and its time-averaged target: {100 * gap:.2f} "
        "percentage points (sampling noise shrinks as 1/sqrt(samples); `drop` exhaustion moves shares too).",
        "",
        *_table(header, rows),
    ]


def _draw(run: RunOutputs, dest: Path, report: Report, name: str, fn, **kwargs):
    """Draw the figure `name` with `fn` into `dest`, recording it (or why not) in `report`; fn's output or None."""
    path = dest / f"{name}.png"
    try:
        out = fn(run, path, **kwargs)
    except plots.PlotUnavailable as e:
        report.skipped[name] = str(e)
        path.unlink(missing_ok=True)  # no stale figure from an earlier report
        return None
    report.figures[name] = out[0] if isinstance(out, tuple) else out
    return out


def _draw_figures(
    run: RunOutputs, dest: Path, report: Report, top_n: int, max_heatmap_domains: int
) -> dict[str, list[str]]:
    """Draw every figure the run allows; returns the notes listed under each drawn figure."""
    extra: dict[str, list[str]] = {}
    _draw(run, dest, report, "weights", plots.plot_weights, top_n=top_n)
    impact = _draw(run, dest, report, "impact", plots.plot_impact, max_domains=max_heatmap_domains)
    if impact is not None:
        rows = impact[1]
        left_out = len(rows) < run.num_domains
        extra["impact"] = [
            f"Rows: {len(rows)} of {run.num_domains} domains, sorted by mean normalised impact"
            + (
                f" (the other {run.num_domains - len(rows)} are left out to keep it readable)."
                if left_out
                else "."
            )
        ]
    _draw(run, dest, report, "rule", plots.plot_rule, top_n=top_n)
    losses = _draw(run, dest, report, "task_losses", plots.plot_task_losses)
    if losses is not None:
        extra["task_losses"] = losses[1]
    _draw(run, dest, report, "fractions", plots.plot_fractions, top_n=top_n)
    return extra


def _section(name: str, title: str, body: list[str], report: Report, notes: list[str]) -> list[str]:
    """One `##` section of report.md: its figure (or why it is missing), the figure's notes, the body."""
    lines = [f"## {title}", ""]
    if name in report.figures:
        lines += [f"![{title}]({report.figures[name].name})", ""]
    else:
        lines += [f"_Not drawn: {report.skipped[name]}_", ""]
    for note in notes:
        lines.append(f"- {note}")
    if notes:
        lines.append("")
    if body:
        lines += [*body, ""]
    return lines


def write_report(
    output_dir: str | Path, dest: str | Path | None = None, *, top_n: int = 10, max_heatmap_domains: int = 40
) -> Report:
    """Draw every figure the run allows into `dest` (default `output_dir/dids_report`) and write `report.md`.

    Raises:
        RunOutputsError: the history is missing, truncated or of another schema (see `load_run`).
    """
    for name, value in (("top_n", top_n), ("max_heatmap_domains", max_heatmap_domains)):
        if value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value}.")
    run = load_run(output_dir)
    dest = Path(dest) if dest is not None else Path(output_dir) / REPORT_DIR
    dest.mkdir(parents=True, exist_ok=True)
    report = Report(summary=dest / SUMMARY)
    mean = time_averaged_weights(run, "samples")
    top = top_domains(mean, top_n)
    extra = _draw_figures(run, dest, report, top_n, max_heatmap_domains)

    sections = [
        ("weights", "Domain weights over training", _weights_section(run, top, mean)),
        ("impact", "Domain impact on the downstream tasks (the rule's impact scores, per task)", []),
        ("rule", "What the update rule used: utilities and task weights", []),
        ("task_losses", "Downstream task losses and their fitted trajectories (eq. 14-15)", []),
        ("fractions", "Realised fractions against targets", _fractions_section(run, top, mean)),
    ]
    lines = [f"# Domain mixture of `{Path(output_dir).resolve()}`", "", *_overview(run), ""]
    for name, title, body in sections:
        lines += _section(name, title, body, report, extra.get(name, []))
    lines += ["## Files", ""] + [f"- [{p.name}]({p.name})" for p in report.figures.values()]
    report.summary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report
