"""What the gradient probe needs from torch.distributed and DeepSpeed ZeRO-3, apart from the probe itself.

Role: the distributed layer of `runtime.probe`. Replicated (DDP or one process), a rank's partial sums are
all-reduced (`all_reduce`). Under ZeRO-3 (parameters partitioned across ranks, `is_partitioned`) every
forward gathers parameters collectively, so all ranks run the same number of passes (`utils.max_over_ranks`
gives the count to pad to), and each micro-batch-summed gradient is reduce-scattered so that a rank keeps
only its slice of the coordinates, chunk `rank` of every probed tensor (`CoordinateShards`). Outside a
process group every function is the identity on one rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from ..utils import rank_and_world


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (nothing outside a process group of more than one rank)."""
    if rank_and_world()[1] > 1:
        dist.all_reduce(tensor)
    return tensor


def is_partitioned(param: torch.Tensor) -> bool:
    """True for a DeepSpeed ZeRO-3 parameter, whose data lives in shards across ranks."""
    return hasattr(param, "ds_shape") and hasattr(param, "ds_tensor")


class CoordinateShards:
    """The slice of the probed coordinates a rank keeps in sharded mode: chunk `rank` of every tensor.

    `reduce` takes a rank's full-length partial sums (one flat tensor per probed tensor) and a count,
    sums them over ranks and returns only this rank's chunks plus the total count: a reduce-scatter
    (NCCL) or an all-reduce followed by slicing (gloo has no reduce-scatter).
    """

    def __init__(self, sizes: Sequence[int], rank: int, world: int):
        self.rank, self.world = rank, world
        # bounds[b][r] = (start, stop) of rank r's chunk of tensor b
        self.bounds = [_chunks(n, world) for n in sizes]
        self.sizes = list(sizes)
        lengths = [sum(stop - start for start, stop in (b[r] for b in self.bounds)) for r in range(world)]
        self.segment = max(lengths) + 1  # + a slot for the count

    @property
    def spans(self) -> list[tuple[int, int]]:
        """(start, full_length) of this rank's chunk of every tensor (for the projection)."""
        return [(b[self.rank][0], n) for b, n in zip(self.bounds, self.sizes, strict=True)]

    def reduce(self, blocks: Sequence[torch.Tensor], count: float) -> tuple[list[torch.Tensor], float]:
        """blocks: per tensor, flat [n_b] partial sums of this rank. Returns this rank's summed chunks and count."""
        device = blocks[0].device
        buffer = torch.zeros(self.world * self.segment, dtype=torch.float32, device=device)
        for r in range(self.world):
            offset = r * self.segment
            for block, bound in zip(blocks, self.bounds, strict=True):
                start, stop = bound[r]
                buffer[offset : offset + stop - start] = block[start:stop]
                offset += stop - start
            buffer[(r + 1) * self.segment - 1] = count
        if self.world == 1:
            mine = buffer
        elif dist.get_backend() == "nccl":
            mine = torch.empty(self.segment, dtype=buffer.dtype, device=device)
            dist.reduce_scatter_tensor(mine, buffer)
        else:
            dist.all_reduce(buffer)
            mine = buffer[self.rank * self.segment : (self.rank + 1) * self.segment]
        chunks, offset = [], 0
        for bound in self.bounds:
            start, stop = bound[self.rank]
            chunks.append(mine[offset : offset + stop - start].clone())
            offset += stop - start
        return chunks, float(mine[-1])


def _chunks(n: int, world: int) -> list[tuple[int, int]]:
    """(start, stop) of `world` near-equal consecutive chunks of range(n)."""
    base, extra = divmod(n, world)
    out, start = [], 0
    for r in range(world):
        stop = start + base + (1 if r < extra else 0)
        out.append((start, stop))
        start = stop
    return out
