"""The gradient probe against a brute-force reference on a tiny Llama: task losses, Fisher and impact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llamafactory_dids.algorithms.features import last_block_matrices, transformer_blocks
from llamafactory_dids.algorithms.fisher import fisher_term
from llamafactory_dids.algorithms.impact import exact_impact
from llamafactory_dids.runtime.probe import GradientProbe, select_probe_parameters

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


def probe_case(**overrides) -> GradientProbe:
    """Odd row counts (5 and 6 task rows, domains of 10/12/8 rows, 5 probe samples): uneven rank shares."""
    model = tiny_llama()
    train = make_rows(30, seed=1)
    pools = [np.arange(0, 10), np.arange(10, 22), np.arange(22, 30)]
    tasks = [make_rows(5, seed=2), make_rows(6, seed=3)]
    return make_probe(model, train, pools, tasks, probe_samples=5, **overrides)


def test_parameter_selection_takes_the_last_blocks():
    model = tiny_llama(layers=10)
    assert len(transformer_blocks(model)) == 10
    names = [n for n, _ in select_probe_parameters(model, layers_fraction=0.1)]
    assert names and all(n.startswith("model.layers.9.") for n in names)
    assert not any("norm" in n for n in names)  # matrices only
    names = [n for n, _ in select_probe_parameters(model, layers_fraction=0.25, include_lm_head=True)]
    assert {n.split(".")[2] for n in names if n.startswith("model.layers")} == {"7", "8", "9"}
    assert "lm_head.weight" in names
    # one selection for the probe and repartition: the same tensors while everything trains; frozen
    # matrices (LoRA's base weights) leave the probe's and stay in repartition's
    repartition = last_block_matrices(model, transformer_blocks(model), 0.25)
    assert [n for n, _ in select_probe_parameters(model, layers_fraction=0.25)] == [n for n, _ in repartition]
    model.model.layers[9].mlp.up_proj.weight.requires_grad_(False)
    probed = [n for n, _ in select_probe_parameters(model, layers_fraction=0.25)]
    assert probed == [n for n, _ in repartition if n != "model.layers.9.mlp.up_proj.weight"]
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(
        ValueError, match="No trainable matrix in the last 1 of 10 transformer blocks to probe"
    ):
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


def test_the_task_losses_read_the_first_loss_samples_rows_and_the_windows_all_of_them():
    """`loss_samples` (`dids_target_samples`) bounds the rows of the task losses only: the gradient windows
    still rotate through every observation row."""
    model = tiny_llama().eval()
    train = make_rows(12, seed=1)
    tasks = [make_rows(7, seed=2), make_rows(5, seed=3)]
    probe = make_probe(model, train, [np.arange(6), np.arange(6, 12)], tasks, probe_samples=3, loss_samples=4)

    def token_mean(rows):
        with torch.no_grad():
            batch = collate(rows)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            shifted = batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1), shifted.flatten(), ignore_index=-100, reduction="sum"
            )
            return loss.item() / (shifted != -100).sum().item()

    np.testing.assert_allclose(probe.task_losses(), [token_mean(rows[:4]) for rows in tasks], rtol=1e-5)
    # the final evaluation reads every row, whatever `loss_samples`
    every = [token_mean(rows) for rows in tasks]
    np.testing.assert_allclose(probe.task_losses(every_row=True), every, rtol=1e-5)
    windows = [probe.task_probe_rows(tasks[0], u) for u in (1, 2, 3)]
    assert [tasks[0].index(r) for w in windows for r in w] == [0, 1, 2, 3, 4, 5, 6, 0, 1]


def test_impact_terms_give_cosines_and_the_pool_control_exactly():
    """Every impact form from one probe call, at update 2 (the second window of task rows), against
    per-example gradients; the pool control is the mean gradient of the seeded rows `control_rows` names."""
    model = tiny_llama()
    train = make_rows(30, seed=1)
    pools = [np.arange(0, 10), np.arange(10, 22), np.arange(22, 30)]
    tasks = [make_rows(5, seed=2), make_rows(6, seed=3)]
    probe = make_probe(model, train, pools, tasks, probe_samples=3)
    params = [p for _, p in probe.params]

    def mean_grad(rows):
        out = []
        for row in rows:
            loss = model(**collate([row])).loss
            out.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]).double().numpy())
        return np.stack(out)

    model.eval()
    window = [[rows[3:6] if len(rows) >= 6 else [rows[3], rows[4], rows[0]]][0] for rows in tasks]
    assert [len(w) for w in window] == [3, 3] and window[0][2] is tasks[0][0]  # wraps around
    per_task = [mean_grad(rows) for rows in window]
    fisher = np.concatenate(per_task).__pow__(2).mean(axis=0)
    g_s = np.stack([g.mean(axis=0) for g in per_task])
    g_d = np.stack(
        [
            mean_grad(
                [
                    train[i]
                    for i in np.sort(np.random.default_rng([11, 2, 2, d]).choice(pool, 3, replace=False))
                ]
            ).mean(axis=0)
            for d, pool in enumerate(pools)
        ]
    )
    g_p = mean_grad([train[i] for i in probe.control_rows(2)]).mean(axis=0)
    model.train()
    terms = probe.impact_terms(2, control=True)

    def fim(a, b):
        return (a * fisher * b).sum(-1)

    cosine = fim(g_d[:, None], g_s[None]) / np.sqrt(fim(g_d, g_d)[:, None] * fim(g_s, g_s)[None])
    np.testing.assert_allclose(terms.cosine(), cosine, rtol=1e-4)
    np.testing.assert_allclose(terms.distance(), exact_impact(g_d, g_s, fisher), rtol=1e-4, atol=1e-12)
    control = fim(g_d, g_p) / np.sqrt(fim(g_d, g_d) * fim(g_p, g_p))
    np.testing.assert_allclose(terms.control_cosine(), control, rtol=1e-4)
    assert len(probe.control_rows(2)) == 3 and probe.control_rows(2) == probe.control_rows(2)
    without = probe.impact_terms(2)
    assert without.control_cross is None and np.allclose(without.cross, terms.cross)
    assert without.domain_gram is None  # kept only when asked for (`pool_cosine`)
    gram = probe.impact_terms(2, gram=True).domain_gram
    np.testing.assert_allclose(gram, fim(g_d[:, None], g_d[None]), rtol=1e-4)
    # the identity metric (the default's): plain products of the same gradients, no Fisher estimated
    plain = make_probe(model, train, pools, tasks, probe_samples=3, metric="inner_product").impact_terms(2)
    np.testing.assert_allclose(plain.cross, g_d @ g_s.T, rtol=1e-4)
    np.testing.assert_allclose(plain.task_sq, (g_s * g_s).sum(-1), rtol=1e-4)
    np.testing.assert_allclose(plain.domain_sq, (g_d * g_d).sum(-1), rtol=1e-4)
    plain_probe = make_probe(model, train, pools, tasks, probe_samples=3, metric="inner_product")
    np.testing.assert_allclose(plain_probe.impact_terms(2, gram=True).domain_gram, g_d @ g_d.T, rtol=1e-4)


def test_the_domain_gram_from_sketches_tracks_the_exact_one(monkeypatch):
    """Above `GRAM_EXACT_BYTES` the Gram's off-diagonal comes from sparse JL sketches of the domain gradients
    (error about |g_i| |g_k| / sqrt(buckets)); the diagonal stays the exact |g_D|^2."""
    import llamafactory_dids.runtime.probe as probe_module

    exact = probe_case(metric="inner_product").impact_terms(1, gram=True).domain_gram
    monkeypatch.setattr(probe_module, "GRAM_EXACT_BYTES", 0)
    sketched = probe_case(metric="inner_product").impact_terms(1, gram=True).domain_gram
    norms = np.sqrt(np.diagonal(exact))
    np.testing.assert_allclose(np.diagonal(sketched), np.diagonal(exact), rtol=1e-10)
    assert np.abs(sketched - exact).max() <= 0.05 * norms.max() ** 2
    assert not np.allclose(sketched, exact, rtol=1e-6)  # the sketch did run


def test_task_probe_rows_rotate_through_the_observation_set():
    probe = probe_case()  # probe_samples 5
    rows = list(range(12))
    assert probe.task_probe_rows(rows, 1) == [0, 1, 2, 3, 4]
    assert probe.task_probe_rows(rows, 2) == [5, 6, 7, 8, 9]
    assert probe.task_probe_rows(rows, 3) == [10, 11, 0, 1, 2]  # wraps
    assert probe.task_probe_rows(rows[:4], 7) == [0, 1, 2, 3]  # fewer rows than probe_samples: all of them


def test_projected_probe_tracks_the_exact_one():
    model = tiny_llama()
    train = make_rows(30, seed=1)
    pools = [np.arange(0, 10), np.arange(10, 22), np.arange(22, 30)]
    tasks = [make_rows(5, seed=2), make_rows(6, seed=3)]
    exact = make_probe(model, train, pools, tasks)
    projected = make_probe(model, train, pools, tasks, projection_dim=8192)
    assert projected.num_probe_parameters < 8192 * 2
    np.testing.assert_allclose(projected.impact(1), exact.impact(1), rtol=0.15)


@pytest.mark.parametrize("estimator", ["per_token", "kfac"])
def test_hook_fisher_ranks_impacts_like_the_exact_one(estimator):
    """The hook-based Fisher estimators (per-token GEMM, K-FAC diagonal) against the exact per-example one."""
    from scipy.stats import spearmanr

    model = tiny_llama()
    train = make_rows(80, seed=1)
    pools = [np.arange(i * 10, (i + 1) * 10) for i in range(8)]
    tasks = [make_rows(8, seed=2), make_rows(8, seed=3)]

    def impact(name):
        probe = make_probe(
            model, train, pools, tasks, probe_samples=8, eval_batch_size=4, fisher_estimator=name
        )
        return probe.impact(1)

    exact, approx = impact("batch"), impact(estimator)
    assert not np.allclose(exact, approx)  # a different Fisher...
    assert spearmanr(exact.ravel(), approx.ravel()).statistic > 0.9  # ...that ranks pairs alike
    with pytest.raises(ValueError, match="fisher_estimator must be one of"):
        make_probe(model, train, pools, tasks, fisher_estimator="diag")


def test_hook_fisher_terms_match_their_formulas():
    """Per-token: sum_t (delta_t^2)(x_t^2)^T; K-FAC diagonal: (sum_t delta_t^2)(sum_t x_t^2)^T / positions,
    per row, padding left out."""
    g = torch.Generator().manual_seed(0)
    x, delta = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 2, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    delta = delta * mask[:, :, None]  # padding gets no gradient
    grad = torch.einsum("blo,bli->oi", delta, x) / 2
    per_token = sum(torch.outer(delta[b, t] ** 2, x[b, t] ** 2) for b in range(2) for t in range(5))
    kfac = sum(
        torch.outer((delta[b, :n] ** 2).sum(0), (x[b, :n] ** 2).sum(0)) / n for b, n in ((0, 5), (1, 3))
    )
    per_example = sum((delta[b].T @ x[b]) ** 2 for b in range(2))
    for name, expected in (
        ("per_token", per_token),
        ("kfac", kfac),
        ("per_example", per_example),
        ("batch", grad * grad),
    ):
        torch.testing.assert_close(fisher_term(name, grad, [x, delta], mask), expected)
    # a tensor outside a linear layer falls back to the squared gradient
    torch.testing.assert_close(fisher_term("kfac", grad, None, mask), grad * grad)
    with pytest.raises(ValueError, match="fisher_estimator must be one of"):
        fisher_term("diag", grad, [x, delta], mask)


@pytest.mark.parametrize("estimator", ["per_example", "per_token", "kfac"])
def test_hook_fisher_does_not_depend_on_the_micro_batch_size(estimator):
    """Rows of different lengths and prompt lengths, padded: micro-batches of 4 give the gradient and Fisher
    sums of micro-batch 1 (per-example losses and the padding mask are what make this hold)."""
    model = tiny_llama()
    g = torch.Generator().manual_seed(5)
    rows = []
    for i in range(8):
        n = 6 + i % 4
        ids = torch.randint(0, VOCAB, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (1 + i % 3) + ids[1 + i % 3 :]})

    def pad(batch_rows):
        width = max(len(r["input_ids"]) for r in batch_rows)
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for r in batch_rows:
            extra = width - len(r["input_ids"])
            out["input_ids"].append(r["input_ids"] + [0] * extra)
            out["attention_mask"].append([1] * len(r["input_ids"]) + [0] * extra)
            out["labels"].append(r["labels"] + [-100] * extra)
        return {k: torch.tensor(v) for k, v in out.items()}

    def gradient_and_fisher_sums(batch_size):
        probe = make_probe(
            model, rows, [np.arange(8)], [rows], fisher_batch_size=batch_size, fisher_estimator=estimator
        )
        probe.collate = pad
        sums, squares, count, num_rows = probe._grad_sums(rows, squares=True)
        assert num_rows == 8 and count == 8 // batch_size
        return sums + squares

    for one, four in zip(gradient_and_fisher_sums(1), gradient_and_fisher_sums(4), strict=True):
        torch.testing.assert_close(four, one, rtol=1e-4, atol=1e-4 * one.abs().max().item())


@pytest.mark.distributed
def test_sharded_probe_on_two_ranks_matches_one_process(tmp_path):
    """ZeRO-3's sharded mode (coordinate slices, lockstep passes) and the replicated mode under torchrun x2
    give the single-process numbers."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "probe.json"
    worker = Path(__file__).with_name("probe_worker.py")
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", str(worker), str(out)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    got = json.loads(out.read_text())
    single = probe_case()
    expected_impact, expected_losses = single.impact(1), single.task_losses()
    for name in ("sharded", "replicated"):
        np.testing.assert_allclose(got[name]["impact"], expected_impact, rtol=1e-4, err_msg=name)
        np.testing.assert_allclose(got[name]["losses"], expected_losses, rtol=1e-5, err_msg=name)
    projected = probe_case(projection_dim=4096, fisher_estimator="per_token").impact(1)
    np.testing.assert_allclose(got["sharded_projected_per_token"]["impact"], projected, rtol=1e-4)
    identity = probe_case(metric="inner_product").impact(1)
    np.testing.assert_allclose(got["sharded_identity"]["impact"], identity, rtol=1e-4)
    # the domains' Gram matrix (`pool_cosine`): partial Grams of the shards, or whole vectors summed
    for name, settings in (
        ("sharded", {}),
        ("replicated", {}),
        ("sharded_identity", {"metric": "inner_product"}),
        ("sharded_projected_per_token", {"projection_dim": 4096, "fisher_estimator": "per_token"}),
    ):
        gram = probe_case(**settings).impact_terms(1, gram=True).domain_gram
        np.testing.assert_allclose(got[name]["gram"], gram, rtol=1e-4, err_msg=name)
    import llamafactory_dids.runtime.probe as probe_module

    exact_bytes = probe_module.GRAM_EXACT_BYTES
    probe_module.GRAM_EXACT_BYTES = 0
    try:
        sketched = probe_case(metric="inner_product").impact_terms(1, gram=True).domain_gram
    finally:
        probe_module.GRAM_EXACT_BYTES = exact_bytes
    np.testing.assert_allclose(got["sharded_gram_sketch"]["gram"], sketched, rtol=1e-4)


def test_per_example_hook_fisher_is_the_exact_fisher_from_batched_passes():
    """`per_example` at micro-batch 4 gives the impacts of the exact per-example Fisher (`batch` at 1)."""
    model = tiny_llama()
    train = make_rows(40, seed=1)
    pools = [np.arange(i * 10, (i + 1) * 10) for i in range(4)]
    tasks = [make_rows(8, seed=2), make_rows(8, seed=3)]
    exact = make_probe(model, train, pools, tasks, probe_samples=8).impact(1)
    batched = make_probe(
        model, train, pools, tasks, probe_samples=8, fisher_batch_size=4, fisher_estimator="per_example"
    ).impact(1)
    np.testing.assert_allclose(batched, exact, rtol=1e-4)


def test_loss_only_probe_needs_no_trainable_probed_layer():
    """Static strategies observing task losses: forward passes only, even with every parameter frozen."""
    model = tiny_llama()
    train, tasks = make_rows(10, seed=1), [make_rows(5, seed=2)]
    expected = make_probe(model, train, [np.arange(10)], tasks).task_losses()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="No trainable matrix"):
        make_probe(model, train, [np.arange(10)], tasks)
    probe = make_probe(model, train, [np.arange(10)], tasks, gradients=False)
    assert probe.params == [] and not probe.sharded
    np.testing.assert_allclose(probe.task_losses(), expected)
