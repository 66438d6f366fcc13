"""One denoiser call split across ``torch.distributed`` ranks: a Picard round on k devices costs about one call.

Chen et al. 2024 (parallel-in-time sampling): the points of a Picard round are independent given the
previous iterate, so the round's batch (window points x members) can be evaluated anywhere. Every rank runs
the same sampler on the same members; each evaluates a slice of every batch and an all-gather gives all
ranks the whole result, so their states stay identical and any rank can write the output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["SplitDenoiser", "split_slices"]


def split_slices(batch: int, world: int) -> list[tuple[int, int]]:
    """Equal slices ``[(start, stop), ...]`` of ``ceil(batch / world)`` items per rank (the last ones padded).

    Parameters
    ----------
    batch
        Items in the call.
    world
        Number of ranks.
    """
    per = -(-batch // world)
    return [(r * per, (r + 1) * per) for r in range(world)]


class SplitDenoiser:
    """Wrap ``denoiser(x, sigma)`` so that each call is shared by the ranks of a process group.

    Parameters
    ----------
    denoiser
        The model callable, on this rank's device.
    group
        The process group (default: the world).

    Notes
    -----
    The batch is padded to a multiple of the world size by repeating its last item (so every rank
    evaluates a valid input of the same shape), each rank evaluates its slice, and
    :func:`torch.distributed.all_gather` assembles the result. Results agree with one process within the
    float tolerance of a smaller batch (bitwise wherever the network is batch-invariant).
    """

    def __init__(self, denoiser: Callable[..., torch.Tensor], group: Any = None):
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("SplitDenoiser needs an initialised torch.distributed process group")
        self.denoiser, self.group = denoiser, group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None
                 ) -> torch.Tensor:
        import torch.distributed as dist

        b = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(b)
        lo, hi = split_slices(b, self.world)[self.rank]
        per = hi - lo
        pad = per * self.world - b
        if pad:
            x = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])])
            sigma = torch.cat([sigma, sigma[-1:].expand(pad)])
            if cond is not None:
                cond = torch.cat([cond, cond[-1:].expand(pad, *cond.shape[1:])])
        part = None if cond is None else cond[lo:hi]
        mine = (self.denoiser(x[lo:hi], sigma[lo:hi]) if part is None
                else self.denoiser(x[lo:hi], sigma[lo:hi], part)).contiguous()
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(parts, mine, group=self.group)
        return torch.cat(parts)[:b]
