#!/usr/bin/env python
"""The GPU path end to end: a small Llama in bf16 under DeepSpeed ZeRO-3, `dids` against `uniform`.

    python benchmarks/gpu_path.py                    # every visible GPU (torchrun when more than one)
    python benchmarks/gpu_path.py --gpus 1 --json gpu.json --workdir /tmp/dids-gpu

Needs CUDA and DeepSpeed; without a GPU it says so and exits 0 (nothing is measured). Offline: the demo
tokenizer and datasets (`llamafactory_dids.demo.build_demo_assets`) and a Llama of `--layers` blocks,
hidden `--hidden`, built here with random weights and saved next to the demo model.

Each strategy runs `llamafactory-cli train` on the demo SFT config with `bf16: true`, a ZeRO-3 DeepSpeed
config, `cutoff_len: --cutoff`, batch `--batch` per GPU, `dids_budget: --budget` samples; `dids` adds
the demo target set (m = 1), `dids_num_updates: --updates`, 16 probe rows per domain and per task.
Figures: training throughput (the Trainer's `train_samples_per_second`, start-up excluded) of each run,
the whole-run `train_runtime` ratio dids / uniform, the median seconds of one mixture update (from
history.jsonl) and the share of the dids run spent in updates. Runs are interleaved `--repeats` times;
medians are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from dids_update import _cli

from llamafactory_dids.run_files import read_history

from _figures import Figure  # benchmarks/ is on sys.path when a script runs
from _runs import new_run, offline_env

ZERO3 = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "zero_allow_untested_optimizer": True,
    "bf16": {"enabled": "auto"},
    "zero_optimization": {
        "stage": 3,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "stage3_gather_16bit_weights_on_model_save": True,
    },
}


def build_model(assets: Any, layers: int, hidden: int) -> Path:
    """A random Llama with the demo tokenizer, saved under the assets."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = assets.root / f"llama-{layers}x{hidden}"
    if (out / "config.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 256),
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def run(workdir: Path, assets: Any, model: Path, strategy: str, args: argparse.Namespace, tag: str) -> dict:
    from llamafactory_dids.demo import demo_training_config

    ds_path = workdir / "ds_z3.json"
    ds_path.write_text(json.dumps(ZERO3))

    def make_config(output_dir: Path) -> dict[str, Any]:
        config = demo_training_config(
            assets,
            output_dir,
            model_name_or_path=str(model),
            cutoff_len=args.cutoff,
            per_device_train_batch_size=args.batch,
            per_device_eval_batch_size=args.batch,
            bf16=True,
            deepspeed=str(ds_path),
            dids_strategy=strategy,
            dids_budget=args.budget,
        )
        if strategy == "dids":
            config.update(
                dids_target_datasets="demo_target_code",
                dids_target_samples=32,
                dids_probe_samples=16,
                dids_num_updates=args.updates,
            )
        return config

    run_dir, output_dir, config_path = new_run(workdir, tag, make_config)
    env = offline_env()
    if args.gpus > 1:
        env.update({"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(args.gpus)})
    with open(run_dir / "train.log", "w", encoding="utf-8") as log:
        proc = subprocess.run(
            [_cli(), "train", str(config_path)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    if proc.returncode != 0:
        tail = (run_dir / "train.log").read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"{tag} failed (exit {proc.returncode}):\n{tail}")
    results = json.loads((output_dir / "train_results.json").read_text())
    records, _ = read_history(output_dir, missing_ok=True)
    updates = [float(r["seconds"]) for r in records if r["update"] > 0]
    return {
        "strategy": strategy,
        "train_runtime_s": float(results["train_runtime"]),
        "samples_per_s": float(results["train_samples_per_second"]),
        "update_seconds": updates,
    }


def build_parser() -> argparse.ArgumentParser:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--cutoff", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--budget", type=int, default=4000)
    parser.add_argument("--updates", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    return parser


def measure(args: argparse.Namespace) -> dict[str, Any] | None:
    """The runs and their summary, or None without a GPU."""
    import torch

    if not torch.cuda.is_available() or args.gpus < 1:
        return None
    from llamafactory_dids.demo import build_demo_assets

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dids-gpu-"))
    assets = build_demo_assets(workdir / "assets")
    model = build_model(assets, args.layers, args.hidden)
    runs: dict[str, list[dict]] = {"uniform": [], "dids": []}
    for r in range(args.repeats):
        order = ("uniform", "dids") if r % 2 == 0 else ("dids", "uniform")
        for strategy in order:
            runs[strategy].append(run(workdir, assets, model, strategy, args, f"{strategy}-{r}"))

    def median(strategy: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[strategy])

    updates = [s for run in runs["dids"] for s in run["update_seconds"]]
    summary = {
        "device": f"{args.gpus} x {torch.cuda.get_device_name(0)}",
        "uniform_samples_per_s": median("uniform", "samples_per_s"),
        "dids_samples_per_s": median("dids", "samples_per_s"),
        "runtime_ratio": median("dids", "train_runtime_s") / median("uniform", "train_runtime_s"),
        "update_seconds": statistics.median(updates) if updates else float("nan"),
        "update_share": sum(updates) / len(runs["dids"]) / median("dids", "train_runtime_s"),
    }
    if args.json:
        payload = {"args": vars(args) | {"workdir": str(workdir)}, "summary": summary, "runs": runs}
        args.json.write_text(json.dumps(payload, default=str, indent=2))
    return summary


def figures(argv: list[str] | None = None) -> list[Figure]:
    """Measure as `python benchmarks/gpu_path.py ARGV` does; without a GPU one row saying so."""
    argv = list(argv or [])
    summary = measure(build_parser().parse_args(argv))
    if summary is None:
        return [Figure("GPU path (bf16, ZeRO-3)", None, text="not measured: no CUDA GPU visible")]
    command = " ".join(["python benchmarks/gpu_path.py", *argv])
    return [
        Figure(
            f"GPU ({summary['device']}, bf16, ZeRO-3): uniform throughput",
            summary["uniform_samples_per_s"],
            unit="samples/s",
            command=command,
        ),
        Figure("GPU: dids throughput", summary["dids_samples_per_s"], unit="samples/s", command=command),
        Figure("GPU: whole-run train_runtime dids / uniform", summary["runtime_ratio"], command=command),
    ]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = measure(args)
    if summary is None:
        print("gpu_path: no CUDA GPU visible; nothing measured.")
        return 0
    print(f"\nGPU path: {summary['device']}, bf16, DeepSpeed ZeRO-3, Llama {args.layers}x{args.hidden}")
    print(f"throughput uniform: {summary['uniform_samples_per_s']:.2f} samples/s")
    print(f"throughput dids:    {summary['dids_samples_per_s']:.2f} samples/s")
    print(f"train_runtime dids / uniform: {summary['runtime_ratio']:.3f} ({args.updates} updates)")
    print(
        f"seconds per update (median): {summary['update_seconds']:.3f}; "
        f"share of the dids run: {summary['update_share']:.1%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
