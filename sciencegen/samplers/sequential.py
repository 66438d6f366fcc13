"""The sequential walk: the step table one step per round (DDPM / DDIM / DPM-Solver++ / EDM Heun).

Lu et al. 2022 (DPM-Solver++); Karras et al. 2022 (EDM Heun); Chen et al. 2024 (Langevin corrector, PIADM-ODE).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..diffusion import StepTable
from . import noise as _noise
from .engine import Conditions, Denoiser, WalkStats, WorkingTable, call_denoiser, check_finite, langevin_step

__all__ = ["sequential_walk"]


def sequential_walk(
    denoiser: Denoiser,
    table: StepTable,
    x: torch.Tensor,
    members: Sequence[int],
    seed: int,
    *,
    max_batch: int | None = None,
    corrector_at: Sequence[int] = (),
    corrector_steps: int = 0,
    corrector_size: float = 0.1,
    progress: Callable[[int], None] | None = None,
    cond: Conditions | None = None,
) -> tuple[torch.Tensor, WalkStats]:
    """Walk the step table one step at a time (DDPM / DDIM / DPM-Solver++ / EDM Heun).

    One round per step, two where the step has a predictor stage (Heun).

    Parameters
    ----------
    denoiser
        ``denoiser(x, s) -> E[x0 | x]`` in the EDM convention.
    table
        The step table.
    x
        VP states at ``t_0``, ``[M, *shape]``.
    members
        Global member indices (they select the noise streams).
    seed
        Run seed.
    max_batch
        Micro-batch size of the denoiser calls.
    corrector_at, corrector_steps, corrector_size
        Langevin corrector steps applied after reaching these grid indices.
    progress
        Called with the number of steps done after each step.
    cond
        The members' conditions (``None``: an unconditional denoiser, called with two arguments).

    Returns
    -------
    (torch.Tensor, WalkStats)
        Samples at noise level 0 and the cost record.
    """
    tab = WorkingTable(table, x.dtype, x.device)
    members = list(members)
    m = len(members)
    shape = tuple(x.shape[1:])
    stats = WalkStats()
    corr = set(int(c) for c in corrector_at if 0 < c < tab.n) if corrector_steps else set()
    d_prev = torch.zeros_like(x)
    call = _Caller(denoiser, max_batch, cond, torch.arange(m, device=x.device))
    for j in range(tab.n):
        jj = torch.full((m,), j, dtype=torch.long, device=x.device)
        xi = _noise.normal(seed, members, j, shape, dtype=x.dtype, device=x.device)
        x_next, d = _step(call, tab, x, d_prev, xi, jj, stats)
        x, d_prev = x_next, d
        if j + 1 in corr:
            x = _correct(call, tab, x, jj + 1, members, seed, corrector_steps, corrector_size, stats)
        if progress is not None:
            progress(j + 1)
    stats.rounds_per_member = torch.full((m,), stats.rounds, dtype=torch.long)
    stats.nfe_per_member = stats.rounds_per_member.clone()
    stats.fallbacks_per_member = torch.zeros(m, dtype=torch.long)
    return x, stats


class _Caller:
    """The walk's denoiser call: micro-batches of ``max_batch``, every member with its condition."""

    def __init__(self, denoiser: Denoiser, max_batch: int | None, cond: Conditions | None, rows: torch.Tensor):
        self.denoiser, self.max_batch, self.cond, self.rows = denoiser, max_batch, cond, rows

    def __call__(self, y: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return call_denoiser(self.denoiser, y, level, self.max_batch, self.cond, self.rows)


def _step(call: _Caller, tab: WorkingTable, x: torch.Tensor, d_prev: torch.Tensor, xi: torch.Tensor,
          jj: torch.Tensor, stats: WalkStats) -> tuple[torch.Tensor, torch.Tensor]:
    # one step x_j -> x_{j+1}: one round, two with Heun's predictor stage; returns (x_{j+1}, D_j)
    j = int(jj[0])
    y, lev = tab.source(x, jj, xi)
    d = call(y, lev)
    check_finite(d, jj, lev)
    stats.rounds += 1
    x_next = (tab.A[j] + tab.E[j]) * x + tab.B[j] * d + tab.C[j] * xi
    if tab.multistep:
        x_next = x_next + tab.B2[j] * d_prev
    if tab.pred[j]:
        yp, levp = tab.predictor(x, d, xi, jj)
        dp = call(yp, levp)
        check_finite(dp, jj + 1, levp)
        x_next = x_next + tab.B3[j] * dp
        stats.rounds += 1
    return x_next, d


def _correct(call: _Caller, tab: WorkingTable, x: torch.Tensor, jn: torch.Tensor, members: list[int],
             seed: int, steps: int, size: float, stats: WalkStats) -> torch.Tensor:
    # the block-end phase: ``steps`` Langevin corrector steps at grid point jn (one round each)
    j = int(jn[0])
    for k in range(steps):
        y, lev = tab.at_point(x, jn)
        d = call(y, lev)
        check_finite(d, jn, lev)
        z = _noise.normal(seed, members, j, tuple(x.shape[1:]), tag=_noise.corrector_tag(k),
                          dtype=x.dtype, device=x.device)
        x = langevin_step(x, d, jn, z, tab, size)
        stats.rounds += 1
    return x
