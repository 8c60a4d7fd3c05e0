"""Build the quality benchmark's assets (docs/quality-benchmark.md): training sources, observation and
held-out sets, tokenizer, model. Every kind's rows are shuffled with a string seed and cut into disjoint
held-out, observation and training parts; the hidden kinds of the `mixed` source are recorded only in
`data/manifest.json`. Outputs under ROOT: `data/` (a LLaMA-Factory dataset_dir) and `tiny-llama/`."""

from __future__ import annotations

import json
import random
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llamafactory_dids import demo

from . import corpus

__all__ = ["IRRELEVANT_TASKS", "SOURCES", "SOURCE_SCALE", "TASKS", "QualityAssets", "Sizes", "build_assets"]

_FORMAT_VERSION = 1
_MARKER = ".complete"
_ALPACA = {"prompt": "instruction", "query": "input", "response": "output"}

#: training source -> the kinds of content it holds (more than one = a hidden mix)
SOURCES: dict[str, tuple[str, ...]] = {
    "python": ("python",),
    "c": ("c",),
    "reference": ("reference",),
    "licenses": ("licenses",),
    "mixed": ("comments", "metadata"),
}
#: sources larger than `Sizes.train` rows: both are irrelevant to every task, so they are the paper's
#: added irrelevant data, and `natural` (proportional to sizes) differs from `uniform`
SOURCE_SCALE: dict[str, float] = {"c": 1.5, "licenses": 1.5}
#: downstream task -> the kind of content its observation and held-out rows are drawn from
TASKS: dict[str, str] = {"python": "python", "comments": "comments", "tables": "tables"}
#: tasks whose kind appears in no training source (the irrelevant observation domain)
IRRELEVANT_TASKS: tuple[str, ...] = ("tables",)
#: one prompt for every row of the mixed source, so nothing but the content tells its two kinds apart
MIXED_INSTRUCTION = "Continue the next entry of the archive."


@dataclass(frozen=True)
class Sizes:
    """Rows per part. A source holds `train` rows (times `SOURCE_SCALE`), split evenly among its kinds."""

    train: int = 400
    observe: int = 40
    heldout: int = 100

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Sizes.{key} must be a positive integer, got {value!r}.")


@dataclass(frozen=True)
class QualityAssets:
    """Locations of a built benchmark workdir."""

    root: Path
    model_dir: Path  # root / "tiny-llama"
    dataset_dir: Path  # root / "data"

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.dataset_dir / "manifest.json").read_text(encoding="utf-8"))

    def demo_assets(self) -> demo.DemoAssets:
        """The same paths as the demo's record type, for `demo.demo_training_config`."""
        return demo.DemoAssets(root=self.root, model_dir=self.model_dir, dataset_dir=self.dataset_dir)


def train_name(source: str) -> str:
    return f"quality_{source}"


def observe_name(task: str) -> str:
    return f"quality_obs_{task}"


def heldout_name(task: str) -> str:
    return f"quality_heldout_{task}"


def source_rows(source: str, sizes: Sizes) -> int:
    """Training rows of one source."""
    return round(sizes.train * SOURCE_SCALE.get(source, 1.0))


def _kind_needs(sizes: Sizes) -> dict[str, dict[str, int]]:
    """kind -> rows needed in each part."""
    needs: dict[str, dict[str, int]] = {}
    for source, kinds in SOURCES.items():
        per_kind = source_rows(source, sizes) // len(kinds)
        if per_kind < 1:
            raise ValueError(
                f"Sizes.train={sizes.train} is too small to split source {source!r} in {len(kinds)}."
            )
        for kind in kinds:
            needs.setdefault(kind, {"heldout": 0, "observe": 0, "train": 0})["train"] += per_kind
    for kind in TASKS.values():
        part = needs.setdefault(kind, {"heldout": 0, "observe": 0, "train": 0})
        part["heldout"], part["observe"] = sizes.heldout, sizes.observe
    return needs


def split_kinds(pools: dict[str, list[corpus.Row]], sizes: Sizes, seed: int) -> dict[str, dict[str, list]]:
    """kind -> {"heldout", "observe", "train"}: disjoint seeded samples of the kind's rows."""
    parts: dict[str, dict[str, list]] = {}
    for kind, need in _kind_needs(sizes).items():
        pool = pools[kind]
        total = sum(need.values())
        if len(pool) < total:
            raise ValueError(
                f"Kind {kind!r} has only {len(pool)} distinct rows on this machine, fewer than the {total} needed "
                f"(held-out {need['heldout']} + observation {need['observe']} + training {need['train']}). "
                f"Lower the sizes (e.g. --quick) or install the packages the kind reads from "
                f"(see benchmarks/quality/corpus.py)."
            )
        chosen = random.Random(f"{seed}:{kind}").sample(pool, total)
        a, b = need["heldout"], need["heldout"] + need["observe"]
        parts[kind] = {"heldout": chosen[:a], "observe": chosen[a:b], "train": chosen[b:]}
    return parts


def make_datasets(
    pools: dict[str, list[corpus.Row]], sizes: Sizes, seed: int
) -> tuple[dict[str, list[corpus.Row]], dict[str, Any]]:
    """Dataset name -> rows (alpaca + origin), and the manifest (provenance, hidden kinds of the mix)."""
    parts = split_kinds(pools, sizes, seed)
    datasets: dict[str, list[corpus.Row]] = {}
    manifest: dict[str, Any] = {"schema_version": 1, "seed": seed, "sizes": asdict(sizes), "datasets": {}}

    def relabel(row: corpus.Row, kind: str) -> corpus.Row:
        return {**row, "instruction": MIXED_INSTRUCTION} if len(_source_of(kind)) > 1 else dict(row)

    for source, kinds in SOURCES.items():
        rows = [(relabel(row, kind), kind) for kind in kinds for row in parts[kind]["train"]]
        if len(kinds) > 1:
            random.Random(f"{seed}:mix:{source}").shuffle(rows)
        name = train_name(source)
        datasets[name] = [row for row, _ in rows]
        manifest["datasets"][name] = {"role": "train", "source": source, "kinds": [kind for _, kind in rows]}
    for task, kind in TASKS.items():
        for role, name in (("observe", observe_name(task)), ("heldout", heldout_name(task))):
            datasets[name] = [relabel(row, kind) for row in parts[kind][role]]
            manifest["datasets"][name] = {"role": role, "task": task, "kinds": [kind] * len(datasets[name])}
    for name, rows in datasets.items():
        manifest["datasets"][name]["origins"] = [row["origin"] for row in rows]
    manifest["irrelevant_tasks"] = list(IRRELEVANT_TASKS)
    manifest["sources"] = {s: list(k) for s, k in SOURCES.items()}
    manifest["tasks"] = dict(TASKS)
    manifest["pool_sizes"] = {kind: len(rows) for kind, rows in pools.items()}
    return datasets, manifest


def _source_of(kind: str) -> tuple[str, ...]:
    """The kinds sharing a training source with `kind` (itself alone if it has its own source)."""
    for kinds in SOURCES.values():
        if kind in kinds:
            return kinds
    return (kind,)


def _write(dataset_dir: Path, datasets: dict[str, list[corpus.Row]], manifest: dict[str, Any]) -> list[str]:
    dataset_dir.mkdir(parents=True)
    info = {}
    for name, rows in datasets.items():
        alpaca = [{k: row[k] for k in ("instruction", "input", "output")} for row in rows]
        (dataset_dir / f"{name}.json").write_text(json.dumps(alpaca, ensure_ascii=False, indent=1) + "\n")
        info[name] = {"file_name": f"{name}.json", "formatting": "alpaca", "columns": dict(_ALPACA)}
    (dataset_dir / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
    (dataset_dir / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False) + "\n")
    return [
        f"{row['instruction']}\n{row['output']}"
        for name, rows in datasets.items()
        if manifest["datasets"][name]["role"] == "train"
        for row in rows
    ]


def build_assets(workdir: str | Path, sizes: Sizes, *, seed: int = 0, force: bool = False) -> QualityAssets:
    """Build (or reuse, when the recorded parameters match) the benchmark's data, tokenizer and model."""
    root = Path(workdir).expanduser().resolve()
    assets = QualityAssets(root=root, model_dir=root / "tiny-llama", dataset_dir=root / "data")
    params = {"format": _FORMAT_VERSION, "sizes": asdict(sizes), "seed": seed, "python": sys.version}
    marker = root / _MARKER
    if not force and marker.is_file() and json.loads(marker.read_text()) == params:
        return assets
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    for path in (assets.model_dir, assets.dataset_dir):
        shutil.rmtree(path, ignore_errors=True)
    kinds = sorted({k for ks in SOURCES.values() for k in ks} | set(TASKS.values()))
    datasets, manifest = make_datasets(corpus.collect(kinds), sizes, seed)
    texts = _write(assets.dataset_dir, datasets, manifest)
    tokenizer = demo.build_tokenizer(assets.model_dir, texts)
    demo.build_model(assets.model_dir, tokenizer, seed)
    marker.write_text(json.dumps(params, sort_keys=True))
    return assets
