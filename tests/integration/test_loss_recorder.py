"""The per-domain loss hook returns exactly transformers' causal-LM loss and the right per-row sums."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.loss.loss_utils import ForCausalLMLoss

from llamafactory_dids.integration.loss import RecordingCausalLMLoss, install_loss_recorder


def _batch(seed=0, rows=3, length=7, vocab=11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, length, vocab, generator=g)
    labels = torch.randint(0, vocab, (rows, length), generator=g)
    labels[0, :3] = -100  # prompt tokens
    labels[2, 5:] = -100  # padding
    return logits, labels, vocab


@pytest.mark.parametrize("num_items", [None, 13, torch.tensor(13)])
def test_same_loss_as_transformers(num_items):
    logits, labels, vocab = _batch()
    recorder = RecordingCausalLMLoss()
    recorder.armed = True
    ours = recorder(logits, labels, vocab, num_items_in_batch=num_items)
    theirs = ForCausalLMLoss(logits, labels, vocab, num_items_in_batch=num_items)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_row_sums_match_a_naive_loop():
    logits, labels, vocab = _batch(seed=1)
    recorder = RecordingCausalLMLoss()
    recorder.armed = True
    recorder(logits, labels, vocab)
    row_loss, row_tokens = recorder.take()
    for r in range(labels.shape[0]):
        total, count = 0.0, 0
        for t in range(labels.shape[1] - 1):
            target = labels[r, t + 1].item()
            if target != -100:
                total += -F.log_softmax(logits[r, t], dim=-1)[target].item()
                count += 1
        assert row_tokens[r].item() == count
        assert row_loss[r].item() == pytest.approx(total, rel=1e-5)
    assert recorder.take() == (None, None)  # taken once


def test_unarmed_recorder_keeps_nothing_and_gradients_flow():
    logits, labels, vocab = _batch(seed=2)
    logits.requires_grad_(True)
    recorder = RecordingCausalLMLoss()
    loss = recorder(logits, labels, vocab)
    loss.backward()
    assert recorder.row_loss is None and logits.grad is not None and logits.grad.abs().sum() > 0


def test_installed_on_a_llama_gives_the_stock_loss():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, 50, (2, 9))
    stock = model(input_ids=ids, labels=ids).loss
    recorder = install_loss_recorder(model)
    assert recorder is not None and model.loss_function is recorder
    recorder.armed = True
    hooked = model(input_ids=ids, labels=ids).loss
    torch.testing.assert_close(hooked, stock)
    row_loss, row_tokens = recorder.take()
    assert row_tokens.tolist() == [8, 8]
    torch.testing.assert_close(row_loss.sum() / row_tokens.sum(), stock.detach())
