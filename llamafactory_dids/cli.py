"""`llamafactory-dids` command line.

Role: entry points around the training run (which itself stays `llamafactory-cli train`).
Subcommands:
  demo     build the embedded default (tiny Llama, tokenizer, 3-domain dataset from real text) and
           train it with `examples/yaml/demo_sft.yaml` through the unchanged `llamafactory-cli train`.
  keys     list every `dids_*` key with its default and help.
  repartition  split a training set into gradient-based domains with a proxy model (paper section 4.1);
           writes a labelled dataset that a training YAML uses with `dids_domain_column: dids_domain`.
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


def _repartition(args: argparse.Namespace) -> int:
    import logging

    import yaml

    from .repartition import RepartitionConfigError, RepartitionInputError, run_repartition

    try:
        with open(args.config, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as err:
        print(f"error: cannot read {args.config}: {err}", file=sys.stderr)
        return 2
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"error: override {item!r} must be key=value (e.g. dids_num_domains=12).", file=sys.stderr)
            return 2
        config[key.strip()] = yaml.safe_load(value)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = run_repartition(config)
    except (RepartitionConfigError, RepartitionInputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"[dids] repartitioned dataset: {out / 'data.jsonl'} (dataset_info.json entry `dids_repartitioned`)"
    )
    print(f"[dids] domain map and report:  {out / 'domain_map.json'}, {out / 'report.md'}")
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

    repartition = sub.add_parser(
        "repartition", help="split a dataset into gradient-based domains (proxy model)"
    )
    repartition.add_argument("config", help="repartition YAML (see docs/repartition.md)")
    repartition.add_argument("overrides", nargs="*", help="key=value overrides of the YAML")
    repartition.set_defaults(func=_repartition)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
