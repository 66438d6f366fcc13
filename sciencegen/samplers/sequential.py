"""The sequential walk: the step table one step per round (DDPM / DDIM / DPM-Solver++ / EDM Heun).

Lu et al. 2022 (DPM-Solver++); Karras et al. 2022 (EDM Heun); Chen et al. 2024 (Langevin corrector, PIADM-ODE).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..diffusion import StepTable
from . import noise as _noise
from .engine import Denoiser, WalkStats, WorkingTable, call_denoiser, check_finite, langevin_step

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
    for j in range(tab.n):
        jj = torch.full((m,), j, dtype=torch.long, device=x.device)
        xi = _noise.normal(seed, members, j, shape, dtype=x.dtype, device=x.device)
        x_next, d = _step(denoiser, tab, x, d_prev, xi, jj, max_batch, stats)
        x, d_prev = x_next, d
        if j + 1 in corr:
            x = _correct(denoiser, tab, x, jj + 1, members, seed, corrector_steps, corrector_size, max_batch, stats)
        if progress is not None:
            progress(j + 1)
    stats.rounds_per_member = torch.full((m,), stats.rounds, dtype=torch.long)
    stats.nfe_per_member = stats.rounds_per_member.clone()
    stats.fallbacks_per_member = torch.zeros(m, dtype=torch.long)
    return x, stats


def _step(denoiser: Denoiser, tab: WorkingTable, x: torch.Tensor, d_prev: torch.Tensor, xi: torch.Tensor,
          jj: torch.Tensor, max_batch: int | None, stats: WalkStats) -> tuple[torch.Tensor, torch.Tensor]:
    # one step x_j -> x_{j+1}: one round, two with Heun's predictor stage; returns (x_{j+1}, D_j)
    j = int(jj[0])
    y, lev = tab.source(x, jj, xi)
    d = call_denoiser(denoiser, y, lev, max_batch)
    check_finite(d, jj, lev)
    stats.rounds += 1
    x_next = (tab.A[j] + tab.E[j]) * x + tab.B[j] * d + tab.C[j] * xi
    if tab.multistep:
        x_next = x_next + tab.B2[j] * d_prev
    if tab.pred[j]:
        yp, levp = tab.predictor(x, d, xi, jj)
        dp = call_denoiser(denoiser, yp, levp, max_batch)
        check_finite(dp, jj + 1, levp)
        x_next = x_next + tab.B3[j] * dp
        stats.rounds += 1
    return x_next, d


def _correct(denoiser: Denoiser, tab: WorkingTable, x: torch.Tensor, jn: torch.Tensor, members: list[int],
             seed: int, steps: int, size: float, max_batch: int | None, stats: WalkStats) -> torch.Tensor:
    # the block-end phase: ``steps`` Langevin corrector steps at grid point jn (one round each)
    j = int(jn[0])
    for k in range(steps):
        y, lev = tab.at_point(x, jn)
        d = call_denoiser(denoiser, y, lev, max_batch)
        check_finite(d, jn, lev)
        z = _noise.normal(seed, members, j, tuple(x.shape[1:]), tag=_noise.corrector_tag(k),
                          dtype=x.dtype, device=x.device)
        x = langevin_step(x, d, jn, z, tab, size)
        stats.rounds += 1
    return x
