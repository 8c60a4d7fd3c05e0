"""Train-side domain gradients (`dids_domain_gradients: train`) against brute-force per-row gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_probe import VOCAB, collate, make_probe, make_rows, tiny_llama

from llamafactory_dids.algorithms.impact import exact_impact
from llamafactory_dids.integration.loss import install_loss_recorder
from llamafactory_dids.runtime.domain_gradients import DomainGradientHooks

LENGTH = 10


def padded_rows(n: int, seed: int, domains: int) -> list[dict]:
    """Rows of uneven length (right padding, labels -100 there), prompts unsupervised, domains cycling."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for r in range(n):
        size = int(torch.randint(5, LENGTH + 1, (1,), generator=g))
        ids = torch.randint(0, VOCAB, (size,), generator=g).tolist()
        pad = LENGTH - size
        rows.append(
            {
                "input_ids": ids + [0] * pad,
                "attention_mask": [1] * size + [0] * pad,
                "labels": [-100] * 2 + ids[2:] + [-100] * pad,
                "domain_ids": (r * 7 + r // 3) % domains,
            }
        )
    return rows


def row_gradients(model, params, rows) -> np.ndarray:
    """[rows, P] each row's own mean-token-loss gradient, one backward per row (the reference)."""
    out = []
    for row in rows:
        loss = model(**collate([row])).loss
        out.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]).double().numpy())
    return np.stack(out)


def train_steps(model, hooks, batches, *, scales, num_items=None):
    """Backpropagate each micro-batch's loss times a scale (gradient accumulation, a loss scaler), as the
    trainer would; the hooks read along."""
    for rows, scale in zip(batches, scales, strict=True):
        batch = collate(rows)
        if hooks is not None:
            hooks.begin_batch(torch.tensor([r["domain_ids"] for r in rows]), batch["labels"])
        kwargs = {} if num_items is None else {"num_items_in_batch": num_items}
        loss = model(**batch, **kwargs).loss
        (loss * scale).backward()
        if hooks is not None:
            hooks.end_batch()


def hooked(model, domains: int, layers_fraction: float = 0.5) -> tuple[DomainGradientHooks, list]:
    probe_params = make_probe(model, [], [np.arange(0)] * domains, [], layers_fraction=layers_fraction).params
    hooks = DomainGradientHooks(
        model, probe_params, domains, [tuple(p.shape) for _, p in probe_params], torch.device("cpu")
    )
    recorder = install_loss_recorder(model)
    recorder.scale_sink = hooks.capture_scale
    return hooks, [p for _, p in probe_params]


def hook_means(hooks: DomainGradientHooks) -> np.ndarray:
    sums = np.stack(
        [torch.cat([s[d].flatten() for s in hooks.sums]).double().numpy() for d in range(hooks.num_domains)]
    )
    return sums / hooks.rows.numpy()[:, None]


@pytest.mark.parametrize(
    "checkpointing, num_items", [(None, None), ("reentrant", None), ("non_reentrant", 23)]
)
def test_domain_sums_equal_per_row_gradients_summed_by_domain(checkpointing, num_items):
    """Micro-batches that mix domains and padding, different loss scales per micro-batch (gradient
    accumulation, a loss scaler, `num_items_in_batch`), gradient checkpointing on or off: every domain's
    mean equals the mean of its rows' own gradients."""
    model = tiny_llama()
    rows = padded_rows(13, seed=5, domains=3)
    batches = [rows[0:4], rows[4:9], rows[9:13]]
    reference = row_gradients(
        model, [p for _, p in make_probe(model, [], [], [], layers_fraction=0.5).params], rows
    )
    expected = np.stack([reference[[r["domain_ids"] == d for r in rows]].mean(axis=0) for d in range(3)])
    if checkpointing is not None:
        model.gradient_checkpointing_enable({"use_reentrant": checkpointing == "reentrant"})
    model.train()
    hooks, _ = hooked(model, 3)
    train_steps(model, hooks, batches, scales=[0.5, 128.0, 1 / 3], num_items=num_items)
    np.testing.assert_array_equal(hooks.rows.numpy(), np.bincount([r["domain_ids"] for r in rows]))
    np.testing.assert_allclose(hook_means(hooks), expected, rtol=1e-4, atol=1e-7 * np.abs(expected).max())


def test_hooks_only_read_and_skip_eval_passes():
    """Parameters' gradients are bit-identical with and without the hooks; forwards in eval mode or with no
    open micro-batch add nothing."""
    rows = padded_rows(8, seed=6, domains=2)
    grads = []
    for with_hooks in (False, True):
        model = tiny_llama()
        hooks = hooked(model, 2)[0] if with_hooks else None
        train_steps(model, hooks, [rows[:4], rows[4:]], scales=[1.0, 1.0])
        grads.append([p.grad.clone() for p in model.parameters()])
        if with_hooks:
            before = [s.clone() for s in hooks.sums]
            hooks.end_batch()
            model(**collate(rows[:2])).loss.backward()  # no open micro-batch
            hooks.begin_batch(torch.tensor([0, 1]), collate(rows[:2])["labels"])
            model.eval()
            model(**collate(rows[:2])).loss.backward()  # eval mode: the probe's own passes
            for a, b in zip(before, hooks.sums, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_probe_takes_the_domain_side_from_the_hooks():
    """The impact with `domain_gradients="train"`: domains with trained rows use their hook means, a domain
    without one is probed as before; the hooks start a new interval after the update."""
    model = tiny_llama()
    train = padded_rows(30, seed=7, domains=2)  # rows of domains 0 and 1 only are trained
    pools = [np.flatnonzero([r["domain_ids"] == d for r in train]) for d in range(2)] + [np.arange(24, 30)]
    tasks = [make_rows(5, seed=2), make_rows(6, seed=3)]
    probe = make_probe(model, train, pools, tasks, domain_gradients="train")
    recorder = install_loss_recorder(model)
    recorder.scale_sink = probe.train_gradients.capture_scale
    params = [p for _, p in probe.params]
    trained = train[:12]
    train_steps(model, probe.train_gradients, [trained[:6], trained[6:]], scales=[1.0, 1.0])

    model.eval()
    task_grads = [row_gradients(model, params, rows[:4]) for rows in tasks]
    fisher = np.concatenate(task_grads).__pow__(2).mean(axis=0)
    per_row = row_gradients(model, params, trained)  # the parameters did not move: no optimizer step
    g_d = [per_row[[r["domain_ids"] == d for r in trained]].mean(axis=0) for d in range(2)]
    chosen = np.sort(np.random.default_rng([11, 2, 1, 2]).choice(pools[2], size=4, replace=False))
    g_d.append(row_gradients(model, params, [train[i] for i in chosen]).mean(axis=0))
    reference = exact_impact(np.stack(g_d), np.stack([g.mean(axis=0) for g in task_grads]), fisher)
    model.train()

    np.testing.assert_allclose(probe.impact(update_index=1), reference, rtol=1e-4, atol=1e-12)
    assert float(probe.train_gradients.rows.sum()) == 0.0
    assert all(float(s.abs().sum()) == 0.0 for s in probe.train_gradients.sums)


def test_interval_sums_survive_a_checkpoint(tmp_path):
    model = tiny_llama()
    hooks, _ = hooked(model, 3)
    rows = padded_rows(9, seed=8, domains=3)
    train_steps(model, hooks, [rows[:5], rows[5:]], scales=[1.0, 0.5])
    hooks.save(str(tmp_path))
    restored, _ = hooked(tiny_llama(), 3)
    assert restored.load(str(tmp_path))
    for a, b in zip(hooks.sums, restored.sums, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(hooks.rows, restored.rows, rtol=0, atol=0)
    assert not restored.load(str(tmp_path / "missing"))  # a checkpoint written at an update: empty
    assert float(restored.rows.sum()) == 0.0
    other, _ = hooked(tiny_llama(), 3, layers_fraction=0.25)
    with pytest.raises(ValueError, match="other shapes than this run's probed layers"):
        other.load(str(tmp_path))


def test_probed_tensor_outside_a_linear_layer_is_refused():
    model = tiny_llama()
    params = [("model.embed_tokens.weight", model.model.embed_tokens.weight)]
    with pytest.raises(ValueError, match=r"not a linear layer's weight: \['model.embed_tokens.weight'\]"):
        DomainGradientHooks(model, params, 2, [tuple(params[0][1].shape)], torch.device("cpu"))


def test_sketched_sums_are_the_sketch_of_the_exact_sums_and_feed_the_cross_terms():
    """With `sketch_dim`, each domain's per-layer state is the sparse JL sketch of the exact sum (the sketch is
    linear), and the probe's cross terms are the sketches' inner products with the same sketch of M g_S;
    |g_S|_M^2 stays exact. Memory: k x layers x sketch_dim."""
    from llamafactory_dids.algorithms.impact import SparseJLProjection

    model = tiny_llama()
    train = padded_rows(24, seed=9, domains=3)
    pools = [np.flatnonzero([r["domain_ids"] == d for r in train]) for d in range(3)]
    tasks = [make_rows(5, seed=2), make_rows(6, seed=3)]
    probe = make_probe(model, train, pools, tasks, domain_gradients="train")
    exact = probe.train_gradients
    sketched = DomainGradientHooks(
        model, probe.params, 3, probe.shapes, torch.device("cpu"), sketch_dim=64, seed=11
    )
    assert [tuple(s.shape) for s in sketched.sums] == [(3, 64)] * len(probe.shapes)
    recorder = install_loss_recorder(model)
    recorder.scale_sink = lambda grad: (exact.capture_scale(grad), sketched.capture_scale(grad)) and None
    for rows in (train[:12], train[12:]):
        batch = collate(rows)
        domains = torch.tensor([r["domain_ids"] for r in rows])
        exact.begin_batch(domains, batch["labels"])
        sketched.begin_batch(domains, batch["labels"])
        model(**batch).loss.backward()
        exact.end_batch()
        sketched.end_batch()
    jl = SparseJLProjection(64, 11)
    for i, sums in enumerate(exact.sums):
        expected = jl.project_block(i, sums.flatten(1)).float()
        torch.testing.assert_close(
            sketched.sums[i], expected, rtol=1e-4, atol=1e-6 * expected.abs().max().item()
        )
    torch.testing.assert_close(sketched.rows, exact.rows)

    exact_sums = [s.clone() for s in exact.sums]
    exact_terms = probe.impact_terms(1)  # consumes (and resets) the exact sums
    probe.train_gradients = sketched
    got = probe.impact_terms(1, gram=True)
    # reference: per layer, <S g_D, S (F g_S)> with the task gradients and Fisher the exact probe used
    model.eval()
    params = [p for _, p in probe.params]
    task_grads = [row_gradients(model, params, r[:4]) for r in tasks]
    fisher = np.concatenate(task_grads).__pow__(2).mean(axis=0)
    weighted = np.stack([g.mean(axis=0) for g in task_grads]) * fisher
    sizes = [int(np.prod(shape)) for shape in probe.shapes]
    edges = np.cumsum([0, *sizes])
    counts = np.bincount([r["domain_ids"] for r in train], minlength=3)
    reference, gram = np.zeros((3, 2)), np.zeros((3, 3))
    for i in range(len(sizes)):
        h_task = jl.project_block(i, torch.from_numpy(weighted[:, edges[i] : edges[i + 1]])).numpy()
        h_domain = jl.project_block(i, exact_sums[i].flatten(1).double()).numpy() / counts[:, None]
        reference += h_domain @ h_task.T
        # the domains' Gram in the metric: each layer's sketches weighted by its mean Fisher
        gram += fisher[edges[i] : edges[i + 1]].mean() * h_domain @ h_domain.T
    np.testing.assert_allclose(got.cross, reference, rtol=1e-3, atol=1e-9 * np.abs(reference).max())
    np.testing.assert_allclose(got.domain_gram, gram, rtol=1e-3)
    np.testing.assert_allclose(np.diagonal(got.domain_gram), got.domain_sq, rtol=1e-12)
    np.testing.assert_allclose(got.task_sq, exact_terms.task_sq, rtol=1e-6)


def test_exact_sums_too_large_for_memory_ask_for_a_sketch(monkeypatch):
    from llamafactory_dids.runtime import domain_gradients

    model = tiny_llama()
    params = make_probe(model, [], [np.arange(0)] * 2, [], layers_fraction=0.5).params
    shapes = [tuple(p.shape) for _, p in params]
    monkeypatch.setattr(domain_gradients, "EXACT_BYTES_LIMIT", 1000)
    with pytest.raises(ValueError, match="dids_domain_sketch_dim"):
        DomainGradientHooks(model, params, 2, shapes, torch.device("cpu"))
    DomainGradientHooks(model, params, 2, shapes, torch.device("cpu"), sketch_dim=4)  # 2 x 8 x 4 floats
