"""`python -m benchmarks.quality`: see benchmarks/quality/cli.py."""

import sys

from .cli import main

sys.exit(main())
