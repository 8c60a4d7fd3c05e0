"""The shared helpers: atomic writes, `key=value` overrides, rank lookup, the ignored-label value."""

from __future__ import annotations

import pytest

from llamafactory_dids.utils import (
    IGNORE_INDEX,
    OverrideError,
    atomic_write,
    parse_override,
    parse_overrides,
    rank_and_world,
    read_yaml_config,
    write_text_atomic,
)


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old", encoding="utf-8")
    write_text_atomic(path, "new")
    assert path.read_text(encoding="utf-8") == "new"
    with atomic_write(tmp_path / "blob.bin", "wb") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.bin", "state.json"]


def test_atomic_write_keeps_the_old_file_when_the_write_raises(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text("line 1\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="killed"), atomic_write(path) as f:
        f.write("partial")
        raise RuntimeError("killed mid-write")
    assert path.read_text(encoding="utf-8") == "line 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["history.jsonl"]  # the temporary file is gone
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "fresh.json") as f:
        raise RuntimeError
    assert not (tmp_path / "fresh.json").exists()


def test_atomic_write_refuses_append_mode(tmp_path):
    with pytest.raises(ValueError, match="mode must be"), atomic_write(tmp_path / "x", "a"):
        pass


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("n=1", ("n", 1)),
        ("lr=1.5", ("lr", 1.5)),
        ("flag=true", ("flag", True)),
        ("flag=false", ("flag", False)),
        ("x=[a, b]", ("x", ["a", "b"])),
        ("x=null", ("x", None)),
        ("x=", ("x", None)),
        (" key = 3 ", ("key", 3)),
        ("tasks=a,b", ("tasks", "a,b")),
        ("output_dir=./out/run", ("output_dir", "./out/run")),
        ("batch_size=auto:4", ("batch_size", "auto:4")),
        ("expr=a=b", ("expr", "a=b")),  # only the first `=` separates
    ],
)
def test_override_values_are_typed_as_yaml(item, expected):
    assert parse_override(item) == expected


def test_overrides_last_wins_and_errors_name_the_item():
    assert parse_overrides(["a=1", "b=x", "a=2"]) == {"a": 2, "b": "x"}
    with pytest.raises(OverrideError, match=r"override 'dids_budget' is not key=value"):
        parse_overrides(["a=1", "dids_budget"])
    assert issubclass(OverrideError, ValueError)


def test_read_yaml_config(tmp_path):
    (tmp_path / "empty.yaml").write_text("", encoding="utf-8")
    (tmp_path / "c.yaml").write_text("a: 1\nb: [x, y]\n", encoding="utf-8")
    assert read_yaml_config(tmp_path / "empty.yaml") == {}
    assert read_yaml_config(tmp_path / "c.yaml") == {"a": 1, "b": ["x", "y"]}


def test_rank_and_world_outside_a_process_group():
    assert rank_and_world() == (0, 1)


def test_ignore_index_is_llamafactorys_and_torchs():
    import inspect

    import torch.nn.functional as F
    from llamafactory.extras.constants import IGNORE_INDEX as LLAMAFACTORY_IGNORE_INDEX

    assert IGNORE_INDEX == LLAMAFACTORY_IGNORE_INDEX
    assert inspect.signature(F.cross_entropy).parameters["ignore_index"].default == IGNORE_INDEX
