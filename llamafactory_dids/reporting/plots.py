"""PNG figures of one run's mixture (matplotlib, Agg backend: no display needed).

Role: the pictures of `llamafactory-dids report`, downstream of the schedule step (repartition -> impact
-> schedule -> sampler). Each function draws one figure from a `RunOutputs` and raises `PlotUnavailable`
with the reason when the run lacks what it needs (e.g. impact terms of a strategy other than dids).

- `plot_weights`: domain weights over training (the paper's Table 9 view as lines);
- `plot_impact`: the normalised impact I(D_i, S_j) of eq. 12 per update, as a heatmap;
- `plot_task_losses`: each task's loss L_0..L_t and the exponential decay L(t) = a e^{-bt} + c of
  eq. 14, fitted by `algorithms.trajectory.fit_exponential_decay` (the algorithm's own fit), with the
  predicted improvement l_p of eq. 15;
- `plot_fractions`: realised domain fractions against the target weights.

Figure sizes are fixed (`*_SIZE`, inches at `DPI`), so every PNG has a known pixel size.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on training machines

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..algorithms.trajectory import exponential_decay, fit_exponential_decay  # noqa: E402
from .run_outputs import RunOutputs, realised_fractions, time_averaged_weights, top_domains  # noqa: E402

DPI = 100
WEIGHTS_SIZE = (11.0, 5.5)
IMPACT_SIZE = (11.0, 8.0)
FRACTIONS_SIZE = (11.0, 8.0)
TASK_PANEL_SIZE = (11.0, 3.6)  # height per row of task panels (3 per row)
TASK_COLUMNS = 3
MAX_TASK_PANELS = 9
MAX_UPDATE_TICKS = 20  # labelled updates on the impact heatmap's x axis


class PlotUnavailable(Exception):
    """The run lacks what a figure needs; the message says what and why."""


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _shorten(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def plot_weights(run: RunOutputs, path: Path, *, top_n: int = 10) -> Path:
    """Weights (%) of every domain over optimizer steps; the `top_n` by time-averaged weight labelled."""
    mean = time_averaged_weights(run, "samples")
    top = top_domains(mean, top_n)
    # hold the last mixture to the end; an update at the last step held one interval, not a zero-width sliver
    interval = float(np.median(np.diff(run.steps))) if len(run.steps) > 1 else 1.0
    right_edge = max(run.end_step, run.steps[-1] + interval)
    steps = np.append(run.steps, right_edge)
    weights = np.vstack([run.weights, run.weights[-1]]) * 100
    fig, ax = plt.subplots(figsize=WEIGHTS_SIZE, layout="constrained")
    others = [i for i in range(run.num_domains) if i not in top]
    for n, i in enumerate(others):
        label = f"other {len(others)} domains" if n == 0 else None
        ax.plot(steps, weights[:, i], drawstyle="steps-post", color="0.75", lw=0.8, label=label, zorder=1)
    for color, i in zip(_colors(len(top)), top, strict=True):
        label = f"{_shorten(run.domains[i])} (mean {100 * mean[i]:.1f}%)"
        ax.plot(steps, weights[:, i], drawstyle="steps-post", color=color, lw=1.8, label=label, zorder=2)
    ax.axhline(100 / run.num_domains, color="k", ls=":", lw=0.8, label=f"uniform 1/{run.num_domains}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("sampling weight (%)")
    if right_edge > run.end_step:
        ax.axvline(run.end_step, color="k", ls="--", lw=0.8, label=f"end of training (step {run.end_step})")
    ax.set_xlim(0, max(right_edge, 1))
    ax.set_ylim(bottom=0)
    shown = f"top {len(top)} of {run.num_domains} by time-averaged weight" if others else "all domains"
    ax.set_title(f"Domain weights over training: {run.strategy}, {run.num_updates} updates ({shown})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


def plot_impact(run: RunOutputs, path: Path, *, max_domains: int = 40) -> tuple[Path, list[int]]:
    """Heatmaps of the normalised impact: domains x updates (mean over tasks), domains x tasks (mean over updates).

    Rows: the `max_domains` domains of largest mean impact, largest first. Returns (path, row indices).
    """
    if not run.impact_records():
        raise PlotUnavailable(
            f"no update record carries impact terms (strategy {run.strategy!r}; only `dids_strategy: dids` "
            "computes eq. 12)."
        )
    impact = run.impact_normalised()  # [u, k, m]
    by_update = impact.mean(axis=2).T  # [k, u]
    by_task = impact.mean(axis=0)  # [k, m]
    rows = top_domains(by_update.mean(axis=1), max_domains)
    steps = [r["step"] for r in run.impact_records()]
    fig, (left, right) = plt.subplots(
        1,
        2,
        figsize=IMPACT_SIZE,
        layout="constrained",
        gridspec_kw={"width_ratios": [4, 1 + 0.3 * len(run.tasks)]},
    )
    # cosine scores (`dids_impact: cosine`) lie around 0; the other impact forms are shares
    signed = bool(impact.min() < 0)
    vmax = float(max(np.abs(impact).max(), 1e-12))
    scale = (
        {"cmap": "RdBu_r", "vmin": -vmax, "vmax": vmax}
        if signed
        else {"cmap": "viridis", "vmin": 0, "vmax": vmax}
    )
    image = left.imshow(by_update[rows], aspect="auto", interpolation="nearest", **scale)
    right.imshow(by_task[rows], aspect="auto", interpolation="nearest", **scale)
    fontsize = 8 if len(rows) <= 25 else 6
    left.set_yticks(range(len(rows)), [_shorten(run.domains[i]) for i in rows], fontsize=fontsize)
    right.set_yticks([])
    # every k-th update at a constant stride (at most MAX_UPDATE_TICKS labels), never an uneven skip
    ticks = np.arange(0, len(steps), math.ceil(len(steps) / MAX_UPDATE_TICKS))
    left.set_xticks(ticks, [str(steps[t]) for t in ticks], fontsize=8)
    left.set_xlabel("update (optimizer step)")
    right.set_xticks(
        range(len(run.tasks)), [_shorten(t, 16) for t in run.tasks], rotation=45, ha="right", fontsize=8
    )
    shown = (
        f"top {len(rows)} of {run.num_domains} domains by mean impact"
        if len(rows) < run.num_domains
        else f"{run.num_domains} domains, by mean impact"
    )
    left.set_title(f"impact per update, mean over tasks ({shown})", fontsize=10)
    right.set_title("mean over updates", fontsize=10)
    label = (
        "impact score (Fisher cosine, centred over domains or minus the pool's)"
        if signed
        else "normalised impact (sums to 1 over all domains)"
    )
    fig.colorbar(image, ax=[left, right], shrink=0.8, label=label)
    return _save(fig, path), rows


def plot_rule(run: RunOutputs, path: Path, *, top_n: int = 10) -> Path:
    """What the DIDS rule used at each update: the per-domain utility that the normaliser turned into p̂
    (for `evidence`: the combined significant evidence sum_j w_j z'_ij), and the task weights w_j."""
    records = [r for r in run.impact_records() if "task_weights" in r["terms"] and "utility" in r["terms"]]
    if not records:
        raise PlotUnavailable(
            f"no update record carries the DIDS rule's terms (strategy {run.strategy!r}; history written by "
            "`dids_strategy: dids` of this version records utilities and task weights)."
        )
    steps = [r["step"] for r in records]
    utility = np.asarray([r["terms"]["utility"] for r in records], dtype=np.float64)  # [u, k]
    task_weights = np.asarray([r["terms"]["task_weights"] for r in records], dtype=np.float64)  # [u, m]
    top = top_domains(np.abs(utility).mean(axis=0), top_n)
    fig, (left, right) = plt.subplots(1, 2, figsize=WEIGHTS_SIZE, layout="constrained", width_ratios=[3, 2])
    for color, i in zip(_colors(len(top)), top, strict=True):
        left.plot(steps, utility[:, i], marker="o", ms=3, color=color, label=_shorten(run.domains[i]))
    left.axhline(0, color="k", lw=0.6)
    normaliser = records[-1]["terms"].get("components", {}).get("normaliser", "")
    left.set_title(
        "utility per domain"
        + (" (significant evidence, sum_j w_j z'_ij)" if normaliser == "evidence" else ""),
        fontsize=10,
    )
    left.set_xlabel("update (optimizer step)")
    left.legend(fontsize=7, frameon=False)
    for color, (j, task) in zip(_colors(len(run.tasks)), enumerate(run.tasks), strict=True):
        right.plot(steps, task_weights[:, j], marker="o", ms=3, color=color, label=_shorten(task, 20))
    right.set_title("task weights w_j", fontsize=10)
    right.set_xlabel("update (optimizer step)")
    right.set_ylim(bottom=0)
    right.legend(fontsize=7, frameon=False)
    fig.suptitle(f"Why the mixture moved: {run.strategy} ({records[-1]['terms'].get('variant', '')})")
    return _save(fig, path)


def task_figure_size(num_tasks: int) -> tuple[float, float]:
    rows = math.ceil(min(num_tasks, MAX_TASK_PANELS) / TASK_COLUMNS)
    return TASK_PANEL_SIZE[0], TASK_PANEL_SIZE[1] * max(rows, 1)


def plot_task_losses(run: RunOutputs, path: Path, *, horizon: float = 1.0) -> tuple[Path, list[str]]:
    """Each task's observed losses L_0..L_t (by update) and the fitted decay the last update used.

    Returns (path, one line per task describing its fit).
    """
    if run.task_losses is None:
        raise PlotUnavailable(
            f"the run ({run.strategy!r}) recorded no downstream task losses at its updates: they are "
            "measured at every update when `dids_target_datasets` is set (static strategies have no updates; "
            "their final task losses are in dids_final.json)."
        )
    m = len(run.tasks)
    shown = min(m, MAX_TASK_PANELS)
    cols = min(shown, TASK_COLUMNS)
    nrows = math.ceil(shown / TASK_COLUMNS)
    fig, axes = plt.subplots(nrows, cols, figsize=task_figure_size(m), layout="constrained", squeeze=False)
    t = np.arange(len(run.records), dtype=np.float64)
    notes = []
    for j in range(nrows * cols):
        ax = axes.flat[j]
        if j >= shown:
            ax.set_visible(False)
            continue
        history = run.task_losses[:, j]
        ax.plot(t, history, "o", ms=4, color="C0", label="observed $L_t$")
        params = fit_exponential_decay(history.tolist())
        if params is None:
            notes.append(
                f"{run.tasks[j]}: no fit ({len(history)} points, at least 4 needed, or the fit failed): "
                "the algorithm used l_p = l_c"
            )
        else:
            grid = np.linspace(0, t[-1] + horizon, 200)
            a, b, c = params
            ax.plot(
                grid,
                exponential_decay(grid, *params),
                "-",
                color="C1",
                label=f"fit ${a:.3g}e^{{-{b:.3g}t}}+{c:.3g}$",
            )
            now, later = exponential_decay(np.array([t[-1], t[-1] + horizon]), *params)
            ax.plot([t[-1] + horizon], [later], "x", color="C3", ms=7, label=f"$l_p$ = {now - later:.3g}")
            notes.append(f"{run.tasks[j]}: L(t) = {a:.4g} exp(-{b:.4g} t) + {c:.4g}; l_p = {now - later:.4g}")
        ax.set_title(_shorten(run.tasks[j], 40), fontsize=10)
        ax.set_xlabel("update t")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # t counts updates
        ax.set_ylabel("task loss")
        ax.legend(fontsize=7)
    if m > shown:
        notes.append(f"{m - shown} more tasks not drawn (the first {shown} are)")
    fig.suptitle("Downstream task losses and the exponential-decay fit of the last update (eq. 14-15)")
    return _save(fig, path), notes


def plot_fractions(run: RunOutputs, path: Path, *, top_n: int = 10) -> Path:
    """Bars: realised fraction, time-averaged and final target per domain; lines: both over steps."""
    realised = realised_fractions(run)
    if not np.isfinite(realised).all():
        raise PlotUnavailable("no samples were counted (no update record or logged `dids/realised/*`).")
    mean = time_averaged_weights(run, "samples")
    final = run.weights[-1]
    top = top_domains(np.maximum(realised, mean), top_n)
    rest = [i for i in range(run.num_domains) if i not in top]
    labels = [_shorten(run.domains[i], 20) for i in top]
    bars = [realised[top], mean[top], final[top]]
    if rest:
        labels.append(f"other {len(rest)}")
        bars = [np.append(b, v[rest].sum()) for b, v in zip(bars, (realised, mean, final), strict=True)]
    fig, (top_ax, bottom_ax) = plt.subplots(2, 1, figsize=FRACTIONS_SIZE, layout="constrained")
    x = np.arange(len(labels))
    for n, (values, name) in enumerate(
        zip(bars, ("realised (trained samples)", "target, time-averaged", "target, final"), strict=True)
    ):
        top_ax.bar(x + (n - 1) * 0.27, 100 * values, width=0.27, label=name, color=f"C{n}")
    top_ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    top_ax.set_ylabel("share (%)")
    top_ax.set_title("Realised fractions against target weights at the end of the run")
    top_ax.legend(fontsize=8)

    steps, realised_log = run.log_series("dids/realised/")
    _, target_log = run.log_series("dids/target/")
    lines = top[: min(len(top), 6)]
    if len(steps) and all(run.domains[i] in realised_log and run.domains[i] in target_log for i in lines):
        source = "logged every logging step"
        series = [(realised_log[run.domains[i]], target_log[run.domains[i]]) for i in lines]
    else:
        source = "at each history record"
        steps = run.steps
        counts = run.realised_counts.astype(np.float64)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        series = [(shares[:, i], run.weights[:, i]) for i in lines]
    for color, i, (real, target) in zip(_colors(len(lines)), lines, series, strict=True):
        bottom_ax.plot(steps, 100 * real, "-", color=color, label=f"{_shorten(run.domains[i], 20)} realised")
        bottom_ax.plot(steps, 100 * target, "--", drawstyle="steps-post", color=color, label="  target", lw=1)
    bottom_ax.set_xlabel("optimizer step")
    bottom_ax.set_ylabel("share (%)")
    bottom_ax.set_title(f"Cumulative realised fraction (solid) and current target (dashed), {source}")
    bottom_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    return _save(fig, path)
