#!/usr/bin/env python
"""Cost and fidelity of `llamafactory-dids repartition` features and clustering, measured in one run.

    python benchmarks/repartition.py                       # a few minutes on 2 cores
    python benchmarks/repartition.py --kmeans-only --kmeans-n 100000 --kmeans-dim 1024 --kmeans-k 72 1024 --sklearn-max-k 1024
    python benchmarks/repartition.py --json repartition.json

Method: benchmarks/README.md, repartition.py.
"""

from __future__ import annotations

import functools
import json
import random
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llamafactory_dids.algorithms.clustering import faiss_available, normalise_rows, spherical_kmeans
from llamafactory_dids.algorithms.features import (
    FactoredGradientFeatures,
    RademacherProjection,
    exact_example_gradients,
    example_losses,
    last_block_matrices,
    linear_modules_for,
    mean_pooled_embeddings,
    response_token_fit,
    transformer_blocks,
)

import _harness as h  # benchmarks/ is on sys.path when a script runs
from _harness import Figure

QUICK = {
    "rows": 32,
    "fidelity_rows": 45,
    "planted_rows": 30,
    "seeds": 2,
    "proxy_steps": 60,
    "proxy_rows": 48,
    "proxy_seeds": [0],
    "kmeans_n": 5000,
}


def proxy_model(vocab: int, seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(config).eval().requires_grad_(False)


def train_proxy(model, encoded, steps: int, lr: float = 2e-3, seed: int = 0) -> float:
    """Train the random proxy as a small LM is trained: AdamW, batches of 8 in a seeded shuffled order,
    linear warm-up over 5% of the steps then cosine decay to 0. Returns the last batch's loss."""
    from transformers import get_cosine_schedule_with_warmup

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    data = batches(encoded, 8)
    order = list(range(len(data)))
    random.Random(seed).shuffle(order)
    loss = torch.tensor(float("nan"))
    model.requires_grad_(True).train()
    for step in range(steps):
        _, (ids, mask, labels) = data[order[step % len(order)]]
        loss = example_losses(model(input_ids=ids, attention_mask=mask).logits, labels).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.requires_grad_(False).eval()
    return float(loss.detach())


def c_header_rows(limit: int, seed: int) -> list[dict[str, str]]:
    """Snippets of C from the system headers (comment-free blocks with code), as alpaca rows."""
    rows = []
    for path in sorted(Path("/usr/include").glob("*.h")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for block in text.split("\n\n"):
            code = "\n".join(
                line
                for line in block.splitlines()
                if line.strip() and not line.lstrip().startswith(("/*", "*", "//"))
            )
            if 120 <= len(code) <= 600 and (";" in code or "#define" in code):
                rows.append({"instruction": f"Write the code of `{path.name}`.", "input": "", "output": code})
    random.Random(seed).shuffle(rows)
    return rows[:limit]


def write_datasets(rows_by_source: dict[str, list[dict]], data: Path) -> Path:
    """Alpaca rows as one LLaMA-Factory dataset per source under `data` (with its dataset_info.json)."""
    data.mkdir(parents=True, exist_ok=True)
    info = {}
    for name, rows in rows_by_source.items():
        (data / f"{name}.json").write_text(json.dumps(rows))
        info[name] = {
            "file_name": f"{name}.json",
            "columns": {"prompt": "instruction", "query": "input", "response": "output"},
        }
    (data / "dataset_info.json").write_text(json.dumps(info))
    return data


def bench_config(model_dir: Path | str, data: Path, sources: list[str], cutoff: int, **keys: Any) -> Any:
    """The product's `RepartitionConfig` of the datasets `sources` under `data` (demo template, one domain
    per source unless `keys` say otherwise; `keys` are further `dids_*` keys)."""
    from llamafactory_dids.repartition.config import parse_repartition_config

    return parse_repartition_config(
        {
            "model_name_or_path": str(model_dir),
            "dataset": list(sources),
            "dataset_dir": str(data),
            "template": "default",
            "cutoff_len": cutoff,
            "output_dir": str(data.parent / "unused"),
            "dids_domains_per_source": 1,
            **keys,
        }
    )


def product_inputs(cfg: Any) -> tuple[Any, Any]:
    """(tokenizer, `Inputs`) of a config: the rows through the product's own input pipeline."""
    from llamafactory_dids.repartition.inputs import load_inputs
    from llamafactory_dids.repartition.run import tokenizer_and_template

    tokenizer, template = tokenizer_and_template(cfg)
    return tokenizer, load_inputs(cfg, tokenizer, template)


def encode(assets, rows_by_source: dict[str, list[dict]], workdir: Path, cutoff: int):
    """Token ids and labels of the rows through the product's own input pipeline."""
    data = write_datasets(rows_by_source, workdir / "bench_data")
    _, inputs = product_inputs(bench_config(assets.model_dir, data, list(rows_by_source), cutoff))
    keep = np.flatnonzero(inputs.trainable())
    return [inputs.encoded[i] for i in keep], inputs.sources[keep]


def batches(encoded, size: int):
    """Length-sorted batches of `size` rows: (row indices, (input_ids, attention_mask, labels))."""
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    chunks = [order[start : start + size] for start in range(0, len(order), size)]
    rows = lambda idx: [{"input_ids": encoded[i][0], "labels": encoded[i][1]} for i in idx]  # noqa: E731
    return [(idx, tuple(h.collate(rows(idx), 0, multiple=1).values())) for idx in chunks]


def stack(encoded, fn) -> np.ndarray:
    """`fn(batch)` -> [b, d] for every batch of 8, gathered into [n, d] float32 in the rows' order."""
    parts = [(rows, fn(batch).numpy()) for rows, batch in batches(encoded, 8)]
    out = np.zeros((len(encoded), parts[0][1].shape[1]), dtype=np.float32)
    for rows, x in parts:
        out[rows] = x
    return out


def trained_proxy(vocab: int, train_rows, steps: int, seed: int):
    """A proxy initialised with `seed` and trained `steps` steps (same seed for the batch order), its
    selected matrices (last block) and its factored feature extractor. Prints the training time."""
    model = proxy_model(vocab, seed)
    seconds, loss = h.timed(train_proxy, model, train_rows, steps, 2e-3, seed)
    print(
        f"proxy seed {seed}: {steps} steps on {len(train_rows)} held-out rows, last loss {loss:.2f} ({seconds:.0f} s)"
    )
    named = last_block_matrices(model, transformer_blocks(model), 0.1)
    feats = FactoredGradientFeatures(
        model, linear_modules_for(model, named), factor_dim=128, proj_dim=1024, seed=0
    )
    return model, named, feats


def planted_rows(assets, demo, c_all, count: int, workdir: Path):
    """(encoded rows, truth) of `count` Python functions and `count` C snippets with the same instruction
    wording, or None when /usr/include gives too few C snippets."""
    c_rows = c_all[:count]
    if len(c_rows) < count // 2:
        return None
    py_rows = [
        dict(r, instruction=f"Write the code of `{r['instruction'].split('`')[1]}`.")
        for r in demo["code"][:count]
    ]
    return encode(assets, {"python": py_rows, "c": c_rows}, workdir / "planted", cutoff=128)


def two_means_ari(x: np.ndarray, truth, seeds: int) -> float:
    """Mean ARI against the truth of spherical 2-means (seeds 0..seeds-1) on the features `x`."""
    return statistics.mean(
        ari(truth, spherical_kmeans(x, 2, seed=s, backend="sklearn")[0]) for s in range(seeds)
    )


def planted_point(feats, model, encoded, truth, seeds: int) -> dict[str, float]:
    """The planted ARI and the proxy's fit on the same rows (what `repartition` logs and reports as the
    proxy fit: loss and unigram entropy in nats per response token)."""
    fit = response_token_fit(model, [batch for _, batch in batches(encoded, 8)])
    return {
        "ari": two_means_ari(run_factored(feats, encoded), truth, seeds),
        "fit_loss": fit["loss"],
        "unigram_entropy": fit["unigram_entropy"],
    }


def run_factored(feats, encoded) -> np.ndarray:
    return stack(encoded, lambda batch: feats(*batch))


def run_exact(
    model, params, encoded, projection, *, per_batch: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Exact per-example gradients [n, h] and their dense projection [n, s] (per batch as the product does,
    or in one pass over all rows, which regenerates the matrix once)."""
    for p in params:
        p.requires_grad_(True)
    full = None
    proj = np.zeros((len(encoded), projection.out_dim), dtype=np.float32) if projection is not None else None
    for rows, batch in batches(encoded, 8):
        g = exact_example_gradients(model, params, *batch)
        if full is None:
            full = np.zeros((len(encoded), g.shape[1]), dtype=np.float32)
        full[rows] = g.numpy()
        if projection is not None and per_batch:
            proj[rows] = projection(g).numpy()
    for p in params:
        p.requires_grad_(False)
    if projection is not None and not per_batch:
        proj = projection(torch.from_numpy(full)).numpy()
    return full, proj


def run_hidden_mean(model, encoded) -> np.ndarray:
    """Mean over real positions of the last hidden state per row (the semantic features of DIDS-GC)."""
    return stack(encoded, lambda batch: mean_pooled_embeddings(model, batch[0], batch[1]))


def run_plain(model, encoded):
    model.requires_grad_(True).train()
    for _, (ids, mask, labels) in batches(encoded, 8):
        model.zero_grad(set_to_none=True)
        example_losses(model(input_ids=ids, attention_mask=mask).logits, labels).mean().backward()
    model.requires_grad_(False).eval()


def cosine_corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = normalise_rows(a), normalise_rows(b)
    iu = np.triu_indices(len(a), 1)
    return float(np.corrcoef((a @ a.T)[iu], (b @ b.T)[iu])[0, 1])


def ari(a, b) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


def build_parser() -> Any:
    p = h.parser(__doc__, threads=0, quick="proxy 60 steps, fewer rows and seeds, k-means 5000 rows")
    p.add_argument("--rows", type=int, default=96, help="rows for factored and fwd+bwd throughput")
    p.add_argument("--exact-rows", type=int, default=8, help="rows for the per-example reference")
    p.add_argument("--fidelity-rows", type=int, default=90, help="rows (a third per demo domain)")
    p.add_argument("--planted-rows", type=int, default=60, help="rows per planted domain")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--proxy-steps", type=int, default=600, help="AdamW steps that train each random proxy")
    p.add_argument("--proxy-rows", type=int, default=400, help="proxy training rows per kind of text")
    p.add_argument(
        "--proxy-seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="proxies (initialisation and batch order) for part C; the first also serves parts A and B",
    )
    p.add_argument("--kmeans-n", type=int, default=20000)
    p.add_argument("--kmeans-dim", type=int, default=256)
    p.add_argument("--kmeans-k", type=int, nargs="+", default=[72, 1024])
    p.add_argument("--sklearn-max-k", type=int, default=72, help="skip scikit-learn above this k (slow)")
    p.add_argument("--kmeans-only", action="store_true", help="run only part D")
    return p


def measure(args: Any) -> tuple[list[Figure], dict]:
    """Every figure of parts A-D, and as one dict (written to --json)."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    got: dict = {}
    if not args.kmeans_only:
        with h.workdir(args.workdir, "dids_bench_repartition_") as workdir:
            measure_features(args, workdir, got)
    got["kmeans"] = kmeans_seconds(args)
    got["kmeans_shape"] = f"{args.kmeans_n} x {args.kmeans_dim}"
    return report(got), got


def measure_features(args: Any, workdir: Path, got: dict) -> None:
    """Parts A-C on the demo rows with trained proxies."""
    per_domain = max(args.fidelity_rows // 3, args.planted_rows, -(-args.rows // 3))
    held_out = args.proxy_rows
    assets = h.demo_assets(workdir, examples_per_domain=per_domain + held_out, seed=0)
    demo = {
        n: json.loads((assets.dataset_dir / f"demo_{n}.json").read_text())
        for n in ("code", "docs", "comments")
    }
    mixed = {n: rows[:per_domain] for n, rows in demo.items()}
    encoded, truth = encode(assets, mixed, workdir, cutoff=128)
    interleave = np.argsort(np.argsort(np.arange(len(encoded)) % per_domain, kind="stable"), kind="stable")
    order = np.argsort(interleave, kind="stable")  # domains interleaved, so any prefix mixes them
    encoded, truth = [encoded[i] for i in order], truth[order]

    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(assets.model_dir))
    # the proxy stands for a pretrained model: it is trained on held-out rows of every kind the benchmark
    # clusters, the planted C snippets' kind included (rows disjoint from the clustered ones)
    c_all = c_header_rows(args.planted_rows + held_out, seed=0)
    proxy_sources = {n: rows[-held_out:] for n, rows in demo.items()}
    if len(c_all) > args.planted_rows:
        proxy_sources["c"] = c_all[args.planted_rows :]
    train_rows, _ = encode(assets, proxy_sources, workdir / "train", cutoff=128)
    model, named, feats = trained_proxy(vocab, train_rows, args.proxy_steps, args.proxy_seeds[0])
    params = [p for _, p in named]
    dim = sum(p.numel() for p in params)
    dense = RademacherProjection(dim, 1024, seed=0)
    print(
        f"proxy: {sum(p.numel() for p in model.parameters())} parameters, {dim} selected (last block); "
        f"torch threads {torch.get_num_threads()}",
        flush=True,
    )

    # ---------------------------------------------------------------------------- A. throughput
    rows = encoded[: args.rows]
    run_factored(feats, rows[:8])  # warm-up
    t_fact, _ = h.timed(run_factored, feats, rows)
    t_plain, _ = h.timed(run_plain, model, rows)
    t_exact, _ = h.timed(run_exact, model, params, encoded[: args.exact_rows], dense)
    a = got["throughput"] = {
        "factored_ex_per_s": args.rows / t_fact,
        "exact_ex_per_s": args.exact_rows / t_exact,
        "fwd_bwd_ex_per_s": args.rows / t_plain,
        "mean_tokens": sum(len(e[0]) for e in rows) / len(rows),
    }
    a["factored_over_exact"] = a["factored_ex_per_s"] / a["exact_ex_per_s"]
    a["factored_over_fwd_bwd"] = a["factored_ex_per_s"] / a["fwd_bwd_ex_per_s"]

    # ------------------------------------------------------------------------------ B. fidelity
    rows, labels_true = encoded[: args.fidelity_rows], truth[: args.fidelity_rows]
    exact, dense_feats = run_exact(model, params, rows, dense, per_batch=False)
    fact = run_factored(feats, rows)
    b = got["fidelity"] = {
        "rows": len(rows),
        "dims": dim,
        "cosine_corr_factored": cosine_corr(fact, exact),
        "cosine_corr_dense_jl": cosine_corr(dense_feats, exact),
    }
    ari_fact, ari_dense, ari_self, ari_truth = [], [], [], {"exact": [], "factored": [], "dense_jl": []}
    for seed in range(args.seeds):
        km = {
            name: spherical_kmeans(x, 3, seed=seed, backend="sklearn")[0]
            for name, x in (("exact", exact), ("factored", fact), ("dense_jl", dense_feats))
        }
        ari_fact.append(ari(km["exact"], km["factored"]))
        ari_dense.append(ari(km["exact"], km["dense_jl"]))
        ari_self.append(ari(km["exact"], spherical_kmeans(exact, 3, seed=seed + 1000, backend="sklearn")[0]))
        for name in ari_truth:
            ari_truth[name].append(ari(labels_true, km[name]))
    b.update(
        ari_factored_vs_exact=statistics.mean(ari_fact),
        ari_dense_jl_vs_exact=statistics.mean(ari_dense),
        ari_exact_vs_exact_other_seed=statistics.mean(ari_self),
        ari_vs_source={k: statistics.mean(v) for k, v in ari_truth.items()},
    )

    # ----------------------------------------------------------------------- C. planted domains
    c = got["planted"] = {"code_docs_comments_ari": b["ari_vs_source"]["factored"]}
    planted = planted_rows(assets, demo, c_all, args.planted_rows, workdir)
    if planted is None:
        print("C. Python vs C: skipped (too few C snippets under /usr/include)")
        return
    enc, src = planted
    # planted recovery depends on the proxy far more than on the features: one point per proxy (same
    # recipe, other initialisation and batch order), each with the proxy's fit on these rows
    per_proxy = {}
    for seed in args.proxy_seeds:
        if seed != args.proxy_seeds[0]:
            model, named, feats = trained_proxy(vocab, train_rows, args.proxy_steps, seed)
        point = planted_point(feats, model, enc, src, args.seeds)
        point["ari_exact"] = two_means_ari(
            run_exact(model, [p for _, p in named], enc, None)[0], src, args.seeds
        )
        point["ari_semantic"] = two_means_ari(run_hidden_mean(model, enc), src, args.seeds)
        per_proxy[seed] = point
    c["by_proxy_seed"] = per_proxy
    for key, name in (("ari", ""), ("ari_exact", "_exact"), ("ari_semantic", "_semantic")):
        c[f"python_vs_c_ari{name}"] = statistics.mean(v[key] for v in per_proxy.values())
    c["python_vs_c_ari_min"] = min(v["ari"] for v in per_proxy.values())
    c["python_vs_c_rows"] = [int((src == 0).sum()), int((src == 1).sum())]


def kmeans_seconds(args: Any) -> dict[str, float]:
    """D. Seconds of spherical k-means on a planted mixture on the sphere, per backend and k."""
    rng = np.random.default_rng(0)
    centres = normalise_rows(rng.standard_normal((200, args.kmeans_dim)))
    planted = rng.integers(0, 200, args.kmeans_n)
    noise = rng.standard_normal((args.kmeans_n, args.kmeans_dim)).astype(np.float32)
    x = centres[planted] + 0.5 * noise / np.sqrt(args.kmeans_dim)
    d = {}
    for k in args.kmeans_k:
        for backend in ("faiss", "sklearn"):
            if (backend == "faiss" and not faiss_available()) or (
                backend == "sklearn" and k > args.sklearn_max_k
            ):
                continue
            fit = functools.partial(
                spherical_kmeans, seed=0, backend=backend, max_points_per_centroid=args.kmeans_n
            )
            d[f"{backend}_k{k}_s"] = h.timed(fit, x, k)[0]
    return d


def report(got: dict) -> list[Figure]:
    """Every figure of parts A-D; the detail rows are printed here only, the others by `run_all.py` too."""
    out: list[Figure] = []
    if "throughput" in got:
        a, b, c = got["throughput"], got["fidelity"], got["planted"]
        aris = (b["ari_factored_vs_exact"], b["ari_dense_jl_vs_exact"], b["ari_exact_vs_exact_other_seed"])
        out += [
            h.detail(
                f"A. factored features, examples/s (mean {a['mean_tokens']:.0f} tokens per row)",
                f"{a['factored_ex_per_s']:.2f}",
            ),
            h.detail("   (a) exact + dense projection, examples/s", f"{a['exact_ex_per_s']:.2f}"),
            h.detail("   (b) plain batched fwd+bwd, examples/s", f"{a['fwd_bwd_ex_per_s']:.2f}"),
            Figure(
                "repartition: factored / per-example + dense projection",
                a["factored_over_exact"],
                "x",
                10,
                ">=",
            ),
            Figure(
                "repartition: factored / plain forward+backward", a["factored_over_fwd_bwd"], "x", 0.5, ">="
            ),
            h.detail(
                f"B. fidelity on {b['rows']} rows vs exact gradients ({b['dims']} dims): cosine corr, dense JL",
                f"{b['cosine_corr_dense_jl']:.3f}",
            ),
            Figure(
                "repartition: cosine correlation with exact gradients (factored)",
                b["cosine_corr_factored"],
                "",
                0.95,
                ">=",
            ),
            h.detail(
                "   ARI of 3-means vs exact's clusters: factored / dense JL / exact with another seed",
                " / ".join(f"{x:.3f}" for x in aris),
            ),
            h.detail(
                "   ARI vs the demo domains (code/docs/comments)",
                ", ".join(f"{k} {v:.3f}" for k, v in b["ari_vs_source"].items()),
            ),
            Figure(
                "repartition: ARI vs exact clusters, factored - dense JL", aris[0] - aris[1], "", 0.0, ">="
            ),
        ]
        for seed, v in c.get("by_proxy_seed", {}).items():
            text = f"{v['ari']:.3f} / {v['ari_exact']:.3f} / {v['ari_semantic']:.3f}; fit {v['fit_loss']:.3f} vs {v['unigram_entropy']:.3f}"
            name = f"C. Python vs C, proxy seed {seed}: ARI factored / exact / hidden state; fit (loss vs unigram)"
            out.append(h.detail(name, text))
        if "python_vs_c_ari" in c:
            rows = c["python_vs_c_rows"]
            means = (c["python_vs_c_ari_min"], c["python_vs_c_ari_exact"], c["python_vs_c_ari_semantic"])
            name = (
                f"   Python vs C ({rows[0]} + {rows[1]} rows): min factored / mean exact / mean hidden state"
            )
            out.append(h.detail(name, " / ".join(f"{x:.3f}" for x in means)))
            name = "repartition: planted Python vs C, ARI (mean over proxies)"
            out.append(Figure(name, c["python_vs_c_ari"], "", 0.8, ">="))
        out.append(
            h.detail(
                "   code vs docstrings vs comments, ARI (factored)", f"{c['code_docs_comments_ari']:.3f}"
            )
        )
    shape = got.get("kmeans_shape", "")
    out += [
        Figure(f"repartition: k-means {k.replace('_s', '')} on {shape}", s, "s")
        for k, s in got.get("kmeans", {}).items()
    ]
    return out


figures, main = h.entry("repartition.py", build_parser, measure, QUICK)

if __name__ == "__main__":
    sys.exit(main())
