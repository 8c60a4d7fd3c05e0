"""Gradient features against exact per-example gradients on a tiny Llama.

References: per-example `autograd.grad` calls on unpadded rows. The factored path must equal the explicit
Kronecker projection of those exact gradients (the math says they are the same linear map), with full-size orthogonal factors it preserves the
exact inner products, and its pairwise cosine similarities track the exact ones. Projections and top-k are checked against direct computations.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llamafactory_dids.algorithms.features import (
    FactoredGradientFeatures,
    RademacherProjection,
    exact_example_gradients,
    exact_gradient_features,
    example_losses,
    last_block_matrices,
    linear_modules_for,
    mean_pooled_embeddings,
    normalise_blocks,
    response_token_fit,
    row_losses,
    topk_sparsify,
    transformer_blocks,
)

VOCAB = 50


def tiny_llama(layers=3, hidden=16):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    model = LlamaForCausalLM(config).eval()
    model.requires_grad_(False)
    return model


def padded_batch(n, seed, min_len=5, max_len=12):
    """Right-padded rows of different lengths, prompt tokens masked, one row without supervision."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g).tolist()
    width = max(lengths)
    ids = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    labels = torch.full((n, width), -100)
    for i, length in enumerate(lengths):
        row = torch.randint(1, VOCAB, (length,), generator=g)
        ids[i, :length], mask[i, :length] = row, 1
        prompt = 2 + i % 3
        labels[i, prompt:length] = row[prompt:]
    labels[-1] = -100  # nothing supervised: a zero gradient, not NaN
    return ids, mask, labels


def selected(model, fraction=0.5):
    params = last_block_matrices(model, transformer_blocks(model), fraction)
    return params, [p for _, p in params]


def exact_grads(model, params, batch):
    for p in params:
        p.requires_grad_(True)
    try:
        return exact_example_gradients(model, params, *batch)
    finally:
        for p in params:
            p.requires_grad_(False)


def cosine_matrix(x):
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x @ x.T


def test_example_losses_match_the_models_own_loss():
    model = tiny_llama()
    ids, mask, labels = padded_batch(4, 0)
    losses = example_losses(model(input_ids=ids, attention_mask=mask).logits, labels)
    for i in range(3):
        keep = mask[i].bool()
        ref = model(input_ids=ids[i, keep][None], labels=labels[i, keep][None]).loss
        assert torch.allclose(losses[i], ref, atol=1e-5)
    assert losses[3] == 0


def test_row_losses_are_sums_and_counts_of_supervised_token_losses():
    """Reference: -log softmax of each supervised next token, summed by hand row by row."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 6, VOCAB, generator=g)
    labels = torch.randint(0, VOCAB, (3, 6), generator=g)
    labels[0, :3] = -100
    labels[2] = -100
    sums, counts = row_losses(logits, labels)
    log_probs = logits.log_softmax(-1)
    for i in range(3):
        positions = [t for t in range(1, 6) if labels[i, t] != -100]
        assert counts[i] == len(positions)
        reference = sum(-float(log_probs[i, t - 1, labels[i, t]]) for t in positions)
        assert float(sums[i]) == pytest.approx(reference, abs=1e-4)
    np.testing.assert_allclose(
        example_losses(logits, labels), [float(sums[0]) / 3, float(sums[1]) / 5, 0.0], rtol=1e-6
    )


def test_factored_features_equal_the_kronecker_projection_of_exact_gradients():
    model = tiny_llama()
    named, params = selected(model)
    batch = padded_batch(6, 1)
    exact = exact_grads(model, params, batch)  # [6, h]
    feats = FactoredGradientFeatures(
        model, linear_modules_for(model, named), factor_dim=4, proj_dim=32, seed=3
    )
    blocks = feats.block_features(*batch)
    sizes = [p.numel() for p in params]
    reference = torch.cat(
        [g @ feats.kron.kron_matrix(i).T for i, g in enumerate(exact.split(sizes, dim=1))], dim=1
    )
    assert torch.allclose(blocks, reference, atol=1e-5, rtol=1e-4)
    assert torch.allclose(feats(*batch), feats.jl.project([reference]).float(), atol=1e-5, rtol=1e-4)
    assert torch.all(blocks[-1] == 0)


def test_normalised_layers_give_every_matrix_unit_norm_before_the_projection():
    model = tiny_llama()
    named, params = selected(model)
    batch = padded_batch(6, 1)
    exact = exact_grads(model, params, batch)
    sizes = [p.numel() for p in params]
    # the reference: each matrix's exact gradient divided by its own norm, row by row (a zero row stays zero)
    unit = torch.cat(
        [
            g / torch.where(g.norm(dim=1, keepdim=True) > 0, g.norm(dim=1, keepdim=True), 1.0)
            for g in exact.split(sizes, 1)
        ],
        1,
    )
    projection = RademacherProjection(exact.shape[1], 16, seed=9)
    for p in params:
        p.requires_grad_(True)
    got = exact_gradient_features(model, params, projection, *batch, normalise_layers=True)
    assert torch.allclose(got, unit @ projection.matrix(), atol=1e-5)
    for p in params:
        p.requires_grad_(False)
    feats = FactoredGradientFeatures(
        model, linear_modules_for(model, named), factor_dim=4, proj_dim=32, seed=3, normalise_layers=True
    )
    blocks = feats.block_features(*batch).split(feats.kron.block_dims, 1)
    reference = torch.cat([b / b.norm(dim=1, keepdim=True).clamp_min(1e-30) for b in blocks], 1)
    assert torch.allclose(feats(*batch), feats.jl.project([reference]).float(), atol=1e-5, rtol=1e-4)
    assert torch.all(feats(*batch)[-1] == 0)  # the row without a supervised token
    # scaling one matrix's gradient (here: its block) changes nothing once each matrix is normalised
    scaled = list(feats.block_features(*batch).split(feats.kron.block_dims, 1))
    scaled[0] = scaled[0] * 50.0
    assert torch.allclose(
        normalise_blocks(torch.cat(scaled, 1), feats.kron.block_dims), reference, atol=1e-6, rtol=1e-5
    )


def two_kinds_batch(n, seed, length=14):
    """Rows alternating between two token ranges, so gradient cosines really vary."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack(
        [torch.randint(*((1, 25) if i % 2 == 0 else (25, VOCAB)), (length,), generator=g) for i in range(n)]
    )
    labels = ids.clone()
    labels[:, :4] = -100
    return ids, torch.ones_like(ids), labels


def test_full_size_factors_preserve_exact_inner_products():
    model = tiny_llama(layers=2, hidden=32)
    named, params = selected(model, fraction=1.0)
    batch = two_kinds_batch(8, 3)
    exact = exact_grads(model, params, batch)
    feats = FactoredGradientFeatures(
        model, linear_modules_for(model, named), factor_dim=64, proj_dim=8, seed=0
    )
    blocks = feats.block_features(*batch)  # orthogonal square factors: an isometry per layer
    assert torch.allclose(blocks @ blocks.T, exact @ exact.T, rtol=1e-4, atol=1e-9)


def test_factored_similarities_track_exact_ones_like_a_dense_projection():
    model = tiny_llama(layers=2, hidden=32)
    named, params = selected(model, fraction=1.0)
    batch = two_kinds_batch(24, 4)
    exact = exact_grads(model, params, batch)
    iu = np.triu_indices(len(exact), 1)

    def fidelity(features):
        return np.corrcoef(cosine_matrix(exact).numpy()[iu], cosine_matrix(features).numpy()[iu])[0, 1]

    dense = fidelity(RademacherProjection(exact.shape[1], 1024, seed=5)(exact))
    factored = fidelity(
        FactoredGradientFeatures(
            model, linear_modules_for(model, named), factor_dim=32, proj_dim=1024, seed=5
        )(*batch)
    )
    assert dense > 0.85 and factored > dense - 0.05, (dense, factored)


def test_exact_features_are_the_dense_projection_of_topk_gradients():
    model = tiny_llama()
    named, params = selected(model)
    batch = padded_batch(4, 6)
    exact = exact_grads(model, params, batch)
    projection = RademacherProjection(exact.shape[1], 16, seed=9)
    for p in params:
        p.requires_grad_(True)
    feats = exact_gradient_features(model, params, projection, *batch, topk_fraction=0.1)
    k = math.ceil(0.1 * exact.shape[1])
    sparse = torch.zeros_like(exact)
    for i, row in enumerate(exact):
        top = row.abs().argsort(descending=True)[:k]
        sparse[i, top] = row[top]
    assert torch.allclose(feats, sparse @ projection.matrix(), atol=1e-6)


def test_factored_topk_projects_the_sparsified_exact_gradients():
    model = tiny_llama()
    named, params = selected(model)
    batch = padded_batch(4, 7)
    exact = exact_grads(model, params, batch)
    feats = FactoredGradientFeatures(
        model, linear_modules_for(model, named), factor_dim=4, proj_dim=16, seed=1, topk_fraction=0.2
    )
    sparse = topk_sparsify(exact, 0.2)
    sizes = [p.numel() for p in params]
    reference = torch.cat([g @ feats.kron.kron_matrix(i).T for i, g in enumerate(sparse.split(sizes, 1))], 1)
    assert torch.allclose(feats.block_features(*batch), reference, atol=1e-5, rtol=1e-4)


def test_rademacher_projection_is_seeded_chunked_and_norm_preserving():
    big = RademacherProjection(RademacherProjection.CHUNK + 100, 64, seed=2, cache_bytes=0)
    cached = RademacherProjection(RademacherProjection.CHUNK + 100, 64, seed=2)
    x = torch.randn(3, big.in_dim)
    assert torch.allclose(big(x), cached(x), atol=1e-4)
    assert torch.allclose(big(x), x @ cached.matrix(), atol=1e-4)
    assert set(torch.unique(cached.matrix() * 8).tolist()) == {-1.0, 1.0}
    many = RademacherProjection(200, 4096, seed=0)
    v = torch.randn(1, 200)
    assert abs(many(v).norm() / v.norm() - 1) < 0.05


def test_topk_keeps_largest_magnitudes():
    x = torch.tensor([[3.0, -5.0, 1.0, 0.5], [0.1, 0.2, -0.3, 0.0]])
    assert torch.equal(topk_sparsify(x, 0.5), torch.tensor([[3.0, -5.0, 0.0, 0.0], [0.0, 0.2, -0.3, 0.0]]))
    assert torch.equal(topk_sparsify(x, 0.0), x)


def test_factored_path_refuses_non_linear_matrices():
    model = tiny_llama()
    with pytest.raises(ValueError, match="dids_features: exact"):
        linear_modules_for(model, [("model.embed_tokens.weight", model.model.embed_tokens.weight)])


def test_mean_pooled_embeddings_ignore_padding():
    model = tiny_llama()
    ids, mask, _ = padded_batch(3, 8)
    emb = mean_pooled_embeddings(model, ids, mask)
    keep = mask[0].bool()
    alone = mean_pooled_embeddings(model, ids[0, keep][None], mask[0, keep][None])
    assert torch.allclose(emb[0], alone[0], atol=1e-5)


def test_response_token_fit_matches_a_per_token_loop():
    model = tiny_llama()
    batches = [padded_batch(5, seed=1), padded_batch(3, seed=2)]
    losses, targets = [], []
    for ids, mask, labels in batches:
        for i in range(len(ids)):
            n = int(mask[i].sum())  # unpadded row, one position at a time
            logits = model(input_ids=ids[i : i + 1, :n]).logits[0]
            for t in range(1, n):
                if labels[i, t] != -100:
                    target = int(labels[i, t])
                    losses.append(-float(torch.log_softmax(logits[t - 1].double(), -1)[target]))
                    targets.append(target)
    counts = np.bincount(targets)
    p = counts[counts > 0] / len(targets)
    fit = response_token_fit(model, batches)
    assert fit["tokens"] == len(targets)
    assert fit["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert fit["unigram_entropy"] == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-12)


class UnigramModel(torch.nn.Module):
    """Logits = log of fixed token frequencies at every position, whatever the context."""

    def __init__(self, probs):
        super().__init__()
        self.log_probs = torch.log(probs)

    def forward(self, input_ids, attention_mask=None):
        logits = self.log_probs.expand(*input_ids.shape, -1)
        return type("Out", (), {"logits": logits})()


def test_a_unigram_model_of_the_tokens_scores_their_entropy_and_nothing_beats_it_without_context():
    batches = [padded_batch(6, seed=3), padded_batch(4, seed=4)]
    targets = torch.cat([b[2][:, 1:][b[2][:, 1:] != -100] for b in batches])
    freq = torch.bincount(targets, minlength=VOCAB).double()
    fitted = response_token_fit(UnigramModel(freq / freq.sum()), batches)
    assert fitted["loss"] == pytest.approx(fitted["unigram_entropy"], rel=1e-6)  # float32 logits
    # any other context-free distribution does worse (Gibbs' inequality)
    other = response_token_fit(UnigramModel(torch.full((VOCAB,), 1.0 / VOCAB, dtype=torch.double)), batches)
    assert other["loss"] > fitted["unigram_entropy"] + 0.1
    empty = [(b[0], b[1], torch.full_like(b[2], -100)) for b in batches]
    assert response_token_fit(UnigramModel(freq / freq.sum()), empty)["tokens"] == 0
