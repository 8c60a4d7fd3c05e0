"""Options of `llamafactory-dids eval` and `llamafactory-dids observe`: two dataclasses, validated up front.

Role: configuration of the evaluation layer (stdlib only, like `llamafactory_dids.config`). A YAML file
and command-line flags fill the same fields; `parse_eval_config` / `parse_observe_config` read them with
the validator of the training and repartition configs (`config.parse_keys`, from the tables `EVAL_KEYS`
and `OBSERVE_KEYS`), collect every problem (unknown key, wrong type, bad choice, missing required key)
and raise them at once. Defaults
follow the paper: Appendix B.5 (lm-eval-harness, 3-shot, chat template applied) and Section 5.4
(200 observation samples per downstream task).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigProblems, as_int, parse_keys
from ..run_files import OBSERVATION_MANIFEST, RESULTS_FILE
from ..unknown_keys import unknown_key_problem

BACKENDS = ("auto", "hf", "vllm")
OVERLAP_POLICIES = ("exclude", "refuse")


class EvalConfigError(ConfigProblems):
    """Raised with every problem found in an eval/observe configuration, one per line."""

    def __init__(self, command: str, problems: list[str]):
        super().__init__(problems, subject=f"`llamafactory-dids {command}`")


def _field(default: Any, help: str) -> Any:
    """A field with its help, the one metadata key (as in `DIDSConfig`); a list default is copied."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class EvalConfig:
    """One evaluation of a trained output with lm-evaluation-harness."""

    model_name_or_path: str = _field(
        None,
        "The trained output: a full model directory, a LoRA adapter directory (has adapter_config.json), "
        "or a hub id.",
    )
    tasks: list[str] = _field([], "lm-eval task or group names (comma list).")
    base_model_name_or_path: str | None = _field(
        None,
        "Base model of a LoRA adapter. Unset: `base_model_name_or_path` of the adapter's adapter_config.json.",
    )
    num_fewshot: int = _field(3, "Few-shot examples per prompt (paper App. B.5: 3).")
    apply_chat_template: bool | str = _field(
        True,
        "Render prompts with the tokenizer's chat template (paper App. B.5: applied); a string names one of "
        "the tokenizer's templates; false scores plain text.",
    )
    fewshot_as_multiturn: bool = _field(
        True, "With a chat template: few-shot examples as earlier turns (lm-eval's default)."
    )
    backend: str = _field(
        "auto",
        "`hf` (transformers), `vllm`, or `auto`: vllm when it is installed and a GPU is visible, else hf.",
    )
    batch_size: str = _field("auto", "Batch size: an integer, `auto` or `auto:N` (lm-eval).")
    device: str | None = _field(None, "Torch device for the hf backend. Unset: cuda when available.")
    dtype: str = _field("auto", "Model dtype passed to the backend (`auto`, `bfloat16`, ...).")
    max_length: int | None = _field(None, "Context length in tokens. Unset: the model's.")
    limit: int | None = _field(
        None,
        "Score only the first N eligible docs of each task (after excluding observation docs); smoke tests.",
    )
    observations: str | None = _field(
        None,
        f"`{OBSERVATION_MANIFEST}` written by `llamafactory-dids observe`. Unset: looked up in the model "
        "directory and its parent; without one nothing is checked (recorded in the results).",
    )
    overlap: str = _field(
        "exclude",
        "Eval docs that are also observation docs: `exclude` them from scoring (recorded), or `refuse`.",
    )
    include_path: list[str] = _field([], "Extra folders of lm-eval task YAMLs (local tasks).")
    include_builtin_tasks: bool = _field(True, "Also index lm-eval's built-in tasks (slower start).")
    output_path: str | None = _field(
        None,
        f"Results JSON. Unset: `<model dir>/{RESULTS_FILE}` (or ./{RESULTS_FILE} for a hub id).",
    )
    log_samples: bool = _field(
        False, "Also write every scored doc with its prompt and response to eval_samples.jsonl."
    )
    fewshot_seed: int = _field(1234, "Seed of the few-shot example sampler (lm-eval's default).")
    trust_remote_code: bool = _field(False, "Passed to the backend.")


@dataclass
class ObserveConfig:
    """Observation sets (`dids_target_datasets`) built from lm-eval tasks."""

    tasks: list[str] = _field([], "lm-eval task or group names (comma list).")
    output_dir: str = _field(
        None,
        "Where the datasets go: a LLaMA-Factory dataset_dir (its dataset_info.json is updated, not replaced).",
    )
    n: int = _field(200, "Examples per task (paper Sec. 5.4: 200 per task).")
    seed: int = _field(0, "Seed of the draw of the N docs.")
    allow_test_split: bool = _field(
        False,
        "Tasks with neither validation nor training docs: draw from the test split (those docs are then "
        "excluded from scoring by `eval`). Off: such tasks are refused.",
    )
    dataset_prefix: str = _field("obs_", "Dataset name = prefix + task name.")
    include_path: list[str] = _field([], "Extra folders of lm-eval task YAMLs (local tasks).")
    include_builtin_tasks: bool = _field(True, "Also index lm-eval's built-in tasks (slower start).")


#: `llamafactory-dids eval` keys by kind, read by `config.parse_keys` (the CLI makes `bools` switches)
EVAL_KEYS: dict[str, Any] = {
    "ints": {
        "num_fewshot": (0, "an integer >= 0"),
        "max_length": (1, "an integer >= 1"),
        "limit": (1, "an integer >= 1"),
        "fewshot_seed": (None, "an integer"),
    },
    "bools": ("fewshot_as_multiturn", "include_builtin_tasks", "log_samples", "trust_remote_code"),
    "choices": {"backend": BACKENDS, "overlap": OVERLAP_POLICIES},
    "texts": (
        "model_name_or_path",
        "base_model_name_or_path",
        "device",
        "dtype",
        "observations",
        "output_path",
    ),
    "lists": ("tasks", "include_path"),
    "bools_or_texts": ("apply_chat_template",),
    "required": ("model_name_or_path", "tasks"),
}
#: `llamafactory-dids observe` keys by kind
OBSERVE_KEYS: dict[str, Any] = {
    "ints": {"n": (1, "an integer >= 1"), "seed": (None, "an integer")},
    "bools": ("allow_test_split", "include_builtin_tasks"),
    "texts": ("output_dir", "dataset_prefix"),
    "lists": ("tasks", "include_path"),
    "required": ("tasks", "output_dir"),
}


def _parse_batch_size(values: Mapping[str, Any], cfg: EvalConfig, problems: list[str]) -> None:
    """`batch_size`: an integer, `auto` or `auto:N`, kept as text (lm-eval's own format)."""
    if values.get("batch_size") is None:
        return
    text = str(values["batch_size"])
    number = text.split(":", 1)[1] if text.startswith("auto:") else text
    if text != "auto" and (as_int(number) is None or as_int(number) < 1):
        problems.append(
            f"`batch_size` must be a positive integer, `auto` or `auto:N`, got {values['batch_size']!r}."
        )
    else:
        cfg.batch_size = text


def _parse(cfg: Any, command: str, kinds: Mapping[str, Any], raw: Mapping[str, Any]) -> list[str]:
    """Set the keys of `raw` on `cfg` through `config.parse_keys`; the problems found."""
    known = [f.name for f in dataclasses.fields(cfg)]
    problems = [
        unknown_key_problem(key, known, family="keys", listing=f"llamafactory-dids keys {command}")
        for key in raw
        if key not in known
    ]
    parse_keys({k: v for k, v in raw.items() if k in known}, cfg, problems, **kinds)
    return problems


def parse_eval_config(raw: Mapping[str, Any]) -> EvalConfig:
    """Validated `EvalConfig` from YAML/CLI values. Raises `EvalConfigError` listing every problem."""
    cfg = EvalConfig()
    problems = _parse(cfg, "eval", EVAL_KEYS, raw)
    _parse_batch_size(raw, cfg, problems)
    if problems:
        raise EvalConfigError("eval", problems)
    return cfg


def parse_observe_config(raw: Mapping[str, Any]) -> ObserveConfig:
    """Validated `ObserveConfig` from YAML/CLI values. Raises `EvalConfigError` listing every problem."""
    cfg = ObserveConfig()
    problems = _parse(cfg, "observe", OBSERVE_KEYS, raw)
    if problems:
        raise EvalConfigError("observe", problems)
    return cfg
