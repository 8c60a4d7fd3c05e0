#!/usr/bin/env python
"""How often each impact form ranks the matched source first, against the number of probe rows; how
noisy the task losses' trajectory and the task weights are, against the number of observation rows.

    python benchmarks/impact_rows.py --workdir quality_results/work     # after `python -m benchmarks.quality`
    python benchmarks/impact_rows.py --rows 2,4,8,16,32 --repeats 12 --json impact_rows.json
    python benchmarks/impact_rows.py --workdir WORK --only loss-rows   # WORK of a `--model DIR` run too

Method: benchmarks/README.md, impact_rows.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import _harness as h  # benchmarks/ is on sys.path when a script runs
from _harness import Figure

SOURCES = ("python", "c", "reference", "licenses", "mixed")
MATCHED = {"python": 0, "comments": 4}  # task -> index of the source holding its content
FORMS = ("distance", "fim_inner", "cosine", "cosine (F=1)", "pool cosine (F=1)")
QUICK = {"rows": "2,8,32", "repeats": 3, "sketch_dims": "1024", "loss_rows": "8,16,64", "loss_repeats": 30}


def _setup(workdir: Path) -> tuple[Any, Any, list, list, list[int], Any]:
    """The seed-0 uniform model, its collate, the five sources' rows and pools, each row's source, the
    observation rows of a task by name."""
    import numpy as np

    model_dir = workdir / "seed0" / "uniform" / "output"
    if not (model_dir / "config.json").is_file():
        raise SystemExit(
            f"{model_dir} has no trained model: run `python -m benchmarks.quality --strategies uniform "
            f"--seeds 0 --workdir {workdir}` first."
        )
    tokenizer, pad = h.tokenizer(workdir / "assets" / "tiny-llama")
    rows = lambda name: h.encode_file(workdir / "assets" / "data" / f"{name}.json", tokenizer, 256)  # noqa: E731
    train, pools, domain_of = [], [], []
    for d, source in enumerate(SOURCES):
        part = rows(f"quality_{source}")
        pools.append(np.arange(len(train), len(train) + len(part)))
        train, domain_of = train + part, domain_of + [d] * len(part)
    collate = lambda batch: h.collate(batch, pad)  # noqa: E731
    return h.load_model(model_dir), collate, train, pools, domain_of, lambda task: rows(f"quality_obs_{task}")


def measure(workdir: Path, row_counts: list[int], repeats: int) -> dict[str, Any]:
    import numpy as np

    model, collate, train, pools, _, task_rows_of = _setup(workdir)
    tasks = {task: task_rows_of(task) for task in MATCHED}
    pool_weights = np.array([len(p) for p in pools], dtype=float) / len(train)
    hits = {form: {n: 0 for n in row_counts} for form in FORMS}
    total = {n: 0 for n in row_counts}
    for n in row_counts:
        for repeat in range(repeats):
            rng = np.random.default_rng([repeat, n])
            task_rows = [[rows[i] for i in rng.permutation(len(rows))] for rows in tasks.values()]
            for metric in ("fim", "inner_product"):
                options = {"probe_samples": n, "metric": metric, "layers_fraction": 0.5, "seed": repeat}
                probe = h.probe(model, collate, train, pools, task_rows, **options)
                terms = probe.impact_terms(1, gram=metric == "inner_product")
                scores = (
                    {"distance": -terms.distance(), "fim_inner": terms.inner(), "cosine": terms.cosine()}
                    if metric == "fim"
                    else {
                        "cosine (F=1)": terms.cosine(),
                        "pool cosine (F=1)": terms.without_pool(pool_weights).cosine(),
                    }
                )
                for form, values in scores.items():
                    for j, matched in enumerate(MATCHED.values()):
                        hits[form][n] += int(np.argmax(values[:, j]) == matched)
            total[n] += len(MATCHED)
    return {
        "rows": row_counts,
        "repeats": repeats,
        "accuracy": {form: {n: hits[form][n] / total[n] for n in row_counts} for form in FORMS},
    }


def measure_sketch(workdir: Path, dims: list[int], steps: int) -> dict[str, Any]:
    import numpy as np
    import torch
    from scipy.stats import spearmanr

    from llamafactory_dids.integration.loss import install_loss_recorder
    from llamafactory_dids.runtime.domain_gradients import DomainGradientHooks

    model, collate, train, pools, domain_of, task_rows_of = _setup(workdir)
    tasks = [task_rows_of(task) for task in ("python", "comments", "tables")]
    options = {"probe_samples": 16, "layers_fraction": 0.1, "seed": 0, "domain_gradients": "train"}
    probe = h.probe(model, collate, train, pools, tasks, **options)
    sketched = {
        dim: DomainGradientHooks(
            model, probe.params, len(SOURCES), probe.shapes, probe.device, sketch_dim=dim
        )
        for dim in dims
    }
    hooks = [probe.train_gradients, *sketched.values()]
    install_loss_recorder(model).scale_sink = lambda grad: [x.capture_scale(grad) for x in hooks] and None
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(steps):
        chosen = rng.choice(len(train), size=8, replace=False)
        batch = collate([train[i] for i in chosen])
        for x in hooks:
            x.begin_batch(torch.tensor([domain_of[i] for i in chosen]), batch["labels"])
        model(**batch).loss.backward()
        for x in hooks:
            x.end_batch()
        model.zero_grad()
    exact_hooks = probe.train_gradients
    exact_bytes = sum(s.numel() * 4 for s in probe.train_gradients.sums)
    exact = probe.impact_terms(1).cross
    out = {"steps": steps, "probed_parameters": probe.num_probe_parameters, "exact_bytes": exact_bytes}
    out["sketches"] = []
    for dim, hook in sketched.items():
        probe.train_gradients = hook
        cross = probe.impact_terms(1).cross
        rho = float(spearmanr(exact.ravel(), cross.ravel()).statistic)
        out["sketches"].append({"dim": dim, "spearman": rho, "bytes": sum(s.numel() * 4 for s in hook.sums)})
    batches = [collate(train[:8]), collate(train[8:16])]
    out["step_seconds"] = _hook_timing(model, exact_hooks, hooks[1], batches, domain_of)
    return out


def _hook_timing(model: Any, exact: Any, sketch: Any, batches: list[Any], domain_of: list[int]) -> dict:
    """Median seconds of a training micro-batch (forward + backward) with the hooks idle (no open
    micro-batch), exact and sketched."""
    import torch

    domains, count = torch.tensor(domain_of[:8]), [0]

    def step(hook: Any) -> None:
        batch = batches[count[0] // 3 % len(batches)]
        count[0] += 1
        if hook is not None:
            hook.begin_batch(domains, batch["labels"])
        model(**batch).loss.backward()
        if hook is not None:
            hook.end_batch()
        model.zero_grad()

    seconds = h.interleaved(
        {"none": lambda: step(None), "exact": lambda: step(exact), "sketch": lambda: step(sketch)}, 30
    )
    exact.reset()
    sketch.reset()
    return {mode: h.median(values) for mode, values in seconds.items()}


def measure_loss_rows(workdir: Path, row_counts: list[int], repeats: int, updates: int) -> dict[str, Any]:
    """The noise of the task weights and of l_c at n observation rows (module docstring, benchmarks/README.md).

    The seed-0 `uniform` config is retrained once with a checkpoint every budget / (batch x `updates`) steps
    (the update interval); every task's observation and held-out rows are scored at the start and at each
    checkpoint; n rows per task drawn with replacement (fixed for the whole run, as the plugin's are) give
    the loss histories, from which the rule's own functions give l_c, l_p and the `relative` weights at
    every update, compared with those of all the rows."""
    import numpy as np
    import torch
    import yaml

    from llamafactory_dids.algorithms.dids import task_weights, trajectory_terms
    from llamafactory_dids.algorithms.features import row_losses

    config = yaml.safe_load((workdir / "seed0" / "uniform" / "config.yaml").read_text(encoding="utf-8"))
    run_dir = workdir / "seed0" / "uniform_checkpoints"
    interval = config["dids_budget"] // (config["per_device_train_batch_size"] * updates)
    if len(list((run_dir / "output").glob("checkpoint-*"))) < updates:
        options = {"save_strategy": "steps", "save_steps": interval, "save_only_model": True}
        h.launch(
            h.train_cli(),
            run_dir,
            {**config, **options, "output_dir": str(run_dir / "output")},
            h.offline_env(),
        )
    states = [config["model_name_or_path"]] + [
        str(run_dir / "output" / f"checkpoint-{interval * (t + 1)}") for t in range(updates)
    ]
    tokenizer, pad = h.tokenizer(config["model_name_or_path"])  # the tiny model's directory holds its own
    data = workdir / "assets" / "data"
    tasks = ("python", "comments", "tables")
    rows = [
        h.encode_file(data / f"quality_obs_{t}.json", tokenizer, config["cutoff_len"])
        + h.encode_file(data / f"quality_heldout_{t}.json", tokenizer, config["cutoff_len"])
        for t in tasks
    ]
    # [state, task, row] loss sums and tokens (a task's rows past its own count are never drawn)
    sums = np.zeros((len(states), len(tasks), max(len(r) for r in rows)))
    tokens = np.zeros_like(sums)
    for s, state in enumerate(states):
        model = h.load_model(state)
        for j, task_rows in enumerate(rows):
            for i in range(0, len(task_rows), 8):
                batch = h.collate(task_rows[i : i + 8], pad)
                with torch.no_grad():
                    logits = model(
                        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                    ).logits
                loss, count = row_losses(logits, batch["labels"])
                sums[s, j, i : i + 8], tokens[s, j, i : i + 8] = loss.double().numpy(), count.numpy()

    def weights(chosen: list[Any]) -> tuple[Any, Any]:
        history = np.array(
            [
                [sums[s, j, c].sum() / tokens[s, j, c].sum() for j, c in enumerate(chosen)]
                for s in range(len(states))
            ]
        )
        out = [trajectory_terms(history[: t + 1], use_trajectory=True) for t in range(1, len(states))]
        w = [task_weights(l_c, l_p, history[t + 1], "relative") for t, (l_c, l_p, _) in enumerate(out)]
        return np.array(w), np.array([l_c for l_c, _, _ in out])

    all_w, all_lc = weights([np.arange(len(r)) for r in rows])
    result = {"rows": row_counts, "repeats": repeats, "pool": [len(r) for r in rows], "interval": interval}
    result["weights"], result["l_c"] = all_w.tolist(), all_lc.tolist()
    result["weight_error"], result["l_c_noise"] = {}, {}
    rng = np.random.default_rng(0)
    for n in row_counts:
        draws = [weights([rng.integers(0, len(r), n) for r in rows]) for _ in range(repeats)]
        w_err = np.array([w - all_w for w, _ in draws])
        lc_err = np.array([lc - all_lc for _, lc in draws])
        result["weight_error"][n] = float(np.sqrt((w_err**2).mean()) * len(tasks))  # in units of 1/m
        result["l_c_noise"][n] = float(np.sqrt((lc_err**2).mean()) / np.sqrt((all_lc**2).mean()))
    return result


def build_parser() -> Any:
    p = h.parser(
        __doc__,
        quick="rows 2,8,32, 3 repeats; loss rows 8,16,64, 30 draws",
        workdir=Path("quality_results/work"),
    )
    p.add_argument("--rows", default="2,4,8,16,32")
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--sketch-dims", default="256,1024,4096", help="buckets per layer of the domain sketch")
    p.add_argument("--sketch-steps", type=int, default=40, help="micro-batches of 8 rows the hooks see")
    p.add_argument("--loss-rows", default="4,8,16,32,64,200", help="observation rows per task to try")
    p.add_argument("--loss-repeats", type=int, default=300)
    p.add_argument(
        "--updates", type=int, default=10, help="mixture updates of the run (quality: 10; --model: 8)"
    )
    p.add_argument("--only", choices=("rank", "sketch", "loss-rows"), nargs="+", default=None)
    return p


def run(args: Any) -> tuple[list[Figure], dict[str, Any]]:
    import torch

    torch.set_num_threads(args.threads)
    only, ints = (
        set(args.only or ("rank", "sketch", "loss-rows")),
        lambda text: [int(n) for n in text.split(",")],
    )
    result = measure(args.workdir, ints(args.rows), args.repeats) if "rank" in only else {}
    if "sketch" in only:
        result["sketch"] = measure_sketch(args.workdir, ints(args.sketch_dims), args.sketch_steps)
    if "loss-rows" in only:
        result["loss_rows"] = measure_loss_rows(
            args.workdir, ints(args.loss_rows), args.loss_repeats, args.updates
        )
    return report(result), result


def report(result: dict[str, Any]) -> list[Figure]:
    figures = [
        Figure(f"rank accuracy, {form}, {n} rows", value)
        for form, by_rows in result.get("accuracy", {}).items()
        for n, value in by_rows.items()
    ]
    for n, value in result.get("loss_rows", {}).get("weight_error", {}).items():
        noise = result["loss_rows"]["l_c_noise"][n]
        text = f"{value:.3f} (l_c: noise / signal {noise:.3f})"
        figures.append(Figure(f"task weights at {n} observation rows: RMS error x m", value, text=text))
    if "sketch" not in result:
        return figures
    sketch, step = result["sketch"], result["sketch"]["step_seconds"]
    smaller = [s for s in sketch["sketches"] if s["bytes"] < sketch["exact_bytes"]]
    for s in sketch["sketches"]:
        target = (0.98, ">=") if smaller and s is smaller[0] else (None, None)
        text = (
            f"{s['spearman']:.4f} ({s['bytes'] / 1e6:.2f} MB vs exact {sketch['exact_bytes'] / 1e6:.2f} MB)"
        )
        name = f"domain sketch, {s['dim']} per layer: Spearman of cross terms with the exact"
        figures.append(Figure(name, s["spearman"], "", *target, text=text))
    for mode in ("exact", "sketch"):
        ratio, text = step[mode] / step["none"], f"({1000 * step[mode]:.1f} vs {1000 * step['none']:.1f} ms)"
        name = f"training micro-batch with domain-gradient hooks ({mode}) / idle"
        figures.append(Figure(name, ratio, "", 1.03, "<=", text=f"{ratio:.3f} {text}"))
    return figures


figures, main = h.entry("impact_rows.py", build_parser, run, QUICK)

if __name__ == "__main__":
    sys.exit(main())
