#!/usr/bin/env python
"""The GPU path end to end: a small Llama in bf16 under DeepSpeed ZeRO-3, `dids` against `uniform`.

    python benchmarks/gpu_path.py                    # every visible GPU (torchrun when more than one)
    python benchmarks/gpu_path.py --gpus 1 --json gpu.json --workdir /tmp/dids-gpu

Needs CUDA and DeepSpeed; without a GPU it says so and exits 0 (nothing is measured).

Method: benchmarks/README.md, gpu_path.py.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import _harness as h  # benchmarks/ is on sys.path when a script runs
from _harness import Figure

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


def run(workdir: Path, assets: Any, model: Path, strategy: str, args: Any, tag: str) -> dict:
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

    env = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(args.gpus)} if args.gpus > 1 else {}
    result = h.train(workdir / "runs" / tag, make_config, args.threads, **env)
    results = result.results
    return {
        "strategy": strategy,
        "train_runtime_s": float(results["train_runtime"]),
        "samples_per_s": float(results["train_samples_per_second"]),
        "update_seconds": result.update_seconds(),
    }


def build_parser() -> Any:
    import torch

    p = h.parser(__doc__, threads=0, quick="1 round")
    p.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--cutoff", type=int, default=1024)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--budget", type=int, default=4000)
    p.add_argument("--updates", type=int, default=25)
    p.add_argument("--repeats", type=int, default=2)
    return p


def measure(args: Any) -> tuple[list[Figure], dict[str, Any] | None]:
    """The figures and the runs, or one figure saying why nothing was measured."""
    import torch

    if not torch.cuda.is_available() or args.gpus < 1:
        return [Figure("GPU path (bf16, ZeRO-3)", None, text="not measured: no CUDA GPU visible")], None
    runs: dict[str, list[dict]] = {"uniform": [], "dids": []}
    with h.workdir(args.workdir, "dids-gpu-") as workdir:
        assets = h.demo_assets(workdir)
        model = build_model(assets, args.layers, args.hidden)
        for r in range(args.repeats):
            for strategy in ("uniform", "dids") if r % 2 == 0 else ("dids", "uniform"):
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
    return report(summary, args), {"args": vars(args), "summary": summary, "runs": runs}


def report(summary: dict[str, Any], args: Any) -> list[Figure]:
    print(f"\nGPU path: {summary['device']}, bf16, DeepSpeed ZeRO-3, Llama {args.layers}x{args.hidden}")
    out = [
        Figure(
            f"GPU ({summary['device']}, bf16, ZeRO-3): uniform throughput",
            summary["uniform_samples_per_s"],
            unit="samples/s",
        ),
        Figure("GPU: dids throughput", summary["dids_samples_per_s"], unit="samples/s"),
        Figure("GPU: whole-run train_runtime dids / uniform", summary["runtime_ratio"]),
        Figure("GPU: seconds per update (median)", summary["update_seconds"], unit="s", detail=True),
        Figure("GPU: share of the dids run in updates", 100 * summary["update_share"], unit="%", detail=True),
    ]
    return out


figures, main = h.entry("gpu_path.py", build_parser, measure, {"repeats": 1})

if __name__ == "__main__":
    sys.exit(main())
