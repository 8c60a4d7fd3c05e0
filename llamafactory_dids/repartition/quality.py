"""How well the domains of a repartition run agree with a known label of the rows (`dids_label_column`).

Role: judging the repartition step (paper section 4.1) where the data carries a label that the domains
should respect (a language, a task): the features never see it. Figures, over every row (rows without a
loss included, in the domain they were placed in):

* purity: the share of rows that carry their domain's majority label (1 = every domain holds one label;
  row-weighted, from scikit-learn's contingency matrix);
* homogeneity, completeness and V-measure (Rosenberg & Hirschberg 2007, scikit-learn): homogeneity is 1
  when each domain holds one label only, completeness when each label lies in one domain only;
* the purity of the sources alone (each source one domain), the line that repartition should rise above;
* per domain, its majority label (ties: the first in sorted order) and that label's share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def purity(table: np.ndarray) -> float:
    """Row-weighted purity of a [labels, domains] contingency table: sum of column maxima / total."""
    return float(table.max(axis=0).sum() / table.sum())


def label_agreement(
    labels: Sequence[str], row_domain: np.ndarray, domain_names: Sequence[str], row_source: np.ndarray
) -> dict[str, Any]:
    """Purity, homogeneity, completeness and V-measure of the domains against `labels`.

    Args:
        labels: [n] the known label of every row.
        row_domain: [n] domain index of every row (into `domain_names`); every domain has a row.
        domain_names: the domains.
        row_source: [n] source index of every row (for the purity of the sources alone).

    Returns:
        {"labels": label -> rows, "purity", "source_purity", "homogeneity", "completeness", "v_measure",
        "domains": name -> {"majority": label, "share": fraction of the domain's rows}}.
    """
    from sklearn.metrics import homogeneity_completeness_v_measure
    from sklearn.metrics.cluster import contingency_matrix

    classes, label_ids = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    domains = np.unique(row_domain)  # the columns of the contingency table, in this order
    if len(domains) != len(domain_names):
        raise ValueError(f"{len(domain_names)} domains but rows in only {len(domains)} of them")
    table = contingency_matrix(label_ids, row_domain)  # [labels, domains]
    homogeneity, completeness, v_measure = homogeneity_completeness_v_measure(label_ids, row_domain)
    majority = table.argmax(axis=0)
    return {
        "labels": {str(c): int(n) for c, n in zip(classes, table.sum(axis=1), strict=True)},
        "purity": purity(table),
        "source_purity": purity(contingency_matrix(label_ids, row_source)),
        "homogeneity": float(homogeneity),
        "completeness": float(completeness),
        "v_measure": float(v_measure),
        "domains": {
            domain_names[d]: {
                "majority": str(classes[majority[j]]),
                "share": float(table[majority[j], j] / table[:, j].sum()),
            }
            for j, d in enumerate(domains)
        },
    }
