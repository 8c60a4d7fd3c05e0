"""Mixing strategies: the rule that turns training signals into domain sampling probabilities.

Role: the last algorithmic step before the sampler (repartition -> impact -> schedule -> *sampler*).
Every strategy shares one small interface: it declares the signals it needs (`signals`), gives the
initial probabilities, and at each update receives the requested signals and returns new
probabilities. The schedule machinery (`runtime.mixture.DomainMixture.signals`) computes only the
declared signals, so a static strategy costs nothing while DIDS (paper eq. 16, Algorithm 1) requests
impacts and task-loss trajectories through the same call.

Strategies here: `uniform` (1/k), `natural` (proportional to domain sizes, the paper's "Random"
baseline), `static` (user weights).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class Signal:
    """One signal the mixture can compute for a strategy at an update (its provider: `DomainMixture.signals`)."""

    shape: str
    #: computed by the probe on the observation sets (`dids_target_datasets`): a strategy declaring it needs one
    probe: bool = False
    #: the probe backpropagates for it (domain and task gradients), not only forward passes
    gradients: bool = False
    #: copied as is into each history record's `signals` (the probe's signals are large: the strategy's
    #: `last_terms` records what it used of them instead)
    logged: bool = True


#: every signal a strategy may declare in `signals`; the mixture computes only the declared ones
SIGNALS: dict[str, Signal] = {
    "domain_sizes": Signal("int64 [k]: rows per domain in the training set"),
    "domain_train_loss": Signal(
        "float64 [k]: mean token loss per domain since the last update (NaN if unseen)"
    ),
    "realised_counts": Signal("int64 [k]: samples trained per domain since the start of the run"),
    "step": Signal("int: optimizer step of this update"),
    "impact": Signal(
        "ImpactTerms: eq. 12 scalar terms of domains x tasks (+ the pool control on request)",
        probe=True,
        gradients=True,
        logged=False,
    ),
    "alignment": Signal(
        "float64 [k, m]: eq. 6 gradient inner products <g_D, g_S> (whatever dids_impact_metric)",
        probe=True,
        gradients=True,
        logged=False,
    ),
    "task_loss_history": Signal(
        "float64 [t+1, m]: task losses at the start and at every update so far", probe=True, logged=False
    ),
}
KNOWN_SIGNALS = frozenset(SIGNALS)
#: signals that need the probe (observation sets), and those of them that need gradients
PROBE_SIGNALS = frozenset(name for name, signal in SIGNALS.items() if signal.probe)
GRADIENT_SIGNALS = frozenset(name for name, signal in SIGNALS.items() if signal.gradients)


def normalise(weights: np.ndarray, *, floor: float = 0.0, active: np.ndarray | None = None) -> np.ndarray:
    """Project non-negative weights onto the simplex, with an optional per-domain floor.

    Args:
        weights: float [k], non-negative (NaN and negatives are treated as 0).
        floor: minimum probability of every active domain; must satisfy floor * n_active <= 1.
        active: bool [k]; inactive domains get exactly 0.

    Returns:
        float64 [k] summing to 1.
    """
    w = np.nan_to_num(np.asarray(weights, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    w = np.clip(w, 0.0, None)
    mask = np.ones_like(w, dtype=bool) if active is None else np.asarray(active, dtype=bool)
    if not mask.any():
        raise ValueError("No active domain left to sample from.")
    w = np.where(mask, w, 0.0)
    total = w.sum()
    w = np.where(mask, 1.0, 0.0) / mask.sum() if total <= 0 else w / total
    if floor > 0:
        n = int(mask.sum())
        if floor * n > 1 + 1e-12:
            raise ValueError(f"min weight {floor} times {n} active domains exceeds 1.")
        # mix with the uniform distribution just enough to lift the smallest weight to the floor
        lowest = w[mask].min()
        if lowest < floor:
            lam = (floor - lowest) / (1.0 / n - lowest)
            w = np.where(mask, (1 - lam) * w + lam / n, 0.0)
    return w / w.sum()


class MixingStrategy:
    """Base class: a rule from signals to domain probabilities.

    Subclasses set `name`, `signals` and `dynamic`, and implement `initial_weights`; dynamic ones also
    implement `update`. State that must survive a resume goes through `state_dict`/`load_state_dict`.
    What the mixture reads back after an update: `last_terms` (what the rule used, kept in the history
    record), `log_scalars` (the per-domain and per-task scalars the Trainer logs to `report_to`) and
    `average` (the offline output of rules that average their iterates; None for the others).
    """

    name: ClassVar[str]
    signals: ClassVar[frozenset[str]] = frozenset()
    dynamic: ClassVar[bool] = False
    #: constructor argument -> the `dids_*` key that feeds it; a key left unset (None) keeps the argument's
    #: default. The integration layer reads the keys (`integration.trainer.strategy_options`): a strategy
    #: never sees the config object.
    config_keys: ClassVar[Mapping[str, str]] = {}
    #: compares against a finished run of the same data (`dids_reference_dir`); see `reference_options`
    needs_reference: ClassVar[bool] = False
    #: with the `impact` signal: also probe the pool control (a gradient over rows of the whole pool)
    impact_control: bool = False
    #: with the `impact` signal: also keep the domains' Gram matrix (`ImpactTerms.domain_gram`)
    impact_gram: bool = False

    def __init__(self, domain_names: Sequence[str], domain_sizes: Sequence[int], **options: Any):
        if len(domain_names) != len(domain_sizes):
            raise ValueError("domain_names and domain_sizes differ in length.")
        if len(domain_names) == 0:
            raise ValueError("At least one domain is needed.")
        self.domain_names = list(domain_names)
        self.domain_sizes = np.asarray(domain_sizes, dtype=np.int64)
        #: the terms of the last update, JSON-ready (history records and `llamafactory-dids report`)
        self.last_terms: dict[str, Any] = {}

    @classmethod
    def reference_options(cls, reference: Any, planned_samples: int) -> dict[str, Any]:
        """Constructor arguments read from the reference run (strategies with `needs_reference`).

        `reference` has `samples` [t] (samples trained at each record), `losses` [t, m] (task losses) and
        `final_losses` [m]; `planned_samples` is this run's budget.
        """
        del reference, planned_samples
        return {}

    @property
    def average(self) -> np.ndarray | None:
        """[k] the time average of the weights, for rules whose output is that average; None otherwise."""
        return None

    def log_scalars(self, task_names: Sequence[str]) -> dict[str, float]:
        """Scalars of the last update for the Trainer's log (`dids/<what>/<domain or task>`); {} before one."""
        del task_names
        return {}

    @property
    def num_domains(self) -> int:
        return len(self.domain_names)

    def initial_weights(self) -> np.ndarray:
        raise NotImplementedError

    def update(self, weights: np.ndarray, signals: Mapping[str, Any]) -> np.ndarray:
        """Return new probabilities from the current ones and the declared signals.

        Static strategies keep their weights.
        """
        return np.asarray(weights, dtype=np.float64)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        del state


class UniformStrategy(MixingStrategy):
    """Every domain with the same probability 1/k (the paper's "Uniform" baseline)."""

    name = "uniform"

    def initial_weights(self) -> np.ndarray:
        return np.full(self.num_domains, 1.0 / self.num_domains)


class NaturalStrategy(MixingStrategy):
    """Probabilities proportional to domain sizes (the paper's "Random" baseline)."""

    name = "natural"
    signals = frozenset({"domain_sizes"})

    def initial_weights(self) -> np.ndarray:
        return normalise(self.domain_sizes.astype(np.float64))


class StaticStrategy(MixingStrategy):
    """User-given weights, by domain name or in domain order, normalised."""

    name = "static"
    config_keys = {"weights": "dids_static_weights"}

    def __init__(
        self, domain_names: Sequence[str], domain_sizes: Sequence[int], *, weights: Any, **options: Any
    ):
        super().__init__(domain_names, domain_sizes, **options)
        self.weights = resolve_static_weights(weights, self.domain_names)

    def initial_weights(self) -> np.ndarray:
        return self.weights.copy()


def resolve_static_weights(
    weights: Mapping[str, float] | Sequence[float], domain_names: Sequence[str]
) -> np.ndarray:
    """Turn user weights (mapping or list) into a probability vector over `domain_names`.

    Raises:
        ValueError: naming the missing or unknown domains, or the length mismatch.
    """
    names = list(domain_names)
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(names))
        missing = [n for n in names if n not in weights]
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"unknown domains {unknown}")
            if missing:
                parts.append(f"no weight for {missing}")
            raise ValueError(
                f"`dids_static_weights` does not match the training domains ({'; '.join(parts)}). "
                f"The domains are: {names}. Give one weight per domain (0 excludes a domain)."
            )
        vec = np.array([float(weights[n]) for n in names])
    else:
        vec = np.asarray(list(weights), dtype=np.float64)
        if vec.shape != (len(names),):
            raise ValueError(
                f"`dids_static_weights` has {vec.size} weights but there are {len(names)} domains {names}. "
                "Give one weight per domain in this order, or a mapping domain -> weight."
            )
    if (vec < 0).any() or vec.sum() <= 0:
        raise ValueError("`dids_static_weights` must be non-negative with a positive total.")
    return vec / vec.sum()
