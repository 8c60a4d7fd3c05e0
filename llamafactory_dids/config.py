"""The `dids_*` keys of a LLaMA-Factory YAML: one dataclass, parsed and validated before any model loads.

Role: configuration layer (stdlib only). The integration layer pops every `dids_*` key out of the
arguments LLaMA-Factory would otherwise reject, builds a `DIDSConfig` with `parse_dids_config`, and
checks the combination with LLaMA-Factory's own arguments in `check_host_arguments`. All problems are
collected and reported at once, each naming the key, what it expects, what it got and how to fix it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .unknown_keys import unknown_key_problem

KEY_PREFIX = "dids_"

# The strategy names, which of them are dynamic or compare against a reference run, and the DIDS rule's
# variants and components are defined once, by the strategy classes (`algorithms.registry`) and the rule
# (`algorithms.dids`). They are read on first use (`STRATEGIES`, `DYNAMIC_STRATEGIES`, ... below, module
# attributes computed by `__getattr__`), so importing this module stays stdlib-only.
_DIDS_TABLES = ("NORMALISERS", "IMPACT_FORMS", "TASK_WEIGHTINGS", "PRIORS")


def strategy_classes() -> dict[str, Any]:
    """`dids_strategy` name -> class, from `algorithms.registry` (imported on first use)."""
    from .algorithms.registry import STRATEGY_CLASSES

    return STRATEGY_CLASSES


def _strategy_names(*, dynamic: bool = False, reference: bool = False) -> tuple[str, ...]:
    return tuple(
        name
        for name, cls in strategy_classes().items()
        if (not dynamic or cls.dynamic) and (not reference or cls.needs_reference)
    )


def _dids_rule() -> Any:
    from .algorithms import dids

    return dids


def _variant_impacts() -> dict[str, str]:
    """The impact form of each variant that takes keys (`dids_pool_control` needs `cosine`)."""
    return {name: spec["impact"] for name, spec in _dids_rule().VARIANTS.items() if name != "reference"}


def _reference_fixed_keys() -> tuple[str, ...]:
    """The keys of the components a `reference` run takes from the authors' code (all but beta)."""
    from .algorithms.dids import VARIANTS, DIDSStrategy

    return tuple(DIDSStrategy.config_keys[c] for c in VARIANTS["reference"] if c != "beta")


def __getattr__(name: str) -> Any:
    if name == "STRATEGIES":
        return _strategy_names()
    if name == "DYNAMIC_STRATEGIES":
        return _strategy_names(dynamic=True)
    if name == "REFERENCE_STRATEGIES":
        return _strategy_names(reference=True)
    if name == "DIDS_VARIANTS":
        return tuple(_dids_rule().VARIANTS)
    if name == "VARIANT_IMPACTS":
        return _variant_impacts()
    if name == "REFERENCE_FIXED_KEYS":
        return _reference_fixed_keys()
    if name == "FISHER_ESTIMATORS":
        from .algorithms.fisher import FISHER_ESTIMATORS

        return FISHER_ESTIMATORS
    if name in _DIDS_TABLES:
        return getattr(_dids_rule(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


IMPACT_METRICS = ("fim", "inner_product")
EXHAUSTION_POLICIES = ("reshuffle", "drop")
#: where the impact's domain gradients come from (`dids_domain_gradients`; runtime.domain_gradients)
DOMAIN_GRADIENT_SOURCES = ("probe", "train")


class ConfigProblems(ValueError):
    """Every problem found in one configuration, reported at once, one per line."""

    subject = "llamafactory-dids"

    def __init__(self, problems: list[str], subject: str | None = None):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"Invalid {subject or self.subject} configuration ({len(problems)} problem(s)):\n{lines}"
        )


class DIDSConfigError(ConfigProblems):
    """Raised with every problem found in the `dids_*` keys, one per line."""


@dataclass
class DIDSConfig:
    """Domain-mixing options of one training run (flat `dids_*` keys in the YAML)."""

    dids_strategy: str | None = field(
        default=None,
        metadata={
            "help": "Domain sampling strategy: `uniform`, `natural`, `static`, `dids` or a baseline (every name "
            "registered in `algorithms/registry.py`; README: Strategies). Unset leaves LLaMA-Factory's own "
            "sampling untouched."
        },
    )
    dids_domain_column: str | None = field(
        default=None,
        metadata={
            "help": "Dataset column holding each row's domain label (what `llamafactory-dids repartition` "
            "writes). Unset: every entry of `dataset:` is one domain."
        },
    )
    dids_static_weights: dict[str, float] | list[float] | None = field(
        default=None,
        metadata={
            "help": "Weights for `dids_strategy: static`: a mapping domain -> weight, or a list in domain "
            "order. Non-negative, normalised to sum to 1."
        },
    )
    dids_budget: int | None = field(
        default=None,
        metadata={
            "help": "Training samples drawn over the whole run (paper: 100k of 939k). Sets the run length: "
            "one pass of the sampler is the budget and `num_train_epochs` becomes 1. Unset: one epoch draws "
            "as many samples as the training set has, for `num_train_epochs` epochs."
        },
    )
    dids_update_interval: int | None = field(
        default=None,
        metadata={
            "help": "Recompute the mixture every this many optimizer steps (dynamic strategies). Static "
            "strategies ignore it unless set, in which case they still log an update record each interval."
        },
    )
    dids_num_updates: int | None = field(
        default=None,
        metadata={
            "help": "Alternative to `dids_update_interval`: this many evenly spaced updates over the run "
            "(the paper's figures count 25 to 95 updates)."
        },
    )
    dids_on_exhausted: str = field(
        default="reshuffle",
        metadata={
            "help": "What happens when a domain has been fully drawn (sampling is without replacement "
            "inside a domain): `reshuffle` starts a new pass over that domain in a fresh order; `drop` sets "
            "its probability to 0 for the rest of the run. Both are logged."
        },
    )
    dids_min_weight: float = field(
        default=0.0,
        metadata={"help": "Floor on every domain's probability after each update (against collapse)."},
    )
    dids_log_domain_loss: bool = field(
        default=True,
        metadata={
            "help": "Log per-domain training loss (computed from the model's own per-token loss, no extra "
            "forward)."
        },
    )
    dids_trace_samples: bool = field(
        default=False,
        metadata={
            "help": "Write the training-set row ids of every step to `output_dir/dids_trace/rank*.jsonl` "
            "(audit what the model saw; used by the resume tests)."
        },
    )
    dids_target_datasets: list[str] | None = field(
        default=None,
        metadata={
            "help": "Downstream tasks: LLaMA-Factory dataset names (in `dataset_dir`), one per task, e.g. held-out "
            "slices of each task's validation data; processed with the run's template and cutoff. One name = "
            "the paper's single-task mode. Required by dids, dga, doge, doremi, velocitune; with uniform, "
            "natural or static the task losses are only observed (at the start, at every update, and at the "
            "end into `dids_final.json`), which is how `llamafactory-dids compare` measures every strategy."
        },
    )
    dids_target_samples: int | None = field(
        default=None,
        metadata={
            "help": "Observation samples per task whose loss forms the trajectory, a fixed seeded subset. "
            "Unset: for dids its variant's (`VARIANT_TARGET_SAMPLES`: 16 for directional, chosen by the "
            "measured noise of l_c and of the task weights, docs/dids.md; the paper's 200 for paper and "
            "reference), 200 for every other strategy. The final evaluation reads every loaded row."
        },
    )
    dids_probe_samples: int = field(
        default=16,
        metadata={
            "help": "Rows per domain and per task whose mean loss gradient enters the impact (eq. 12)."
        },
    )
    dids_fisher_batch_size: int = field(
        default=1,
        metadata={
            "help": "Micro-batch size of the gradient probe's passes. Mean gradients are per-example means "
            "at any size; with `dids_fisher_estimator: batch` the Fisher is the mean of squared micro-batch "
            "gradients, so only 1 is the exact per-example Fisher (use `per_example` to batch exactly)."
        },
    )
    dids_domain_gradients: str = field(
        default="probe",
        metadata={
            "help": "Where each domain's gradient in the impact comes from. `probe`: the mean over "
            "`dids_probe_samples` rows of the domain, drawn and passed forward and backward at every update. "
            "`train`: hooks on the probed linear layers sum, during the ordinary training backward, the "
            "gradient of every row trained since the last update by domain (no extra pass; memory "
            "domains x probed parameters); a domain without a trained row in the interval is probed. Task "
            "gradients are probed either way. Needs the model's causal-LM loss."
        },
    )
    dids_domain_sketch_dim: int = field(
        default=0,
        metadata={
            "help": "With `dids_domain_gradients: train`: keep each domain's sum of every probed layer only as "
            "its sparse JL sketch into this many buckets (memory domains x layers x this, instead of domains x "
            "probed parameters); inner products with the task gradients are preserved in expectation. 0 keeps "
            "the exact sums. Not with ZeRO-3 or `dids_projection_dim`."
        },
    )
    dids_fisher_estimator: str = field(
        default="batch",
        metadata={
            "help": "`batch`: mean of squared micro-batch gradients (exact per-example Fisher at "
            "`dids_fisher_batch_size: 1`, the reference code's estimator above it). From the linear layers' "
            "forward/backward hooks, per example, independent of `dids_fisher_batch_size` (so the probe can "
            "batch its passes): `per_example` (exact: squared per-example gradients, one GEMM per row and "
            "layer), `per_token` (sum over tokens of output-gradient^2 x input^2: no cross-token terms), "
            "`kfac` (diagonal of the K-FAC factors, an outer product per row and layer)."
        },
    )
    dids_variant: str = field(
        default="directional",
        metadata={
            "help": "`dids` only: the update rule. `directional` (default): the cosine of each domain's gradient "
            "with each task's, centred over domains, in the identity metric; tasks weighted half equally and half "
            "by relative progress; "
            "evidence accumulated over updates per task and read as signal-to-noise; uniform "
            "prior; 5% uniform floor. `paper`: eq. 12-16 literally (distance, /p, softmax "
            "T = 1, uniform start). `reference`: the authors' code. docs/dids.md lists every departure with "
            "its measurement; the component keys below override a variant (not `reference`)."
        },
    )
    dids_impact: str | None = field(
        default=None,
        metadata={
            "help": "`dids` component: `distance` (eq. 12, (max - I) / sum per task), `similarity` (inner "
            "product, shifted by its minimum and divided by the sum per task), `cosine` (centred over domains "
            "or against `dids_pool_control`) or `pool_cosine` (the `directional` default: the cosine of the "
            "parts of the domain's and the task's gradients orthogonal to the pool gradient, the size-weighted "
            "mean of the domain gradients). Each in `dids_impact_metric`. Unset: the variant's."
        },
    )
    dids_pool_control: bool | None = field(
        default=None,
        metadata={
            "help": "`dids` component, only with `dids_impact: cosine`: compare each domain's cosine with a task to "
            "its cosine with a control gradient over rows of the whole training pool (one more probed "
            "gradient per update); false centres the cosines over domains instead. Unset: the variant's."
        },
    )
    dids_task_weighting: str | None = field(
        default=None,
        metadata={
            "help": "`dids` component: `absolute` (l_c + l_p in nats, eq. 16) or `relative` (half 1/m, half "
            "the task's share of the relative improvement (l_c + l_p) / L). Unset: the variant's."
        },
    )
    dids_importance_correction: bool | None = field(
        default=None,
        metadata={"help": "`dids` component: divide utilities by p_{t-1} (eq. 16). Unset: the variant's."},
    )
    dids_task_combination: str | None = field(
        default=None,
        metadata={
            "help": "`dids` component, with `dids_normaliser: evidence`: how the tasks' evidence makes one "
            "mixture. `live_split` (the default rule's): each task with significant evidence spends its share "
            "of the budget (its weight over the live tasks' total) by its own evidence; `live`: the "
            "task-weighted mean of the significant columns, one tilt (tasks without evidence drop out); "
            "`weighted`: the task-weighted mean over every task (no evidence counts as zero); `split`: each "
            "task spends its weight's share of the budget by its own evidence (the prior where it has none). "
            "Unset: the variant's."
        },
    )
    dids_evidence_allocation: str | None = field(
        default=None,
        metadata={
            "help": "`dids` component, with `dids_normaliser: evidence`: how a task with significant evidence "
            "spends its budget. `grouped` (the default rule's): prior x exp(z' / T), where the domains past "
            "the dead zone that the evidence cannot tell from the best take the best's z'; `tilt`: each domain "
            "its own z' (the largest takes nearly all); `proportional`: prior x the positive z of every "
            "domain (all the domains its evidence favours share). Unset: the variant's."
        },
    )
    dids_prior: str | None = field(
        default=None,
        metadata={
            "help": "`dids` component: the starting mixture and base measure of softmax/evidence, `uniform` "
            "(Algorithm 1) or `natural` (domain sizes). Unset: the variant's."
        },
    )
    dids_evidence_decay: float = field(
        default=0.85,
        metadata={
            "help": "`dids_normaliser: evidence`: weight of past updates' utilities in the accumulated evidence "
            "(0 = this update only; 0.85 = an effective memory of about 6 updates)."
        },
    )
    dids_impact_metric: str | None = field(
        default=None,
        metadata={
            "help": "`dids` only: the metric of the impact's gradient products, `fim` (diag(F), eq. 12) or "
            "`inner_product` (the identity: the DIDS-FIM ablation, DGA's eq. 6). Unset: the variant's "
            "(`directional`: inner_product; `paper`, `reference`: fim). The baselines dga, doge, doremi and "
            "velocitune always use the inner product."
        },
    )
    dids_use_trajectory: bool = field(
        default=True,
        metadata={"help": "Use the fitted loss-trajectory potential l_p (eq. 14-15); false is DIDS-LT."},
    )
    dids_projection_dim: int = field(
        default=0,
        metadata={
            "help": "Keep task gradients only as a sparse Johnson-Lindenstrauss projection of F^{1/2} g to this "
            "many dimensions (regenerated from the seed, never stored); 0 computes eq. 12 exactly."
        },
    )
    dids_ema_beta: float | None = field(
        default=None,
        metadata={
            "help": "EMA weight of the previous probabilities (dids eq. 16; paper 0.1, App. F 0.1-0.3). Unset: "
            "0.1 (`reference`: 0.2). Also read by `dga` (its EMA over the mirror descent iterates, default 0.1)."
        },
    )
    dids_normaliser: str | None = field(
        default=None,
        metadata={
            "help": "`dids` component: `softmax` (Algorithm 1), `clamp` (the reference code: negatives to 0, "
            "divide by sum) or `evidence` (impact scores accumulated over updates, divided by their standard error, "
            "a dead zone of Phi^-1(1 - 0.2 / (2k)) standard errors (2.05 for 5 domains), nothing before the second "
            "update, summed over the tasks with significant evidence, then "
            "prior x exp(s / T)). Unset: the variant's."
        },
    )
    dids_temperature: float | None = field(
        default=None,
        metadata={
            "help": "Temperature T of the softmax and evidence normalisers. Unset: the variant's "
            "(`directional` 1/3, `paper` and `reference` 1)."
        },
    )
    dids_probe_layers_fraction: float = field(
        default=0.1,
        metadata={
            "help": "Probe the trainable matrices of this last fraction of transformer blocks (paper: 10%)."
        },
    )
    dids_probe_include_lm_head: bool = field(
        default=False,
        metadata={"help": "Also probe `lm_head` (large: vocabulary x hidden)."},
    )
    dids_step_size: float = field(
        default=1.0,
        metadata={
            "help": "Step size eta of the exponentiated-gradient (mirror descent) weight update of dga, doge, "
            "doremi and velocitune (DoReMi's default: 1). The gradient inner products of dga/doge are not "
            "scale-free: check `terms.scores` in history.jsonl and scale eta so eta * score is O(1)."
        },
    )
    dids_smoothing: float | None = field(
        default=None,
        metadata={
            "help": "Mixing with the uniform distribution after each update, (1 - c) p + c / k: a floor of "
            "c / k on every domain. Unset: 1e-3 for doremi and velocitune (DoReMi's default), the variant's "
            "for dids (`directional` 0.05, `paper` 0)."
        },
    )
    dids_reference_dir: str | None = field(
        default=None,
        metadata={
            "help": "Output directory of a finished reference run of this plugin with the same domains and "
            "`dids_target_datasets` (e.g. `dids_strategy: uniform`). Required by doremi (reference task "
            "losses: the run's final ones) and velocitune (target losses: a scaling-law fit of its task losses "
            "extrapolated to this run's budget)."
        },
    )
    dids_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of the sampling stream. Unset: the run's `seed`."},
    )

    @property
    def enabled(self) -> bool:
        return self.dids_strategy is not None


def known_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(DIDSConfig)]


def split_dids_keys(args: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a LLaMA-Factory argument dict into (`dids_*` keys, everything else)."""
    dids = {k: v for k, v in args.items() if k.startswith(KEY_PREFIX)}
    rest = {k: v for k, v in args.items() if not k.startswith(KEY_PREFIX)}
    return dids, rest


def as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "0", "no"):
        return False
    return None


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _parse_weights(value: Any, problems: list[str]) -> dict[str, float] | list[float] | None:
    key = "dids_static_weights"
    if value is None:
        return None
    if isinstance(value, str):  # e.g. a CLI override `dids_static_weights=0.5,0.3,0.2`
        value = [v for v in value.split(",") if v.strip()]
    if isinstance(value, Mapping):
        out: dict[str, float] = {}
        for name, w in value.items():
            f = as_float(w)
            if f is None or f < 0:
                problems.append(
                    f"`{key}` must map domain names to non-negative numbers, got {name!r}: {w!r}. "
                    "Fix the weight of that domain."
                )
                continue
            out[str(name)] = f
        return out
    if isinstance(value, list | tuple):
        floats = [as_float(w) for w in value]
        if any(f is None or f < 0 for f in floats):
            problems.append(
                f"`{key}` must be a list of non-negative numbers (one per domain, in domain order), "
                f"got {list(value)!r}."
            )
            return None
        return [float(f) for f in floats]  # type: ignore[arg-type]
    problems.append(
        f"`{key}` must be a mapping domain -> weight or a list of weights, got {type(value).__name__}: "
        f"{value!r}."
    )
    return None


#: `dids_*` integers: key -> (smallest value, what the error says it must be)
_INT_KEYS: dict[str, tuple[int | None, str]] = {
    "dids_budget": (1, "a positive integer"),
    "dids_update_interval": (1, "a positive integer"),
    "dids_num_updates": (1, "a positive integer"),
    "dids_target_samples": (1, "a positive integer"),
    "dids_probe_samples": (1, "a positive integer"),
    "dids_fisher_batch_size": (1, "a positive integer"),
    "dids_projection_dim": (0, "0 (exact) or a positive integer"),
    "dids_domain_sketch_dim": (0, "0 (exact) or a positive integer"),
    "dids_seed": (0, "a non-negative integer"),
}
#: `dids_*` reals: key -> interval, written once: the check and the error message both read it
_FLOAT_KEYS: dict[str, str] = {
    "dids_min_weight": "[0, 1)",
    "dids_ema_beta": "[0, 1)",
    "dids_temperature": "(0, inf)",
    "dids_probe_layers_fraction": "(0, 1]",
    "dids_step_size": "(0, inf)",
    "dids_smoothing": "[0, 1)",
    "dids_evidence_decay": "[0, 1)",
}
#: `dids_*` non-empty strings: key -> what the error says it is
_STRING_KEYS = {
    "dids_domain_column": "a column name",
    "dids_reference_dir": "the output_dir of a reference run",
}
_BOOL_KEYS = (
    "dids_log_domain_loss",
    "dids_trace_samples",
    "dids_use_trajectory",
    "dids_probe_include_lm_head",
    "dids_pool_control",
    "dids_importance_correction",
)


def target_samples(cfg: Any) -> int:
    """Observation rows per task: `dids_target_samples`, or for `dids` its variant's (`VARIANT_TARGET_SAMPLES`),
    else the paper's 200."""
    if cfg.dids_target_samples is not None:
        return cfg.dids_target_samples
    if cfg.dids_strategy == "dids":
        return _dids_rule().VARIANT_TARGET_SAMPLES[cfg.dids_variant]
    return _dids_rule().PAPER_TARGET_SAMPLES


def impact_metric(cfg: Any) -> str:
    """The probe's metric: `dids_impact_metric`, or for `dids` its variant's (`VARIANT_METRICS`), else `fim`."""
    if cfg.dids_impact_metric is not None:
        return cfg.dids_impact_metric
    if cfg.dids_strategy == "dids":
        return _dids_rule().VARIANT_METRICS[cfg.dids_variant]
    return "fim"


def _choice_keys() -> dict[str, tuple[str, ...]]:
    """`dids_*` keys with a fixed set of values (the DIDS rule's own tables, read on first use)."""
    from .algorithms.fisher import FISHER_ESTIMATORS

    rule = _dids_rule()
    return {
        "dids_on_exhausted": EXHAUSTION_POLICIES,
        "dids_impact_metric": IMPACT_METRICS,
        "dids_normaliser": rule.NORMALISERS,
        "dids_fisher_estimator": FISHER_ESTIMATORS,
        "dids_domain_gradients": DOMAIN_GRADIENT_SOURCES,
        "dids_variant": tuple(rule.VARIANTS),
        "dids_impact": rule.IMPACT_FORMS,
        "dids_task_weighting": rule.TASK_WEIGHTINGS,
        "dids_prior": rule.PRIORS,
        "dids_task_combination": rule.COMBINATIONS,
        "dids_evidence_allocation": rule.ALLOCATIONS,
    }


def in_interval(value: float, interval: str) -> bool:
    """Whether `value` lies in an interval written like "[0, 1)", "(0, inf)" or "(0, 1]"."""
    low_text, high_text = (part.strip() for part in interval[1:-1].split(","))
    low, high = float(low_text), float(high_text)
    above = value >= low if interval[0] == "[" else value > low
    below = value <= high if interval[-1] == "]" else value < high
    return above and below


def _read_value(kind: str, spec: Any, value: Any) -> tuple[Any, str | None]:
    """One set value of a key of `kind` (see `parse_keys`): (the value to keep, None), or (None, what it
    must be: the message's words)."""
    if kind == "ints":
        low, what = spec
        n = as_int(value)
        return (n, None) if n is not None and (low is None or n >= low) else (None, what)
    if kind == "floats":
        f = as_float(value)
        return (f, None) if f is not None and in_interval(f, spec) else (None, f"in {spec}")
    if kind in ("bools", "bools_or_texts"):
        b = as_bool(value)
        if b is None:
            return (str(value), None) if kind == "bools_or_texts" else (None, "true or false")
        return b, None
    if kind == "choices":
        if isinstance(value, str) and value.lower() in spec:
            return value.lower(), None
        return None, f"one of {', '.join(spec)}"
    if kind == "strings":
        return (value, None) if isinstance(value, str) and value.strip() else (None, spec)
    if kind == "texts":
        return str(value), None
    if kind == "lists":
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, list | tuple) and all(isinstance(v, str) for v in items):
            return [v.strip() for v in items if v.strip()], None
        return None, "a comma list or a list of strings"
    raise AssertionError(f"unknown key kind {kind!r}")  # a programming error, not user input


def parse_keys(
    values: Mapping[str, Any],
    cfg: Any,
    problems: list[str],
    *,
    ints: Mapping[str, tuple[int | None, str]] = {},
    floats: Mapping[str, str] = {},
    bools: tuple[str, ...] = (),
    choices: Mapping[str, tuple[str, ...]] = {},
    strings: Mapping[str, str] = {},
    texts: tuple[str, ...] = (),
    lists: tuple[str, ...] = (),
    bools_or_texts: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
) -> None:
    """Set the keys of `values` on the dataclass `cfg` by kind, or add one problem per bad value: the one
    validator of the training, repartition, eval and observe configs. Unset (None) keys keep their
    defaults; rules across keys stay with each config.

    Kinds (key -> what the table gives): `ints` -> (smallest value or None, what the message says it
    must be); `floats` -> interval ("[0, 1)", written once for the check and the message); `bools`:
    true/false; `choices` -> allowed lower-case values; `strings` -> what the non-empty string is (kept
    as given); `texts`: any value, kept as its text; `lists`: a comma list or a list of strings (items
    stripped, blank ones dropped); `bools_or_texts`: true/false, any other value kept as its text.
    `required`: keys that must end up set (non-empty) unless their value was already reported; the
    message quotes the field's help.
    """
    tables: dict[str, Mapping[str, Any]] = {
        "ints": ints,
        "floats": floats,
        "bools": dict.fromkeys(bools),
        "choices": choices,
        "strings": strings,
        "texts": dict.fromkeys(texts),
        "lists": dict.fromkeys(lists),
        "bools_or_texts": dict.fromkeys(bools_or_texts),
    }
    rejected: set[str] = set()
    for kind, table in tables.items():
        for key, spec in table.items():
            if values.get(key) is None:
                continue
            parsed, what = _read_value(kind, spec, values[key])
            if what is None:
                setattr(cfg, key, parsed)
            else:
                problems.append(f"`{key}` must be {what}, got {values[key]!r}.")
                rejected.add(key)
    helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cfg)}
    for key in required:
        if key not in rejected and not getattr(cfg, key):
            problems.append(f"`{key}` is required: {helps[key]}")


def _known_values(raw: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    """The known `dids_*` keys of `raw` with their values; each unknown key goes to `problems`."""
    known = known_keys()
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            problems.append(
                unknown_key_problem(key, known, family="`dids_*` keys", listing="llamafactory-dids keys")
            )
        else:
            values[key] = value
    return values


def _parse_strategy(values: Mapping[str, Any], cfg: DIDSConfig, problems: list[str]) -> None:
    strategy = values.get("dids_strategy")
    if strategy is not None:
        if not isinstance(strategy, str) or strategy.lower() not in _strategy_names():
            problems.append(
                f"`dids_strategy` must be one of {', '.join(_strategy_names())}, got {strategy!r}. "
                "Set e.g. `dids_strategy: uniform`, or remove the key to keep LLaMA-Factory's sampling."
            )
        else:
            cfg.dids_strategy = strategy.lower()


def _parse_targets(values: Mapping[str, Any], cfg: DIDSConfig, problems: list[str]) -> None:
    targets = values.get("dids_target_datasets")
    if targets is not None:
        names = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else targets
        if (
            not isinstance(names, list | tuple)
            or not names
            or not all(isinstance(n, str) and n.strip() for n in names)
        ):
            problems.append(
                f"`dids_target_datasets` must be a list of dataset names (or a comma-separated string), got {targets!r}."
            )
        else:
            cfg.dids_target_datasets = [n.strip() for n in names]


def parse_dids_config(raw: Mapping[str, Any]) -> DIDSConfig:
    """Build a validated `DIDSConfig` from the popped `dids_*` keys.

    Raises:
        DIDSConfigError: listing every unknown key and every invalid value at once.
    """
    problems: list[str] = []
    values = _known_values(raw, problems)

    cfg = DIDSConfig()
    _parse_strategy(values, cfg, problems)
    if "dids_static_weights" in values:
        cfg.dids_static_weights = _parse_weights(values["dids_static_weights"], problems)
    _parse_targets(values, cfg, problems)

    parse_keys(
        values,
        cfg,
        problems,
        ints=_INT_KEYS,
        floats=_FLOAT_KEYS,
        bools=_BOOL_KEYS,
        choices=_choice_keys(),
        strings=_STRING_KEYS,
    )

    _check_combinations(cfg, values, problems)
    if problems:
        raise DIDSConfigError(problems)
    return cfg


def _check_domain_sketch(cfg: DIDSConfig, problems: list[str]) -> None:
    if cfg.dids_domain_sketch_dim and cfg.dids_domain_gradients != "train":
        problems.append(
            "`dids_domain_sketch_dim` sketches train-side domain gradients: add `dids_domain_gradients: train` "
            "or remove it."
        )
    if cfg.dids_domain_sketch_dim and cfg.dids_projection_dim:
        problems.append(
            "`dids_domain_sketch_dim` and `dids_projection_dim` are two ways to shrink the impact's gradients; "
            "set one of them."
        )


def _check_strategy_keys(cfg: DIDSConfig, values: Mapping[str, Any], problems: list[str]) -> None:
    """Keys without a strategy, and the static weights against the strategy."""
    set_keys = [k for k, v in values.items() if v is not None and k != "dids_strategy"]
    if cfg.dids_strategy is None and set_keys and "dids_strategy" not in values:
        problems.append(
            f"{', '.join(f'`{k}`' for k in set_keys)} set without `dids_strategy`. "
            f"Add `dids_strategy: <{'|'.join(_strategy_names())}>`."
        )
    if (
        cfg.dids_strategy == "static"
        and cfg.dids_static_weights is None
        and "dids_static_weights" not in values
    ):
        problems.append("`dids_strategy: static` needs `dids_static_weights` (a mapping domain -> weight).")
    if cfg.dids_strategy is not None and cfg.dids_strategy != "static" and values.get("dids_static_weights"):
        problems.append(
            f"`dids_static_weights` is only used by `dids_strategy: static`, but the strategy is "
            f"{cfg.dids_strategy!r}. Remove it or switch the strategy."
        )


def _check_dynamic_strategy(cfg: DIDSConfig, problems: list[str]) -> None:
    """What a strategy that updates the mixture needs: target datasets and an update schedule."""
    if cfg.dids_strategy in _strategy_names(dynamic=True):
        name = cfg.dids_strategy
        if not cfg.dids_target_datasets:
            problems.append(
                f"`dids_strategy: {name}` needs `dids_target_datasets`: the LLaMA-Factory datasets of the "
                "downstream tasks (e.g. `dids_target_datasets: [gsm8k_obs, mmlu_obs]`)."
            )
        if cfg.dids_update_interval is None and cfg.dids_num_updates is None:
            problems.append(
                f"`dids_strategy: {name}` updates the mixture during training: set `dids_update_interval` "
                "(optimizer steps) or `dids_num_updates` (updates over the run; the paper used 25 to 95)."
            )


def _check_reference_dir(cfg: DIDSConfig, problems: list[str]) -> None:
    reference_strategies = _strategy_names(reference=True)
    if cfg.dids_strategy in reference_strategies and cfg.dids_reference_dir is None:
        problems.append(
            f"`dids_strategy: {cfg.dids_strategy}` needs `dids_reference_dir`: the output_dir of a finished run "
            "with the same data and `dids_target_datasets` (e.g. the same YAML with `dids_strategy: uniform`)."
        )
    if cfg.dids_strategy not in reference_strategies and cfg.dids_reference_dir is not None:
        problems.append(
            f"`dids_reference_dir` is only used by {' and '.join(reference_strategies)}, but the strategy is "
            f"{cfg.dids_strategy!r}. Remove it or switch the strategy."
        )


def _check_variant(cfg: DIDSConfig, values: Mapping[str, Any], problems: list[str]) -> None:
    """Keys the `reference` variant fixes; the evidence-only keys; the pool control's need for cosine impacts."""
    if cfg.dids_variant == "reference":
        fixed = [k for k in _reference_fixed_keys() if values.get(k) is not None]
        if fixed:
            problems.append(
                f"`dids_variant: reference` runs the authors' code as it is, so {', '.join(f'`{k}`' for k in fixed)} "
                "cannot be set with it. Remove them, or use `dids_variant: paper` or `directional` with them."
            )
        return
    _check_evidence_keys(cfg, problems)
    if cfg.dids_pool_control:
        impact = cfg.dids_impact or _variant_impacts().get(cfg.dids_variant)
        if impact != "cosine":
            problems.append(
                f"`dids_pool_control: true` compares cosines, but the impact is {impact!r} "
                f"({'`dids_impact`' if cfg.dids_impact else f'the `{cfg.dids_variant}` variant'}). "
                "Add `dids_impact: cosine`, or remove `dids_pool_control`."
            )


def _check_evidence_keys(cfg: DIDSConfig, problems: list[str]) -> None:
    """`dids_task_combination` and `dids_evidence_allocation` only shape the `evidence` normaliser."""
    given = [k for k in ("dids_task_combination", "dids_evidence_allocation") if getattr(cfg, k) is not None]
    normaliser = cfg.dids_normaliser or _dids_rule().VARIANTS[cfg.dids_variant]["normaliser"]
    if given and normaliser != "evidence":
        problems.append(
            f"{' and '.join(f'`{k}`' for k in given)} shape how the `evidence` normaliser reads the tasks' "
            f"evidence, but the normaliser is {normaliser!r} "
            f"({'`dids_normaliser`' if cfg.dids_normaliser else f'the `{cfg.dids_variant}` variant'}). "
            "Add `dids_normaliser: evidence`, or remove them."
        )


def _check_combinations(cfg: DIDSConfig, values: Mapping[str, Any], problems: list[str]) -> None:
    _check_strategy_keys(cfg, values, problems)
    _check_dynamic_strategy(cfg, problems)
    _check_reference_dir(cfg, problems)
    _check_domain_sketch(cfg, problems)
    _check_variant(cfg, values, problems)
    if cfg.dids_update_interval is not None and cfg.dids_num_updates is not None:
        problems.append("Set either `dids_update_interval` (steps) or `dids_num_updates`, not both.")
    weights = cfg.dids_static_weights
    if weights is not None:
        total = sum(weights.values()) if isinstance(weights, Mapping) else sum(weights)
        if total <= 0:
            problems.append("`dids_static_weights` must have a positive total; every weight is 0.")


def check_host_arguments(
    cfg: DIDSConfig, *, data_args: Any, training_args: Any, finetuning_args: Any
) -> None:
    """Refuse LLaMA-Factory settings that cannot be combined with domain sampling.

    Raises:
        DIDSConfigError: listing every conflict.
    """
    if not cfg.enabled:
        return
    problems: list[str] = []
    stage = getattr(finetuning_args, "stage", None)
    if stage not in ("sft", "pt"):
        problems.append(
            f"`dids_strategy` supports `stage: sft` and `stage: pt`, got `stage: {stage}`. "
            "Remove the `dids_*` keys for this stage."
        )
    if getattr(data_args, "streaming", False):
        problems.append(
            "`streaming: true` cannot be sampled by domain (the sampler needs random access to every domain). "
            "Set `streaming: false` or remove `dids_strategy`."
        )
    if getattr(finetuning_args, "disable_shuffling", False):
        problems.append(
            "`disable_shuffling: true` conflicts with `dids_strategy`: the domain sampler decides the order. "
            "Remove `disable_shuffling` or `dids_strategy`."
        )
    mix = getattr(data_args, "mix_strategy", "concat")
    if mix != "concat":
        problems.append(
            f"`mix_strategy: {mix}` conflicts with `dids_strategy`: the domain sampler does the mixing. "
            "Use `mix_strategy: concat` (the default) and set the mixture with `dids_*` keys "
            "(e.g. `dids_strategy: static` with `dids_static_weights`)."
        )
    if cfg.dids_budget is not None and getattr(training_args, "max_steps", -1) > 0:
        problems.append(
            f"`dids_budget` sets the run length, so `max_steps: {training_args.max_steps}` conflicts with it. "
            "Remove one of them."
        )
    if problems:
        raise DIDSConfigError(problems)
