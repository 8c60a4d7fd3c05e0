"""The DIDS update rule (paper eq. 13-16, Algorithm 1) and its variants.

Role: the schedule step (repartition -> impact -> *schedule* -> sampler). Input at every update: the eq. 12
scalar terms of k domains x m tasks (`ImpactTerms`: |g_S|_F^2, <g_D, g_S>_F, |g_D|_F^2, and optionally the
same for a control drawn from the whole training pool) and each task's loss history on its observation
rows. One pipeline, four stages, each a component the variants set differently:

    Î        impact scores [k, m]        `impact`: distance (eq. 12, (max - I) / sum per task), similarity
                                         (the Fisher inner product <g_D, g_S>_F, eq. 12's cross term, shifted
                                         by its minimum and divided by the sum per task), cosine (Fisher
                                         cosine minus the domain's cosine with the pool control, or centred
                                         over domains), pool_cosine (the cosine of the parts of g_D and g_S
                                         orthogonal to the pool gradient sum_i (n_i / N) g_Di, centred over
                                         domains)
    w        task weights [m]            `task_weighting`: absolute (l_c + l_p in nats, eq. 16) or relative
                                         (half equal, half each task's share of the positive relative
                                         improvement (l_c + l_p) / L_t)
    s_i      = sum_j Î_ij w_j            [/ p_{t-1,i} with `importance_correction`, eq. 16]
    p̂        `normaliser`: softmax(s / T) (Algorithm 1), clamp(s, 0) / sum (reference code), or evidence
             (Î accumulated over updates per task, divided by its standard error, a dead zone that a
             noise column passes with chance `EVIDENCE_FALSE_POSITIVE` giving z', nothing before the
             second update; `combination` live_split: each task with significant evidence spends its
             share w_j / (their total weight) of the budget as prior * exp(z'_j / T), the others hand theirs
             to it; live: s = sum over those tasks of w_j z'_j / their total weight, then prior * exp(s / T);
             weighted: the same over every task; split: each task's own prior * exp(z'_j / T) mixed by w;
             `allocation` grouped: in each column the domains past the dead zone that the evidence cannot
             tell from the best share its z' (`group_ties`); tilt: each keeps its own; proportional: a live
             task's mixture is prior * max(z_j, 0) instead of the exponential tilt)
    p_t      = beta p_{t-1} + (1 - beta) p̂, then (1 - smoothing) p_t + smoothing / k (a floor)

Variants (`dids_variant`): `paper` (eq. 12 distance, absolute weights, /p, softmax T = 1, beta 0.1: the
paper literally), `reference` (the authors' code as documented in docs/dids.md: a Fisher kernel normalised
with max-minus, mean over tasks, potential 1.0 below 5 points, impacts alone in round 0, negatives floored
at 1e-7 and divided by the sum, beta 0.2), `directional` (the default: the gradient cosine per task
orthogonal to the pool gradient, centred over domains and measured in the identity metric
(`VARIANT_METRICS`; `impact="cosine"` for the plain cosine, `"similarity"` for the inner product), relative
task weights, no /p, evidence normaliser (T = 1/3, each live task spending its share, the domains of a
column that the evidence cannot tell apart tilted alike) with a uniform prior (Algorithm 1's start;
`prior="natural"` for domain sizes), 5% uniform floor). Why the default departs from the paper, with the
measurements: docs/dids.md.

Ablations (paper Table 2): `use_trajectory=False` drops l_p (DIDS-LT) in every variant; the probe's metric
`inner_product` (DIDS-FIM) replaces diag(F) by the identity in every impact form (the `directional`
default measures in it already; `fim` puts the Fisher back).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from .impact import ImpactTerms, normalise_impacts
from .strategies import MixingStrategy
from .trajectory import current_improvement, potential_improvement

IMPACT_FORMS = ("distance", "similarity", "cosine", "pool_cosine")
NORMALISERS = ("softmax", "clamp", "evidence")
TASK_WEIGHTINGS = ("absolute", "relative")
PRIORS = ("uniform", "natural")
COMBINATIONS = ("live_split", "live", "weighted", "split")
ALLOCATIONS = ("grouped", "tilt", "proportional")

#: every component of each variant; explicit `dids_*` keys override them (not for `reference`)
VARIANTS: dict[str, dict[str, Any]] = {
    "directional": {
        # from the pool gradient, in the identity metric (VARIANT_METRICS): docs/dids.md, "The impact"
        "impact": "pool_cosine",
        "pool_control": False,
        "task_weighting": "relative",
        "importance_correction": False,
        "normaliser": "evidence",
        # docs/dids.md, "How a task spends its budget": a domain serving one of two live tasks was diluted
        "combination": "live_split",
        # docs/dids.md, "How a task spends its budget": one of several clusters of a source took it all
        "allocation": "grouped",
        "prior": "uniform",  # docs/dids.md, "The prior": natural lost to uniform where evidence came late
        "beta": 0.1,
        "smoothing": 0.05,
        "temperature": 1.0 / 3.0,
    },
    "paper": {
        "impact": "distance",
        "pool_control": False,
        "task_weighting": "absolute",
        "importance_correction": True,
        "normaliser": "softmax",
        "combination": "weighted",
        "allocation": "tilt",
        "prior": "uniform",
        "beta": 0.1,
        "smoothing": 0.0,
        "temperature": 1.0,
    },
    "reference": {
        "impact": "reference_kernel",
        "pool_control": False,
        "task_weighting": "absolute",
        "importance_correction": True,
        "normaliser": "clamp",
        "combination": "weighted",
        "allocation": "tilt",
        "prior": "uniform",
        "beta": 0.2,
        "smoothing": 0.0,
        "temperature": 1.0,
    },
}
DEFAULT_VARIANT = "directional"
#: the probe's metric for each variant's impact when `dids_impact_metric` is unset: `fim` is diag(F) (eq. 12),
#: `inner_product` the identity (the DIDS-FIM ablation's metric; at 8 probe rows the Fisher, estimated from
#: the same rows, made the cosine rank worse: docs/dids.md, "The impact")
VARIANT_METRICS = {"directional": "inner_product", "paper": "fim", "reference": "fim"}
#: observation rows per task whose losses give l_c, l_p and the task weights (`dids_target_samples` unset):
#: the paper's 200, or for `directional` 16, where on fixed rows the task weights err by under 0.07 of an
#: equal share and l_c by under 15% of its size (RMS; a tiny model from scratch and pretrained SmolLM2:
#: docs/dids.md, "The observation rows of the task losses")
PAPER_TARGET_SAMPLES = 200
VARIANT_TARGET_SAMPLES = {"directional": 16, "paper": PAPER_TARGET_SAMPLES, "reference": PAPER_TARGET_SAMPLES}
#: the reference code's trajectory: below this many points the potential is 1.0
REFERENCE_MIN_POINTS = 5
REFERENCE_NEGATIVE_FLOOR = 1e-7
#: evidence normaliser: the chance that one column of pure noise gets past the dead zone in one update
#: (two-sided, Bonferroni over the k domains; docs/dids.md compares 0.1, 0.2 and a fixed 1.5)
EVIDENCE_FALSE_POSITIVE = 0.2
#: evidence normaliser: |z| is capped here, so one update can move a domain's odds by at most e^(cap / T)
EVIDENCE_Z_CAP = 4.0
#: evidence normaliser: updates accumulated before any column can count as significant
EVIDENCE_MIN_UPDATES = 2


def evidence_dead_zone(num_domains: int, false_positive: float = EVIDENCE_FALSE_POSITIVE) -> float:
    """Standard errors inside which evidence counts as noise: Phi^-1(1 - alpha / (2k)).

    With k domains a noise column has k z-scores; the dead zone grows with k so that the chance of any of
    them passing stays alpha (2.05 for k = 5, 1.83 for k = 3, 2.99 for the paper's 72 domains).
    """
    return NormalDist().inv_cdf(1.0 - false_positive / (2.0 * max(int(num_domains), 1)))


def group_ties(z: np.ndarray, shrunk: np.ndarray, dead_zone: float) -> np.ndarray:
    """z' [k, m] where, per column, every domain past the dead zone (z' > 0) that the evidence cannot tell
    from the column's best takes the best's z' (`grouped` allocation).

    The z of one column share one standard error, so two domains' difference has sqrt(2) of it: domain i is
    behind the best b when (z_b - z_i) / sqrt(2) passes the same dead zone. The tilt prior * exp(z' / T) then
    multiplies every domain of the group by the same factor instead of giving nearly all to whichever the
    noise put first (four clusters of one source, each a quarter of its rows). Columns with fewer than two
    domains past the dead zone, and negative z', are returned unchanged.
    """
    grouped = np.array(shrunk, dtype=np.float64, copy=True)
    z = np.asarray(z, dtype=np.float64)
    for j in range(grouped.shape[1]):
        passed = grouped[:, j] > 0
        if passed.sum() < 2:
            continue
        ties = passed & (z[:, j] >= z[passed, j].max() - math.sqrt(2.0) * dead_zone)
        grouped[ties, j] = grouped[passed, j].max()
    return grouped


def softmax(x: np.ndarray, temperature: float = 1.0, prior: np.ndarray | None = None) -> np.ndarray:
    """prior * exp(x / T), normalised (prior None: uniform, Algorithm 1's softmax)."""
    z = np.asarray(x, dtype=np.float64) / temperature
    if prior is not None:
        z = z + np.log(np.clip(np.asarray(prior, dtype=np.float64), 1e-300, None))
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def clamp_normalise(x: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """max(x, floor) / sum (the reference code's normaliser); uniform when nothing is positive."""
    z = np.clip(np.nan_to_num(np.asarray(x, dtype=np.float64)), floor, None)
    total = z.sum()
    return z / total if total > 0 else np.full_like(z, 1.0 / z.size)


def impact_scores(
    terms: ImpactTerms, form: str, *, pool_control: bool, pool: np.ndarray | None = None
) -> np.ndarray:
    """[k, m] impact scores Î of one form (see the module docstring); larger = more useful to the task.

    `pool`: [k] the training pool's domain proportions, which weigh the pool gradient of `pool_cosine`
    (None: equal)."""
    if form == "distance":
        return normalise_impacts(terms.distance(), kind="distance")
    if form == "similarity":
        return normalise_impacts(terms.inner(), kind="similarity")
    if form == "reference_kernel":
        # the reference code: a Fisher kernel 1/2 sum F g_D g_S (a similarity) with the max-minus
        # normalisation meant for a distance, which inverts its ranking (kept as the authors ran it)
        return normalise_impacts(0.5 * terms.inner(), kind="distance")
    if form == "cosine":
        cos = terms.cosine()
        control = terms.control_cosine() if pool_control else None
        if control is not None:  # better for the task than for the training pool in general
            return cos - control[:, None]
        return cos - cos.mean(axis=0, keepdims=True)
    if form == "pool_cosine":
        k = terms.shape[0]
        weights = np.full(k, 1.0 / k) if pool is None else np.asarray(pool, dtype=np.float64) / np.sum(pool)
        cos = terms.without_pool(weights).cosine()
        return cos - cos.mean(axis=0, keepdims=True)
    raise ValueError(f"impact form must be one of {IMPACT_FORMS}, got {form!r}.")


def trajectory_terms(
    history: np.ndarray, *, use_trajectory: bool, horizon: float = 1.0, min_points: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    """Per task l_c [m], l_p [m] and whether l_p came from a fit (eq. 14-15).

    `min_points` (the reference code's 5): below it l_p is 1.0 instead of a fit.
    """
    m = history.shape[1]
    l_c = np.array([current_improvement(history[:, j]) for j in range(m)])
    if not use_trajectory:
        return l_c, np.zeros(m), [False] * m
    if min_points is not None and history.shape[0] < min_points:
        return l_c, np.ones(m), [False] * m
    fitted = [potential_improvement(history[:, j], horizon) for j in range(m)]
    return l_c, np.array([v for v, _ in fitted]), [ok for _, ok in fitted]


def task_weights(l_c: np.ndarray, l_p: np.ndarray, current: np.ndarray, kind: str) -> np.ndarray:
    """[m] weights of the tasks in the utility.

    `absolute`: l_c + l_p in nats (eq. 16; depends on the scale of the losses). `relative`: half 1/m, half
    each task's share of the positive relative improvement (l_c + l_p) / L_t (scale-free: multiplying a
    task's loss history by a constant leaves it unchanged; a task with no progress keeps half its share).
    """
    gain = np.nan_to_num(l_c + l_p, nan=0.0, posinf=0.0, neginf=0.0)
    if kind == "absolute":
        return gain
    if kind != "relative":
        raise ValueError(f"task weighting must be one of {TASK_WEIGHTINGS}, got {kind!r}.")
    m = gain.size
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(np.abs(current) > 0, gain / np.abs(current), 0.0)
    rate = np.clip(np.nan_to_num(rate, nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)
    share = rate / rate.sum() if rate.sum() > 0 else np.full(m, 1.0 / m)
    return 0.5 / m + 0.5 * share


class Evidence:
    """Impact scores accumulated over updates, per task, and read as signal-to-noise (`evidence` normaliser).

    Per update t with scores Î_t [k, m] (decay rho), for every task j separately:

        S = rho S + Î_t,  N = rho N + 1,  N2 = rho^2 N2 + 1        (mu = S / N: an EMA with bias correction)
        V_j = pooled noise variance of column j: its spread over domains at t = 1 (nothing is known to be
              signal yet), then max(rho V_j + (1 - rho) mean_i (Î_t,ij - mu_{t-1,ij})^2, var_i(Î_t,ij)):
              deviations from what came before, never below the current update's spread
        z_ij = (mu_ij - sum_i prior_i mu_ij) / (sqrt(V_j * N2) / N)  (standard error of the weighted mean)
        z'_ij = sign(z) max(|z| - dead_zone, 0), capped at cap; z' = 0 at the first update
        dead_zone = Phi^-1(1 - alpha / (2k)) (`evidence_dead_zone`, alpha = EVIDENCE_FALSE_POSITIVE)

    A column that is consistent across updates grows |z| as the square root of the evidence; a column of
    noise (a task no domain serves, or too few probe rows) keeps |z| near 1, inside the dead zone (all k of
    its z-scores together pass it with chance alpha per update), and adds nothing. The first update has no
    noise estimate of its own (its z are the scores standardised by their own spread), so it moves
    nothing. The caller combines the live columns (some z'_ij != 0) with the task weights (`combination`;
    the default `live_split`: each live column spends w_j / sum_{j live} w_j of the budget).
    """

    def __init__(self, num_domains: int, *, decay: float, dead_zone: float | None = None):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"evidence decay must be in [0, 1), got {decay}.")
        self.decay = decay
        self.dead_zone = evidence_dead_zone(num_domains) if dead_zone is None else dead_zone
        self.num_domains = num_domains
        self.total: np.ndarray | None = None  # [k, m], created at the first update
        self.count = 0.0
        self.count_sq = 0.0
        self.updates = 0
        self.variance: np.ndarray | None = None  # [m]

    def add(self, scores: np.ndarray, prior: np.ndarray) -> dict[str, Any]:
        s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if s.ndim == 1:
            s = s[:, None]
        if s.shape[0] != self.num_domains:
            raise ValueError(f"scores have {s.shape[0]} domains, the evidence {self.num_domains}.")
        rho = self.decay
        spread = s.var(axis=0)
        if self.total is None or self.count == 0 or self.total.shape != s.shape:
            self.total, self.count, self.count_sq, self.updates = np.zeros_like(s), 0.0, 0.0, 0
            self.variance = spread
        else:
            previous = self.total / self.count
            drift = rho * self.variance + (1.0 - rho) * ((s - previous) ** 2).mean(axis=0)
            # never below this update's spread over domains: a few updates underestimate the noise, and a
            # noise-only update must not look like a consistent signal
            self.variance = np.maximum(drift, spread)
        self.total = rho * self.total + s
        self.count = rho * self.count + 1.0
        self.count_sq = rho * rho * self.count_sq + 1.0
        self.updates += 1
        mean = self.total / self.count
        centred = mean - prior @ mean
        stderr = np.sqrt(self.variance * self.count_sq) / self.count  # [m]
        # a column with no spread at all (every domain scored alike) has no signal: rounding in the centring
        # must not become a huge z, so the scale never falls below 1e-9 of the scores' own magnitude
        scale = np.maximum(stderr, 1e-9 * np.maximum(np.abs(mean).max(axis=0), 1e-300))
        z = centred / scale
        shrunk = np.sign(z) * np.clip(np.abs(z) - self.dead_zone, 0.0, EVIDENCE_Z_CAP)
        if self.updates < EVIDENCE_MIN_UPDATES:
            # one update has no noise estimate of its own: its z are the scores standardised by their own
            # spread, |z| up to sqrt(k - 1) whatever the signal (the null control moved 0.17 here)
            shrunk = np.zeros_like(shrunk)
        return {
            "evidence_mean": mean.tolist(),
            "evidence_stderr": stderr.tolist(),
            "evidence_count": float(self.count),
            "z": z.tolist(),
            "z_shrunk": shrunk.tolist(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "total": None if self.total is None else self.total.tolist(),
            "count": self.count,
            "count_sq": self.count_sq,
            "updates": self.updates,
            "variance": None if self.variance is None else self.variance.tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("total") is None:
            self.total, self.variance, self.count, self.count_sq, self.updates = None, None, 0.0, 0.0, 0
            return
        total = np.asarray(state["total"], dtype=np.float64)
        if total.shape[0] != self.num_domains:
            raise ValueError(f"evidence state has {total.shape[0]} domains, this run has {self.num_domains}.")
        self.total = total
        self.count = float(state["count"])
        self.count_sq = float(state["count_sq"])
        # states saved before the counter existed: more than one update had been added iff count > 1
        self.updates = int(state.get("updates", EVIDENCE_MIN_UPDATES if self.count > 1.0 else 1))
        self.variance = np.asarray(state["variance"], dtype=np.float64)


def resolve_components(variant: str, **given: Any) -> dict[str, Any]:
    """The variant's components with the given ones (not None) in their place; `reference` takes only beta."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}.")
    allowed = {"beta"} if variant == "reference" else set(VARIANTS[variant])
    unknown = set(given) - set(VARIANTS[variant])
    if unknown:
        raise ValueError(f"unknown DIDS components {sorted(unknown)}; known: {sorted(VARIANTS[variant])}.")
    return {
        **VARIANTS[variant],
        **{key: value for key, value in given.items() if value is not None and key in allowed},
    }


def _trajectory_and_weights(
    hist: np.ndarray, spec: Mapping[str, Any], reference: bool, use_trajectory: bool, horizon: float
) -> tuple[np.ndarray, np.ndarray, list[bool], np.ndarray]:
    """l_c, l_p, whether each l_p came from a fit, and the task weights w (eq. 14-16)."""
    m = hist.shape[1]
    l_c, l_p, fit_ok = trajectory_terms(
        hist,
        use_trajectory=use_trajectory,
        horizon=horizon,
        min_points=REFERENCE_MIN_POINTS if reference else None,
    )
    if reference and hist.shape[0] < 2:  # round 0 of the reference code: impacts alone
        return l_c, l_p, fit_ok, np.full(m, 1.0 / m)
    w = task_weights(l_c, l_p, hist[-1], spec["task_weighting"])
    if reference:
        w = w / m  # the reference code averages over tasks
    return l_c, l_p, fit_ok, w


def _utility_of(mixture: np.ndarray, base: np.ndarray, temperature: float) -> np.ndarray:
    """The utility u whose prior x exp(u / T), normalised, is `mixture` (the inverse of the tilt)."""
    return temperature * np.log(np.clip(mixture, 1e-300, None) / base)


def _evidence_utility(
    evidence: Evidence, scores: np.ndarray, base: np.ndarray, w: np.ndarray, spec: Mapping[str, Any]
) -> tuple[np.ndarray, dict[str, Any]]:
    """The `evidence` normaliser's utility [k] from the tasks' z' (`combination`, module docstring)."""
    k, m = scores.shape
    for key, allowed in (("combination", COMBINATIONS), ("allocation", ALLOCATIONS)):
        if spec[key] not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {spec[key]!r}.")
    extra = evidence.add(scores, base)  # per task: noise columns stay inside the dead zone
    shrunk = np.asarray(extra["z_shrunk"])  # [k, m]
    if spec["allocation"] == "grouped":
        shrunk = group_ties(np.asarray(extra["z"]), shrunk, evidence.dead_zone)
        extra["z_grouped"] = shrunk.tolist()
    live = np.abs(shrunk).max(axis=0) > 0
    extra["live_tasks"] = live.tolist()
    weight = w / w.sum() if w.sum() > 0 else np.full(m, 1.0 / m)
    # `live` and `live_split`: tasks without significant evidence hand their weight to the live ones
    live_total = w[live].sum()
    any_live = bool(live.any()) and live_total > 0
    live_weight = np.where(live, w, 0.0) / live_total if any_live else weight
    if spec["allocation"] == "proportional":
        # a live task's mixture: the prior times its domains' positive z (every domain its evidence puts
        # above the prior's average shares, in proportion to the evidence); the prior where it has none
        z = np.asarray(extra["z"])
        per_task = np.repeat(base[:, None], m, axis=1)
        for j in np.flatnonzero(live):
            mass = base * np.clip(z[:, j], 0.0, None)
            if mass.sum() > 0:
                per_task[:, j] = mass / mass.sum()
        if spec["combination"] in ("live", "live_split"):
            weight = live_weight
        return _utility_of(per_task @ weight, base, spec["temperature"]), extra
    if spec["combination"] in ("split", "live_split"):
        # each task spends its weight's share of the budget by its own evidence; `split`: a task without
        # evidence spends it on the prior, `live_split`: it hands it to the live tasks (the prior if none)
        if spec["combination"] == "live_split":
            if not any_live:
                return np.zeros(k), extra
            weight = live_weight
        per_task = np.stack([softmax(shrunk[:, j], spec["temperature"], base) for j in range(m)], axis=1)
        return _utility_of(per_task @ weight, base, spec["temperature"]), extra
    if spec["combination"] == "weighted":  # a task without evidence pulls towards the prior by its weight
        return shrunk @ weight, extra
    # `live`: one tilt of the live columns' weighted mean (the others drop out instead of diluting it)
    return (shrunk @ w / live_total if any_live else np.zeros(k)), extra


def _normalise(utility: np.ndarray, spec: Mapping[str, Any], base: np.ndarray, reference: bool) -> np.ndarray:
    """p̂ from the utilities: prior x exp(u / T) (softmax, evidence) or clamp-and-divide."""
    if spec["normaliser"] in ("softmax", "evidence"):
        return softmax(utility, spec["temperature"], base)
    if spec["normaliser"] == "clamp":
        return clamp_normalise(utility, REFERENCE_NEGATIVE_FLOOR if reference else 0.0)
    raise ValueError(f"normaliser must be one of {NORMALISERS}, got {spec['normaliser']!r}.")


def dids_update(
    weights: np.ndarray,
    terms: ImpactTerms,
    task_loss_history: Sequence[Sequence[float]],
    *,
    variant: str = DEFAULT_VARIANT,
    impact: str | None = None,
    pool_control: bool | None = None,
    task_weighting: str | None = None,
    importance_correction: bool | None = None,
    normaliser: str | None = None,
    combination: str | None = None,
    allocation: str | None = None,
    prior: np.ndarray | None = None,
    pool: np.ndarray | None = None,
    beta: float | None = None,
    smoothing: float | None = None,
    temperature: float | None = None,
    use_trajectory: bool = True,
    evidence: Evidence | None = None,
    horizon: float = 1.0,
    min_probability: float = 1e-8,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One DIDS update. Returns the new probabilities [k] and the terms it used (for the history).

    Args:
        weights: [k] current probabilities p_{t-1}.
        terms: eq. 12 scalar terms of k domains x m tasks.
        task_loss_history: per update, the [m] task losses (oldest first, current last).
        variant: `directional`, `paper` or `reference`; the component keyword arguments left None take the
            variant's value (`reference` takes its own for all of them but `beta`).
        prior: [k] base measure of softmax/evidence; None: uniform.
        pool: [k] the training pool's domain proportions (`pool_cosine`'s pool gradient); None: uniform.
        evidence: the accumulator of the `evidence` normaliser (state carried across updates).
    """
    # over 60 lines: the signature names every component (20 lines) and the history record lists 13 terms
    spec = resolve_components(
        variant,
        impact=impact,
        pool_control=pool_control,
        task_weighting=task_weighting,
        importance_correction=importance_correction,
        normaliser=normaliser,
        combination=combination,
        allocation=allocation,
        beta=beta,
        smoothing=smoothing,
        temperature=temperature,
    )
    p = np.asarray(weights, dtype=np.float64)
    k, m = terms.shape
    hist = np.asarray(task_loss_history, dtype=np.float64)
    if hist.ndim != 2 or hist.shape[1] != m:
        raise ValueError(f"task_loss_history must be [t, {m}], got {hist.shape}.")
    base = np.full(k, 1.0 / k) if prior is None else np.asarray(prior, dtype=np.float64) / np.sum(prior)

    scores = impact_scores(terms, spec["impact"], pool_control=spec["pool_control"], pool=pool)
    reference = variant == "reference"
    l_c, l_p, fit_ok, w = _trajectory_and_weights(hist, spec, reference, use_trajectory, horizon)
    extra: dict[str, Any] = {}
    if spec["normaliser"] == "evidence":
        if evidence is None:
            raise ValueError("the evidence normaliser needs its `Evidence` accumulator.")
        utility, extra = _evidence_utility(evidence, scores, base, w, spec)
    else:
        utility = scores @ w
    if spec["importance_correction"]:
        utility = utility / np.maximum(p, min_probability)
    utility = np.nan_to_num(utility, nan=0.0, posinf=0.0, neginf=0.0)
    p_hat = _normalise(utility, spec, base, reference)
    new = spec["beta"] * p + (1.0 - spec["beta"]) * p_hat
    new = new / new.sum()
    if spec["smoothing"] > 0:
        new = (1.0 - spec["smoothing"]) * new + spec["smoothing"] / k
    record = {
        "variant": variant,
        "components": {key: spec[key] for key in sorted(spec)},
        "impact": terms.distance().tolist(),
        "impact_cosine": terms.cosine().tolist(),
        "impact_normalised": scores.tolist(),
        "impact_terms": terms.to_dict(),
        "l_c": l_c.tolist(),
        "l_p": l_p.tolist(),
        "trajectory_fitted": fit_ok,
        "task_weights": w.tolist(),
        "utility": utility.tolist(),
        "p_hat": p_hat.tolist(),
        **extra,
    }
    return new, record


class DIDSStrategy(MixingStrategy):
    """Domain Impact-aware Data Sampling: impact x loss trajectory -> normaliser -> EMA (paper Algorithm 1)."""

    name = "dids"
    dynamic = True
    signals = frozenset({"impact", "task_loss_history"})
    config_keys = {
        "variant": "dids_variant",
        "impact": "dids_impact",
        "pool_control": "dids_pool_control",
        "task_weighting": "dids_task_weighting",
        "importance_correction": "dids_importance_correction",
        "normaliser": "dids_normaliser",
        "combination": "dids_task_combination",
        "allocation": "dids_evidence_allocation",
        "prior": "dids_prior",
        "beta": "dids_ema_beta",
        "smoothing": "dids_smoothing",
        "temperature": "dids_temperature",
        "evidence_decay": "dids_evidence_decay",
        "use_trajectory": "dids_use_trajectory",
    }

    def __init__(
        self,
        domain_names: Sequence[str],
        domain_sizes: Sequence[int],
        *,
        variant: str = DEFAULT_VARIANT,
        impact: str | None = None,
        pool_control: bool | None = None,
        task_weighting: str | None = None,
        importance_correction: bool | None = None,
        normaliser: str | None = None,
        combination: str | None = None,
        allocation: str | None = None,
        prior: str | None = None,
        beta: float | None = None,
        smoothing: float | None = None,
        temperature: float | None = None,
        evidence_decay: float = 0.85,
        use_trajectory: bool = True,
        **options: Any,
    ):
        super().__init__(domain_names, domain_sizes, **options)
        self.variant = variant
        self.components = {
            "impact": impact,
            "pool_control": pool_control,
            "task_weighting": task_weighting,
            "importance_correction": importance_correction,
            "normaliser": normaliser,
            "combination": combination,
            "allocation": allocation,
            "beta": beta,
            "smoothing": smoothing,
            "temperature": temperature,
        }
        self.resolved = resolve_components(variant, **self.components)
        spec = VARIANTS[variant]
        self.prior_kind = spec["prior"] if prior is None or variant == "reference" else prior
        if self.prior_kind not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {self.prior_kind!r}.")
        self.use_trajectory = use_trajectory
        if self.resolved["pool_control"] and self.resolved["impact"] != "cosine":
            raise ValueError(
                "dids_pool_control compares cosines (each domain's cosine with a task minus its cosine with "
                f"the pool): set `dids_impact: cosine` with it (the impact here is {self.resolved['impact']!r})."
            )
        given = [
            f"dids_{key}"
            for key, value in (("task_combination", combination), ("evidence_allocation", allocation))
            if value is not None
        ]
        if given and self.resolved["normaliser"] != "evidence":
            raise ValueError(
                f"{' and '.join(given)} shape how the `evidence` normaliser reads the tasks' evidence: set "
                f"`dids_normaliser: evidence` with them (the normaliser here is {self.resolved['normaliser']!r})."
            )
        # the probe adds the pool-control gradient only when the cosine impact will read it
        self.impact_control = bool(self.resolved["pool_control"]) and self.resolved["impact"] == "cosine"
        # ... and keeps the domains' Gram matrix only when `pool_cosine` will read it
        self.impact_gram = self.resolved["impact"] == "pool_cosine"
        self.evidence = Evidence(self.num_domains, decay=evidence_decay)

    @property
    def prior(self) -> np.ndarray:
        if self.prior_kind == "natural" and self.domain_sizes.sum() > 0:
            return self.domain_sizes / self.domain_sizes.sum()
        return np.full(self.num_domains, 1.0 / self.num_domains)

    def initial_weights(self) -> np.ndarray:
        """The prior: uniform (Algorithm 1, every variant's default) or natural proportions, floored."""
        smoothing = self.resolved["smoothing"]
        return (1.0 - smoothing) * self.prior + smoothing / self.num_domains

    def update(self, weights: np.ndarray, signals: Mapping[str, Any]) -> np.ndarray:
        terms = signals["impact"]
        if not isinstance(terms, ImpactTerms):  # a plain [k, m] distance matrix (tests, old callers)
            matrix = np.asarray(terms, dtype=np.float64)
            terms = ImpactTerms.from_distances(matrix)
        new, self.last_terms = dids_update(
            weights,
            terms,
            signals["task_loss_history"],
            variant=self.variant,
            **{key: value for key, value in self.components.items()},
            prior=self.prior,
            pool=self.domain_sizes if self.domain_sizes.sum() > 0 else None,
            use_trajectory=self.use_trajectory,
            evidence=self.evidence,
        )
        self.last_terms["components"]["prior"] = self.prior_kind  # the prior used, not the variant's
        return new

    def log_scalars(self, task_names: Sequence[str]) -> dict[str, float]:
        """The last update's impact per domain (mean over tasks) and l_c, l_p per task (eq. 13-15)."""
        terms = self.last_terms
        if "impact_normalised" not in terms:
            return {}
        out = {
            f"dids/impact/{name}": round(float(value), 6)
            for name, value in zip(
                self.domain_names, np.asarray(terms["impact_normalised"]).mean(axis=1), strict=True
            )
        }
        for j, name in enumerate(task_names):
            out[f"dids/l_c/{name}"] = round(float(terms["l_c"][j]), 6)
            out[f"dids/l_p/{name}"] = round(float(terms["l_p"][j]), 6)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"evidence": self.evidence.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state and "evidence" in state:
            self.evidence.load_state_dict(state["evidence"])
