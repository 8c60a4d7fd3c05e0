"""`llamafactory-dids report`: figures of known pixel size, the markdown links them, graceful skips."""

from __future__ import annotations

import json
import re

import matplotlib.image
import numpy as np
import pytest

from llamafactory_dids.algorithms.trajectory import fit_exponential_decay, potential_improvement
from llamafactory_dids.cli import main
from llamafactory_dids.reporting import plots
from llamafactory_dids.reporting.report import write_report
from llamafactory_dids.reporting.run_outputs import load_run

from synthetic_runs import TWO, many_domain_run, record, two_domain_run, write_run


def pixels(size: tuple[float, float]) -> tuple[int, int]:
    """(height, width) of a figure of `size` inches saved at plots.DPI."""
    return round(size[1] * plots.DPI), round(size[0] * plots.DPI)


def linked_images(markdown: str) -> set[str]:
    return set(re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", markdown))


def test_many_domains_every_figure(tmp_path):
    out = many_domain_run(tmp_path / "run", k=72, m=2)
    report = write_report(out, top_n=8, max_heatmap_domains=30)
    assert set(report.figures) == {"weights", "impact", "rule", "task_losses", "fractions"}
    assert not report.skipped
    expected = {
        "weights": plots.WEIGHTS_SIZE,
        "rule": plots.WEIGHTS_SIZE,
        "impact": plots.IMPACT_SIZE,
        "task_losses": plots.task_figure_size(2),
        "fractions": plots.FRACTIONS_SIZE,
    }
    for name, path in report.figures.items():
        assert path.parent == out / "dids_report"
        image = matplotlib.image.imread(path)
        assert image.shape[:2] == pixels(expected[name]), name
        assert image.std() > 0.01  # something was drawn
    markdown = report.summary.read_text()
    pngs = {p.name for p in (out / "dids_report").glob("*.png")}
    assert linked_images(markdown) == pngs == {f"{n}.png" for n in expected}
    assert "Rows: 30 of 72 domains, sorted by mean normalised impact (the other 42 are left out" in markdown
    # Table 9 view: the top 8 domains by time-averaged weight, 0 % ... 100 % and the mean
    table = [line for line in markdown.splitlines() if line.startswith("| `dom_")]
    assert len(table) >= 8 and table[0].count("|") == 1 + 11 + 1 + 1


def test_heatmap_rows_are_the_domains_of_largest_mean_impact(tmp_path):
    run = load_run(many_domain_run(tmp_path / "run", k=72, m=3))
    _, rows = plots.plot_impact(run, tmp_path / "impact.png", max_domains=20)
    impact = np.asarray([r["terms"]["impact_normalised"] for r in run.update_records()])  # [u, k, m]
    naive = sorted(range(72), key=lambda i: -impact[:, i, :].mean())[:20]
    assert rows == naive


def test_task_loss_fit_is_the_algorithms(tmp_path):
    run = load_run(many_domain_run(tmp_path / "run", k=5, m=1, updates=6))
    _, notes = plots.plot_task_losses(run, tmp_path / "losses.png")
    history = run.task_losses[:, 0].tolist()
    a, b, c = fit_exponential_decay(history)
    l_p, fitted = potential_improvement(history, 1.0)
    assert fitted
    assert notes == [f"task_0: L(t) = {a:.4g} exp(-{b:.4g} t) + {c:.4g}; l_p = {l_p:.4g}"]


def test_short_task_history_is_not_fitted(tmp_path):
    run = load_run(many_domain_run(tmp_path / "run", k=4, m=1, updates=2))  # 3 points < 4
    _, notes = plots.plot_task_losses(run, tmp_path / "losses.png")
    assert "no fit (3 points, at least 4 needed" in notes[0]


def test_static_strategy_skips_impact_and_task_losses(tmp_path):
    records = [record(0, 0, 0, [0.7, 0.3], [0, 0], TWO, strategy="static")]
    log = [
        {
            "step": s,
            "dids/target/code": 0.7,
            "dids/target/prose": 0.3,
            "dids/realised/code": 0.6,
            "dids/realised/prose": 0.4,
        }
        for s in (5, 10)
    ]
    out = write_run(tmp_path / "run", records, final_step=10, log=log)
    report = write_report(out, tmp_path / "report")
    assert set(report.figures) == {"weights", "fractions"}
    assert "dids_strategy: dids" in report.skipped["impact"] and "static" in report.skipped["task_losses"]
    assert "utilities and task weights" in report.skipped["rule"]
    markdown = report.summary.read_text()
    assert linked_images(markdown) == {"weights.png", "fractions.png"}
    assert markdown.count("_Not drawn: ") == 3
    assert "| `code` | 60.0 | 70.0 | 70.0 | -10.00 |" in markdown  # realised from the log vs the targets


def test_a_skipped_figure_leaves_no_stale_png(tmp_path):
    dest = tmp_path / "report"
    dest.mkdir()
    (dest / "impact.png").write_bytes(b"old")
    out = write_run(
        tmp_path / "run", [record(0, 0, 0, [0.5, 0.5], [0, 0], TWO, strategy="uniform")], final_step=3
    )
    write_report(out, dest)
    assert not (dest / "impact.png").exists()


def test_fractions_without_log_use_history_counts(tmp_path):
    out = two_domain_run(tmp_path / "run")
    report = write_report(out)
    markdown = report.summary.read_text()
    # last record: 26 of 40 code samples -> 65.0 %; time-averaged target 52.0 %
    assert "| `code` | 65.0 | 52.0 | 20.0 | +13.00 |" in markdown


def test_cli_report(tmp_path, capsys):
    out = two_domain_run(tmp_path / "run")
    assert main(["report", str(out), "--out", str(tmp_path / "r"), "--top", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"summary      {tmp_path / 'r' / 'report.md'}" in printed
    assert "impact       skipped: no update record carries impact terms" in printed  # skipped, no crash


@pytest.mark.parametrize("content", ["", '{"schema": 1, "update": 0'])
def test_cli_report_refuses_with_exit_2(tmp_path, capsys, content):
    (tmp_path / "history.jsonl").write_text(content)
    assert main(["report", str(tmp_path)]) == 2
    assert "error: " in capsys.readouterr().err


def test_report_needs_positive_counts(tmp_path, capsys):
    out = two_domain_run(tmp_path / "run")
    with pytest.raises(ValueError, match="`max_heatmap_domains` must be a positive integer, got 0"):
        write_report(out, max_heatmap_domains=0)
    with pytest.raises(SystemExit):
        main(["report", str(out), "--top", "0"])
    assert "argument --top: must be a positive integer, got 0" in capsys.readouterr().err


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions save, kept open for their axes."""
    figures = []

    def keep(fig, path):
        figures.append(fig)
        return path

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def _sixteen_updates_ending_at_the_last_step(tmp_path):
    """A dids-like run as the demo's: updates every 10 steps up to step 160, which is also the last step."""
    out = many_domain_run(tmp_path / "run", k=3, m=1, updates=16)
    state = json.loads((out / "trainer_state.json").read_text())
    (out / "trainer_state.json").write_text(json.dumps({**state, "global_step": 160}))
    return load_run(out)


def test_impact_labels_every_update_at_a_constant_stride(tmp_path, drawn):
    run = _sixteen_updates_ending_at_the_last_step(tmp_path)
    plots.plot_impact(run, tmp_path / "impact.png")
    left = drawn[0].axes[0]
    assert [t.get_text() for t in left.get_xticklabels()] == [str(10 * u) for u in range(1, 17)]
    many = load_run(many_domain_run(tmp_path / "many", k=4, m=1, updates=50))
    plots.plot_impact(many, tmp_path / "impact_many.png")
    labels = [int(t.get_text()) for t in drawn[1].axes[0].get_xticklabels()]
    assert labels == list(range(10, 501, 30))  # every 3rd update: 17 labels, no uneven gap


def test_task_losses_tick_whole_updates(tmp_path, drawn):
    run = _sixteen_updates_ending_at_the_last_step(tmp_path)
    plots.plot_task_losses(run, tmp_path / "task_losses.png")
    ax = drawn[0].axes[0]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_weights_hold_an_update_at_the_last_step_for_one_interval(tmp_path, drawn):
    run = _sixteen_updates_ending_at_the_last_step(tmp_path)
    plots.plot_weights(run, tmp_path / "weights.png")
    ax = drawn[0].axes[0]
    assert ax.get_xlim() == (0.0, 170.0)
    line = ax.get_lines()[0]
    assert list(line.get_xdata()[-2:]) == [160.0, 170.0]  # the final mixture drawn as a segment
    assert "end of training (step 160)" in [t.get_text() for t in ax.get_legend().get_texts()]
