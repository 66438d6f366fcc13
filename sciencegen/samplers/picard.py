"""The Picard walk: the step table solved by windowed Picard iteration, per member.

Chen, Ren, Ying & Rotskoff, NeurIPS 2024 (PIADM); Shih et al., NeurIPS 2023 (ParaDiGMS).

The walk keeps, per member, a window of guessed points past the last accepted point ``p``.  One
*round* is one batched denoiser call over every (member, window point) pair, then an exact linear
scan of the recurrence (``x <- A x + g``, which never divides by a running product and so stays
exact when ``A_j = 0`` and over long windows) and a per-point convergence test
``norm(x_new - x_old) <= tol * sigma_j``.  The converged prefix is accepted and the window slides;
block boundaries (equal log-SNR pieces) stop it, so fixed blocks (PIADM), a sliding window
(ParaDiGMS) and anything in between are configurations of the same walk.

A round, phase by phase (:meth:`_PicardWalk.round`): open the window of every iterating member,
call the denoiser once, form the lagged terms and scan, test the new points, accept the converged
prefix, fall back to a sequential finish where a member diverges, enter the next block; members at a
block end take a Langevin corrector step instead; finally every iterating member's window is
extended with fresh guesses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..diffusion import StepTable
from . import noise as _noise
from .engine import (
    NORMS,
    Conditions,
    Denoiser,
    WalkStats,
    WorkingTable,
    broadcast,
    call_denoiser,
    check_finite,
    flat_position,
    langevin_step,
    residual_norm,
)
from .newton import SpectralGain, newton_scan
from .walk_state import MemberState, Window

__all__ = ["ACCEPT", "PicardOptions", "picard_walk"]

#: a point's change below this many ulps of the point (in the residual's norm) counts as converged; measured on
#: a trained float32 model (benchmarks/learned_picard.py): 4 is borderline, 8-16 stop the walk iterating on
#: round-off at tolerances below ~1e-3 (tol 1e-5: 24 rounds -> 9)
ROUNDOFF = 8.0

#: how a round accepts points: the converged prefix, or the whole window once all of it converged
ACCEPT = ("prefix", "block")


@dataclass(frozen=True)
class PicardOptions:
    """The options of :func:`picard_walk` (see there)."""

    tol: float
    window: int
    accept: str = "prefix"
    max_iters: int | None = None
    patience: int = 4
    max_batch: int | None = None
    corrector_steps: int = 0
    corrector_size: float = 0.1
    norm: str = "rms"
    newton: str = "none"


#: how a round solves its window: ``none`` (Picard: the denoiser lagged), ``spectral`` (Newton with the
#: denoiser's Jacobian approximated by a radial Fourier multiplier, :mod:`~sciencegen.samplers.newton`), ``auto``
#: (``spectral`` unless the denoiser says its Jacobian is far from one, ``denoiser.spectral_jacobian = False``, or
#: the walk is given conditions)
NEWTON = ("none", "spectral", "auto")


def picard_walk(
    denoiser: Denoiser,
    table: StepTable,
    x: torch.Tensor,
    members: Sequence[int],
    seed: int,
    *,
    tol: float,
    window: int,
    ends: Sequence[int] | None = None,
    accept: str = "prefix",
    max_iters: int | None = None,
    patience: int = 4,
    max_batch: int | None = None,
    corrector_steps: int = 0,
    corrector_size: float = 0.1,
    norm: str = "rms",
    newton: str = "none",
    progress: Callable[[int], None] | None = None,
    cond: Conditions | None = None,
) -> tuple[torch.Tensor, WalkStats]:
    """Walk the step table by windowed Picard iteration, per member.

    Parameters
    ----------
    denoiser, table, x, members, seed, max_batch, progress, cond
        As for :func:`~sciencegen.samplers.sequential.sequential_walk` (``progress`` gets the slowest
        member's accepted index; a round gathers each item's condition by its member's index).
    tol
        Point ``j`` has converged when ``|x_new - x_old| <= tol * sigma_j`` in
        the chosen ``norm``.
    window
        Most steps in flight per member (points solved at once).
    ends
        Block end indices (sorted, last ``N``): the window never crosses one, so
        a block is finished before the next starts (PIADM).  ``None``: one block.
    accept
        ``"prefix"``: accept the converged prefix of the window each round and
        slide.  ``"block"``: accept only when every point converged (the seed
        paper's block iteration; the window then always spans the rest of the
        block).
    max_iters
        Accept the window as it stands after this many iterations in a block
        (the seed paper's fixed iteration count ``K``); ``None``: no cap.
    patience
        Rounds of growing residual without progress before a member abandons
        Picard and finishes the block sequentially (recorded in the stats).
        Non-finite guesses trigger this at once.
    corrector_steps, corrector_size
        Langevin corrector steps at every block end except the last
        (PIADM-ODE), step size ``corrector_size * sigma²``.
    norm
        How a point's change is measured: ``"rms"`` over all values, or
        ``"fourier"``, the largest orthonormal-DFT coefficient over the field
        dims (not diluted by ``d`` for smooth, large-scale changes).
    newton
        ``"none"``: Picard (the denoiser lagged over the window).  ``"spectral"``: each round's scan also
        corrects the lagged denoiser to first order with a per-shell Fourier gain estimated from the round's
        own evaluations (:mod:`~sciencegen.samplers.newton`); no extra network evaluations.  ``"auto"``:
        ``"spectral"`` unless ``denoiser.spectral_jacobian`` is ``False`` (observation guidance and land-sea
        masks say so: their Jacobian is far from shift-invariant, and measured there Newton costs rounds) or
        ``cond`` is given (a coarse condition couples modes the same way).

    Returns
    -------
    (torch.Tensor, WalkStats)
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}")
    if accept not in ACCEPT:
        raise ValueError(f"accept must be 'prefix' or 'block', got {accept!r}")
    if newton not in NEWTON:
        raise ValueError(f"newton must be one of {list(NEWTON)}, got {newton!r}")
    opt = PicardOptions(tol=tol, window=window, accept=accept, max_iters=max_iters, patience=patience,
                        max_batch=max_batch, corrector_steps=corrector_steps, corrector_size=corrector_size,
                        norm=norm, newton=resolve_newton(newton, denoiser, cond is not None))
    return _PicardWalk(denoiser, table, x, members, seed, ends, opt, cond).run(progress)


def resolve_newton(newton: str, denoiser: Denoiser, conditional: bool = False) -> str:
    """``"auto"`` resolved for ``denoiser``: ``"spectral"`` unless it sets ``spectral_jacobian = False`` or the
    walk is given conditions (measured: a coarse condition couples the aliased modes, and Newton with a
    per-shell gain then took 20 rounds where Picard took 9)."""
    if newton != "auto":
        return newton
    return "spectral" if getattr(denoiser, "spectral_jacobian", True) and not conditional else "none"


class _PicardWalk:
    """One Picard walk over a batch of members: fixed set-up, the :class:`MemberState`, and the phases."""

    def __init__(self, denoiser: Denoiser, table: StepTable, x: torch.Tensor, members: Sequence[int], seed: int,
                 ends: Sequence[int] | None, opt: PicardOptions, cond: Conditions | None = None):
        self.denoiser, self.seed, self.opt, self.cond = denoiser, seed, opt, cond
        self.device, self.dtype = x.device, x.dtype
        self.tab = WorkingTable(table, x.dtype, x.device)
        self.n = self.tab.n
        self.members = list(members)
        self.shape = tuple(x.shape[1:])
        self.w = max(1, min(int(opt.window), self.n))
        self.ring = self.w + 1  # the points ring holds p .. p + w
        ends_t = torch.tensor(sorted(set(int(e) for e in (ends or [self.n]))) or [self.n], dtype=torch.long,
                              device=self.device)
        if int(ends_t[-1]) != self.n:
            ends_t = torch.cat([ends_t, torch.tensor([self.n], device=self.device)])
        self.ends = ends_t
        self.pred = self.tab.pred.to(self.device)
        self.everyone = torch.arange(len(self.members), device=self.device)
        self.st = MemberState.start(x, self.w, keep_d=self.tab.multistep or self.tab.has_pred)
        self.spec = SpectralGain(self.shape, self.device) if opt.newton == "spectral" else None
        self.center: torch.Tensor | None = None
        self.stats = WalkStats()

    def run(self, progress: Callable[[int], None] | None) -> tuple[torch.Tensor, WalkStats]:
        """Rounds until every member has accepted the last point; the samples and the cost record."""
        st = self.st
        # first guesses: the recurrence with D frozen at the data mean, which D is close to at the start of the
        # reverse process: 0 for normalised data; given conditions, the posterior mean is not 0 -- D at the
        # starting point, one round (a mean left in directions the condition fixes doubles the rounds otherwise)
        if self.cond is not None:
            self.warm_start()
        self.extend(self.everyone)
        while bool((st.accepted < self.n).any()):
            self.round()
            if progress is not None:
                progress(int(st.accepted.min()))
        self.stats.rounds_per_member = st.rounds
        self.stats.nfe_per_member = st.nfe
        self.stats.fallbacks_per_member = st.fallbacks
        return st.points[:, self.n % self.ring].clone(), self.stats

    def warm_start(self) -> None:
        """D at every member's starting point (one round): the frozen D of the first guesses."""
        st, j0 = self.st, torch.zeros(len(self.members), dtype=torch.long, device=self.device)
        y, lev = self.tab.at_point(st.points[:, 0], j0)
        d = call_denoiser(self.denoiser, y, lev, self.opt.max_batch, self.cond, self.everyone)
        check_finite(d, j0, lev)
        st.d_last = d
        # at sigma_max, D is the law's mean given the condition: the centre of the spectral Newton gain
        self.center = d.clone() if self.spec is not None else None
        self.stats.rounds += 1
        st.rounds += 1
        st.nfe += 1

    # ------------------------------------------------------------------------------------------ geometry

    def block_end(self, pts: torch.Tensor) -> torch.Tensor:
        """The end of the block each grid point ``pts`` lies in (a block end starts the next block)."""
        return self.ends[torch.searchsorted(self.ends, pts, right=True).clamp_max(len(self.ends) - 1)]

    def full_length(self, pts: torch.Tensor, sequential_until: torch.Tensor) -> torch.Tensor:
        """Window length from ``pts`` had every point a guess: ``w``, cut at the block end; 1 in a fallback."""
        lf = torch.minimum(self.block_end(pts) - pts, torch.full_like(pts, self.w))
        return torch.where(pts < sequential_until, torch.ones_like(pts), lf).clamp_min(0)

    # ------------------------------------------------------------------------------------------ the phases

    def round(self) -> None:
        """One round: one batched denoiser call, then every member's phases."""
        st = self.st
        active = st.accepted < self.n
        correcting = active & (st.corrector_left > 0)
        ci = self.everyone[correcting]
        cj = st.accepted[ci]
        win = self.open_window(self.everyone[active & ~correcting])
        d, dp, dc, inputs = self.denoise(win, ci, cj, active)
        if win.rows.numel():
            new = self.scan(win, self.lagged_terms(win, d, dp), (d, dp, *inputs))
            res, fin = self.test(win, new)
            self.accept(win, d, res, fin)
        if ci.numel():
            self.correct(ci, cj, dc)
        # fresh guesses for every member that will iterate next round
        self.extend(self.everyone[(st.accepted < self.n) & (st.corrector_left == 0)])

    def draw_noise(self, idx: torch.Tensor, upto: torch.Tensor) -> None:
        """Put the noise of steps ``max(noise_upto, p) .. upto - 1`` of members ``idx`` in the noise ring."""
        st = self.st
        # counter-based draws; one host transfer for all members, not one per member
        lo = torch.maximum(st.noise_upto[idx], st.accepted[idx])
        for i, a, b in zip(idx.tolist(), lo.tolist(), upto.tolist(), strict=True):
            if b > a:
                z = _noise.normal(self.seed, [self.members[i]] * (b - a), list(range(a, b)), self.shape,
                                  dtype=self.dtype, device=self.device)
                st.noise[i, torch.arange(a, b, device=self.device) % self.w] = z
        st.noise_upto[idx] = torch.maximum(st.noise_upto[idx], upto)

    def extend(self, idx: torch.Tensor) -> None:
        """Extend the window: guess points ``guessed + 1 .. p + length`` by the recurrence with the last D frozen."""
        if idx.numel() == 0:
            return
        st, tab, r = self.st, self.tab, self.ring
        target = st.accepted[idx] + self.full_length(st.accepted[idx], st.sequential_until[idx])
        self.draw_noise(idx, target)
        start = st.guessed[idx].clone()
        todo = int((target - start).max().clamp_min(0))
        for o in range(todo):
            k = start + o
            live = k < target  # never empty: o < max(target - start)
            ii, kk = idx[live], k[live]
            xk = st.points[ii, kk % r]
            dk = st.d_last[ii]
            xn = (broadcast(tab.A[kk] + tab.E[kk], xk) * xk
                  + broadcast(tab.B[kk] + tab.B2[kk] + tab.B3[kk], xk) * dk
                  + broadcast(tab.C[kk], xk) * st.noise[ii, kk % self.w])
            st.points[ii, (kk + 1) % r] = xn
            if st.d_points is not None:
                fresh = kk >= st.evaluated[ii]
                st.d_points[ii[fresh], kk[fresh] % r] = dk[fresh]
        st.guessed[idx] = torch.maximum(st.guessed[idx], target)

    def open_window(self, rows: torch.Tensor) -> Window:
        """The sources ``p .. p + length - 1`` of the iterating members ``rows``, their states and noise."""
        st = self.st
        p = st.accepted[rows]
        length = torch.minimum(self.full_length(p, st.sequential_until[rows]), (st.guessed[rows] - p).clamp_min(1))
        width = int(length.max()) if rows.numel() else 0
        self.draw_noise(rows, p + length)
        offsets = torch.arange(width, device=self.device)
        valid = offsets[None, :] < length[:, None]
        grid = p[:, None] + offsets[None, :]
        row, col = valid.nonzero(as_tuple=True)
        member, step = rows[row], grid[row, col]
        pred = self.pred[step].nonzero().squeeze(1) if self.tab.has_pred else step.new_zeros(0)
        return Window(rows=rows, length=length, width=width, offsets=offsets, valid=valid, grid=grid, row=row,
                      col=col, member=member, step=step, x=st.points[member, step % self.ring],
                      z=st.noise[member, step % self.w], pred=pred)

    def denoise(self, win: Window, ci: torch.Tensor, cj: torch.Tensor, active: torch.Tensor) -> tuple[
            torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Evaluate: the round's one batched call over the window sources, Heun's predictors and the correctors.

        Returns ``D`` at the sources, ``D'`` at the predictors, ``D`` at the correcting members' points, and the
        denoiser's inputs at the sources and the predictors.
        """
        st, tab = self.st, self.tab
        ys, levs = tab.source(win.x, win.step, win.z)
        if tab.has_pred:
            # Heun: the predictor of every source from the lagged D there (one more evaluation per point)
            pm, pj = win.member[win.pred], win.step[win.pred]
            yp, levp = tab.predictor(win.x[win.pred], st.d_points[pm, pj % self.ring], win.z[win.pred], pj)
        else:
            yp, levp = ys[:0], levs[:0]
        yc, levc = tab.at_point(st.points[ci, cj % self.ring], cj)
        owners = torch.cat([win.member, win.member[win.pred], ci]) if self.cond is not None else None
        d_all = call_denoiser(self.denoiser, torch.cat([ys, yp, yc]), torch.cat([levs, levp, levc]),
                              self.opt.max_batch, self.cond, owners)
        nsrc, npred = ys.shape[0], yp.shape[0]
        d, dp, dc = d_all[:nsrc], d_all[nsrc : nsrc + npred], d_all[nsrc + npred :]
        first = win.col == 0
        check_finite(d[first], win.step[first], levs[first])
        check_finite(dc, cj, levc)
        self.stats.rounds += 1
        st.rounds[active.cpu()] += 1
        per_row = win.length.clone()
        if npred:
            per_row += torch.bincount(win.row[win.pred], minlength=win.rows.numel())
        st.nfe[win.rows.cpu()] += per_row.cpu()
        st.nfe[ci.cpu()] += 1
        return d, dp, dc, (ys, yp)

    def lagged_terms(self, win: Window, d: torch.Tensor, dp: torch.Tensor) -> torch.Tensor:
        """``g_j = B D_j + E x_j + C xi_j (+ B2 D_{j-1} + B3 D'_j)`` at every source, from this round's D."""
        st, tab, j = self.st, self.tab, win.step
        cb, ce, cc = (broadcast(v[j], win.x) for v in (tab.B, tab.E, tab.C))
        g = cb * d + ce * win.x + cc * win.z
        if st.d_points is not None:
            st.d_points[win.member, j % self.ring] = d
            st.evaluated[win.rows] = torch.maximum(st.evaluated[win.rows], st.accepted[win.rows] + win.length)
        if tab.multistep:
            # D_{j-1}: this round's for k >= 1, the stored one at the first point
            g = g + broadcast(tab.B2[j], win.x) * st.d_points[win.member, (j - 1) % self.ring]
        if win.pred.numel():
            g[win.pred] += broadcast(tab.B3[j[win.pred]], dp) * dp
        return g

    def scan(self, win: Window, g_flat: torch.Tensor, evals: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The exact scan ``x <- A x + g`` along every window (with the Newton terms where set, from ``evals`` =
        ``(D, D', y, y')`` at the sources and predictors); the new points ``x_{j+1}`` (flattened)."""
        st = self.st
        g = win.x.new_zeros((win.rows.numel(), win.width, *self.shape))
        g[win.row, win.col] = g_flat
        a_pad = torch.where(win.valid, self.tab.A[win.grid.clamp_max(self.n - 1)],
                            torch.ones((), dtype=self.dtype, device=self.device))
        cur = st.points[win.rows, st.accepted[win.rows] % self.ring]
        if self.spec is not None:
            return self.newton(win, g, a_pad, cur, evals)
        for k in range(win.width):
            cur = broadcast(a_pad[:, k], cur) * cur + g[:, k]
            g[:, k] = cur
        return g[win.row, win.col]

    def newton(self, win: Window, g: torch.Tensor, a_pad: torch.Tensor, start: torch.Tensor,
               evals: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The scan with the spectral Newton terms (:func:`~sciencegen.samplers.newton.newton_scan`).

        A source's change ``delta`` moves ``D`` by ``J delta / alpha_j`` and, where the step has a predictor
        (Heun), the predictor by ``(PA + PB J / alpha_j) delta`` and so ``D'`` by ``J'`` times that over
        ``alpha_{j+1}``.
        """
        tab, j = self.tab, win.step
        d, dp, ys, yp = evals
        center = None if self.center is None else self.center[win.member]
        gain = self.spec.estimate(d, ys, center)
        per_source = broadcast(tab.E[j], gain) + broadcast(tab.B[j] / tab.alpha[j], gain) * gain
        if win.pred.numel():
            jp, gp = j[win.pred], gain[win.pred]
            moved = broadcast(tab.PA[jp], gp) + broadcast(tab.PB[jp] / tab.alpha[jp], gp) * gp
            cp = None if center is None else center[win.pred]
            per_source[win.pred] += (broadcast(tab.B3[jp] / tab.alpha[jp + 1], gp) * self.spec.estimate(dp, yp, cp)
                                     * moved)
        x_old = torch.zeros_like(g)
        x_old[win.row, win.col] = win.x
        coef = gain.new_zeros((win.rows.numel(), win.width, *gain.shape[1:]))
        coef[win.row, win.col] = per_source
        c2 = torch.zeros_like(coef)
        if tab.multistep:
            inner = win.col >= 1
            jj = j[inner]
            prev = self._shifted(gain, win, inner)
            c2[win.row[inner], win.col[inner]] = broadcast(tab.B2[jj] / tab.alpha[jj - 1], prev) * prev
        new = newton_scan(self.spec, start, g, x_old, coef, a_pad, c2)
        return new[win.row, win.col]

    @staticmethod
    def _shifted(gain: torch.Tensor, win: Window, inner: torch.Tensor) -> torch.Tensor:
        """The gain at the previous window point of every inner source (``col >= 1``)."""
        dense = gain.new_zeros((win.rows.numel(), win.width, *gain.shape[1:]))
        dense[win.row, win.col] = gain
        return dense[win.row[inner], win.col[inner] - 1]

    def test(self, win: Window, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Residuals of the new points against the previous guesses (relative to sigma there), then store them.

        Returns the ``[R, width]`` residuals (``inf`` outside the window or where not finite) and whether
        each new point is finite.
        """
        st = self.st
        target = win.step + 1
        old = st.points[win.member, target % self.ring]
        sig = self.tab.sig_norm[target].double()
        rr = residual_norm(new - old, self.opt.norm) / sig
        # a change within the dtype's round-off of the point itself cannot shrink further (a float32 network
        # evaluated in other batch compositions): converged, instead of iterating on round-off
        floor = ROUNDOFF * torch.finfo(new.dtype).eps * residual_norm(new, self.opt.norm) / sig
        rr = torch.where(rr <= floor, torch.zeros_like(rr), rr)
        rr = torch.where(torch.isfinite(rr), rr, torch.full_like(rr, math.inf))
        res = torch.full((win.rows.numel(), win.width), math.inf, dtype=torch.float64, device=self.device)
        res[win.row, win.col] = rr
        fin = torch.ones((win.rows.numel(), win.width), dtype=torch.bool, device=self.device)
        fin[win.row, win.col] = torch.isfinite(new.reshape(new.shape[0], -1)).all(1)
        st.points[win.member, target % self.ring] = new
        return res, fin

    def accept(self, win: Window, d: torch.Tensor, res: torch.Tensor, fin: torch.Tensor) -> None:
        """Accept the converged points and slide; fall back where a member diverged; enter the next block."""
        st = self.st
        # the first point is exact unless its step has a predictor (Heun's predictor used the lagged D there,
        # so it converges like the others)
        lagged_first = self.pred[st.accepted[win.rows].clamp_max(self.n - 1)]
        count = self.accepted_count(win, res, lagged_first)
        bad = self.diverged(win, res, fin, count, lagged_first)
        # the freshest D (at the furthest source) seeds the next guesses
        li = torch.arange(win.rows.numel(), device=self.device)
        st.d_last[win.rows] = d[flat_position(win.valid, li, win.length - 1)]
        p_old = st.accepted[win.rows].clone()
        st.guessed[win.rows] = torch.maximum(st.guessed[win.rows], p_old + win.length)
        st.accepted[win.rows] = p_old + count
        st.iters[win.rows] += 1
        if bool(bad.any()):
            self.fall_back(win.rows[bad])
        self.enter_next_block(win.rows, p_old, count)

    def accepted_count(self, win: Window, res: torch.Tensor, lagged_first: torch.Tensor) -> torch.Tensor:
        """How many window points each member accepts this round (``accept``, ``max_iters``)."""
        length = win.length
        conv = (res <= self.opt.tol) & win.valid
        conv[:, 0] = win.valid[:, 0] & (~lagged_first | conv[:, 0])
        if self.opt.accept == "prefix":
            count = torch.cumprod(conv.long(), 1).sum(1)
        else:
            count = torch.where(conv.sum(1) == length, length,
                                torch.where((length == 1) & ~lagged_first, length, torch.zeros_like(length)))
        if self.opt.max_iters is not None:
            count = torch.where(self.st.iters[win.rows] + 1 >= self.opt.max_iters, length, count)
        return count

    def diverged(self, win: Window, res: torch.Tensor, fin: torch.Tensor, count: torch.Tensor,
                 lagged_first: torch.Tensor) -> torch.Tensor:
        """Which members diverged: non-finite guesses, or ``patience`` rounds of growing residual without
        progress (members already in a fallback excepted); records the round's largest unaccepted residual."""
        st, rows = self.st, win.rows
        judged = win.valid & ((win.offsets[None, :] >= 1) | lagged_first[:, None])
        rmax = torch.where(judged, res, torch.zeros_like(res)).max(1).values
        growing = (rmax > st.last_residual[rows]) & (count <= 1)
        st.grow_rounds[rows] = torch.where(growing, st.grow_rounds[rows] + 1, torch.zeros_like(st.grow_rounds[rows]))
        st.last_residual[rows] = rmax
        bad = (~(fin | ~win.valid).all(1)) | (st.grow_rounds[rows] >= self.opt.patience)
        bad &= st.accepted[rows] >= st.sequential_until[rows]
        unaccepted = rmax[count < win.length]
        if unaccepted.numel():
            self.stats.residuals.append(float(unaccepted.max()))
        return bad

    def fall_back(self, idx: torch.Tensor) -> None:
        """Members ``idx`` abandon Picard and finish their block (at most ``w`` more points) sequentially."""
        st = self.st
        p = st.accepted[idx]
        st.sequential_until[idx] = torch.minimum(self.block_end(p), p + self.w)
        st.guessed[idx] = p
        st.grow_rounds[idx] = 0
        st.last_residual[idx] = math.inf
        st.fallbacks[idx.cpu()] += 1

    def enter_next_block(self, rows: torch.Tensor, p_old: torch.Tensor, count: torch.Tensor) -> None:
        """Members that just reached a block end: reset the iteration record, start the corrector."""
        st = self.st
        p = st.accepted[rows]
        entered = (self.block_end(p_old) == p) & (p < self.n) & (count > 0)
        if not bool(entered.any()):
            return
        ni = rows[entered]
        st.iters[ni] = 0
        st.grow_rounds[ni] = 0
        st.last_residual[ni] = math.inf
        if self.opt.corrector_steps:
            st.corrector_left[ni] = self.opt.corrector_steps
            st.guessed[ni] = st.accepted[ni]

    def correct(self, ci: torch.Tensor, cj: torch.Tensor, dc: torch.Tensor) -> None:
        """The block-end phase: one Langevin corrector step for members ``ci`` at their points ``cj``."""
        st = self.st
        k = self.opt.corrector_steps - st.corrector_left[ci]
        z = torch.stack([
            _noise.normal(self.seed, [self.members[i]], j, self.shape, tag=_noise.corrector_tag(kk),
                          dtype=self.dtype, device=self.device)[0]
            for i, j, kk in zip(ci.tolist(), cj.tolist(), k.tolist(), strict=True)
        ])
        pos = cj % self.ring
        st.points[ci, pos] = langevin_step(st.points[ci, pos], dc, cj, z, self.tab, self.opt.corrector_size)
        st.d_last[ci] = dc
        st.corrector_left[ci] -= 1
        st.guessed[ci] = st.accepted[ci]
