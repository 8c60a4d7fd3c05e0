"""Quality benchmark: held-out target-task loss of every mixing strategy on real multi-domain text
(docs/quality-benchmark.md). Modules: corpus -> build -> runs -> evaluate, tied together by bench."""

from .bench import figure_records, format_markdown, run_benchmark

__all__ = ["figure_records", "format_markdown", "run_benchmark"]
