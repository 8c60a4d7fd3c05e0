"""Real offline text for the quality benchmark, one extractor per kind of content, each row with its
provenance (`origin`); files are visited in sorted order, so a build is reproducible."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import re
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from llamafactory_dids import demo

__all__ = ["KINDS", "Row", "collect"]

Row = dict[str, str]  # instruction, input, output, origin

MAX_CHARS = 600  # same cut as the demo datasets
MIN_CHARS = 80
TABLE_LINES = 6  # CSV lines per row of the `tables` kind


def _row(instruction: str, output: str, origin: str) -> Row:
    return {"instruction": instruction, "input": "", "output": output, "origin": origin}


def _chunks(blocks: Iterable[str], limit: int = MAX_CHARS) -> Iterator[str]:
    """Greedily join consecutive blank-line separated blocks into pieces of at most `limit` chars."""
    current = ""
    for block in blocks:
        block = block.strip("\n")
        if not block.strip():
            continue
        if len(block) > limit:
            if current:
                yield current
                current = ""
            yield demo.truncate(block, limit)
            continue
        joined = f"{current}\n\n{block}" if current else block
        if len(joined) > limit:
            yield current
            current = block
        else:
            current = joined
    if current:
        yield current


def _paragraphs(text: str) -> list[str]:
    return re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n"))


# ----------------------------------------------------------------------------------- stdlib kinds


def _stdlib_rows() -> dict[str, list[Row]]:
    """Function sources (`python`) and maintainers' comment blocks (`comments`), via the demo's parser."""
    candidates = demo.collect_candidates()
    module = re.compile(r"`([^`]+)`")

    def origin(instruction: str) -> str:
        names = module.findall(instruction)
        return f"stdlib:{names[-1] if names else '?'}"

    return {
        "python": [_row(r["instruction"], r["output"], origin(r["instruction"])) for r in candidates["code"]],
        "comments": [
            _row(r["instruction"], r["output"], origin(r["instruction"])) for r in candidates["comments"]
        ],
    }


def reference_rows() -> list[Row]:
    """The language reference as plain text (`pydoc_data.topics`), cut into paragraph groups."""
    from pydoc_data.topics import topics

    rows = []
    for topic in sorted(topics):
        for i, piece in enumerate(_chunks(_paragraphs(topics[topic]))):
            if len(piece) >= MIN_CHARS:
                rows.append(
                    _row(
                        f"Explain the Python language topic `{topic}`.",
                        piece,
                        f"pydoc_data.topics:{topic}#{i}",
                    )
                )
    return rows


def c_rows() -> list[Row]:
    """C declarations and macros from the headers of this Python installation."""
    include = Path(sysconfig.get_paths()["include"])
    rows = []
    for path in sorted(include.rglob("*.h")):
        rel = path.relative_to(include).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        for i, piece in enumerate(_chunks(_paragraphs(text))):
            if len(piece) >= MIN_CHARS:
                rows.append(_row(f"Continue the C header `{rel}`.", piece, f"include:{rel}#{i}"))
    return rows


# ------------------------------------------------------------------------------- dist-info kinds


def _dist_infos() -> list[Path]:
    purelib = Path(sysconfig.get_paths()["purelib"])
    return sorted(purelib.glob("*.dist-info"))


def _dist_name(dist_info: Path) -> str:
    return dist_info.name[: -len(".dist-info")].split("-")[0]


def license_rows() -> list[Row]:
    """Paragraphs of the license files shipped in `*.dist-info` (legal English)."""
    rows = []
    for info in _dist_infos():
        files = sorted(
            p
            for p in info.rglob("*")
            if p.is_file()
            and (p.parent.name == "licenses" or re.match(r"(LICEN[CS]E|COPYING|NOTICE)", p.name, re.I))
        )
        for path in files:
            text = path.read_text(encoding="utf-8", errors="replace")
            rel = path.relative_to(info.parent).as_posix()
            for i, piece in enumerate(_chunks(_paragraphs(text))):
                if len(piece) >= MIN_CHARS:
                    rows.append(_row(f"Continue the license of `{_dist_name(info)}`.", piece, f"{rel}#{i}"))
    return rows


_SKIP_FIELDS = ("license:", "description:")


def metadata_rows() -> list[Row]:
    """`Key: value` header fields of `*.dist-info/METADATA` (no free-text License/Description fields)."""
    rows = []
    for info in _dist_infos():
        path = info / "METADATA"
        if not path.is_file():
            continue
        header = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n").split("\n\n", 1)[0]
        lines, skipping = [], False
        for line in header.split("\n"):
            if line[:1] in (" ", "\t"):  # continuation of the previous field
                if not skipping:
                    lines.append(line)
                continue
            skipping = line.lower().startswith(_SKIP_FIELDS)
            if not skipping and line.strip():
                lines.append(line)
        rel = path.relative_to(info.parent).as_posix()
        for i, piece in enumerate(_chunks(lines, MAX_CHARS)):  # one "block" per line: fill up to the cut
            if len(piece) >= MIN_CHARS:
                rows.append(
                    _row(
                        f"List the metadata of `{_dist_name(info)}`.",
                        piece.replace("\n\n", "\n"),
                        f"{rel}#{i}",
                    )
                )
    return rows


# ------------------------------------------------------------------------------ irrelevant kind


def table_rows() -> list[Row]:
    """Runs of lines of the numeric CSV tables scikit-learn ships (`sklearn/datasets/data`)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The `tables` kind reads the CSV files shipped with scikit-learn (sklearn/datasets/data), "
            "but scikit-learn is not installed. Install scikit-learn."
        )
    data_dir = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    rows = []
    for path in sorted(data_dir.glob("*.csv*")):
        raw = path.read_bytes()
        text = (
            gzip.decompress(raw).decode() if path.suffix == ".gz" else raw.decode("utf-8", errors="replace")
        )
        lines = [",".join(cells) for cells in csv.reader(io.StringIO(text)) if cells]
        name = path.name.split(".")[0]
        for start in range(0, len(lines) - TABLE_LINES + 1, TABLE_LINES):
            piece = demo.truncate("\n".join(lines[start : start + TABLE_LINES]), MAX_CHARS)
            if len(piece) >= MIN_CHARS // 2:
                rows.append(
                    _row(f"Continue the table `{name}`.", piece, f"sklearn/datasets/data/{path.name}:{start}")
                )
    return rows


#: kind -> extractor; every extractor returns rows in a deterministic order.
KINDS: dict[str, Callable[[], list[Row]]] = {
    "python": lambda: _stdlib_rows()["python"],
    "comments": lambda: _stdlib_rows()["comments"],
    "reference": reference_rows,
    "c": c_rows,
    "licenses": license_rows,
    "metadata": metadata_rows,
    "tables": table_rows,
}


def collect(kinds: Iterable[str]) -> dict[str, list[Row]]:
    """Rows of each requested kind, deduplicated by output within and across kinds (first kind wins)."""
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"Unknown corpus kinds {unknown}; known: {sorted(KINDS)}.")
    stdlib = _stdlib_rows() if {"python", "comments"} & set(kinds) else {}
    seen: set[str] = set()
    out: dict[str, list[Row]] = {}
    for kind in kinds:
        rows = stdlib[kind] if kind in stdlib else KINDS[kind]()
        kept = []
        for row in rows:
            key = " ".join(row["output"].split())  # whitespace-insensitive: license copies differ in indent
            if key not in seen:
                seen.add(key)
                kept.append(row)
        out[kind] = kept
    return out
