"""Gradient-based domain repartition (paper section 4.1, App. A): `llamafactory-dids repartition`.

Role: the first step of DIDS (*repartition* -> impact -> schedule -> sampler), run once offline. It
reads data as LLaMA-Factory does and loads models with transformers: config -> inputs -> extract ->
cache -> clustering (`algorithms.clustering`) -> outputs, with `quality` (the domains against a known
label); `proxy` builds a pretrained proxy offline (`llamafactory-dids proxy`). See docs/repartition.md.
Its LLaMA-Factory calls go through `integration.host_data` (listed in `integration.patch`, whose
`check_host_versions` it runs first).
"""

from .config import RepartitionConfig, RepartitionConfigError, parse_repartition_config
from .inputs import RepartitionInputError
from .run import run_repartition

__all__ = [
    "RepartitionConfig",
    "RepartitionConfigError",
    "RepartitionInputError",
    "parse_repartition_config",
    "run_repartition",
]
