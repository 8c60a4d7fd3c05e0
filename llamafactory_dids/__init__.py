"""llamafactory-dids: Domain Impact-aware Data Sampling (DIDS, arXiv 2504.13227) for LLaMA-Factory.

Layers (imports point downwards): cli -> integration (the only code importing llamafactory or
transformers.Trainer) -> data (sampler, domain-id plumbing) -> algorithms (mixing strategies)
-> config (the `dids_*` keys).

Installing the package is enough for `llamafactory-cli train` to accept `dids_*` keys: a `.pth` file
hooks the plugin into every interpreter, torchrun workers included. Set `LLAMAFACTORY_DIDS_DISABLE=1`
to switch that off; Python API users can call `apply()` / `revert()` themselves.
"""

from __future__ import annotations

__version__ = "0.1.0"

# The host releases the integration supports (`integration.patch.check_host_versions` enforces them; keep
# them equal to the pins in pyproject.toml). LLaMA-Factory: the releases whose private names the integration
# was tested against. transformers: the range LLaMA-Factory 0.9.5 itself accepts; the plugin overrides
# private Trainer methods and swaps the causal-LM loss, tested on 5.6.0.
SUPPORTED_LLAMAFACTORY = ">=0.9.5,<0.9.6"
SUPPORTED_TRANSFORMERS = ">=4.55,<=5.6.0"


def apply() -> None:
    """Hook DIDS into LLaMA-Factory (idempotent)."""
    from .integration.patch import apply as _apply

    _apply()


def revert() -> None:
    """Undo `apply()` (idempotent)."""
    from .integration.patch import revert as _revert

    _revert()


__all__ = ["SUPPORTED_LLAMAFACTORY", "SUPPORTED_TRANSFORMERS", "__version__", "apply", "revert"]
