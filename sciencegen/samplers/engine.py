"""The step-table engine: one recurrence, walked sequentially or by Picard iteration.

Chen, Ren, Ying & Rotskoff, NeurIPS 2024 (PIADM); Shih et al., NeurIPS 2023 (ParaDiGMS).

Both walks solve ``x_{j+1} = A_j x_j + B_j D(x_j) + E_j x_j + C_j xi_j`` on a
:class:`~sciencegen.diffusion.StepTable`.  The Picard walk keeps, per member, a
window of guessed points past the last accepted point ``p``; one *round* is one
batched denoiser call over every (member, window point) pair, followed by an
exact linear scan of the recurrence (``x <- A x + g``, which never divides by a
running product and so stays exact when ``A_j = 0`` and over long windows) and
a per-point convergence test ``rms(x_new - x_old) <= tol * sigma_j``.  The
converged prefix is accepted and the window slides; block boundaries (equal
log-SNR pieces) stop it, so fixed blocks (PIADM), a sliding window
(ParaDiGMS) and anything in between are configurations of the same walk.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..diffusion import StepTable
from . import noise as _noise

__all__ = ["Denoiser", "WalkStats", "evaluate", "picard_walk", "sequential_walk"]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class WalkStats:
    """Cost and convergence record of one walk over a batch of members.

    Attributes
    ----------
    rounds
        Batched denoiser calls made in sequence (the latency-relevant cost).
    rounds_per_member, nfe_per_member, fallbacks_per_member
        Per member: rounds it took part in, denoiser evaluations spent on it,
        and how often its Picard iteration was abandoned for a sequential
        finish of the block (divergence).
    residuals
        Per round, the largest normalised residual among unaccepted points.
    """

    rounds: int = 0
    rounds_per_member: torch.Tensor | None = None
    nfe_per_member: torch.Tensor | None = None
    fallbacks_per_member: torch.Tensor | None = None
    residuals: list[float] = field(default_factory=list)


class _Table:
    """Step table cast to the working dtype/device, with index helpers."""

    def __init__(self, table: StepTable, dtype: torch.dtype, device: torch.device):
        kw = {"dtype": dtype, "device": device}
        self.n = table.steps
        zero = torch.zeros_like(table.A)
        self.A, self.B, self.E, self.C = (v.to(**kw) for v in (table.A, table.B, table.E, table.C))
        self.B2, self.B3, self.PA, self.PB, self.eta = (
            (v if v is not None else zero).to(**kw) for v in (table.B2, table.B3, table.PA, table.PB, table.eta))
        self.alpha, self.sigma, self.s = (v.to(**kw) for v in (table.alpha, table.sigma, table.s))
        self.s_eval = (table.s_eval if table.s_eval is not None else table.s[:-1]).to(**kw)
        #: multistep (needs D_{j-1}), predictor stage (Heun), churned evaluation points
        self.multistep = bool((self.B2 != 0).any())
        self.pred = (self.B3 != 0).cpu()
        self.has_pred = bool(self.pred.any())
        self.churn = bool((self.eta != 0).any())
        # noise level used to normalise residuals: sigma_j, floored at sigma_{N-1}
        self.sig_norm = torch.clamp(self.sigma, min=float(table.sigma[max(self.n - 1, 0)]))

    def source(self, x: torch.Tensor, j: torch.Tensor, z: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """EDM inputs ``(y, s)`` of the denoiser at the sources ``x_j`` (churned by ``eta_j z`` where set)."""
        y = x / _bcast(self.alpha[j], x)
        if self.churn and z is not None:
            y = y + _bcast(self.eta[j], x) * z
        return y, self.s_eval[j]

    def predictor(self, x: torch.Tensor, d: torch.Tensor, z: torch.Tensor, j: torch.Tensor) -> tuple[
            torch.Tensor, torch.Tensor]:
        """EDM inputs at Heun's predictor ``x'_{j+1} = PA x + PB D + C z`` (noise level ``s_{j+1}``)."""
        xp = _bcast(self.PA[j], x) * x + _bcast(self.PB[j], x) * d + _bcast(self.C[j], x) * z
        return xp / _bcast(self.alpha[j + 1], x), self.s[j + 1]


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Append singleton dims so a per-item vector broadcasts over fields of any rank."""
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def evaluate(
    denoiser: Denoiser,
    y: torch.Tensor,
    level: torch.Tensor,
    max_batch: int | None = None,
) -> torch.Tensor:
    """Denoiser output at EDM inputs ``y`` (``[P, *shape]``) and noise levels ``level`` (``[P]``).

    The one place every walk calls the network: splits the batch into
    micro-batches of at most ``max_batch`` items and checks the shape of every
    answer (a distributed split of a round goes here too).
    """
    if y.shape[0] == 0:
        return torch.empty_like(y)
    step = y.shape[0] if not max_batch else int(max_batch)
    out = []
    for lo in range(0, y.shape[0], step):
        yi = y[lo : lo + step]
        d = denoiser(yi, level[lo : lo + step])
        if not isinstance(d, torch.Tensor) or d.shape != yi.shape:
            got = tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__
            raise ValueError(f"denoiser returned shape {got} for input of shape {tuple(yi.shape)}")
        out.append(d.to(y.dtype))
    return out[0] if len(out) == 1 else torch.cat(out)


def _check_finite(d: torch.Tensor, j: torch.Tensor, level: torch.Tensor) -> None:
    if d.shape[0] == 0:
        return
    bad = ~torch.isfinite(d.reshape(d.shape[0], -1)).all(1)
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"denoiser returned non-finite values at step {int(j[k])} (sigma={float(level[k]):.4g})"
        )


def _corrector(
    x: torch.Tensor, d: torch.Tensor, j: torch.Tensor, z: torch.Tensor, tab: _Table, size: float
) -> torch.Tensor:
    # Langevin step x + eps*score + sqrt(2 eps) z with eps = size * sigma_j^2
    a, sg = _bcast(tab.alpha[j], x), _bcast(tab.sigma[j], x)
    return x + size * (a * d - x) + math.sqrt(2 * size) * sg * z


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
    tab = _Table(table, x.dtype, x.device)
    members = list(members)
    m = len(members)
    shape = tuple(x.shape[1:])
    stats = WalkStats()
    corr = set(int(c) for c in corrector_at if 0 < c < tab.n) if corrector_steps else set()
    d_prev = torch.zeros_like(x)
    for j in range(tab.n):
        jj = torch.full((m,), j, dtype=torch.long, device=x.device)
        xi = _noise.normal(seed, members, j, shape, dtype=x.dtype, device=x.device)
        y, lev = tab.source(x, jj, xi)
        d = evaluate(denoiser, y, lev, max_batch)
        _check_finite(d, jj, lev)
        stats.rounds += 1
        x_next = (tab.A[j] + tab.E[j]) * x + tab.B[j] * d + tab.C[j] * xi
        if tab.multistep:
            x_next = x_next + tab.B2[j] * d_prev
        if tab.pred[j]:
            yp, levp = tab.predictor(x, d, xi, jj)
            dp = evaluate(denoiser, yp, levp, max_batch)
            _check_finite(dp, jj + 1, levp)
            x_next = x_next + tab.B3[j] * dp
            stats.rounds += 1
        x, d_prev = x_next, d
        if j + 1 in corr:
            jn = jj + 1
            for k in range(corrector_steps):
                d = evaluate(denoiser, x / _bcast(tab.alpha[jn], x), tab.s[jn], max_batch)
                _check_finite(d, jn, tab.s[jn])
                z = _noise.normal(seed, members, j + 1, shape, tag=_noise.corrector_tag(k),
                                  dtype=x.dtype, device=x.device)
                x = _corrector(x, d, jn, z, tab, corrector_size)
                stats.rounds += 1
        if progress is not None:
            progress(j + 1)
    stats.rounds_per_member = torch.full((m,), stats.rounds, dtype=torch.long)
    stats.nfe_per_member = stats.rounds_per_member.clone()
    stats.fallbacks_per_member = torch.zeros(m, dtype=torch.long)
    return x, stats


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
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, WalkStats]:
    """Walk the step table by windowed Picard iteration, per member.

    Parameters
    ----------
    denoiser, table, x, members, seed, max_batch, progress
        As for :func:`sequential_walk` (``progress`` gets the slowest member's
        accepted index).
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

    Returns
    -------
    (torch.Tensor, WalkStats)
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}")
    if accept not in ("prefix", "block"):
        raise ValueError(f"accept must be 'prefix' or 'block', got {accept!r}")
    dev, dt = x.device, x.dtype
    tab = _Table(table, dt, dev)
    n = tab.n
    members = list(members)
    m = len(members)
    shape = tuple(x.shape[1:])
    w = max(1, min(int(window), n))
    r_pts = w + 1  # ring of points p .. p + w
    ends_t = torch.tensor(sorted(set(int(e) for e in (ends or [n]))) or [n], dtype=torch.long, device=dev)
    if int(ends_t[-1]) != n:
        ends_t = torch.cat([ends_t, torch.tensor([n], device=dev)])

    buf = x.new_zeros((m, r_pts, *shape))
    nbuf = x.new_zeros((m, w, *shape))
    buf[:, 0] = x
    # latest D per point (points p-1 .. p+w-1 fit the ring): D_{j-1} of multistep methods, lagged D of Heun's predictor
    dbuf = x.new_zeros((m, r_pts, *shape)) if (tab.multistep or tab.has_pred) else None
    pred_dev = tab.pred.to(dev)
    ar = torch.arange(m, device=dev)
    p = torch.zeros(m, dtype=torch.long, device=dev)  # last accepted point
    hi = torch.zeros_like(p)  # last point holding a guess
    nhi = torch.zeros_like(p)  # steps < nhi have their noise in nbuf
    iters = torch.zeros_like(p)
    evald = torch.zeros_like(p)  # sources < evald have been evaluated at least once
    seq_until = torch.zeros_like(p)
    corr_left = torch.zeros_like(p)
    grow = torch.zeros_like(p)
    rprev = torch.full((m,), math.inf, dtype=torch.float64, device=dev)
    d_last = x.new_zeros((m, *shape))
    stats = WalkStats()
    r_m = torch.zeros(m, dtype=torch.long)
    nfe_m = torch.zeros(m, dtype=torch.long)
    fb_m = torch.zeros(m, dtype=torch.long)

    def block_end(pp: torch.Tensor) -> torch.Tensor:
        return ends_t[torch.searchsorted(ends_t, pp, right=True).clamp_max(len(ends_t) - 1)]

    def full_len(pp: torch.Tensor, su: torch.Tensor) -> torch.Tensor:
        lf = torch.minimum(block_end(pp) - pp, torch.full_like(pp, w))
        return torch.where(pp < su, torch.ones_like(pp), lf).clamp_min(0)

    def ensure_noise(idx: torch.Tensor, upto: torch.Tensor) -> None:
        # draw the noise of steps max(nhi, p) .. upto-1 for members idx (counter-based);
        # one host transfer for all members, not one per member
        lo = torch.maximum(nhi[idx], p[idx])
        for i, a, b in zip(idx.tolist(), lo.tolist(), upto.tolist(), strict=True):
            if b > a:
                z = _noise.normal(seed, [members[i]] * (b - a), list(range(a, b)), shape, dtype=dt, device=dev)
                nbuf[i, torch.arange(a, b, device=dev) % w] = z
        nhi[idx] = torch.maximum(nhi[idx], upto)

    def extend(idx: torch.Tensor) -> None:
        # guess points hi+1 .. p+L by the recurrence with the last D frozen
        if idx.numel() == 0:
            return
        target = p[idx] + full_len(p[idx], seq_until[idx])
        ensure_noise(idx, target)
        start = hi[idx].clone()
        todo = int((target - start).max().clamp_min(0))
        for o in range(todo):
            k = start + o
            live = k < target  # never empty: o < max(target - start)
            ii, kk = idx[live], k[live]
            xk = buf[ii, kk % r_pts]
            dk = d_last[ii]
            xn = (_bcast(tab.A[kk] + tab.E[kk], xk) * xk + _bcast(tab.B[kk] + tab.B2[kk] + tab.B3[kk], xk) * dk
                  + _bcast(tab.C[kk], xk) * nbuf[ii, kk % w])
            buf[ii, (kk + 1) % r_pts] = xn
            if dbuf is not None:
                fresh = kk >= evald[ii]
                dbuf[ii[fresh], kk[fresh] % r_pts] = dk[fresh]
        hi[idx] = torch.maximum(hi[idx], target)

    # first guesses: the recurrence with D frozen at 0, the mean of normalised data
    # (at the start of the reverse process D is close to the data mean anyway)
    extend(ar)
    while True:
        act = p < n
        if not bool(act.any()):
            break
        cm = act & (corr_left > 0)
        pm = act & ~cm
        pi = ar[pm]
        ci = ar[cm]
        # --- the window of every Picard member: sources p .. p+L-1
        lf = full_len(p[pi], seq_until[pi])
        L = torch.minimum(lf, (hi[pi] - p[pi]).clamp_min(1))
        lmax = int(L.max()) if pi.numel() else 0
        ensure_noise(pi, p[pi] + L)
        kgrid = torch.arange(lmax, device=dev)
        valid = kgrid[None, :] < L[:, None]
        src_j = p[pi][:, None] + kgrid[None, :]
        vi, vk = valid.nonzero(as_tuple=True)
        flat_m, flat_j = pi[vi], src_j[vi, vk]
        xs = buf[flat_m, flat_j % r_pts]
        zs = nbuf[flat_m, flat_j % w]
        ys, levs = tab.source(xs, flat_j, zs)
        # Heun: the predictor of every source from the lagged D there (one more evaluation per point)
        if tab.has_pred:
            pidx = pred_dev[flat_j].nonzero().squeeze(1)
            yp, levp = tab.predictor(xs[pidx], dbuf[flat_m[pidx], flat_j[pidx] % r_pts], zs[pidx], flat_j[pidx])
        else:
            pidx = flat_j.new_zeros(0)
            yp, levp = ys[:0], levs[:0]
        cj = p[ci]
        xc = buf[ci, cj % r_pts]
        y_all = torch.cat([ys, yp, xc / _bcast(tab.alpha[cj], xc)])
        lev_all = torch.cat([levs, levp, tab.s[cj]])
        # --- one round: one batched (micro-batched) denoiser call
        d_all = evaluate(denoiser, y_all, lev_all, max_batch)
        nsrc, npred = ys.shape[0], yp.shape[0]
        d, dp, dc = d_all[:nsrc], d_all[nsrc : nsrc + npred], d_all[nsrc + npred :]
        first = vk == 0
        _check_finite(d[first], flat_j[first], levs[first])
        _check_finite(dc, cj, tab.s[cj])
        stats.rounds += 1
        r_m[act.cpu()] += 1
        per_row = L.clone()
        if npred:
            per_row += torch.bincount(vi[pidx], minlength=pi.numel())
        nfe_m[pi.cpu()] += per_row.cpu()
        nfe_m[ci.cpu()] += 1

        if pi.numel():
            # lagged terms, then the exact scan x <- A x + g along the window
            g = x.new_zeros((pi.numel(), lmax, *shape))
            cb, ce, cc = (_bcast(v[flat_j], xs) for v in (tab.B, tab.E, tab.C))
            gv = cb * d + ce * xs + cc * zs
            if dbuf is not None:
                dbuf[flat_m, flat_j % r_pts] = d
                evald[pi] = torch.maximum(evald[pi], p[pi] + L)
            if tab.multistep:
                # D_{j-1}: this round's for k >= 1, the stored one at the first point
                gv = gv + _bcast(tab.B2[flat_j], xs) * dbuf[flat_m, (flat_j - 1) % r_pts]
            if npred:
                gv[pidx] += _bcast(tab.B3[flat_j[pidx]], dp) * dp
            g[vi, vk] = gv
            a_pad = torch.where(valid, tab.A[src_j.clamp_max(n - 1)], torch.ones((), dtype=dt, device=dev))
            cur = buf[pi, p[pi] % r_pts]
            for k in range(lmax):
                cur = _bcast(a_pad[:, k], cur) * cur + g[:, k]
                g[:, k] = cur
            # residuals against the previous guesses, relative to sigma there
            tgt_j = flat_j + 1
            old = buf[flat_m, tgt_j % r_pts]
            new = g[vi, vk]
            rr = _residual_norm(new - old, norm) / tab.sig_norm[tgt_j].double()
            rr = torch.where(torch.isfinite(rr), rr, torch.full_like(rr, math.inf))
            res = torch.full((pi.numel(), lmax), math.inf, dtype=torch.float64, device=dev)
            res[vi, vk] = rr
            fin = torch.ones((pi.numel(), lmax), dtype=torch.bool, device=dev)
            fin[vi, vk] = torch.isfinite(new.reshape(new.shape[0], -1)).all(1)
            buf[flat_m, tgt_j % r_pts] = new
            # accept the converged prefix; the first point is exact unless its step has a predictor
            # (Heun's predictor used the lagged D there, so it converges like the others)
            lagged_first = pred_dev[p[pi].clamp_max(n - 1)]
            conv = (res <= tol) & valid
            conv[:, 0] = valid[:, 0] & (~lagged_first | conv[:, 0])
            if accept == "prefix":
                s = torch.cumprod(conv.long(), 1).sum(1)
            else:
                s = torch.where(conv.sum(1) == L, L,
                                torch.where((L == 1) & ~lagged_first, L, torch.zeros_like(L)))
            if max_iters is not None:
                s = torch.where(iters[pi] + 1 >= max_iters, L, s)
            # divergence: non-finite guesses, or residual growing without progress
            judged = valid & ((kgrid[None, :] >= 1) | lagged_first[:, None])
            tail = torch.where(judged, res, torch.zeros_like(res))
            rmax = tail.max(1).values if lmax else torch.zeros(0, dtype=torch.float64, device=dev)
            growing = (rmax > rprev[pi]) & (s <= 1)
            grow[pi] = torch.where(growing, grow[pi] + 1, torch.zeros_like(grow[pi]))
            rprev[pi] = rmax
            bad = (~(fin | ~valid).all(1)) | (grow[pi] >= patience)
            bad &= p[pi] >= seq_until[pi]
            unacc = rmax[(s < L)]
            if unacc.numel():
                stats.residuals.append(float(unacc.max()))
            # the freshest D (at the furthest source) seeds the next guesses
            li = torch.arange(pi.numel(), device=dev)
            d_last[pi] = d[_flat_pos(valid, li, L - 1)]
            p_old = p[pi].clone()
            hi[pi] = torch.maximum(hi[pi], p_old + L)
            p[pi] = p_old + s
            iters[pi] += 1
            if bool(bad.any()):
                bi = pi[bad]
                seq_until[bi] = torch.minimum(block_end(p[bi]), p[bi] + w)
                hi[bi] = p[bi]
                grow[bi] = 0
                rprev[bi] = math.inf
                fb_m[bi.cpu()] += 1
            # entering a new block: reset the iteration record, start the corrector
            newblk = (block_end(p_old) == p[pi]) & (p[pi] < n) & (s > 0)
            if bool(newblk.any()):
                ni = pi[newblk]
                iters[ni] = 0
                grow[ni] = 0
                rprev[ni] = math.inf
                if corrector_steps:
                    corr_left[ni] = corrector_steps
                    hi[ni] = p[ni]
        if ci.numel():
            k = corrector_steps - corr_left[ci]
            z = torch.stack([
                _noise.normal(seed, [members[i]], j, shape, tag=_noise.corrector_tag(kk), dtype=dt, device=dev)[0]
                for i, j, kk in zip(ci.tolist(), cj.tolist(), k.tolist(), strict=True)
            ])
            buf[ci, cj % r_pts] = _corrector(buf[ci, cj % r_pts], dc, cj, z, tab, corrector_size)
            d_last[ci] = dc
            corr_left[ci] -= 1
            hi[ci] = p[ci]
        # fresh guesses for every member that will iterate next round
        ext = ar[(p < n) & (corr_left == 0)]
        extend(ext)
        if progress is not None:
            progress(int(p.min()))

    stats.rounds_per_member = r_m
    stats.nfe_per_member = nfe_m
    stats.fallbacks_per_member = fb_m
    return buf[:, n % r_pts].clone(), stats


def _rms(diff: torch.Tensor) -> torch.Tensor:
    return diff.reshape(diff.shape[0], -1).double().pow(2).mean(1).sqrt()


def _fourier_max(diff: torch.Tensor) -> torch.Tensor:
    # largest coefficient of the change in the orthonormal DFT over all field dims; the
    # real-input half spectrum holds every modulus (|X_k| = |X_-k|), at half the cost
    dims = tuple(range(1, diff.ndim))
    c = torch.view_as_real(torch.fft.rfftn(diff, dim=dims, norm="ortho"))
    return c.pow(2).sum(-1).reshape(diff.shape[0], -1).amax(1).sqrt().double()


NORMS = {"rms": _rms, "fourier": _fourier_max}


def _residual_norm(diff: torch.Tensor, norm: str, chunk_elems: int = 1 << 24) -> torch.Tensor:
    # in chunks of points, so the float64/complex temporaries stay small for large fields
    per = max(1, chunk_elems // max(1, diff[0].numel()))
    return torch.cat([NORMS[norm](diff[i : i + per]) for i in range(0, diff.shape[0], per)])


def _flat_pos(valid: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Positions in the row-major flattening of ``valid.nonzero()`` of entries (rows, cols)."""
    before = valid.long().cumsum(1) - 1  # index within the row
    row_start = torch.cat([valid.new_zeros(1, dtype=torch.long), valid.long().sum(1).cumsum(0)[:-1]])
    return row_start[rows] + before[rows, cols]
