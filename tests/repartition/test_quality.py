"""`quality.label_agreement`: the domains judged against a known label.

References: a contingency table counted by hand (purity, majority labels and shares), the entropy formula of
homogeneity written out, and scikit-learn's own scores on the same assignment.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import completeness_score, homogeneity_score, v_measure_score

from llamafactory_dids.repartition.quality import label_agreement

# 3 domains x 2 labels; domains 0 and 1 come from source 0, domain 2 from source 1
#   domain 0: a a a b  -> majority a, 3/4
#   domain 1: b b      -> majority b, 2/2
#   domain 2: a b b    -> majority b, 2/3
ROWS = [(0, "a"), (0, "a"), (0, "a"), (0, "b"), (1, "b"), (1, "b"), (2, "a"), (2, "b"), (2, "b")]
SOURCE_OF_DOMAIN = [0, 0, 1]
NAMES = ["s0_0", "s0_1", "s1_0"]


def shuffled(seed=0):
    order = np.random.default_rng(seed).permutation(len(ROWS))  # the figures do not depend on row order
    domains = np.array([ROWS[i][0] for i in order])
    labels = [ROWS[i][1] for i in order]
    return labels, domains, np.array([SOURCE_OF_DOMAIN[d] for d in domains])


def entropy(counts):
    n = sum(counts)
    return -sum(c / n * math.log(c / n) for c in counts if c)


def test_hand_counted_contingency():
    labels, domains, sources = shuffled()
    result = label_agreement(labels, domains, NAMES, sources)
    assert result["labels"] == {"a": 4, "b": 5}
    assert result["purity"] == pytest.approx((3 + 2 + 2) / 9)
    # source 0 holds a a a b b b (majority 3 of 6, a tie), source 1 a b b (2 of 3)
    assert result["source_purity"] == pytest.approx((3 + 2) / 9)
    assert result["domains"] == {
        "s0_0": {"majority": "a", "share": pytest.approx(3 / 4)},
        "s0_1": {"majority": "b", "share": 1.0},
        "s1_0": {"majority": "b", "share": pytest.approx(2 / 3)},
    }
    # homogeneity = 1 - H(label | domain) / H(label)
    conditional = 4 / 9 * entropy([3, 1]) + 2 / 9 * entropy([0, 2]) + 3 / 9 * entropy([1, 2])
    assert result["homogeneity"] == pytest.approx(1 - conditional / entropy([4, 5]))
    assert result["homogeneity"] == pytest.approx(homogeneity_score(labels, domains))
    assert result["completeness"] == pytest.approx(completeness_score(labels, domains))
    assert result["v_measure"] == pytest.approx(v_measure_score(labels, domains))
    labels, domains, sources = shuffled(seed=1)
    assert label_agreement(labels, domains, NAMES, sources) == result


@pytest.mark.parametrize(
    ("domains", "expected"),
    [
        ([0, 0, 1, 1, 2, 2], {"purity": 1.0, "homogeneity": 1.0, "completeness": 1.0}),  # one label each
        ([0, 1, 0, 1, 0, 1], {"purity": 1 / 3, "homogeneity": 0.0, "completeness": 0.0}),  # labels spread
        ([0, 0, 0, 0, 1, 1], {"purity": 2 / 3, "homogeneity": pytest.approx(0.5794, abs=1e-4)}),
    ],
)
def test_known_assignments(domains, expected):
    labels = ["x", "x", "y", "y", "z", "z"]
    domains = np.array(domains)
    names = [f"d{j}" for j in range(domains.max() + 1)]
    result = label_agreement(labels, domains, names, np.zeros(6, dtype=int))
    assert result["source_purity"] == pytest.approx(1 / 3)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value), key
    assert result["homogeneity"] == pytest.approx(homogeneity_score(labels, domains))


def test_ties_take_the_first_label_in_sorted_order():
    result = label_agreement(["b", "a"], np.array([0, 0]), ["only"], np.array([0, 0]))
    assert result["domains"]["only"] == {"majority": "a", "share": 0.5}
