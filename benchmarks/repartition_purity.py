#!/usr/bin/env python
"""Purity of repartition's domains against a hidden label, per kind of features, on planted mixes of real text.

    python benchmarks/repartition_purity.py --smollm2-dir DIR     # ~25 min on one CPU thread
    python benchmarks/repartition_purity.py --quick               # a few minutes
    python benchmarks/repartition_purity.py --rows-per-kind 100 --json purity.json

Method: benchmarks/README.md, repartition_purity.py.
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import repartition as bench_repartition  # its proxy, its product-pipeline helpers
import torch

import _harness as h  # benchmarks/ is on sys.path when a script runs
from _harness import Figure

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `benchmarks.quality` (its corpus) importable when run by path
    sys.path.insert(0, str(REPO))

from benchmarks.quality import corpus as quality_corpus  # noqa: E402
from benchmarks.quality.build import MIXED_INSTRUCTION  # noqa: E402

QUICK = {
    "rows_per_kind": 16,
    "exact_rows": 16,
    "seeds": 2,
    "proxy_steps": 40,
    "proxy_rows": 32,
    "fit_rows": 16,
}
CUTOFF = 128
TARGET_DOMAINS = 4  # per source, as the paper (72 domains from 18 sources)
TARGET_PURITY = 0.80
EXTRAPOLATE_ROWS = 100_000
TFIDF = "tfidf char 2-4"
PERL_ROOTS = ("/usr/share/perl", "/usr/share/perl5", "/usr/lib/x86_64-linux-gnu", "/usr/lib/perl5")


# ------------------------------------------------------------------------------------------ rows


def file_chunks(paths: list[Path], size: int) -> list[str]:
    """Consecutive pieces of about `size` characters (whole lines; a longer line is cut) of each file, in
    file order; pieces with fewer than size / 3 non-blank characters are left out."""
    pieces: list[str] = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        piece = ""
        for line in [*text.splitlines(keepends=True), None]:
            if piece and (line is None or len(piece) + len(line) > size):
                if len("".join(piece.split())) >= size // 3:
                    pieces.append(piece[:size].rstrip("\n"))
                piece = ""
            piece += line or ""
    return list(dict.fromkeys(pieces))  # deduplicated, order kept


def python_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test"}
    return sorted(p for p in stdlib.rglob("*.py") if not skip & set(p.relative_to(stdlib).parts))


def perl_files() -> list[Path]:
    found = {p.resolve() for root in PERL_ROOTS if Path(root).is_dir() for p in Path(root).rglob("*.pm")}
    return sorted(found)


def c_files() -> list[Path]:
    return sorted(Path("/usr/include").rglob("*.h")) if Path("/usr/include").is_dir() else []


def sample(pool: list[str], count: int, key: str) -> list[str]:
    if len(pool) < count:
        raise ValueError(
            f"{key}: only {len(pool)} distinct rows on this machine, {count} needed; lower the sizes."
        )
    return random.Random(f"purity:{key}").sample(pool, count)


def planted_mixes(args: Any) -> tuple[dict[str, tuple[list[dict], list[str]]], dict[str, list[dict]]]:
    """{source: (alpaca rows, hidden kind of each row)} and {kind: held-out rows} (for the tiny proxy).

    Each source holds `rows_per_kind` rows of each of its two kinds, shuffled together (so any prefix mixes
    them), every row with the same instruction."""
    need = args.rows_per_kind + args.proxy_rows
    quality = quality_corpus.collect(["comments", "metadata"])
    pools = {kind: [r["output"] for r in quality[kind]] for kind in ("comments", "metadata")}
    pools["python"] = file_chunks(python_files(), args.chunk_chars)
    perl = file_chunks(perl_files(), args.chunk_chars)
    second = "perl" if len(perl) >= need else "c"
    if second == "c":
        print(f"only {len(perl)} pieces of Perl modules here ({need} needed): Python vs C headers instead")
    pools[second] = perl if second == "perl" else file_chunks(c_files(), args.chunk_chars)
    mixes, held = {}, {}
    for source, kinds in (("mixed", ("comments", "metadata")), (f"python_{second}", ("python", second))):
        tagged = []
        for kind in kinds:
            texts = sample(pools[kind], need, kind)
            tagged += [(t, kind) for t in texts[: args.rows_per_kind]]
            held[kind] = [alpaca(t) for t in texts[args.rows_per_kind :]]
        random.Random(f"purity:mix:{source}").shuffle(tagged)
        mixes[source] = ([alpaca(t) for t, _ in tagged], [k for _, k in tagged])
    print("pool sizes: " + ", ".join(f"{k} {len(v)}" for k, v in pools.items()), flush=True)
    return mixes, held


def alpaca(text: str) -> dict[str, str]:
    return {"instruction": MIXED_INSTRUCTION, "input": "", "output": text}


# ------------------------------------------------------------------------------------- features


def tiny_proxy(args: Any, workdir: Path, held: dict[str, list[dict]]) -> Path:
    """The random-init proxy of benchmarks/repartition.py, trained on the held-out rows, saved as a model
    directory (with the demo tokenizer) so the product's extractor loads it as it loads any proxy."""
    from transformers import AutoTokenizer

    assets = h.demo_assets(workdir, examples_per_domain=40, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
    train_rows, _ = bench_repartition.encode(assets, held, workdir / "tiny_train", CUTOFF)
    model = bench_repartition.proxy_model(len(tokenizer), seed=0)
    seconds, loss = h.timed(bench_repartition.train_proxy, model, train_rows, args.proxy_steps, 2e-3, 0)
    print(
        f"tiny proxy: {args.proxy_steps} steps on {len(train_rows)} held-out rows, last loss {loss:.2f} ({seconds:.0f} s)"
    )
    out = workdir / "tiny-proxy"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def smollm2_proxy(args: Any, workdir: Path) -> tuple[Path | None, str]:
    """(directory, "") of a verified SmolLM2 proxy, built by `prepare_proxy` when absent; (None, reason)
    when it cannot be had here."""
    from llamafactory_dids.repartition.proxy import ProxyError, prepare_proxy

    path = args.smollm2_dir or workdir / "smollm2"
    try:
        prepared = prepare_proxy("smollm2", path)
    except ProxyError as err:
        return None, str(err)
    print(
        f"smollm2 proxy: {prepared.path} ({'reused' if prepared.reused else 'built'}, {prepared.seconds:.0f} s)"
    )
    return prepared.path, ""


def proxy_features(
    name: str,
    model_dir: Path,
    data: Path,
    sources: list[str],
    subset: np.ndarray | None,
    args: Any,
    got: dict,
) -> dict[str, np.ndarray]:
    """Features of every row through the product's extractors: factored, semantic, exact (on `subset` rows
    when given, with factored on the same rows as `<name> factored (subset)`). Records throughput and fit."""
    from llamafactory_dids.repartition.extract import build_extractor

    cpu = torch.device("cpu")
    cfg = bench_repartition.bench_config(model_dir, data, sources, CUTOFF)
    tokenizer, inputs = bench_repartition.product_inputs(cfg)
    rows = list(range(inputs.num_rows))
    out: dict[str, np.ndarray] = {}
    info = got.setdefault("proxies", {})[name] = {
        "rows": len(rows),
        "trainable": int(inputs.trainable().sum()),
    }
    for kind, keys in (
        ("factored", {}),
        ("semantic", {"dids_features": "semantic"}),
        ("exact", {"dids_features": "exact", "dids_batch_size": args.exact_batch}),
    ):
        extractor = build_extractor(
            bench_repartition.bench_config(model_dir, data, sources, CUTOFF, **keys), inputs, tokenizer, cpu
        )
        todo = rows if kind != "exact" or subset is None else subset.tolist()
        if kind == "factored":
            info["fit"] = extractor.proxy_fit(args.fit_rows)
            info["selected_parameters"] = extractor.description["parameters"]
            extractor(todo[:8])  # warm-up
        seconds, feats = h.timed(extractor, todo)
        info[f"{kind}_rows_per_s"] = len(todo) / seconds
        info[f"{kind}_rows"] = len(todo)
        out[f"{name} {kind}" + (" (subset)" if len(todo) < len(rows) else "")] = feats
        print(
            f"{name} {kind}: {len(todo)} rows in {seconds:.1f} s ({len(todo) / seconds:.2f} rows/s)",
            flush=True,
        )
        del extractor
        gc.collect()
    info["mean_tokens"] = float(np.mean([len(e[0]) for e in inputs.encoded if e is not None]))
    if subset is not None:
        out[f"{name} factored (subset)"] = out[f"{name} factored"][subset]
    return out


def tfidf_features(texts: list[str]) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(
        analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, max_features=20000
    )
    return vectorizer.fit_transform(texts).astype(np.float32).toarray()


# ------------------------------------------------------------------------------------ clustering


def score(kinds: list[str], clusters: np.ndarray) -> dict[str, float]:
    """Purity and homogeneity of `clusters` against the hidden kinds (`repartition.quality`)."""
    from llamafactory_dids.repartition.quality import label_agreement

    _, dense = np.unique(clusters, return_inverse=True)
    found = label_agreement(kinds, dense, [str(i) for i in range(dense.max() + 1)], np.zeros(len(kinds), int))
    return {"purity": found["purity"], "homogeneity": found["homogeneity"]}


def scores_over_seeds(
    kinds: list[str], d: int, seeds: int, cluster: Callable[[int, int], np.ndarray]
) -> dict:
    runs = [score(kinds, cluster(d, seed)) for seed in range(seeds)]
    return {
        "purity": statistics.mean(r["purity"] for r in runs),
        "purity_min": min(r["purity"] for r in runs),
        "homogeneity": statistics.mean(r["homogeneity"] for r in runs),
        "runs": runs,
    }


def kmeans_of(x: np.ndarray) -> Callable[[int, int], np.ndarray]:
    from llamafactory_dids.algorithms.clustering import spherical_kmeans

    return lambda d, seed: spherical_kmeans(x, d, seed=seed, backend="auto")[0]


def random_labels(n: int) -> Callable[[int, int], np.ndarray]:
    return lambda d, seed: np.random.default_rng([seed, 99]).integers(0, d, n)


# ----------------------------------------------------------------------------------------- run


def build_parser() -> Any:
    p = h.parser(__doc__, threads=1, quick="16 rows per kind, tiny proxy 40 steps, 2 seeds")
    p.add_argument("--rows-per-kind", type=int, default=250, help="rows of each hidden kind in each source")
    p.add_argument("--exact-rows", type=int, default=96, help="rows per source for the pretrained `exact`")
    p.add_argument(
        "--exact-batch", type=int, default=48, help="rows per batch of `exact` (one projection each)"
    )
    p.add_argument("--domains", type=int, nargs="+", default=[2, 4, 8], help="domains per source")
    p.add_argument("--seeds", type=int, default=5, help="k-means seeds")
    p.add_argument("--chunk-chars", type=int, default=360, help="characters per piece of a library file")
    p.add_argument("--proxy-steps", type=int, default=600, help="training steps of the tiny proxy")
    p.add_argument(
        "--proxy-rows", type=int, default=300, help="held-out rows per kind training the tiny proxy"
    )
    p.add_argument("--fit-rows", type=int, default=64, help="rows of the proxy-fit check")
    p.add_argument(
        "--smollm2-dir", type=Path, default=None, help="pretrained proxy (default WORKDIR/smollm2)"
    )
    p.add_argument("--no-pretrained", action="store_true", help="leave out the SmolLM2 proxy")
    return p


def measure(args: Any) -> tuple[list[Figure], dict]:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    h.quiet_transformers()
    got: dict[str, Any] = {"settings": {k: str(v) for k, v in vars(args).items()}}
    with h.workdir(args.workdir, "dids_bench_purity_") as workdir:
        seconds, _ = h.timed(measure_in, args, workdir, got)
    got["seconds"] = seconds
    return report(got, args), got


def measure_in(args: Any, workdir: Path, got: dict) -> None:
    mixes, held = planted_mixes(args)
    sources = list(mixes)
    data = bench_repartition.write_datasets({s: rows for s, (rows, _) in mixes.items()}, workdir / "mixes")
    bounds = np.cumsum([0] + [len(rows) for rows, _ in mixes.values()])
    got["rows"] = {s: {k: kinds.count(k) for k in sorted(set(kinds))} for s, (_, kinds) in mixes.items()}
    subset = np.concatenate(
        [np.arange(a, min(a + args.exact_rows, b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    )

    feats = proxy_features("tiny", tiny_proxy(args, workdir, held), data, sources, None, args, got)
    path, reason = (None, "--no-pretrained") if args.no_pretrained else smollm2_proxy(args, workdir)
    if path is None:
        print(f"pretrained proxy skipped: {reason}")
        got["pretrained_skipped"] = reason
    else:
        feats |= proxy_features("smollm2", path, data, sources, subset, args, got)

    results = got["purity"] = {}
    for s, (source, (rows, kinds)) in enumerate(mixes.items()):
        in_subset = subset[(subset >= bounds[s]) & (subset < bounds[s + 1])]
        lines: dict[str, Callable] = {
            "random labels": random_labels(len(rows)),
            TFIDF: kmeans_of(tfidf_features([r["output"] for r in rows])),
        }
        for name, x in feats.items():
            inside = (
                x[np.searchsorted(subset, in_subset)] if "(subset)" in name else x[bounds[s] : bounds[s + 1]]
            )
            lines[name] = kmeans_of(inside)
        sub_kinds = [kinds[i - bounds[s]] for i in in_subset]
        results[source] = {
            name: {
                str(d): scores_over_seeds(sub_kinds if "(subset)" in name else kinds, d, args.seeds, fn)
                for d in args.domains
            }
            for name, fn in lines.items()
        }
        results[source]["rows"] = {"all": len(rows), "subset": len(in_subset)}
        print(f"clustered {source}", flush=True)


def report(got: dict, args: Any) -> list[Figure]:
    out: list[Figure] = []
    domains = [str(d) for d in args.domains]
    for source, lines in got["purity"].items():
        counts = ", ".join(f"{k} {n}" for k, n in got["rows"][source].items())
        out.append(
            Figure(
                f"{source} ({counts}): purity at d = {' / '.join(domains)} per source",
                None,
                text="mean (min of seeds); homogeneity",
                detail=True,
            )
        )
        for name, by_d in lines.items():
            if name == "rows":
                continue
            text = " / ".join(f"{by_d[d]['purity']:.3f} ({by_d[d]['purity_min']:.3f})" for d in domains)
            text += "; H " + " / ".join(f"{by_d[d]['homogeneity']:.3f}" for d in domains)
            label = name + (f", {lines['rows']['subset']} rows" if "(subset)" in name else "")
            out.append(Figure(f"   {label}", None, text=text, detail=True))
    for name, info in got.get("proxies", {}).items():
        fit = info["fit"]
        out.append(
            Figure(
                f"{name}: proxy fit on {fit['rows']} rows (loss vs unigram entropy, nats/token)",
                None,
                text=f"{fit['loss']:.3f} vs {fit['unigram_entropy']:.3f}",
                detail=True,
            )
        )
    target = str(TARGET_DOMAINS)
    if "smollm2" in got.get("proxies", {}) and target in domains:
        for source, lines in got["purity"].items():
            purity = lines["smollm2 factored"][target]["purity"]
            tfidf = lines[TFIDF][target]["purity"]
            out.append(
                Figure(
                    f"purity: smollm2 factored, {target} per source, {source}",
                    purity,
                    target=TARGET_PURITY,
                    comparator=">=",
                )
            )
            out.append(
                Figure(
                    f"purity: smollm2 factored - TF-IDF, {target} per source, {source}",
                    purity - tfidf,
                    target=0.0,
                    comparator=">=",
                    text=f"{purity - tfidf:+.3f} ({purity:.3f} vs {tfidf:.3f})",
                )
            )
        info = got["proxies"]["smollm2"]
        rate = info["factored_rows_per_s"]
        out.append(
            Figure(
                f"smollm2 factored features, rows/s (cutoff {CUTOFF}, mean {info['mean_tokens']:.0f} tokens, "
                f"{args.threads} thread(s))",
                rate,
                unit="rows/s",
            )
        )
        out.append(
            Figure(
                f"smollm2: features of {EXTRAPOLATE_ROWS:,} rows at that rate",
                EXTRAPOLATE_ROWS / rate / 3600,
                unit="h",
            )
        )
        for kind in ("semantic", "exact"):
            out.append(
                Figure(f"   smollm2 {kind}, rows/s", info[f"{kind}_rows_per_s"], unit="rows/s", detail=True)
            )
    elif "pretrained_skipped" in got:
        out.append(Figure("pretrained proxy", None, text=f"skipped: {got['pretrained_skipped'][:120]}"))
    out.append(Figure("wall time of the run", got.get("seconds"), unit="s", detail=True))
    return out


figures, main = h.entry("repartition_purity.py", build_parser, measure, QUICK)

if __name__ == "__main__":
    sys.exit(main())
