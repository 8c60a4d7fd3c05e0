"""lm-evaluation-harness tasks as seen by `observe` and `eval`: loading, splits, doc identity.

Role: the only module that talks to lm-eval's task API (imported lazily: lm_eval is the optional
`eval` extra). The downstream tasks S_j of the paper's objective (eq. 1) are lm-eval tasks; a
group name (mmlu, bbh) stands for its leaf tasks. A doc is identified by (leaf task, split, index
in that split after the task's own `process_docs`), which is also how lm-eval numbers the docs it
scores, plus a content hash that catches a manifest built from different data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

INSTALL_HINT = 'pip install "llamafactory-dids[eval]"'


def require_lm_eval() -> Any:
    """Import lm_eval, or fail with the extra to install."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager  # noqa: F401  (the API we rely on)
    except ImportError as error:
        raise ImportError(
            f"`llamafactory-dids eval` and `observe` need lm-evaluation-harness (lm_eval>=0.4.13,<0.5), which "
            f"is not importable ({error}). Install it with: {INSTALL_HINT}"
        ) from error
    if not hasattr(TaskManager, "load"):
        raise ImportError(
            f"lm_eval {getattr(lm_eval, '__version__', '?')} is too old: TaskManager.load is missing. "
            f"Upgrade with: {INSTALL_HINT}"
        )
    return lm_eval


def task_manager(include_path: list[str], include_builtin_tasks: bool) -> Any:
    """An lm-eval `TaskManager` indexing `include_path` (and the built-in tasks unless disabled)."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    if not include_builtin_tasks and not include_path:
        raise ValueError(
            "`include_builtin_tasks: false` needs `include_path` (folders of task YAMLs); got neither. "
            "Set `include_path` or re-enable the built-in tasks."
        )
    return TaskManager(include_path=list(include_path) or None, include_defaults=include_builtin_tasks)


def load_leaf_tasks(manager: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    """Requested name -> {leaf task name -> lm-eval Task}; a group expands to its leaf tasks.

    Raises:
        ValueError: naming the unknown task(s), with a hint on where tasks come from.
    """
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        raise ValueError(
            f"Unknown lm-eval task(s): {', '.join(unknown)}. Use names from `lm-eval ls tasks`, or add a "
            "folder of task YAMLs with `include_path`."
        )
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        loaded = manager.load([name])
        out[name] = dict(sorted(loaded["tasks"].items()))
    return out


def doc_hash(doc: Any) -> str:
    """Stable hash of a doc's content (key order and non-JSON values normalised)."""
    text = json.dumps(doc, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class SplitDocs:
    """The docs of one split of one leaf task, as lm-eval numbers them."""

    split: str  # dataset split name, e.g. "validation"
    role: str  # "validation", "training" or "test": the task config key it came from
    docs: list[dict]


def eval_split(task: Any) -> SplitDocs:
    """The split lm-eval scores: test when the task has one, else validation (lm-eval's `eval_docs`)."""
    if task.has_test_docs():
        return SplitDocs(task.config.test_split, "test", list(task.test_docs()))
    if task.has_validation_docs():
        return SplitDocs(task.config.validation_split, "validation", list(task.validation_docs()))
    raise ValueError(f"lm-eval task {task.config.task!r} has neither a test nor a validation split to score.")


def observation_split(task: Any, allow_test_split: bool) -> tuple[SplitDocs, str | None]:
    """The split observation docs come from, and a note when it is not the validation split.

    Validation first (the paper's choice), then training docs; test docs only when allowed.

    Raises:
        ValueError: for a test-only task without `allow_test_split`.
    """
    name = task.config.task
    if task.has_validation_docs():
        return SplitDocs(task.config.validation_split, "validation", list(task.validation_docs())), None
    if task.has_training_docs():
        note = (
            f"task {name!r} has no validation split; observation docs are drawn from its training split "
            f"{task.config.training_split!r} (disjoint from the scored {task.config.test_split!r} split)."
        )
        return SplitDocs(task.config.training_split, "training", list(task.training_docs())), note
    if not allow_test_split:
        raise ValueError(
            f"lm-eval task {name!r} has only a test split ({task.config.test_split!r}), which `eval` scores. "
            "Set `allow_test_split: true` (CLI: --allow-test-split) to draw the observation docs from it; "
            "`eval` then excludes exactly those docs from scoring."
        )
    note = (
        f"task {name!r} has only a test split; observation docs are drawn from {task.config.test_split!r} "
        "and `eval` excludes them from scoring."
    )
    return SplitDocs(task.config.test_split, "test", list(task.test_docs())), note
