"""Options of `llamafactory-dids eval` and `llamafactory-dids observe`: two dataclasses, validated up front.

Role: configuration of the evaluation layer (stdlib only, like `llamafactory_dids.config`). A YAML file
and command-line flags fill the same fields; `parse_eval_config` / `parse_observe_config` collect every
problem (unknown key, wrong type, bad choice, missing required key) and raise them at once. Defaults
follow the paper: Appendix B.5 (lm-eval-harness, 3-shot, chat template applied) and Section 5.4
(200 observation samples per downstream task).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigProblems, as_bool, as_int
from ..run_files import OBSERVATION_MANIFEST, RESULTS_FILE
from ..unknown_keys import unknown_key_problem

BACKENDS = ("auto", "hf", "vllm")
OVERLAP_POLICIES = ("exclude", "refuse")


class EvalConfigError(ConfigProblems):
    """Raised with every problem found in an eval/observe configuration, one per line."""

    def __init__(self, command: str, problems: list[str]):
        super().__init__(problems, subject=f"`llamafactory-dids {command}`")


def _field(default: Any, kind: str, help: str, **extra: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"kind": kind, "help": help, **extra})
    return field(default=default, metadata={"kind": kind, "help": help, **extra})


@dataclass
class EvalConfig:
    """One evaluation of a trained output with lm-evaluation-harness."""

    model_name_or_path: str = _field(
        None,
        "str",
        "The trained output: a full model directory, a LoRA adapter directory (has adapter_config.json), "
        "or a hub id.",
        required=True,
    )
    tasks: list[str] = _field([], "list", "lm-eval task or group names (comma list).", required=True)
    base_model_name_or_path: str | None = _field(
        None,
        "str",
        "Base model of a LoRA adapter. Unset: `base_model_name_or_path` of the adapter's adapter_config.json.",
    )
    num_fewshot: int = _field(3, "int", "Few-shot examples per prompt (paper App. B.5: 3).", minimum=0)
    apply_chat_template: bool | str = _field(
        True,
        "bool_or_str",
        "Render prompts with the tokenizer's chat template (paper App. B.5: applied); a string names one of "
        "the tokenizer's templates; false scores plain text.",
    )
    fewshot_as_multiturn: bool = _field(
        True, "bool", "With a chat template: few-shot examples as earlier turns (lm-eval's default)."
    )
    backend: str = _field(
        "auto",
        "choice",
        "`hf` (transformers), `vllm`, or `auto`: vllm when it is installed and a GPU is visible, else hf.",
        choices=BACKENDS,
    )
    batch_size: str = _field("auto", "batch", "Batch size: an integer, `auto` or `auto:N` (lm-eval).")
    device: str | None = _field(None, "str", "Torch device for the hf backend. Unset: cuda when available.")
    dtype: str = _field("auto", "str", "Model dtype passed to the backend (`auto`, `bfloat16`, ...).")
    max_length: int | None = _field(None, "int", "Context length in tokens. Unset: the model's.", minimum=1)
    limit: int | None = _field(
        None,
        "int",
        "Score only the first N eligible docs of each task (after excluding observation docs); smoke tests.",
        minimum=1,
    )
    observations: str | None = _field(
        None,
        "str",
        f"`{OBSERVATION_MANIFEST}` written by `llamafactory-dids observe`. Unset: looked up in the model "
        "directory and its parent; without one nothing is checked (recorded in the results).",
    )
    overlap: str = _field(
        "exclude",
        "choice",
        "Eval docs that are also observation docs: `exclude` them from scoring (recorded), or `refuse`.",
        choices=OVERLAP_POLICIES,
    )
    include_path: list[str] = _field([], "list", "Extra folders of lm-eval task YAMLs (local tasks).")
    include_builtin_tasks: bool = _field(True, "bool", "Also index lm-eval's built-in tasks (slower start).")
    output_path: str | None = _field(
        None,
        "str",
        f"Results JSON. Unset: `<model dir>/{RESULTS_FILE}` (or ./{RESULTS_FILE} for a hub id).",
    )
    log_samples: bool = _field(
        False, "bool", "Also write every scored doc with its prompt and response to eval_samples.jsonl."
    )
    fewshot_seed: int = _field(1234, "int", "Seed of the few-shot example sampler (lm-eval's default).")
    trust_remote_code: bool = _field(False, "bool", "Passed to the backend.")


@dataclass
class ObserveConfig:
    """Observation sets (`dids_target_datasets`) built from lm-eval tasks."""

    tasks: list[str] = _field([], "list", "lm-eval task or group names (comma list).", required=True)
    output_dir: str = _field(
        None,
        "str",
        "Where the datasets go: a LLaMA-Factory dataset_dir (its dataset_info.json is updated, not replaced).",
        required=True,
    )
    n: int = _field(200, "int", "Examples per task (paper Sec. 5.4: 200 per task).", minimum=1)
    seed: int = _field(0, "int", "Seed of the draw of the N docs.")
    allow_test_split: bool = _field(
        False,
        "bool",
        "Tasks with neither validation nor training docs: draw from the test split (those docs are then "
        "excluded from scoring by `eval`). Off: such tasks are refused.",
    )
    dataset_prefix: str = _field("obs_", "str", "Dataset name = prefix + task name.")
    include_path: list[str] = _field([], "list", "Extra folders of lm-eval task YAMLs (local tasks).")
    include_builtin_tasks: bool = _field(True, "bool", "Also index lm-eval's built-in tasks (slower start).")


def _parse_value(key: str, value: Any, meta: Mapping[str, Any], problems: list[str]) -> Any:
    kind = meta["kind"]
    if value is None:
        return None
    if kind == "str":
        return str(value)
    if kind == "list":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
            problems.append(f"`{key}` must be a comma list or a list of strings, got {value!r}.")
            return None
        return [v.strip() for v in items if v.strip()]
    if kind == "bool":
        out = as_bool(value)
        if out is None:
            problems.append(f"`{key}` must be true or false, got {value!r}.")
        return out
    if kind == "bool_or_str":
        out = as_bool(value)
        return out if out is not None else str(value)
    if kind == "int":
        out = as_int(value)
        if out is None or out < meta.get("minimum", out):
            problems.append(f"`{key}` must be an integer >= {meta.get('minimum', '-inf')}, got {value!r}.")
            return None
        return out
    if kind == "choice":
        if str(value).lower() not in meta["choices"]:
            problems.append(f"`{key}` must be one of {', '.join(meta['choices'])}, got {value!r}.")
            return None
        return str(value).lower()
    if kind == "batch":
        text = str(value)
        number = text.split(":", 1)[1] if text.startswith("auto:") else text
        if text != "auto" and (as_int(number) is None or as_int(number) < 1):
            problems.append(f"`{key}` must be a positive integer, `auto` or `auto:N`, got {value!r}.")
            return None
        return text
    raise AssertionError(f"unknown field kind {kind!r}")  # a programming error, not user input


def _parse(cls: type, command: str, raw: Mapping[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            problems.append(
                unknown_key_problem(
                    key, list(fields), family="keys", listing=f"llamafactory-dids keys {command}"
                )
            )
            continue
        parsed = _parse_value(key, value, fields[key].metadata, problems)
        if parsed is not None:
            values[key] = parsed
    for name, f in fields.items():
        if f.metadata.get("required") and not values.get(name):
            problems.append(f"`{name}` is required: {f.metadata['help']}")
    if problems:
        raise EvalConfigError(command, problems)
    return cls(**values)


def parse_eval_config(raw: Mapping[str, Any]) -> EvalConfig:
    """Validated `EvalConfig` from YAML/CLI values. Raises `EvalConfigError` listing every problem."""
    return _parse(EvalConfig, "eval", raw)


def parse_observe_config(raw: Mapping[str, Any]) -> ObserveConfig:
    """Validated `ObserveConfig` from YAML/CLI values. Raises `EvalConfigError` listing every problem."""
    return _parse(ObserveConfig, "observe", raw)
