#!/usr/bin/env python
"""`python benchmarks/quality/run.py [--quick] ...`: the quality benchmark as a script (see cli.py).

`benchmarks/run_all.py` imports this file by path and calls `figures(argv)`.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # imported by path: make `benchmarks.quality` importable
    sys.path.insert(0, str(REPO))

from benchmarks.quality.cli import figures, main  # noqa: E402

__all__ = ["figures", "main"]

if __name__ == "__main__":
    sys.exit(main())
