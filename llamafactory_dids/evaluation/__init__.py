"""Downstream evaluation around a DIDS run: observation sets in, accuracies out (lm-evaluation-harness).

`observe` builds the observation sets S_j (`dids_target_datasets`) from lm-eval tasks' validation
docs; `eval` scores a trained output on the same tasks (the accuracies of eq. 1 / Table 1) while
keeping the observation docs out of what it scores. lm_eval is imported lazily (the `eval` extra).
"""

from .config import EvalConfig, EvalConfigError, ObserveConfig, parse_eval_config, parse_observe_config

__all__ = ["EvalConfig", "EvalConfigError", "ObserveConfig", "parse_eval_config", "parse_observe_config"]
