"""On-disk feature cache of a repartition run: fixed shards of rows, written atomically, resumable.

Role: the scale side of repartition (paper section 7 names the cost of gradient clustering as DIDS's main
limit). Rows are cut into shards of `shard_size` consecutive rows; each shard's [rows, dim] float32
features go to `features/shard_NNNNN.npy` through a temporary file and an atomic rename, so a shard file
exists only when complete. An interrupted run skips finished shards. Shards are also the unit of data
parallelism: rank r computes shards r, r + world, ... Because a shard is always computed the same way
(same rows, same batches), resuming or changing the number of ranks gives bit-identical features.
`manifest.json` records a fingerprint of everything the features depend on; a mismatch is an error
rather than a silent mix of old and new shards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..run_files import FEATURE_CACHE_MANIFEST
from ..run_files import FEATURE_CACHE_VERSION as SCHEMA_VERSION
from ..utils import atomic_write, write_text_atomic


class FeatureCache:
    """Shards of features for `num_rows` rows under `root`."""

    def __init__(self, root: Path, fingerprint: dict[str, Any], num_rows: int, shard_size: int, dim: int):
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.num_rows, self.shard_size, self.dim = num_rows, shard_size, dim

    @property
    def num_shards(self) -> int:
        return -(-self.num_rows // self.shard_size)

    def bounds(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.num_rows)

    def path(self, shard: int) -> Path:
        return self.root / f"shard_{shard:05d}.npy"

    def done(self, shard: int) -> bool:
        return self.path(shard).is_file()

    def shards_of(self, rank: int, world: int) -> Iterator[int]:
        return iter(range(rank, self.num_shards, world))

    def prepare(self) -> int:
        """Create the folder and manifest, or check an existing one; return the number of finished shards.

        Raises:
            ValueError: if the folder holds features computed with other settings or data.
        """
        manifest = self.root / FEATURE_CACHE_MANIFEST
        expected = {
            "schema_version": SCHEMA_VERSION,
            "fingerprint": self.fingerprint,
            "num_rows": self.num_rows,
            "shard_size": self.shard_size,
            "dim": self.dim,
        }
        if manifest.is_file():
            found = json.loads(manifest.read_text(encoding="utf-8"))
            if found != expected:
                changed = _differences(found, expected)
                raise ValueError(
                    f"{self.root} holds features computed with other settings or data ({changed}). Delete that "
                    "folder to recompute them, or use another `output_dir`."
                )
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            write_text_atomic(manifest, json.dumps(expected, indent=2, sort_keys=True) + "\n")
        return sum(self.done(i) for i in range(self.num_shards))

    def save(self, shard: int, features: np.ndarray) -> None:
        start, end = self.bounds(shard)
        if features.shape != (end - start, self.dim):
            raise ValueError(
                f"shard {shard}: expected features {(end - start, self.dim)}, got {features.shape}."
            )
        with atomic_write(self.path(shard), "wb") as f:
            np.save(f, np.ascontiguousarray(features, dtype=np.float32))

    def load(self) -> np.ndarray:
        """[num_rows, dim] float32, every shard (all must be finished)."""
        missing = [i for i in range(self.num_shards) if not self.done(i)]
        if missing:
            raise RuntimeError(f"feature shards {missing[:5]} are missing in {self.root}.")
        out = np.empty((self.num_rows, self.dim), dtype=np.float32)
        for i in range(self.num_shards):
            start, end = self.bounds(i)
            out[start:end] = np.load(self.path(i), mmap_mode="r")
        return out


def _differences(found: dict[str, Any], expected: dict[str, Any]) -> str:
    flat_found = {**found, **found.get("fingerprint", {})}
    flat_expected = {**expected, **expected.get("fingerprint", {})}
    keys = [k for k in flat_expected if k != "fingerprint" and flat_found.get(k) != flat_expected[k]]
    return (
        ", ".join(f"{k}: {flat_found.get(k)!r} -> {flat_expected[k]!r}" for k in keys) or "manifest differs"
    )
