"""Feature extractors of a repartition run: the proxy model turned into rows -> [rows, dim] features.

Role: integration layer between the loaded inputs and `algorithms.features` (paper section 4.1, eq. 5).
`build_extractor` loads the proxy (or the embedding model), selects the linear layers of the last
`dids_probe_layers_fraction` of its blocks, and fails with a clear message if the model has none. Extractors
batch rows sorted by length (less padding), right-pad them, and return features in row order; rows
without a loss (see `inputs`) get zero features.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..algorithms.features import (
    FactoredGradientFeatures,
    RademacherProjection,
    exact_gradient_features,
    last_block_matrices,
    linear_modules_for,
    mean_pooled_embeddings,
    response_token_fit,
    transformer_blocks,
)
from ..utils import IGNORE_INDEX
from .config import RepartitionConfig
from .inputs import Inputs, RepartitionInputError

logger = logging.getLogger(__name__)

PROXY_FIT_ROWS = 256  # rows scored by `GradientExtractor.proxy_fit` (a forward pass each, once per run)


def check_model_path(path: str, key: str) -> None:
    """Fail early on a model path that transformers cannot read."""
    if not (Path(path) / "config.json").is_file():
        raise RepartitionInputError(
            f"`{key}: {path}` is not a model directory (no config.json). Repartition loads local models only: "
            "point it at a directory saved with `save_pretrained`."
        )


class Extractor:
    """Callable rows -> [len(rows), dim] features (float32 numpy)."""

    def __init__(self, cfg: RepartitionConfig, inputs: Inputs, device: torch.device, pad_id: int):
        self.cfg, self.inputs, self.device, self.pad_id = cfg, inputs, device, pad_id
        self.usable = (
            inputs.trainable()
            if cfg.dids_features != "semantic"
            else np.array([bool(t) for t in inputs.texts])
        )
        self.dim = 0
        self.description: dict[str, Any] = {}

    def _batches(self, rows: list[int]) -> list[list[int]]:
        rows = [r for r in rows if self.usable[r]]
        rows.sort(key=lambda r: (-self._length(r), r))
        size = self.cfg.dids_batch_size
        return [rows[i : i + size] for i in range(0, len(rows), size)]

    def _length(self, row: int) -> int:
        return len(self.inputs.encoded[row][0])

    def _pad(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(self._length(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids, row_labels = self.inputs.encoded[r]
            ids[i, : len(input_ids)] = torch.tensor(input_ids)
            mask[i, : len(input_ids)] = 1
            labels[i, : len(input_ids)] = torch.tensor(row_labels)
        return ids.to(self.device), mask.to(self.device), labels.to(self.device)

    def compute(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, rows: list[int], progress: Any = None) -> np.ndarray:
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        position = {r: i for i, r in enumerate(rows)}
        for batch_rows in self._batches(list(rows)):
            feats = self.compute(self._pad(batch_rows)).detach().float().cpu().numpy()
            out[[position[r] for r in batch_rows]] = feats
            if progress is not None:
                progress.update(len(batch_rows))
        if progress is not None:
            progress.update(len(rows) - int(self.usable[list(rows)].sum()))
        return out


class GradientExtractor(Extractor):
    """`factored` (default) or `exact` per-example gradient features of the proxy."""

    def __init__(self, cfg: RepartitionConfig, inputs: Inputs, device: torch.device, model: Any, pad_id: int):
        super().__init__(cfg, inputs, device, pad_id)
        self.model = model
        named = last_block_matrices(model, transformer_blocks(model), cfg.dids_probe_layers_fraction)
        self.params = [p for _, p in named]
        self.dim = cfg.dids_projection_dim
        self.description = {
            "layers": [n for n, _ in named],
            "parameters": int(sum(p.numel() for p in self.params)),
        }
        if cfg.dids_features == "factored":
            try:
                linears = linear_modules_for(model, named)
            except ValueError as err:
                raise RepartitionInputError(str(err)) from err
            self.factored = FactoredGradientFeatures(
                model,
                linears,
                factor_dim=cfg.dids_factor_dim,
                proj_dim=cfg.dids_projection_dim,
                seed=cfg.dids_seed,
                topk_fraction=cfg.dids_topk_fraction,
                normalise_layers=cfg.dids_normalise_layers,
            )
            self.description["factored_dim"] = self.factored.kron.dim
        else:
            for p in self.params:
                p.requires_grad_(True)
            self.projection = RademacherProjection(
                self.description["parameters"], cfg.dids_projection_dim, cfg.dids_seed
            )

    def proxy_fit(self, limit: int = PROXY_FIT_ROWS) -> dict[str, float]:
        """`response_token_fit` of the proxy on up to `limit` rows with a loss, spread evenly over the data;
        logs it, with a warning when the proxy does not beat the unigram entropy of those tokens."""
        usable = np.flatnonzero(self.usable)
        if len(usable) > limit:
            usable = usable[np.linspace(0, len(usable) - 1, limit).round().astype(int)]
        fit = response_token_fit(self.model, (self._pad(rows) for rows in self._batches(usable.tolist())))
        fit["rows"] = len(usable)
        if fit["tokens"] and fit["loss"] >= fit["unigram_entropy"]:
            logger.warning(
                "[dids] the proxy %s predicts the response tokens no better than their frequencies (loss %.3f "
                "nats/token vs unigram entropy %.3f on %d rows): its gradients will barely separate kinds of "
                "text. Use a trained model of the target's family (the paper: a 500M one) as "
                "`model_name_or_path`.",
                self.cfg.model_name_or_path,
                fit["loss"],
                fit["unigram_entropy"],
                fit["rows"],
            )
        else:
            logger.info(
                "[dids] proxy fit on %d rows: loss %.3f nats/token, unigram entropy %.3f",
                fit["rows"],
                fit["loss"],
                fit["unigram_entropy"],
            )
        return fit

    def compute(self, batch):
        if self.cfg.dids_features == "factored":
            return self.factored(*batch)
        return exact_gradient_features(
            self.model,
            self.params,
            self.projection,
            *batch,
            topk_fraction=self.cfg.dids_topk_fraction,
            normalise_layers=self.cfg.dids_normalise_layers,
        )


class SemanticExtractor(Extractor):
    """Mean-pooled last hidden states of an embedding model over each row's plain text (DIDS-GC)."""

    def __init__(
        self, cfg: RepartitionConfig, inputs: Inputs, device: torch.device, model: Any, tokenizer: Any
    ):
        super().__init__(cfg, inputs, device, tokenizer.pad_token_id or 0)
        self.model, self.tokenizer = model, tokenizer
        self.dim = int(model.config.hidden_size)
        self.description = {"embedding_dim": self.dim}

    def _length(self, row: int) -> int:
        return len(self.inputs.texts[row])

    def _pad(self, rows):
        enc = self.tokenizer(
            [self.inputs.texts[r] for r in rows],
            truncation=True,
            max_length=self.cfg.cutoff_len,
            padding=True,
            return_tensors="pt",
        )
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device), None

    def compute(self, batch):
        return mean_pooled_embeddings(self.model, batch[0], batch[1])


def build_extractor(
    cfg: RepartitionConfig, inputs: Inputs, tokenizer: Any, device: torch.device
) -> Extractor:
    """Load the proxy (or embedding) model and wrap it; raises `RepartitionInputError` on unusable models."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    if cfg.dids_features == "semantic":
        path = cfg.dids_embedding_model or cfg.model_name_or_path
        model = AutoModel.from_pretrained(path, dtype=torch.float32, trust_remote_code=cfg.trust_remote_code)
        model.to(device).eval().requires_grad_(False)
        embed_tokenizer = tokenizer if path == cfg.model_name_or_path else AutoTokenizer.from_pretrained(path)
        if embed_tokenizer.pad_token is None:
            embed_tokenizer.pad_token = embed_tokenizer.eos_token or embed_tokenizer.unk_token
        embed_tokenizer.padding_side = "right"
        return SemanticExtractor(cfg, inputs, device, model, embed_tokenizer)
    model = AutoModelForCausalLM.from_pretrained(
        cfg.model_name_or_path, dtype=torch.float32, trust_remote_code=cfg.trust_remote_code
    )
    model.to(device).eval().requires_grad_(False)
    try:
        extractor = GradientExtractor(cfg, inputs, device, model, tokenizer.pad_token_id or 0)
    except ValueError as err:
        if isinstance(err, RepartitionInputError):
            raise
        raise RepartitionInputError(
            f"The proxy model {cfg.model_name_or_path} has no usable layers for `dids_probe_layers_fraction: "
            f"{cfg.dids_probe_layers_fraction}`: {err}"
        ) from err
    logger.info(
        "[dids] %s features over %d tensors (%d parameters) of %s",
        cfg.dids_features,
        len(extractor.params),
        extractor.description["parameters"],
        cfg.model_name_or_path,
    )
    return extractor
