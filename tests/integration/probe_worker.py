"""Run under torchrun (gloo): the probe of tests/integration/test_probe.py on 2 ranks; rank 0 writes JSON.

Usage: torchrun --nproc_per_node 2 probe_worker.py OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

from test_probe import probe_case  # noqa: E402


def main(out: str) -> None:
    dist.init_process_group("gloo")
    results = {}
    for name, settings in (
        ("sharded", {"sharded": True}),
        ("replicated", {"sharded": False}),
        ("sharded_identity", {"sharded": True, "metric": "inner_product"}),  # no Fisher is reduced
        (
            "sharded_projected_per_token",
            {"sharded": True, "projection_dim": 4096, "fisher_estimator": "per_token"},
        ),
    ):
        probe = probe_case(**settings)
        results[name] = {
            "impact": probe.impact(1).tolist(),
            "losses": probe.task_losses().tolist(),
            "gram": probe.impact_terms(1, gram=True).domain_gram.tolist(),
        }
    import llamafactory_dids.runtime.probe as probe_module

    probe_module.GRAM_EXACT_BYTES = 0  # the Gram from sketches: each rank sketches its shards, summed
    sketched = probe_case(sharded=True, metric="inner_product").impact_terms(1, gram=True).domain_gram
    results["sharded_gram_sketch"] = {"gram": sketched.tolist()}
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
