"""Reading run outputs: hand-computed time averages, resume resolution, and every refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llamafactory_dids.reporting.run_outputs import (
    HISTORY_FILE,
    HISTORY_SCHEMA,
    RunOutputsError,
    load_run,
    read_training_log,
    time_averaged_weights,
    top_domains,
    weight_spans,
    weights_at_progress,
)
from llamafactory_dids.runtime import mixture

from synthetic_runs import TWO, record, two_domain_run, write_run


def test_constants_match_the_writer():
    assert HISTORY_FILE == mixture.HISTORY_FILE
    assert HISTORY_SCHEMA == mixture.HISTORY_VERSION


def test_time_average_by_samples_and_steps_by_hand(tmp_path):
    run = load_run(two_domain_run(tmp_path / "run"))
    # 4 samples per step (40 trained by step 10) -> 60 by the final step 15
    assert run.final_step == 15 and run.total_samples == 60
    # positions 0, 24, 44, end 60 -> spans 24, 20, 16 samples
    np.testing.assert_array_equal(weight_spans(run, "samples"), [24, 20, 16])
    # (24 * .5 + 20 * .8 + 16 * .2) / 60 = 31.2 / 60
    np.testing.assert_allclose(time_averaged_weights(run, "samples"), [0.52, 0.48], atol=1e-12)
    np.testing.assert_array_equal(weight_spans(run, "steps"), [5, 5, 5])
    np.testing.assert_allclose(time_averaged_weights(run, "steps"), [0.5, 0.5], atol=1e-12)
    np.testing.assert_array_equal(run.weights[-1], [0.2, 0.8])
    with pytest.raises(ValueError, match="`by` must be one of samples, steps"):
        weight_spans(run, "tokens")


def test_stream_positions_past_the_end_count_nothing(tmp_path):
    """An update whose weights start after the last trained sample (prefetch) gets no weight."""
    records = [
        record(0, 0, 0, [0.5, 0.5], [0, 0], TWO),
        record(1, 5, 24, [1.0, 0.0], [10, 10], TWO),
        record(2, 10, 48, [0.0, 1.0], [30, 10], TWO),  # applies from 48, but 10 steps x 4 = 40 trained
    ]
    run = load_run(write_run(tmp_path / "run", records, final_step=10))
    assert run.total_samples == 40
    np.testing.assert_array_equal(weight_spans(run, "samples"), [24, 16, 0])
    np.testing.assert_allclose(time_averaged_weights(run), [(12 + 16) / 40, 12 / 40])


def test_without_trainer_state_the_average_stops_at_the_last_update(tmp_path):
    records = [record(0, 0, 0, [0.5, 0.5], [0, 0], TWO), record(1, 5, 24, [0.8, 0.2], [12, 8], TWO)]
    run = load_run(write_run(tmp_path / "run", records))
    assert run.final_step is None and run.total_samples == 20
    np.testing.assert_array_equal(weight_spans(run), [20, 0])
    assert "unknown" in run.end_note


def test_initial_record_only(tmp_path):
    run = load_run(write_run(tmp_path / "run", [record(0, 0, 0, [0.7, 0.3], [0, 0], TWO)], final_step=20))
    np.testing.assert_allclose(time_averaged_weights(run), [0.7, 0.3])
    np.testing.assert_allclose(time_averaged_weights(run, "steps"), [0.7, 0.3])
    assert run.num_updates == 0


def test_resumed_history_later_records_supersede(tmp_path):
    """Records written after a resume replace the earlier run's records at and after their step."""
    records = [
        record(0, 0, 0, [0.5, 0.5], [0, 0], TWO),
        record(1, 5, 24, [0.8, 0.2], [12, 8], TWO),
        record(2, 10, 44, [0.9, 0.1], [26, 14], TWO),  # lost: the run died after checkpoint-5
        record(3, 15, 64, [0.9, 0.1], [40, 20], TWO),
        record(2, 10, 44, [0.2, 0.8], [26, 14], TWO),  # the resumed run's update at step 10
    ]
    run = load_run(write_run(tmp_path / "run", records, final_step=15))
    assert run.superseded == 2
    assert run.steps.tolist() == [0, 5, 10]
    np.testing.assert_allclose(run.weights[-1], [0.2, 0.8])
    np.testing.assert_allclose(time_averaged_weights(run), [0.52, 0.48], atol=1e-12)


def test_trainer_log_entries_repeated_by_a_resume(tmp_path):
    out = two_domain_run(tmp_path / "run")
    (out / "trainer_state.json").unlink()
    lines = [
        {"current_steps": 5, "total_steps": 15, "dids/target/code": 0.8},
        {"current_steps": 10, "total_steps": 15, "dids/target/code": 0.9},
        {"current_steps": 10, "total_steps": 15, "dids/target/code": 0.2},  # appended after the resume
        {"current_steps": 15, "total_steps": 15, "dids/target/code": 0.2},
    ]
    (out / "trainer_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    entries, final_step, source = read_training_log(out)
    assert final_step == 15 and source.endswith("trainer_log.jsonl")
    assert [(e["step"], e["dids/target/code"]) for e in entries] == [(5, 0.8), (10, 0.2), (15, 0.2)]


def test_newest_checkpoint_state_when_the_run_was_interrupted(tmp_path):
    out = two_domain_run(tmp_path / "run")
    (out / "trainer_state.json").unlink()
    for step in (4, 12):
        (out / f"checkpoint-{step}").mkdir()
        state = {"global_step": step, "log_history": [{"step": step, "dids/target/code": step / 100}]}
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps(state))
    run = load_run(out)
    assert run.final_step == 12 and run.log == [{"step": 12, "dids/target/code": 0.12}]


def test_weights_at_progress_is_the_table_9_view(tmp_path):
    run = load_run(two_domain_run(tmp_path / "run"))  # updates at steps 5 and 10 of 15
    at = weights_at_progress(run, [0.0, 0.2, 1 / 3, 0.5, 0.7, 1.0])
    np.testing.assert_allclose(at[:, 0], [0.5, 0.5, 0.8, 0.8, 0.2, 0.2])
    with pytest.raises(ValueError, match="fractions must lie in"):
        weights_at_progress(run, [1.5])


def test_top_domains():
    assert top_domains(np.array([0.1, 0.4, 0.4, 0.05]), 3) == [1, 2, 0]


# ------------------------------------------------------------------------------------------ refusals


def test_refuses_a_directory_without_history(tmp_path):
    with pytest.raises(RunOutputsError, match="has no history.jsonl"):
        load_run(tmp_path)
    with pytest.raises(RunOutputsError, match="is not a directory"):
        load_run(tmp_path / "nowhere")


def test_refuses_an_empty_history(tmp_path):
    (tmp_path / "history.jsonl").write_text("\n")
    with pytest.raises(RunOutputsError, match="history.jsonl is empty"):
        load_run(tmp_path)


def test_refuses_another_schema_version(tmp_path):
    records = [
        record(0, 0, 0, [0.5, 0.5], [0, 0], TWO),
        {**record(1, 5, 8, [1, 0], [4, 4], TWO), "schema": 2},
    ]
    write_run(tmp_path, records)
    with pytest.raises(RunOutputsError, match=r"history.jsonl, line 2: history schema 2, .* reads schema 1"):
        load_run(tmp_path)


def test_refuses_a_truncated_last_line(tmp_path):
    out = two_domain_run(tmp_path / "run")
    text = (out / "history.jsonl").read_text()
    (out / "history.jsonl").write_text(text[:-40])  # killed while writing the third record
    with pytest.raises(
        RunOutputsError, match=r"history.jsonl, line 3 \(the last line\): not valid JSON.*truncated"
    ):
        load_run(out)


def test_refuses_a_corrupt_line_in_the_middle(tmp_path):
    out = two_domain_run(tmp_path / "run")
    lines = (out / "history.jsonl").read_text().splitlines()
    lines[1] = lines[1][:30]
    (out / "history.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunOutputsError, match=r"history.jsonl, line 2: not valid JSON .*corrupt"):
        load_run(out)


def test_refuses_records_of_two_runs(tmp_path):
    records = [
        record(0, 0, 0, [0.5, 0.5], [0, 0], TWO),
        record(1, 5, 8, [0.2, 0.3, 0.5], [4, 4, 0], ["a", "b", "c"]),
    ]
    write_run(tmp_path, records)
    with pytest.raises(
        RunOutputsError, match="line 2: record over domains .* two runs wrote into one output_dir"
    ):
        load_run(tmp_path)


def test_refuses_a_record_without_weights(tmp_path):
    bad = record(0, 0, 0, [0.5, 0.5], [0, 0], TWO)
    del bad["weights"]
    write_run(tmp_path, [bad])
    with pytest.raises(RunOutputsError, match=r"line 1: record without \['weights'\]"):
        load_run(tmp_path)
