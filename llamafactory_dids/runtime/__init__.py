"""The mixture's run-time machinery, free of LLaMA-Factory and of `transformers.Trainer`.

`mixture.DomainMixture` (the sampler's weights, per-domain statistics, updates, history and resume state),
`probe.GradientProbe` (task losses and the gradient terms of the impact), `sharding` (the probe's
all-reductions and ZeRO-3 coordinate shards) and `runs` (reading a finished run: reference losses for
DoReMi and Velocitune, `compare`). The integration layer (`llamafactory_dids.integration`) wires them
into LLaMA-Factory's trainers.
"""
