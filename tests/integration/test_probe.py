"""The gradient probe against a brute-force reference on a tiny Llama: task losses, Fisher and impact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llamafactory_dids.algorithms.impact import exact_impact
from llamafactory_dids.integration.probe import GradientProbe, select_probe_parameters, transformer_blocks

VOCAB, LENGTH = 40, 10


def tiny_llama(layers=4):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(config)


def make_rows(n, seed):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (LENGTH,), generator=g).tolist()
        labels = [-100] * 3 + ids[3:]
        rows.append({"input_ids": ids, "attention_mask": [1] * LENGTH, "labels": labels, "domain_ids": 0})
    return rows


def collate(rows):
    return {k: torch.tensor([r[k] for r in rows]) for k in ("input_ids", "attention_mask", "labels")}


def make_probe(model, train, pools, tasks, **overrides) -> GradientProbe:
    """A probe over `train` rows, split into `pools`, with the settings the references below assume."""
    settings = dict(
        device=torch.device("cpu"),
        probe_samples=4,
        fisher_batch_size=1,
        eval_batch_size=3,
        metric="fim",
        layers_fraction=0.5,
        include_lm_head=False,
        seed=11,
    )
    settings.update(overrides)
    return GradientProbe(model, collate, lambda idx: [train[i] for i in idx], pools, tasks, **settings)


def test_parameter_selection_takes_the_last_blocks():
    model = tiny_llama(layers=10)
    assert len(transformer_blocks(model)) == 10
    names = [n for n, _ in select_probe_parameters(model, layers_fraction=0.1)]
    assert names and all(n.startswith("model.layers.9.") for n in names)
    assert not any("norm" in n for n in names)  # matrices only
    names = [n for n, _ in select_probe_parameters(model, layers_fraction=0.25, include_lm_head=True)]
    assert {n.split(".")[2] for n in names if n.startswith("model.layers")} == {"7", "8", "9"}
    assert "lm_head.weight" in names
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="No trainable matrix in the last 1 of 10 transformer blocks"):
        select_probe_parameters(model)


def test_probe_matches_brute_force():
    model = tiny_llama()
    train = make_rows(30, seed=1)
    pools = [np.arange(0, 10), np.arange(10, 22), np.arange(22, 30)]
    tasks = [make_rows(5, seed=2), make_rows(6, seed=3)]
    probe = make_probe(model, train, pools, tasks)
    params = [p for _, p in probe.params]

    def per_example(rows):
        out = []
        for row in rows:
            loss = model(**collate([row])).loss
            out.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]).double().numpy())
        return np.stack(out)

    model.eval()
    task_grads = [per_example(rows[:4]) for rows in tasks]
    fisher = np.concatenate(task_grads).__pow__(2).mean(axis=0)
    g_s = np.stack([g.mean(axis=0) for g in task_grads])
    g_d = []
    for d, pool in enumerate(pools):
        chosen = np.sort(np.random.default_rng([11, 2, 1, d]).choice(pool, size=4, replace=False))
        g_d.append(per_example([train[i] for i in chosen]).mean(axis=0))
    reference = exact_impact(np.stack(g_d), g_s, fisher)
    model.train()

    got = probe.impact(update_index=1)
    assert model.training  # the probe restores the mode
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-12)

    with torch.no_grad():
        expected_losses = []
        for rows in tasks:
            total = tokens = 0.0
            for row in rows:
                n = sum(1 for x in row["labels"][1:] if x != -100)
                total += model.eval()(**collate([row])).loss.item() * n
                tokens += n
            expected_losses.append(total / tokens)
    np.testing.assert_allclose(probe.task_losses(), expected_losses, rtol=1e-5)


def test_projected_probe_tracks_the_exact_one():
    model = tiny_llama()
    train = make_rows(30, seed=1)
    pools = [np.arange(0, 10), np.arange(10, 22), np.arange(22, 30)]
    tasks = [make_rows(5, seed=2), make_rows(6, seed=3)]
    exact = make_probe(model, train, pools, tasks)
    projected = make_probe(model, train, pools, tasks, projection_dim=8192)
    assert projected.num_probe_parameters < 8192 * 2
    np.testing.assert_allclose(projected.impact(1), exact.impact(1), rtol=0.15)


def test_per_token_fisher_ranks_impacts_like_the_exact_one():
    """The hook-based per-token Fisher (one GEMM per layer) against the exact per-example Fisher."""
    from scipy.stats import spearmanr

    model = tiny_llama()
    train = make_rows(80, seed=1)
    pools = [np.arange(i * 10, (i + 1) * 10) for i in range(8)]
    tasks = [make_rows(8, seed=2), make_rows(8, seed=3)]

    def impact(estimator):
        probe = make_probe(
            model, train, pools, tasks, probe_samples=8, eval_batch_size=4, fisher_estimator=estimator
        )
        return probe.impact(1)

    exact, per_token = impact("batch"), impact("per_token")
    assert not np.allclose(exact, per_token)  # a different Fisher...
    assert spearmanr(exact.ravel(), per_token.ravel()).statistic > 0.9  # ...that ranks pairs alike (0.97)
    with pytest.raises(ValueError, match="fisher_estimator must be"):
        make_probe(model, train, pools, tasks, fisher_estimator="kfac")
