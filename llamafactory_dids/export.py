"""`llamafactory-dids export-weights`: the weights a run learned, as keys for a `static` run.

Role: command-line layer, the offline half of DoGE (Fan, Pagliardini, Jaggi 2024) and DoReMi (Xie et al.
2024): both learn weights on a proxy run and train the final model on the average of the iterates,
1/T sum_t alpha_t, fixed. This reads a finished run's `history.jsonl` and writes YAML that a training
config takes as is (`dids_strategy: static` + `dids_static_weights`, a mapping domain -> weight).
"""

from __future__ import annotations

from pathlib import Path

from .integration.runs import averaged_weights


def static_weights_yaml(run_dir: str | Path, *, how: str = "average") -> str:
    """YAML text with `dids_strategy: static` and the run's averaged (or final) weights.

    Raises:
        ValueError: if the run has no history (or, for `average`, no update).
    """
    import yaml

    domains, weights, updates = averaged_weights(run_dir, how=how)
    strategy = _strategy_of(run_dir)
    what = f"average over {updates} updates" if how == "average" else "final weights"
    keys = {
        "dids_strategy": "static",
        "dids_static_weights": {d: round(float(w), 8) for d, w in zip(domains, weights, strict=True)},
    }
    header = f"# weights learned by `{strategy}` in {run_dir} ({what}); llamafactory-dids export-weights\n"
    return header + yaml.safe_dump(keys, sort_keys=False)


def _strategy_of(run_dir: str | Path) -> str:
    from .integration.runs import read_history

    history = read_history(run_dir)
    return str(history[-1].get("strategy", "?")) if history else "?"
