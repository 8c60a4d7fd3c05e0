"""`run_repartition`: gradient-based domain repartition end to end (paper section 4.1, Algorithm 1 line 2).

Role: the recipe of the repartition step: config -> inputs (checked) -> proxy model (checked) -> feature
shards (cached, resumable, data-parallel) -> spherical k-means inside each source -> output files (with the
domains' agreement with a known label column, when one is named).
Under torchrun every rank loads the inputs and the proxy, computes its share of shards, and rank 0
clusters and writes the outputs after a barrier.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..algorithms.clustering import (
    cluster_statistics,
    label_width,
    order_by_first_row,
    resolve_clusterer,
    spherical_kmeans,
)
from ..integration import host_data
from ..integration.patch import check_host_versions
from ..utils import rank_and_world
from .cache import FeatureCache
from .config import RepartitionConfig, parse_repartition_config
from .extract import Extractor, GradientExtractor, build_extractor, check_model_path
from .inputs import Inputs, data_arguments, load_inputs
from .outputs import build_domain_map, write_dataset, write_reports
from .quality import label_agreement

logger = logging.getLogger(__name__)


def _distributed() -> tuple[int, int, torch.device, bool]:
    """(rank, world, device, whether this call created the process group)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    created = False
    if world > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=timedelta(hours=12))
        created = True
    rank, world = rank_and_world()
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return rank, world, device, created


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def tokenizer_and_template(cfg: RepartitionConfig) -> tuple[Any, Any]:
    """The proxy's tokenizer and the run's chat template, as LLaMA-Factory's training builds them."""
    return host_data.tokenizer_and_template(
        cfg.model_name_or_path, cfg.trust_remote_code, data_arguments(cfg)
    )


def _fingerprint(cfg: RepartitionConfig, inputs: Inputs, extractor: Extractor) -> dict[str, Any]:
    model = cfg.dids_embedding_model or cfg.model_name_or_path
    config_path = Path(model) / "config.json"
    return {
        "features": cfg.dids_features,
        "model": str(Path(model).resolve()),
        "model_config_sha256": hashlib.sha256(config_path.read_bytes()).hexdigest(),
        "proj_dim": cfg.dids_projection_dim,
        "factor_dim": cfg.dids_factor_dim,
        "normalise_layers": cfg.dids_normalise_layers,
        "layers_fraction": cfg.dids_probe_layers_fraction,
        "topk_fraction": cfg.dids_topk_fraction,
        "batch_size": cfg.dids_batch_size,
        "seed": cfg.dids_seed,
        "tokens_sha256": inputs.token_digest(),
    }


def _extract(cache: FeatureCache, extractor: Extractor, rank: int, world: int) -> None:
    from tqdm.auto import tqdm

    mine = list(cache.shards_of(rank, world))
    todo = [s for s in mine if not cache.done(s)]
    total = sum(cache.bounds(s)[1] - cache.bounds(s)[0] for s in mine)
    cached = total - sum(cache.bounds(s)[1] - cache.bounds(s)[0] for s in todo)
    desc = "features" if world == 1 else f"features (rank 0 of {world}; each rank a share)"
    with tqdm(
        total=total, initial=cached, unit="ex", desc=desc, disable=rank != 0, dynamic_ncols=True
    ) as bar:
        for shard in todo:
            start, end = cache.bounds(shard)
            cache.save(shard, extractor(list(range(start, end)), progress=bar))


def _cluster(
    cfg: RepartitionConfig, inputs: Inputs, features: np.ndarray, usable: np.ndarray
) -> tuple[list[str], list[int], np.ndarray, list[dict[str, Any]]]:
    """k-means inside each source; returns domain names, their source, [n] domain of each row, stats."""
    backend = resolve_clusterer(cfg.dids_clusterer)
    names: list[str] = []
    domain_source: list[int] = []
    stats: list[dict[str, Any]] = []
    row_domain = np.full(inputs.num_rows, -1, dtype=np.int64)
    for s, source in enumerate(inputs.source_names):
        rows = np.flatnonzero(inputs.sources == s)
        fit_rows = rows[usable[rows]]
        k = inputs.domains_per_source[s]
        labels, centroids = spherical_kmeans(
            features[fit_rows],
            k,
            seed=cfg.dids_seed + 7919 * s,
            backend=backend,
            max_points_per_centroid=cfg.dids_max_points_per_centroid,
            n_init=cfg.dids_kmeans_n_init,
        )
        labels, old_ids = order_by_first_row(labels)
        centroids = centroids[old_ids]
        if len(old_ids) < k:
            logger.warning(
                "[dids] source %r: %d of %d clusters ended up empty and are dropped",
                source,
                k - len(old_ids),
                k,
            )
        offset = len(names)
        width = label_width(len(old_ids))
        names += [f"{source}_{j:0{width}d}" for j in range(len(old_ids))]
        domain_source += [s] * len(old_ids)
        stats += cluster_statistics(features[fit_rows], labels, centroids)
        row_domain[fit_rows] = offset + labels
        largest = offset + int(np.argmax(np.bincount(labels)))
        row_domain[rows[~usable[rows]]] = largest
    return names, domain_source, row_domain, stats


def _checked_config(config: Mapping[str, Any] | RepartitionConfig) -> RepartitionConfig:
    """The validated config, with the host versions, model paths and clusterer checked before anything loads."""
    check_host_versions(disable_hint=False)  # the LLaMA-Factory calls below rely on its internals
    cfg = config if isinstance(config, RepartitionConfig) else parse_repartition_config(config)
    check_model_path(cfg.model_name_or_path, "model_name_or_path")
    if cfg.dids_embedding_model:
        check_model_path(cfg.dids_embedding_model, "dids_embedding_model")
    resolve_clusterer(cfg.dids_clusterer)
    return cfg


def _prepare_output(out: Path, extractor: Extractor, cache: FeatureCache) -> dict[str, Any] | None:
    """Rank 0 before extraction: the proxy's fit (gradient features only), the output directory and the
    resumable cache; returns the fit."""
    fit = None
    if isinstance(extractor, GradientExtractor):
        fit = extractor.proxy_fit()
    out.mkdir(parents=True, exist_ok=True)
    finished = cache.prepare()
    if finished:
        logger.info("[dids] resuming: %d of %d feature shards already cached", finished, cache.num_shards)
    return fit


def _run_record(cfg: RepartitionConfig, extractor: Extractor, fit: dict[str, Any] | None) -> dict[str, Any]:
    """The `run` entry of the domain map: how the features were made."""
    run = {
        "features": cfg.dids_features,
        "feature_dim": extractor.dim,
        "model": cfg.dids_embedding_model or cfg.model_name_or_path,
        "clusterer": resolve_clusterer(cfg.dids_clusterer),
        "seed": cfg.dids_seed,
        "rows_without_loss": int((~extractor.usable).sum()),
        "config": cfg.to_dict(),
        **extractor.description,
    }
    if fit is not None:
        run["proxy_fit"] = {
            "rows": fit["rows"],
            "tokens": fit["tokens"],
            "loss": round(fit["loss"], 4),
            "unigram_entropy": round(fit["unigram_entropy"], 4),
        }
    return run


def _cluster_and_write(
    cfg: RepartitionConfig,
    out: Path,
    inputs: Inputs,
    extractor: Extractor,
    cache: FeatureCache,
    fit: dict[str, Any] | None,
) -> None:
    """Rank 0 after extraction: cluster the cached features and write the dataset, domain map and reports."""
    features = cache.load()
    names, domain_source, row_domain, stats = _cluster(cfg, inputs, features, extractor.usable)
    write_dataset(out, inputs, names, row_domain)
    run = _run_record(cfg, extractor, fit)
    agreement = None
    if inputs.labels is not None:
        agreement = {
            "column": cfg.dids_label_column,
            **label_agreement(inputs.labels, row_domain, names, inputs.sources),
        }
    domain_map = build_domain_map(inputs, names, domain_source, row_domain, stats, run, agreement)
    write_reports(out, inputs, domain_map)
    logger.info("[dids] %d rows -> %d domains in %s", inputs.num_rows, len(names), out)


def run_repartition(config: Mapping[str, Any] | RepartitionConfig) -> Path:
    """Repartition the datasets of `config` into gradient (or semantic) domains; return `output_dir`.

    Raises:
        HostVersionError: llamafactory or transformers outside the supported versions, before anything loads.
        RepartitionConfigError: invalid keys (all reported at once).
        RepartitionInputError: unusable data or model, found before features are computed.
    """
    cfg = _checked_config(config)
    rank, world, device, created = _distributed()
    try:
        torch.manual_seed(cfg.dids_seed)
        out = Path(cfg.output_dir)
        tokenizer, template = tokenizer_and_template(cfg)
        inputs = load_inputs(cfg, tokenizer, template)
        extractor = build_extractor(cfg, inputs, tokenizer, device)
        cache = FeatureCache(
            out / "features",
            _fingerprint(cfg, inputs, extractor),
            inputs.num_rows,
            cfg.dids_shard_size,
            extractor.dim,
        )
        fit = _prepare_output(out, extractor, cache) if rank == 0 else None
        _barrier(world)
        _extract(cache, extractor, rank, world)
        _barrier(world)
        if rank != 0:
            return out
        _cluster_and_write(cfg, out, inputs, extractor, cache, fit)
        return out
    finally:
        if created:
            dist.destroy_process_group()
