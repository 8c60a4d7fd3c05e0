"""Score a trained output on downstream tasks with lm-evaluation-harness: `llamafactory-dids eval`.

Role: measures Acc_j(f_theta; S_j), the per-task accuracies whose average is the objective of eq. 1
(Table 1's columns), the way the paper does (App. B.5: lm-eval-harness, 3-shot, chat template
applied, vLLM backend). A trained output is a full model directory or a LoRA adapter directory;
the docs used as observation sets by `observe` are kept out of what is scored (or the run is
refused), and the scored doc ids are recorded with the metrics in one JSON next to the run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..run_files import OBSERVATION_MANIFEST, RESULTS_FILE, SAMPLES_FILE
from ..run_files import RESULTS_VERSION as RESULTS_SCHEMA_VERSION
from .config import EvalConfig
from .observe import read_manifest
from .tasks import doc_hash, eval_split, load_leaf_tasks, require_lm_eval, task_manager

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- model and backend


@dataclass(frozen=True)
class ModelSpec:
    """What the backend loads: a model, optionally with a LoRA adapter on top."""

    pretrained: str  # full model (or the base of an adapter)
    adapter: str | None  # LoRA adapter directory, if any
    tokenizer: str  # where the tokenizer (and its chat template) is read from


def resolve_model(model_name_or_path: str, base_model_name_or_path: str | None = None) -> ModelSpec:
    """A full model directory / hub id as is; a LoRA adapter directory as base + adapter.

    Raises:
        ValueError: an adapter whose base model is neither given nor recorded in adapter_config.json.
    """
    path = Path(model_name_or_path)
    adapter_config = path / "adapter_config.json"
    if not adapter_config.is_file():
        if base_model_name_or_path:
            raise ValueError(
                f"`base_model_name_or_path` is only for LoRA adapters, but {path} has no adapter_config.json. "
                "Remove `base_model_name_or_path`, or point `model_name_or_path` at the adapter directory."
            )
        return ModelSpec(pretrained=model_name_or_path, adapter=None, tokenizer=model_name_or_path)
    base = base_model_name_or_path
    if not base:
        try:
            base = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        except ValueError as error:
            raise ValueError(f"{adapter_config} is not valid JSON: {error}") from error
    if not base:
        raise ValueError(
            f"{adapter_config} records no `base_model_name_or_path`; pass the base model with "
            "`base_model_name_or_path` (CLI: --base-model-name-or-path)."
        )
    has_tokenizer = (path / "tokenizer_config.json").is_file()  # LLaMA-Factory saves it with the adapter
    return ModelSpec(
        pretrained=str(base), adapter=str(path), tokenizer=str(path) if has_tokenizer else str(base)
    )


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def select_backend(requested: str, *, has_vllm: bool, has_cuda: bool) -> str:
    """`hf` or `vllm` for a requested backend (`auto`, `hf`, `vllm`).

    Raises:
        ValueError: `vllm` requested but not installed or no GPU.
    """
    if requested == "hf":
        return "hf"
    if requested == "vllm":
        if not has_vllm:
            raise ValueError(
                "`backend: vllm` but vllm is not installed. Install it (pip install vllm) or use `backend: hf`."
            )
        if not has_cuda:
            raise ValueError("`backend: vllm` needs a CUDA GPU and none is visible. Use `backend: hf`.")
        return "vllm"
    if requested == "auto":
        return "vllm" if has_vllm and has_cuda else "hf"
    raise ValueError(f"`backend` must be one of auto, hf, vllm, got {requested!r}.")


def model_arguments(spec: ModelSpec, backend: str, config: EvalConfig) -> dict[str, Any]:
    """lm-eval `model_args` of the chosen backend (LoRA: `peft` for hf, `lora_local_path` for vllm)."""
    args: dict[str, Any] = {
        "pretrained": spec.pretrained,
        "tokenizer": spec.tokenizer,
        "dtype": config.dtype,
        "trust_remote_code": config.trust_remote_code,
    }
    if backend == "hf":
        if spec.adapter:
            args["peft"] = spec.adapter
        if config.max_length:
            args["max_length"] = config.max_length
    else:
        if spec.adapter:
            args["lora_local_path"] = spec.adapter
        if config.max_length:
            args["max_model_len"] = config.max_length
    return args


def check_chat_template(spec: ModelSpec, config: EvalConfig) -> None:
    """Fail before loading the model when a chat template is asked for and the tokenizer has none."""
    if config.apply_chat_template is False:
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer, trust_remote_code=config.trust_remote_code)
    if not tokenizer.chat_template:
        raise ValueError(
            f"`apply_chat_template: {config.apply_chat_template}` but the tokenizer at {spec.tokenizer} has no chat "
            "template. Set `apply_chat_template: false` (CLI: --apply-chat-template false) to score plain text, "
            "or save a template with the tokenizer (outputs trained with LLaMA-Factory carry their `template:`)."
        )


# --------------------------------------------------------------------------- which docs are scored


def find_manifest(config: EvalConfig) -> Path | None:
    """The observation manifest: the configured one, else one next to the run (model dir, its parent)."""
    if config.observations:
        path = Path(config.observations)
        if path.is_dir():
            path = path / OBSERVATION_MANIFEST
        if not path.is_file():
            raise ValueError(
                f"`observations`: {path} does not exist; give the manifest written by `observe`."
            )
        return path
    model = Path(config.model_name_or_path)
    for folder in (model, model.parent):
        if model.is_dir() and (folder / OBSERVATION_MANIFEST).is_file():
            return folder / OBSERVATION_MANIFEST
    return None


def _observed_leaves(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Leaf task -> its manifest entry (split, doc_ids, doc_hashes)."""
    leaves: dict[str, dict[str, Any]] = {}
    for entry in manifest["tasks"].values():
        leaves.update(entry["leaves"])
    return leaves


def plan_scored_docs(
    leaf: str, split: str, docs: list[dict], observed: dict[str, Any] | None, policy: str, limit: int | None
) -> tuple[list[int], dict[str, Any]]:
    """Doc ids of `split` to score for one leaf task, and the record of the disjointness check.

    A doc is excluded when its content hash is one of the task's observation docs (same split: the
    very docs drawn; other split: duplicated content). Observation docs of the same split must hash
    as recorded, else the manifest was built from other data.

    Raises:
        ValueError: stale manifest; any overlap under `refuse`; nothing left to score.
    """
    record: dict[str, Any] = {"eval_split": split, "num_docs": len(docs)}
    excluded: list[int] = []
    if observed is not None:
        record.update(observation_split=observed["split"], observation_docs=len(observed["doc_ids"]))
        if observed["split"] == split:
            for doc_id, expected in zip(observed["doc_ids"], observed["doc_hashes"], strict=True):
                if doc_id >= len(docs) or doc_hash(docs[doc_id]) != expected:
                    raise ValueError(
                        f"Observation manifest does not match task {leaf!r}: doc {doc_id} of split {split!r} is "
                        "not the doc it recorded (the task data changed). Rebuild the observation sets with "
                        "`llamafactory-dids observe` (and retrain on them)."
                    )
        hashes = set(observed["doc_hashes"])
        excluded = [i for i, doc in enumerate(docs) if doc_hash(doc) in hashes]
        if excluded and policy == "refuse":
            raise ValueError(
                f"Task {leaf!r}: {len(excluded)} doc(s) of the scored split {split!r} are observation docs "
                f"(e.g. ids {excluded[:5]}), and `overlap: refuse` is set. Use `overlap: exclude` to score the "
                "other docs, or build the observation sets from another split."
            )
    record["excluded_doc_ids"] = excluded
    skip = set(excluded)
    eligible = [i for i in range(len(docs)) if i not in skip]
    if limit is not None:
        eligible = eligible[:limit]
    if not eligible:
        raise ValueError(
            f"Task {leaf!r}: no doc of split {split!r} is left to score ({len(docs)} docs, {len(excluded)} are "
            "observation docs). Draw fewer observation docs (`observe --n`) or from another split."
        )
    return eligible, record


# --------------------------------------------------------------------------- the run


def default_output_path(config: EvalConfig) -> Path:
    if config.output_path:
        return Path(config.output_path)
    model = Path(config.model_name_or_path)
    return (model if model.is_dir() else Path(".")) / RESULTS_FILE


def _observations(config: EvalConfig) -> tuple[Path | None, dict[str, dict[str, Any]]]:
    """The observation manifest (None: not found) and its leaf tasks' entries."""
    manifest_path = find_manifest(config)
    observed = _observed_leaves(read_manifest(manifest_path)) if manifest_path else {}
    if manifest_path is None:
        logger.warning("No observation manifest given or found next to the run: disjointness not checked.")
    return manifest_path, observed


def _plan_samples(
    config: EvalConfig, manager: Any, observed: dict[str, dict[str, Any]]
) -> tuple[dict[str, list[int]], dict[str, Any]]:
    """Doc ids to score of each leaf task that leaves some out (lm-eval's `samples`), and every leaf's
    disjointness record."""
    samples: dict[str, list[int]] = {}
    checks: dict[str, Any] = {}
    for leaves in load_leaf_tasks(manager, config.tasks).values():
        for leaf, task in leaves.items():
            split = eval_split(task)
            ids, checks[leaf] = plan_scored_docs(
                leaf, split.split, split.docs, observed.get(leaf), config.overlap, config.limit
            )
            if len(ids) < len(split.docs):
                samples[leaf] = ids
    return samples, checks


def _write_results(path: Path, out: dict[str, Any], logged: dict[str, list[dict]], log_samples: bool) -> None:
    """The results JSON at `path` and, with `log_samples`, the per-doc records beside it."""
    from lm_eval.utils import handle_non_serializable

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=handle_non_serializable) + "\n", encoding="utf-8")
    if log_samples:
        with open(path.with_name(SAMPLES_FILE), "w", encoding="utf-8") as f:
            for leaf, rows in logged.items():
                for row in rows:
                    f.write(json.dumps({"task": leaf, **row}, default=handle_non_serializable) + "\n")


def run_evaluation(config: EvalConfig) -> Path:
    """Evaluate `config.model_name_or_path` on `config.tasks`; write and return the results JSON."""
    lm_eval = require_lm_eval()
    import torch

    spec = resolve_model(config.model_name_or_path, config.base_model_name_or_path)
    backend = select_backend(config.backend, has_vllm=vllm_installed(), has_cuda=torch.cuda.is_available())
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_chat_template(spec, config)

    manager = task_manager(config.include_path, config.include_builtin_tasks)
    manifest_path, observed = _observations(config)
    samples, checks = _plan_samples(config, manager, observed)

    batch_size: int | str = int(config.batch_size) if config.batch_size.isdigit() else config.batch_size
    results = lm_eval.simple_evaluate(
        model=backend,
        model_args=model_arguments(spec, backend, config),
        tasks=list(config.tasks),
        num_fewshot=config.num_fewshot,
        batch_size=batch_size,
        device=device if backend == "hf" else None,
        samples=samples or None,
        log_samples=True,  # the per-doc records give the scored doc ids
        apply_chat_template=config.apply_chat_template,
        fewshot_as_multiturn=config.fewshot_as_multiturn if config.apply_chat_template else False,
        fewshot_random_seed=config.fewshot_seed,
        task_manager=manager,
    )
    path = default_output_path(config)
    if results is None:  # a non-main rank of a data-parallel hf run: rank 0 writes the results
        return path
    logged = results.pop("samples", {})
    scored = {leaf: sorted({int(s["doc_id"]) for s in rows}) for leaf, rows in logged.items()}
    for leaf, record in checks.items():
        record["scored"] = len(scored.get(leaf, []))
    out = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "model": {**asdict(spec), "model_name_or_path": config.model_name_or_path, "backend": backend},
        "settings": {**asdict(config), "device": device, "lm_eval_version": results.get("lm_eval_version")},
        "results": results["results"],
        "groups": results.get("groups", {}),
        "n_shot": results.get("n-shot", {}),
        "n_samples": results.get("n-samples", {}),
        "versions": results.get("versions", {}),
        "scored_doc_ids": scored,
        "observations": {
            "manifest": str(manifest_path) if manifest_path else None,
            "policy": config.overlap,
            "tasks": checks,
        },
    }
    _write_results(path, out, logged, config.log_samples)
    _print_table(out)
    print(f"[dids] eval: results -> {path}")
    return path


def _print_table(out: dict[str, Any]) -> None:
    for task, metrics in out["results"].items():
        shown = ", ".join(
            f"{k.split(',')[0]}={v:.4f}"
            for k, v in metrics.items()
            if isinstance(v, float) and "stderr" not in k
        )
        print(
            f"[dids] eval: {task}: {shown} (scored {out['observations']['tasks'].get(task, {}).get('scored', '-')})"
        )
