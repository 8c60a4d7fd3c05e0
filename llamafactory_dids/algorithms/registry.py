"""Strategy table: `dids_strategy` name -> class, and the builder that checks declared signals.

Role: the one place that knows every mixing rule (static ones in algorithms.strategies, DIDS in
algorithms.dids, the paper's baselines in algorithms.{dga,doge,doremi,velocitune}); the integration
layer builds strategies only through `build_strategy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .dga import DGAStrategy
from .dids import DIDSStrategy
from .doge import DoGEStrategy
from .doremi import DoReMiStrategy
from .strategies import KNOWN_SIGNALS, MixingStrategy, NaturalStrategy, StaticStrategy, UniformStrategy
from .velocitune import VelocituneStrategy

STRATEGY_CLASSES: dict[str, type[MixingStrategy]] = {
    cls.name: cls
    for cls in (
        UniformStrategy,
        NaturalStrategy,
        StaticStrategy,
        DIDSStrategy,
        DGAStrategy,
        DoGEStrategy,
        DoReMiStrategy,
        VelocituneStrategy,
    )
}


def build_strategy(
    name: str, domain_names: Sequence[str], domain_sizes: Sequence[int], **options: Any
) -> MixingStrategy:
    try:
        cls = STRATEGY_CLASSES[name]
    except KeyError:
        raise ValueError(f"Unknown strategy {name!r}; known: {sorted(STRATEGY_CLASSES)}.") from None
    unknown = set(cls.signals) - KNOWN_SIGNALS
    if unknown:
        raise ValueError(f"Strategy {name!r} declares signals nobody provides: {sorted(unknown)}.")
    return cls(domain_names, domain_sizes, **options)
