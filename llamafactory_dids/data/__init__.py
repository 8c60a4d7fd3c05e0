"""Domain-id plumbing and the domain sampler (torch/datasets only)."""
