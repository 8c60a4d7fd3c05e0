"""`llamafactory-dids` command line.

Role: entry points around the training run (which itself stays `llamafactory-cli train`).
Subcommands:
  demo     build the embedded default (tiny Llama, tokenizer, 3-domain dataset from real text) and
           train it with `examples/yaml/demo_sft.yaml` through the unchanged `llamafactory-cli train`.
  keys     list every `dids_*` key with its default and help.
  compare  train several strategies on one YAML and print one table (target-task losses, weights, time).
  export-weights  write a run's averaged weights as `dids_strategy: static` keys (offline DoGE/DoReMi).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

DEMO_YAML = Path("examples/yaml/demo_sft.yaml")
DEMO_WORKDIR = Path("dids_demo")


def find_llamafactory_cli() -> str | None:
    """`llamafactory-cli` next to this interpreter first (a venv's bin works without activation), else PATH."""
    return shutil.which("llamafactory-cli", path=str(Path(sys.executable).parent)) or shutil.which(
        "llamafactory-cli"
    )


def _demo(args: argparse.Namespace) -> int:
    from .demo import build_demo_assets

    config = Path(args.config)
    if not config.is_file():
        print(
            f"error: {config} not found. Run `llamafactory-dids demo` from the root of the llamafactory-dids "
            "checkout, or pass --config PATH to a training YAML.",
            file=sys.stderr,
        )
        return 2
    assets = build_demo_assets(Path(args.workdir) / "assets")
    print(f"[dids] demo model and tokenizer: {assets.model_dir}")
    print(f"[dids] demo datasets:            {assets.dataset_dir}")
    cli = find_llamafactory_cli()
    here = str(Path(sys.executable).parent)
    if cli is None:
        print("error: `llamafactory-cli` is not on PATH; install llamafactory (see README).", file=sys.stderr)
        return 2
    # the YAML's paths are the default workdir's; point them at the assets just built
    paths = [f"model_name_or_path={assets.model_dir}", f"dataset_dir={assets.dataset_dir}"]
    command = [cli, "train", str(config), *paths, *args.overrides]
    print("[dids] running:", " ".join(command), flush=True)
    env = {**os.environ, "PATH": here + os.pathsep + os.environ.get("PATH", "")}  # torchrun, if launched
    result = subprocess.run(command, check=False, env=env)
    if result.returncode != 0:
        return result.returncode
    output_dir = _output_dir(config, args.overrides)
    print(f"[dids] training outputs:  {output_dir}")
    print(f"[dids] mixture history:   {output_dir / 'history.jsonl'}")
    print(
        f"[dids] training log:      {output_dir / 'trainer_log.jsonl'} (per-domain loss and fractions under dids/*)"
    )
    return 0


def _output_dir(config: Path, overrides: list[str]) -> Path:
    import yaml

    with open(config, encoding="utf-8") as f:
        out = yaml.safe_load(f).get("output_dir", "")
    for item in overrides:
        if item.startswith("output_dir="):
            out = item.split("=", 1)[1]
    return Path(out)


def _keys(args: argparse.Namespace) -> int:
    from .config import DIDSConfig

    rows = [
        {"key": f.name, "default": f.default, "help": f.metadata.get("help", "")}
        for f in dataclasses.fields(DIDSConfig)
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['key']} (default: {row['default']!r})\n    {row['help']}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .compare import CompareError, run_compare

    cli = find_llamafactory_cli()
    if cli is None:
        print("error: `llamafactory-cli` is not on PATH; install llamafactory (see README).", file=sys.stderr)
        return 2
    # `--strategies a b key=value` puts the overrides into the strategy list: move them back
    strategies = [s for s in args.strategies if "=" not in s]
    overrides = [s for s in args.strategies if "=" in s] + list(args.overrides)
    try:
        code, _ = run_compare(args.config, strategies, overrides, cli=cli)
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return code


def _export_weights(args: argparse.Namespace) -> int:
    from .export import static_weights_yaml

    try:
        text = static_weights_yaml(args.run_dir, how=args.how)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"[dids] wrote {args.output}")
    else:
        print(text, end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llamafactory-dids", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train the embedded tiny default end to end (no downloads)")
    demo.add_argument("--config", default=str(DEMO_YAML), help="training YAML (default: %(default)s)")
    demo.add_argument("--workdir", default=str(DEMO_WORKDIR), help="where assets go (default: %(default)s)")
    demo.add_argument("overrides", nargs="*", help="key=value overrides passed to llamafactory-cli train")
    demo.set_defaults(func=_demo)

    keys = sub.add_parser("keys", help="list the dids_* keys")
    keys.add_argument("--json", action="store_true")
    keys.set_defaults(func=_keys)

    compare = sub.add_parser("compare", help="train several strategies on one YAML and print one table")
    compare.add_argument("config", help="training YAML with dids_target_datasets (and update interval)")
    compare.add_argument("--strategies", nargs="+", required=True, help="e.g. uniform dids dga doge")
    compare.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    compare.set_defaults(func=_compare)

    export = sub.add_parser("export-weights", help="a run's learned weights as `dids_strategy: static` keys")
    export.add_argument("run_dir", help="output_dir of a finished run (history.jsonl)")
    export.add_argument(
        "--how", choices=("average", "final"), default="average", help="mean over updates or last weights"
    )
    export.add_argument("-o", "--output", help="YAML file to write (default: print)")
    export.set_defaults(func=_export_weights)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
