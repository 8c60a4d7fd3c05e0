"""`observe`: observation sets from lm-eval tasks (local toy tasks), checked against the data written."""

from __future__ import annotations

import json

import pytest
from toy_lm_eval_tasks import SPLITS, toy_docs, write_toy_tasks

from llamafactory_dids.cli import main
from llamafactory_dids.evaluation import EvalConfigError, parse_observe_config
from llamafactory_dids.evaluation.observe import build_observation_sets, read_manifest

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    return write_toy_tasks(tmp_path_factory.mktemp("toy_tasks"))


def observe(tasks_dir, out, tasks, **keys):
    raw = {
        "tasks": tasks,
        "output_dir": str(out),
        "include_path": [str(tasks_dir)],
        "include_builtin_tasks": False,
    }
    return read_manifest(build_observation_sets(parse_observe_config({**raw, **keys})))


def test_rows_are_the_tasks_prompts_and_correct_answers(tasks_dir, tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    other = {"file_name": "mine.json", "formatting": "alpaca"}
    (out / "dataset_info.json").write_text(json.dumps({"mine": other}))
    manifest = observe(tasks_dir, out, "dids_toy_mc,dids_toy_split,dids_toy_trainonly", n=6, seed=3)

    info = json.loads((out / "dataset_info.json").read_text())
    assert info["mine"] == other  # an existing dataset_dir keeps its other datasets
    for task, split, role in [
        ("dids_toy_mc", "validation", "validation"),
        ("dids_toy_split", "validation", "validation"),
        ("dids_toy_trainonly", "train", "training"),  # no validation split: training docs, with a note
    ]:
        entry = manifest["tasks"][task]
        assert entry["dataset"] == f"obs_{task}" and entry["used"] == entry["requested"] == 6
        assert info[f"obs_{task}"] == {
            "file_name": f"obs_{task}.json",
            "formatting": "alpaca",
            "columns": {"prompt": "instruction", "query": "input", "response": "output"},
        }
        leaf = entry["leaves"][task]
        assert (leaf["split"], leaf["role"]) == (split, role)
        ids = leaf["doc_ids"]
        assert ids == sorted(set(ids)) and len(ids) == 6 and max(ids) < SPLITS[task][split]
        assert bool(entry["notes"]) == (role != "validation")
        docs = toy_docs(task, split, SPLITS[task][split])
        rows = json.loads((out / f"obs_{task}.json").read_text())
        assert rows == [
            {
                "instruction": f"Question: {docs[i]['question']}\nAnswer:",
                "input": "",
                "output": docs[i]["choices"][docs[i]["label"]],
                "task": task,
                "doc_id": i,
            }
            for i in ids
        ]
    assert "training split" in manifest["tasks"]["dids_toy_trainonly"]["notes"][0]


def test_draw_is_seeded_and_capped_at_the_split(tasks_dir, tmp_path):
    ids = lambda m: m["tasks"]["dids_toy_mc"]["leaves"]["dids_toy_mc"]["doc_ids"]  # noqa: E731
    a = observe(tasks_dir, tmp_path / "a", "dids_toy_mc", n=5, seed=1)
    b = observe(tasks_dir, tmp_path / "b", "dids_toy_mc", n=5, seed=1)
    c = observe(tasks_dir, tmp_path / "c", "dids_toy_mc", n=5, seed=2)
    assert ids(a) == ids(b) != ids(c)
    everything = observe(tasks_dir, tmp_path / "d", "dids_toy_mc", n=50)
    assert ids(everything) == list(range(20))
    assert (
        everything["tasks"]["dids_toy_mc"]["used"] == 20
        and everything["tasks"]["dids_toy_mc"]["requested"] == 50
    )


def test_group_draws_over_its_leaf_tasks(tasks_dir, tmp_path):
    manifest = observe(tasks_dir, tmp_path, "dids_toy_group", n=30)
    entry = manifest["tasks"]["dids_toy_group"]
    assert set(entry["leaves"]) == {"dids_toy_mc", "dids_toy_split"}
    # 30 of the 20 + 12 validation docs, one dataset for the group
    assert sum(len(leaf["doc_ids"]) for leaf in entry["leaves"].values()) == 30 == entry["used"]
    rows = json.loads((tmp_path / "obs_dids_toy_group.json").read_text())
    assert {(r["task"], r["doc_id"]) for r in rows} == {
        (leaf, i) for leaf, v in entry["leaves"].items() for i in v["doc_ids"]
    }


def test_test_only_task_needs_the_flag_and_is_recorded(tasks_dir, tmp_path):
    with pytest.raises(
        ValueError, match=r"'dids_toy_testonly' has only a test split.*allow_test_split: true"
    ):
        observe(tasks_dir, tmp_path, "dids_toy_testonly", n=3)
    manifest = observe(tasks_dir, tmp_path, "dids_toy_testonly", n=3, allow_test_split=True)
    leaf = manifest["tasks"]["dids_toy_testonly"]["leaves"]["dids_toy_testonly"]
    assert (leaf["split"], leaf["role"], len(leaf["doc_ids"])) == ("test", "test", 3)
    assert "excludes them from scoring" in manifest["tasks"]["dids_toy_testonly"]["notes"][0]


def test_generation_task_uses_its_reference_and_refuses_without_one(tasks_dir, tmp_path):
    manifest = observe(tasks_dir, tmp_path, "dids_toy_gen", n=4)
    docs = toy_docs("dids_toy_gen", "train", SPLITS["dids_toy_gen"]["train"])
    rows = json.loads((tmp_path / "obs_dids_toy_gen.json").read_text())
    ids = manifest["tasks"]["dids_toy_gen"]["leaves"]["dids_toy_gen"]["doc_ids"]
    assert [r["output"] for r in rows] == [docs[i]["choices"][docs[i]["label"]] for i in ids]
    with pytest.raises(ValueError, match=r"'dids_toy_notarget' \(generate_until\) has no reference answer"):
        observe(tasks_dir, tmp_path, "dids_toy_notarget", n=2, allow_test_split=True)


def test_bad_configuration_is_reported_at_once(tasks_dir, tmp_path):
    with pytest.raises(EvalConfigError) as error:
        parse_observe_config({"n": 0, "bogus": 1, "allow_test_split": "maybe"})
    text = str(error.value)
    assert "5 problem(s)" in text
    assert "Unknown key `bogus`. Known keys: tasks, output_dir, n," in text
    assert "(`llamafactory-dids keys observe` explains each)" in text
    assert "`n` must be an integer >= 1, got 0" in text
    assert "`allow_test_split` must be true or false" in text and "`tasks` is required" in text
    assert "`output_dir` is required" in text
    with pytest.raises(ValueError, match="Unknown lm-eval task.*nope"):
        observe(tasks_dir, tmp_path, "dids_toy_mc,nope")
    with pytest.raises(ValueError, match="`include_builtin_tasks: false` needs `include_path`"):
        build_observation_sets(
            parse_observe_config({"tasks": "x", "output_dir": str(tmp_path), "include_builtin_tasks": False})
        )


def test_cli(tasks_dir, tmp_path, capsys):
    common = [
        "--output-dir",
        str(tmp_path),
        "--include-path",
        str(tasks_dir),
        "--include-builtin-tasks",
        "false",
    ]
    assert main(["observe", "--tasks", "dids_toy_testonly", "--n", "2", *common, "--allow-test-split"]) == 0
    assert len(json.loads((tmp_path / "obs_dids_toy_testonly.json").read_text())) == 2
    assert main(["observe", "--tasks", "dids_toy_testonly", "--n", "2", *common]) == 2
    assert "has only a test split" in capsys.readouterr().err
    # a YAML plus key=value overrides, the flags winning over both
    config = tmp_path / "observe.yaml"
    config.write_text(f"tasks: dids_toy_mc\nn: 3\noutput_dir: {tmp_path}\ninclude_builtin_tasks: false\n")
    assert main(["observe", str(config), f"include_path={tasks_dir}", "n=4", "--n", "5"]) == 0
    assert len(json.loads((tmp_path / "obs_dids_toy_mc.json").read_text())) == 5
