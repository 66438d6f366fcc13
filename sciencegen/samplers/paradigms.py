"""The ParaDiGMS walk: a sliding window of Picard iterations with the pipeline's own rules, per member.

Shih, Belkhale, Ermon, Sadigh & Anari, NeurIPS 2023, Algorithm 1 (diffusers ``StableDiffusionParadigmsPipeline``).

The peer baseline, kept faithful to the published pipeline so that comparisons with it are honest (our own
sliding-window Picard walk is :func:`~sciencegen.samplers.picard.picard_walk`).  Per member:

* every point of the trajectory starts as a copy of the start ``x_0``; the window holds the sources
  ``x_begin .. x_{end-1}``, ``end = min(begin + p, N)``;
* one round is one batched denoiser call at the window's sources; the new points are the cumulative sum of the
  whole increments from the accepted ``x_begin``: ``x_{begin+k+1} = x_begin + sum_{i <= begin+k} (drift_i +
  C_i z_i)``, ``drift_i = (A_i + E_i - 1) x_i + B_i D_i (+ B2_i D_{i-1})``, with the counter-based noise of the
  sequential walk (so a converged run lands on the sequential trajectory);
* point ``k`` has converged when ``mean((x_k^new - x_k^old)^2) / var_k <= tol^2``, ``var_k`` the noise variance
  of the step leaving ``k`` (``C_k^2`` of the SDE table on the same grid, also for the ODE: the pipeline uses the
  DDPM posterior variance for DDIM), ``var_N = 0``;
* the window slides through the first failing point, ``begin += min(1 + ind, p)``, and the points that enter the
  window are copies of the window's last new point (not extrapolated).

The pipeline takes the largest error over its batch; here the rule is applied to every member alone (the pipeline
with a batch of one), so member ``i`` depends only on ``(seed, i)``, not on its batch companions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..diffusion import StepTable, step_table
from . import noise as _noise
from .engine import Conditions, Denoiser, WalkStats, WorkingTable, broadcast, call_denoiser, check_finite

__all__ = ["paradigms_walk", "step_variance"]


def step_variance(table: StepTable) -> torch.Tensor:
    """``[N + 1]`` float64: the noise variance ParaDiGMS normalises point ``k``'s change by.

    ``C_k^2`` of the step leaving point ``k`` in the SDE table on the same grid and form (for an ODE table too:
    the pipeline uses the DDPM posterior variance for DDIM), and ``0`` at the last point ``N``.

    Parameters
    ----------
    table
        The step table being walked.
    """
    c = table.C if table.method == "sde" else step_table(table.t, "sde", table.form, "step").C
    return torch.cat([c.double() ** 2, c.new_zeros(1, dtype=torch.float64)])


def paradigms_walk(
    denoiser: Denoiser,
    table: StepTable,
    x: torch.Tensor,
    members: Sequence[int],
    seed: int,
    *,
    tol: float,
    window: int,
    max_batch: int | None = None,
    progress: Callable[[int], None] | None = None,
    cond: Conditions | None = None,
) -> tuple[torch.Tensor, WalkStats]:
    """Walk the step table as ParaDiGMS does (Shih et al. 2023), every member with its own window.

    Parameters
    ----------
    denoiser, table, x, members, seed, max_batch, cond
        As for :func:`~sciencegen.samplers.sequential.sequential_walk` (a first-order or multistep ``sde`` /
        ``ode`` table; Heun's predictor stage is not part of ParaDiGMS).
    tol
        The pipeline's ``tolerance``: point ``k`` has converged when ``mean(change^2) / var_k <= tol^2``
        (:func:`step_variance`).
    window
        The pipeline's ``parallel``: most sources in one member's window.
    progress
        Called after each round with the slowest member's accepted index ``begin``.

    Returns
    -------
    (torch.Tensor, WalkStats)
        Samples at noise level 0 and the cost record (``residuals``: per round, the largest finite
        ``sqrt(ratio)`` among points not accepted).

    Raises
    ------
    ValueError
        A table with a predictor stage (Heun), a bad ``tol``/``window``, or a non-finite ``D`` at an accepted point.
    """
    if table.B3 is not None and bool((table.B3 != 0).any()):
        raise ValueError("the paradigms walk takes sde/ode tables, not method='heun' (a predictor stage per step)")
    if not math.isfinite(tol) or tol <= 0:
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    if int(window) != window or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    return _ParadigmsWalk(denoiser, table, x, members, seed, float(tol), int(window), max_batch, cond).run(progress)


class _ParadigmsWalk:
    """Per member: the points ``begin .. end`` in a ring of ``p + 1`` slots, the step noise in a ring of ``p``."""

    def __init__(self, denoiser: Denoiser, table: StepTable, x: torch.Tensor, members: Sequence[int], seed: int,
                 tol: float, window: int, max_batch: int | None, cond: Conditions | None):
        self.denoiser, self.seed, self.max_batch, self.cond = denoiser, seed, max_batch, cond
        self.tab = WorkingTable(table, x.dtype, x.device)
        self.n, self.members, self.shape, self.device = self.tab.n, list(members), tuple(x.shape[1:]), x.device
        self.p = max(1, min(window, self.n))
        self.r = self.p + 1
        self.tol2 = tol * tol
        self.drift_x = self.tab.E + (self.tab.A - 1)  # the whole increment's x coefficient (A = 1 under lag=step)
        self.inv_var = 1.0 / step_variance(table).to(self.device)  # inf at var = 0 (the last point)
        self.noisy = bool((table.C != 0).any())
        m = len(self.members)
        self.points = x[:, None].repeat(1, self.r, *([1] * len(self.shape)))  # every point starts as x_0
        self.noise = x.new_zeros((m, self.p, *self.shape)) if self.noisy else None
        self.d_prev = torch.zeros_like(x) if self.tab.multistep else None
        self.begin = torch.zeros(m, dtype=torch.long, device=self.device)
        self.end = torch.full_like(self.begin, self.p)
        self.noise_upto = torch.zeros_like(self.begin)
        self.stats = WalkStats(rounds_per_member=torch.zeros(m, dtype=torch.long),
                               nfe_per_member=torch.zeros(m, dtype=torch.long),
                               fallbacks_per_member=torch.zeros(m, dtype=torch.long))

    def run(self, progress: Callable[[int], None] | None) -> tuple[torch.Tensor, WalkStats]:
        """Rounds until every member's window has reached the last point."""
        while bool((self.begin < self.n).any()):
            self.round(torch.nonzero(self.begin < self.n).squeeze(1))
            if progress is not None:
                progress(int(self.begin.min()))
        return self.points[:, self.n % self.r].clone(), self.stats

    def draw_noise(self, rows: torch.Tensor) -> None:
        """The step noise of the steps that entered the windows of ``rows`` (each drawn once)."""
        lo, hi = self.noise_upto[rows].tolist(), self.end[rows].tolist()
        for i, a, b in zip(rows.tolist(), lo, hi, strict=True):
            if b > a:
                z = _noise.normal(self.seed, [self.members[i]] * (b - a), list(range(a, b)), self.shape,
                                  dtype=self.points.dtype, device=self.device)
                self.noise[i, torch.arange(a, b, device=self.device) % self.p] = z
        self.noise_upto[rows] = self.end[rows]

    def round(self, rows: torch.Tensor) -> None:  # long: the phases of one round of Algorithm 1, in order
        """One round for the members ``rows``: one batched call, the cumulative sum, the test, the slide."""
        begin, length = self.begin[rows], self.end[rows] - self.begin[rows]
        width = int(length.max())
        offsets = torch.arange(width, device=self.device)
        valid = offsets[None, :] < length[:, None]
        row, col = valid.nonzero(as_tuple=True)
        member, step = rows[row], begin[row] + col
        # evaluate: D at every window source, one batched call
        xs = self.points[member, step % self.r]
        y, lev = self.tab.source(xs, step, None)
        d = call_denoiser(self.denoiser, y, lev, self.max_batch, self.cond, member if self.cond is not None else None)
        first = col == 0
        check_finite(d[first], step[first], lev[first])
        # the whole increments, summed from the accepted x_begin
        g = broadcast(self.drift_x[step], xs) * xs + broadcast(self.tab.B[step], xs) * d
        if self.noisy:
            self.draw_noise(rows)
            g = g + broadcast(self.tab.C[step], xs) * self.noise[member, step % self.p]
        dd = xs.new_zeros((rows.numel(), width, *self.shape))
        dd[row, col] = d
        if self.d_prev is not None:  # D_{i-1}: this round's inside the window, the stored one at the first source
            prev = torch.cat([self.d_prev[rows][:, None], dd[:, :-1]], 1)[row, col]
            g = g + broadcast(self.tab.B2[step], xs) * prev
        gd = xs.new_zeros((rows.numel(), width, *self.shape))
        gd[row, col] = g
        new = (self.points[rows, begin % self.r][:, None] + torch.cumsum(gd, 1))[row, col]
        # the test: mean squared change over the variance of the step leaving the point, against tol^2
        target = step + 1
        change = (new - self.points[member, target % self.r]).reshape(new.shape[0], -1).double().pow(2).mean(1)
        ratio = change * self.inv_var[target]
        fail = torch.ones((rows.numel(), width + 1), dtype=torch.bool, device=self.device)
        fail[row, col] = ~(ratio <= self.tol2)  # not-a-number fails too
        ind = fail.long().argmax(1)  # the first failing point (the padding column: all converged)
        new_begin = torch.minimum(begin + torch.clamp(1 + ind, max=self.p), torch.full_like(begin, self.n))
        new_end = torch.clamp(new_begin + self.p, max=self.n)
        self.record(rows, length, ratio, target, new_begin[row])
        # accept: store the new points; the points entering the window are copies of the last new point
        self.points[member, target % self.r] = new
        if self.d_prev is not None:
            self.d_prev[rows] = dd[torch.arange(rows.numel(), device=self.device), new_begin - 1 - begin]
        end = self.end[rows]
        last = self.points[rows, end % self.r]
        for o in range(1, int((new_end - end).max().clamp_min(0)) + 1):
            fill = end + o <= new_end
            self.points[rows[fill], (end[fill] + o) % self.r] = last[fill]
        self.begin[rows], self.end[rows] = new_begin, new_end

    def record(self, rows: torch.Tensor, length: torch.Tensor, ratio: torch.Tensor, target: torch.Tensor,
               accepted_to: torch.Tensor) -> None:
        """Count the round (rounds, NFE per member) and its largest residual among the points not accepted."""
        self.stats.rounds += 1
        self.stats.rounds_per_member[rows.cpu()] += 1
        self.stats.nfe_per_member[rows.cpu()] += length.cpu()
        open_ = (target > accepted_to) & torch.isfinite(ratio)
        if bool(open_.any()):
            self.stats.residuals.append(math.sqrt(float(ratio[open_].max())))
