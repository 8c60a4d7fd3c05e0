"""Small helpers every layer shares: the ignored-label value, rank lookup, atomic writes, `key=value` overrides.

Role: the bottom of the import graph next to `config` (standard library only at import time; torch and
yaml are imported by the functions that need them), so any module can use it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

# Label of a token that is not supervised (prompt, padding); = llamafactory.extras.constants.IGNORE_INDEX
# and the default `ignore_index` of torch's cross-entropy and of transformers' causal-LM loss.
IGNORE_INDEX = -100


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised torch.distributed process group; (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def collective_device() -> Any:
    """The device a collective of the current process group runs on: CUDA under NCCL, else the CPU."""
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def max_over_ranks(value: int, device: Any = None) -> int:
    """The largest `value` of any rank (collective; `value` itself outside a process group of more than one
    rank). `device`: where the collective runs (None: `collective_device()`)."""
    if rank_and_world()[1] == 1:
        return value
    import torch
    import torch.distributed as dist

    out = torch.tensor([value], dtype=torch.int64, device=collective_device() if device is None else device)
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return int(out.item())


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8"
) -> Iterator[IO]:
    """Open a temporary file next to `path` for writing; on success it replaces `path` in one rename.

    Readers see either the old file or the complete new one, never a partial write. If the body raises, the
    temporary file is deleted and `path` is left as it was. `mode` is "w" (text, `encoding`) or "wb".
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode must be 'w' or 'wb', got {mode!r}.")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` through `atomic_write`."""
    with atomic_write(path) as f:
        f.write(text)


class OverrideError(ValueError):
    """A command-line override that is not `key=value`."""


def parse_override(item: str) -> tuple[str, Any]:
    """One `key=value` override -> (key, value).

    Typing rule (the same for every command): the key is stripped; the value is read as the YAML value of
    `key: value` in a config file would be, so `1` is an int, `1.5` a float, `true`/`false` booleans,
    `[a, b]` a list, `null` or nothing None, and anything else (`a,b`, `./out`, `auto:4`) the string itself.

    Raises:
        OverrideError: `item` has no `=`.
    """
    import yaml

    key, sep, value = item.partition("=")
    if not sep:
        raise OverrideError(f"override {item!r} is not key=value (e.g. dids_budget=1000).")
    return key.strip(), yaml.safe_load(value) if value.strip() else None


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`key=value` overrides -> {key: value} typed by `parse_override` (a repeated key: the last wins)."""
    return dict(parse_override(item) for item in items)


def read_yaml_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML config file as a dict ({} for an empty file)."""
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}
