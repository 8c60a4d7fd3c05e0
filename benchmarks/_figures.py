"""Shared by the benchmark scripts and `run_all.py`: one measured figure, with its target and verdict.

Every script exposes `figures(argv: list[str] | None = None) -> list[Figure]`: it runs with its own
command-line arguments `argv` (the same as `python benchmarks/<script>.py ARGV`) and returns its
figures; `run_all.py` gathers them into one table.
"""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass
from typing import Any

COMPARATORS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq}


@dataclass
class Figure:
    """One figure. `target` + `comparator` make it pass/fail; without them it is informational.

    `text` overrides how the value is shown (e.g. "14.3 / 14.2 s"); `target_text` describes a target
    that is not a number to compare with (shown, no verdict).
    """

    name: str
    value: float | None
    unit: str = ""
    target: float | None = None
    comparator: str | None = None
    text: str | None = None
    target_text: str | None = None
    command: str = ""

    def __post_init__(self) -> None:
        if self.comparator is not None and self.comparator not in COMPARATORS:
            raise ValueError(f"comparator must be one of {', '.join(COMPARATORS)}, got {self.comparator!r}.")
        if (self.target is None) != (self.comparator is None):
            raise ValueError(f"figure {self.name!r}: give both `target` and `comparator`, or neither.")

    @property
    def passed(self) -> bool | None:
        """True/False against the target; None when informational or not measured (value None or NaN)."""
        if self.comparator is None or self.value is None or math.isnan(self.value):
            return None
        return bool(COMPARATORS[self.comparator](self.value, self.target))

    def value_text(self) -> str:
        if self.text is not None:
            return self.text
        if self.value is None:
            return "-"
        return f"{self.value:.4g}{(' ' + self.unit) if self.unit else ''}"

    def target_description(self) -> str:
        if self.comparator is not None:
            return f"{self.comparator} {self.target:g}{(' ' + self.unit) if self.unit else ''}"
        return self.target_text or ""

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Figure:
        return cls(**{k: v for k, v in data.items() if k != "passed"})
