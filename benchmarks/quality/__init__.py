"""Quality benchmark: held-out target-task loss of every mixing strategy on real multi-domain text.

`python -m benchmarks.quality [--quick]` builds a multi-domain dataset from text found on the machine
(stdlib sources and docs, C headers, dist-info licenses and metadata, scikit-learn's tables), trains a
tiny Llama under each registered `dids_strategy` with one budget, and reports held-out task losses with
their ratio to `uniform`, plus the purity of `llamafactory-dids repartition` on a source hiding two kinds
of content (the paper's section 5.5.2 robustness setting). Modules: corpus -> build -> runs -> evaluate,
tied together by bench. `figure_records(results)` gives flat figures for a combined report.
"""

from .bench import figure_records, format_markdown, run_benchmark

__all__ = ["figure_records", "format_markdown", "run_benchmark"]
