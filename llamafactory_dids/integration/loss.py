"""Per-row causal-LM loss at no extra pass: a drop-in for transformers' `ForCausalLMLoss`.

Role: integration layer (it replaces a `PreTrainedModel`'s `loss_function`, a host touchpoint listed in
`integration.patch`). `RecordingCausalLMLoss` computes the same token losses as transformers' loss with
`reduction="none"`, returns the identical reduced loss and keeps the per-row sums and token counts of the
micro-batch it was armed for; the trainer reads them to log per-domain loss. With `scale_sink` set, the
per-token losses of a loss that is backpropagated get that tensor hook: it receives d loss / d loss_t, the
factor that train-side domain gradients divide out (`runtime.domain_gradients`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from ..utils import IGNORE_INDEX


class RecordingCausalLMLoss:
    """Drop-in for transformers' `ForCausalLMLoss` that also keeps per-row loss sums and token counts."""

    def __init__(self) -> None:
        self.armed = False
        self.row_loss: torch.Tensor | None = None
        self.row_tokens: torch.Tensor | None = None
        self.scale_sink: Callable[[torch.Tensor], None] | None = None

    def __call__(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        vocab_size: int,
        num_items_in_batch: torch.Tensor | int | None = None,
        ignore_index: int = IGNORE_INDEX,
        shift_labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        logits = logits.float()
        if shift_labels is None:
            shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:].contiguous()
        rows = shift_labels.shape[0]
        flat_labels = shift_labels.reshape(-1).to(logits.device)
        token_loss = F.cross_entropy(
            logits.view(-1, vocab_size), flat_labels, ignore_index=ignore_index, reduction="none"
        )
        mask = flat_labels != ignore_index
        if self.scale_sink is not None and token_loss.requires_grad:
            token_loss.register_hook(self.scale_sink)
        if self.armed:
            self.row_loss = token_loss.detach().view(rows, -1).sum(dim=1)
            self.row_tokens = mask.view(rows, -1).sum(dim=1)
            self.armed = False
        if num_items_in_batch is None:
            return token_loss.sum() / mask.sum()
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(token_loss.device)
        return token_loss.sum() / num_items_in_batch

    def take(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        out = (self.row_loss, self.row_tokens)
        self.row_loss = self.row_tokens = None
        self.armed = False
        return out


def install_loss_recorder(model: torch.nn.Module) -> RecordingCausalLMLoss | None:
    """Put a `RecordingCausalLMLoss` on the first causal-LM `PreTrainedModel` inside `model`."""
    from transformers.loss.loss_utils import LOSS_MAPPING

    for module in model.modules():
        if isinstance(module, PreTrainedModel) and module.loss_function is LOSS_MAPPING["ForCausalLM"]:
            recorder = RecordingCausalLMLoss()
            module.loss_function = recorder
            return recorder
    return None
