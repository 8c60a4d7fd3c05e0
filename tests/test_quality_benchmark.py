"""benchmarks/quality: the data builder (determinism, hidden mix, disjoint splits) and the purity/ARI scores."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks.quality import bench, build, corpus, evaluate, runs  # noqa: E402

SIZES = build.Sizes(train=20, observe=5, heldout=8)
KINDS = sorted({k for ks in build.SOURCES.values() for k in ks} | set(build.TASKS.values()))


@pytest.fixture(scope="module")
def pools() -> dict[str, list[corpus.Row]]:
    return corpus.collect(KINDS)


def _outputs(rows: list[corpus.Row]) -> set[str]:
    return {" ".join(r["output"].split()) for r in rows}


def test_same_seed_same_rows_other_seed_other_rows(pools):
    first, manifest = build.make_datasets(pools, SIZES, seed=3)
    again, manifest_again = build.make_datasets(pools, SIZES, seed=3)
    other, _ = build.make_datasets(pools, SIZES, seed=4)
    assert first == again and manifest == manifest_again
    assert first[build.train_name("python")] != other[build.train_name("python")]


def test_hidden_mix_holds_both_kinds_with_their_labels(pools):
    datasets, manifest = build.make_datasets(pools, SIZES, seed=0)
    name = build.train_name("mixed")
    kinds = manifest["datasets"][name]["kinds"]
    assert len(kinds) == len(datasets[name]) == SIZES.train
    assert len(datasets[build.train_name("c")]) == round(SIZES.train * build.SOURCE_SCALE["c"])
    assert sorted(set(kinds)) == ["comments", "metadata"] and kinds.count("comments") == SIZES.train // 2
    by_kind = {k: _outputs(pools[k]) for k in ("comments", "metadata")}
    for row, kind in zip(datasets[name], kinds, strict=True):
        assert " ".join(row["output"].split()) in by_kind[kind]  # the recorded label is the row's real kind
        assert row["instruction"] == build.MIXED_INSTRUCTION  # the prompt does not give the kind away
    assert kinds != sorted(kinds)  # shuffled, not two blocks


def test_observation_heldout_training_disjoint_and_irrelevant_task_absent(pools):
    datasets, manifest = build.make_datasets(pools, SIZES, seed=0)
    roles = {"train": set(), "observe": set(), "heldout": set()}
    for name, rows in datasets.items():
        outputs = _outputs(rows)
        assert len(outputs) == len(rows), name  # no duplicate inside a file
        assert not roles[manifest["datasets"][name]["role"]] & outputs, name
        roles[manifest["datasets"][name]["role"]] |= outputs
    assert not roles["train"] & roles["observe"]
    assert not roles["train"] & roles["heldout"]
    assert not roles["observe"] & roles["heldout"]
    for task in build.IRRELEVANT_TASKS:
        kind = build.TASKS[task]
        assert all(kind not in kinds for kinds in build.SOURCES.values())
        assert not _outputs(pools[kind]) & roles["train"]
        assert len(datasets[build.observe_name(task)]) == SIZES.observe
        assert len(datasets[build.heldout_name(task)]) == SIZES.heldout
    origins = manifest["datasets"][build.heldout_name("tables")]["origins"]
    assert all(o.startswith("sklearn/datasets/data/") for o in origins)


def test_too_few_rows_names_the_kind_and_the_fix(pools):
    small = {k: v[:10] if k == "reference" else v for k, v in pools.items()}
    with pytest.raises(ValueError, match=r"Kind 'reference' has only 10 distinct rows.*--quick"):
        build.make_datasets(small, SIZES, seed=0)


def test_purity_and_ari_hand_computed():
    # clusters: 0 = {a, a}, 1 = {a, b, b, b} -> purity (2 + 3) / 6
    # ARI: sum C(n_ij, 2) = 1 + 3 = 4; rows 3 + 3 = 6; columns C(2,2) + C(4,2) = 7; C(6, 2) = 15
    # expected 6 * 7 / 15 = 2.8, max (6 + 7) / 2 = 6.5 -> (4 - 2.8) / (6.5 - 2.8)
    purity, ari = evaluate.purity_and_ari(list("aaabbb"), [0, 0, 1, 1, 1, 1])
    assert purity == pytest.approx(5 / 6)
    assert ari == pytest.approx(1.2 / 3.7)
    assert evaluate.purity_and_ari(list("aabb"), ["x", "x", "y", "y"]) == pytest.approx((1.0, 1.0))


def test_mixed_source_purity_matches_rows_by_content(tmp_path):
    mixed = [{"instruction": "p", "input": "", "output": f"row {i}"} for i in range(4)]
    kinds = ["prose", "prose", "meta", "meta"]
    other = {"instruction": "q", "input": "", "output": "another source", "dids_domain": "c_00"}
    lines = [
        other,
        *({**row, "dids_domain": d} for row, d in zip(mixed[::-1], ["m1", "m1", "m0", "m1"], strict=True)),
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    # row 3 -> m1, row 2 -> m1, row 1 -> m0, row 0 -> m1: m0 = {prose}, m1 = {prose, meta, meta}
    result = evaluate.mixed_source_purity(path, mixed, kinds)
    assert result["purity"] == pytest.approx(3 / 4)
    assert result["clusters"] == {"m0": {"prose": 1}, "m1": {"meta": 2, "prose": 1}}
    path.write_text("".join(json.dumps(r) + "\n" for r in lines[:-1]))
    with pytest.raises(ValueError, match="1 of the 4 mixed-source rows are missing"):
        evaluate.mixed_source_purity(path, mixed, kinds)


def test_strategy_keys_share_the_budget(tmp_path):
    assets = build.QualityAssets(root=tmp_path, model_dir=tmp_path / "m", dataset_dir=tmp_path / "d")
    ctx = runs.RunContext(
        assets=assets, setting=runs.Setting(budget=96), seed=1, sources=tuple(build.SOURCES)
    )
    for name in runs.registered_strategies():
        if name in runs.REFERENCE_RUNS:
            ctx.outputs[runs.REFERENCE_RUNS[name]] = tmp_path / "ref"
        keys = runs.strategy_keys(name, ctx)
        assert keys["dids_strategy"] == name and keys["dids_budget"] == 96
    uniform = runs.strategy_keys("uniform", ctx)
    observed = {
        "dids_target_datasets": [build.observe_name(t) for t in build.TASKS],
        "dids_target_samples": 40,
    }
    if any(
        user in runs.registered_strategies() for user in runs.REFERENCE_RUNS
    ):  # uniform is a reference run
        assert uniform == {"dids_strategy": "uniform", "dids_budget": 96, **observed}
    else:
        assert uniform == {"dids_strategy": "uniform", "dids_budget": 96}
    dids = runs.strategy_keys("dids", ctx)
    assert dids["dids_target_datasets"] == [build.observe_name(t) for t in build.TASKS]
    weights = runs.strategy_keys("static", ctx)["dids_static_weights"]
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights[build.train_name("python")] == pytest.approx(4 * weights[build.train_name("c")])


def test_rows_beyond_strategies_oracle_variants_and_component_cells(tmp_path):
    assets = build.QualityAssets(root=tmp_path, model_dir=tmp_path / "m", dataset_dir=tmp_path / "d")
    ctx = runs.RunContext(assets=assets, setting=runs.Setting(), seed=0, sources=tuple(build.SOURCES))
    label, strategy, keys = runs.parse_row("oracle")
    weights = keys(ctx)["dids_static_weights"]
    assert strategy == "static" and sum(weights.values()) == pytest.approx(1.0)
    assert weights[build.train_name("c")] == 0 and weights[build.train_name("python")] == pytest.approx(0.5)
    assert runs.parse_row("dids (paper)")[1:] == ("dids", {"dids_variant": "paper"})
    cell = "dids{impact=distance;importance_correction=true;normaliser=softmax}"
    assert runs.parse_row(cell) == (
        cell,
        "dids",
        {"dids_impact": "distance", "dids_importance_correction": True, "dids_normaliser": "softmax"},
    )
    assert runs.parse_row("uniform") == ("uniform", "uniform", {})
    with pytest.raises(ValueError, match="neither a registered strategy"):
        runs.parse_row("unifrom")
    with pytest.raises(ValueError, match="is not key=value"):
        runs.parse_row("dids{impact}")
    with pytest.raises(ValueError, match="unknown strategy 'dds'"):
        runs.parse_row("dds{impact=cosine}")
    assert bench._slug(cell) == "dids_impact-distance_importance_correction-true_normaliser-softmax"


def test_summary_ratios_are_per_seed_and_figures_fit_run_all():
    def run(label, seed, python, comments, tables=5.0):
        return {
            "label": label,
            "seed": seed,
            "losses": {"python": python, "comments": comments, "tables": tables},
        }

    records = [
        run("uniform", 0, 4.0, 6.0),
        run("uniform", 1, 5.0, 7.0),
        run("dids", 0, 3.0, 5.0),  # target mean 4.0 vs 5.0 -> 0.8
        run("dids", 1, 5.0, 7.0),  # 6.0 vs 6.0 -> 1.0
        {"label": "doremi", "seed": 0, "error": "boom"},
    ]
    rows = {row["label"]: row for row in bench.summarise(records)}
    assert rows["dids"]["ratio"] == pytest.approx(0.9) and rows["dids"]["ratio_spread"] == pytest.approx(0.1)
    assert rows["dids"]["target_mean"] == pytest.approx(5.0) and rows["dids"]["tasks"][
        "python"
    ] == pytest.approx(4.0)
    assert rows["doremi"]["failed"] == 1 and "tasks" not in rows["doremi"]
    results = {"summary": list(rows.values()), "repartition": [{"seed": 0, "purity": 0.75, "ari": 0.2}]}
    figures = bench.figure_records(results)
    assert [f["value"] for f in figures] == pytest.approx([0.9, 0.75, 0.2])
    fields = {"name", "value", "unit", "target", "comparator", "text", "target_text", "command"}
    assert all(set(f) <= fields for f in figures)  # benchmarks/_harness.Figure(**f) accepts them


def test_repartition_settings_parse_label_and_configure(tmp_path):
    from benchmarks.quality.run import parse_repartitions

    assert parse_repartitions("factored:4, semantic:4") == (("factored", 4), ("semantic", 4))
    for bad in ("tfidf:4", "factored", "factored:0", "semantic:x"):
        with pytest.raises(SystemExit, match="--repartitions"):
            parse_repartitions(bad)
    # the default setting keeps its row label and figure names; others name features and count
    assert bench.repartition_label("factored", 2) == bench.REPARTITIONED
    assert bench.repartition_label("semantic", 4) == "dids (repartitioned, semantic x4)"
    assets = build.QualityAssets(root=tmp_path, model_dir=tmp_path / "m", dataset_dir=tmp_path / "d")
    ctx = runs.RunContext(assets=assets, setting=runs.Setting(), seed=3, sources=tuple(build.SOURCES))
    config = runs.repartition_config(
        ctx, tmp_path / "proxy", tmp_path / "out", features="semantic", domains_per_source=4
    )
    assert (config["dids_features"], config["dids_domains_per_source"], config["dids_seed"]) == (
        "semantic",
        4,
        3,
    )
    assert runs.repartition_config(ctx, tmp_path / "proxy", tmp_path / "out")["dids_domains_per_source"] == 2


def test_a_pretrained_model_selects_its_preset():
    from benchmarks.quality.run import build_parser, preset_name

    parser = build_parser()
    assert preset_name(parser.parse_args([])) == "full"
    assert preset_name(parser.parse_args(["--model", "/m"])) == "pretrained"
    assert preset_name(parser.parse_args(["--quick", "--model", "/m"])) == "quick"
    sizes, setting, _ = bench.PRESETS["pretrained"]
    assert setting.learning_rate < bench.PRESETS["full"][1].learning_rate and setting.budget < 1000
