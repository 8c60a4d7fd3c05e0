"""Shared by the benchmark scripts: a fresh run directory with the training YAML written into it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def new_run(
    workdir: Path, tag: str, make_config: Callable[[Path], dict[str, Any]]
) -> tuple[Path, Path, Path]:
    """Empty `workdir/runs/tag`, write `make_config(output_dir)` as its config.yaml.

    Returns (run_dir, output_dir, config_path).
    """
    import yaml

    run_dir = workdir / "runs" / tag
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    output_dir = run_dir / "output"
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(make_config(output_dir)), encoding="utf-8")
    return run_dir, output_dir, config_path
