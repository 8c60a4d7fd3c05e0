"""`python -m benchmarks.quality`: see benchmarks/quality/run.py."""

import sys

from .run import main

sys.exit(main())
