"""Which acceleration of the Picard fixed-point iteration pays: Picard, triangular Anderson, coarse starts, Newton.

Walker & Ni 2011 (Anderson acceleration); Tang et al. 2024 (ParaTAA, its triangular form for parallel sampling);
Lions, Maday & Turinici 2001 (parareal, the coarse-solver start; SRDS, Selvam et al. 2024); the spectral Newton
of :mod:`sciencegen.samplers.newton`.

The whole grid is one window here (no sliding, no acceptance): iteration ``k`` evaluates the denoiser at every
point of the current trajectory (one round), and the table reports the relative L2 distance of the last point
to the sequential trajectory after each round, so the methods are compared on the bare iteration::

    OMP_NUM_THREADS=1 python benchmarks/picard_acceleration.py --size 64 --sampler picard_dpm2m --steps 64

A coarse start first runs ``--coarse`` steps of the sequential twin (that many rounds, counted), interpolates its
denoiser outputs in log-sigma onto the fine grid and walks the fine recurrence with them for the first guesses.
"""

from __future__ import annotations

import argparse
import json
import logging
import math

import torch

from sciencegen.samplers import noise, sample, twin
from sciencegen.samplers.api import sampler_table
from sciencegen.samplers.newton import SpectralGain
from sciencegen.targets import GaussianRandomField

log = logging.getLogger("picard_acceleration")


def _b(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


class Problem:
    """The step table, noise and sequential reference of one member on the exact GRF."""

    def __init__(self, size: int, sampler: str, steps: int, seed: int = 0):
        self.g = GaussianRandomField(size)
        self.sampler, self.steps = sampler, steps
        _, self.tab, _ = sampler_table(sampler, steps)
        seq, opts = twin(sampler, {})
        dt = torch.float64
        self.ref = sample(self.g.denoiser, self.g.shape, 1, seq, steps, seed, dtype=dt, **opts).samples[0]
        self.x0 = float(self.tab.sigma[0]) * noise.normal(seed, [0], 0, self.g.shape, tag=noise.INIT, dtype=dt)[0]
        self.z = noise.normal(seed, [0] * steps, list(range(steps)), self.g.shape, dtype=dt)
        t = self.tab
        self.A, self.B, self.E, self.C = t.A, t.B, t.E, t.C
        self.B2 = t.B2 if t.B2 is not None else torch.zeros_like(t.A)
        self.alpha, self.s = t.alpha, t.s

    def dist(self, traj: torch.Tensor) -> float:
        return float((traj[-1] - self.ref).norm() / self.ref.norm())

    def denoise(self, traj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = traj[:-1] / _b(self.alpha[:-1], traj[:-1])
        return self.g.denoiser(y, self.s[:-1]), y

    def walk(self, d: torch.Tensor) -> torch.Tensor:
        """The recurrence with the denoiser outputs ``d`` frozen at every point."""
        traj = torch.empty((self.steps + 1, *self.x0.shape), dtype=torch.float64)
        traj[0] = self.x0
        for j in range(self.steps):
            prev = d[j - 1] if j else torch.zeros_like(d[0])
            traj[j + 1] = ((self.A[j] + self.E[j]) * traj[j] + self.B[j] * d[j] + self.B2[j] * prev
                           + self.C[j] * self.z[j])
        return traj


def picard(p: Problem, traj: torch.Tensor) -> torch.Tensor:
    d, _ = p.denoise(traj)
    dm = torch.cat([torch.zeros_like(d[:1]), d[:-1]])
    g = _b(p.E, d) * traj[:-1] + _b(p.B, d) * d + _b(p.B2, d) * dm + _b(p.C, d) * p.z
    new = traj.clone()
    new[1:] = traj[0] + torch.cumsum(g + _b(p.A - 1, d) * traj[:-1], 0)
    return new


class Anderson:
    """Triangular Anderson mixing of the Picard map with ``m`` differences (point j fits residuals of points <= j)."""

    def __init__(self, m: int):
        self.m, self.hist = m, []

    def __call__(self, p: Problem, traj: torch.Tensor) -> torch.Tensor:
        gx = picard(p, traj)[1:]
        r = gx - traj[1:]
        self.hist = (self.hist + [(gx, r)])[-(self.m + 1):]
        new = traj.clone()
        new[1:] = gx
        if len(self.hist) > 1:
            n = gx.shape[0]
            pairs = list(zip(self.hist, self.hist[1:], strict=False))
            dg = torch.stack([b[0] - a[0] for a, b in pairs], -1).reshape(n, -1, len(pairs))
            dr = torch.stack([b[1] - a[1] for a, b in pairs], -1).reshape(n, -1, len(pairs))
            gram = torch.einsum("npa,npb->nab", dr, dr).cumsum(0)
            rhs = torch.einsum("npa,np->na", dr, r.reshape(n, -1)).cumsum(0)
            tr = gram.diagonal(dim1=1, dim2=2).sum(-1)
            eye = torch.eye(gram.shape[-1], dtype=gram.dtype)
            gam = torch.linalg.solve(gram + (1e-8 * tr + 1e-30)[:, None, None] * eye, rhs[..., None])[..., 0]
            gam = torch.where((tr > 0)[:, None], gam, torch.zeros_like(gam))
            new[1:] = gx - (dg * gam[:, None, :]).sum(-1).reshape(gx.shape)
        return new


def newton(p: Problem, traj: torch.Tensor) -> torch.Tensor:
    d, y = p.denoise(traj)
    spec = SpectralGain(p.g.shape, torch.device("cpu"))
    gain = spec.estimate(d, y)
    xh, dh, zh = spec.fft(traj), spec.fft(d), spec.fft(p.z)
    dmh = torch.cat([torch.zeros_like(dh[:1]), dh[:-1]])
    out = xh.clone()
    prev = torch.zeros_like(xh[0])
    for j in range(p.steps):
        delta = (out[j] - xh[j]) / p.alpha[j]
        dj = dh[j] + gain[j] * delta
        dm = dmh[j] + (gain[j - 1] * prev if j else 0)
        out[j + 1] = (p.A[j] + p.E[j]) * out[j] + p.B[j] * dj + p.B2[j] * dm + p.C[j] * zh[j]
        prev = delta
    return spec.ifft(out)


def coarse_start(p: Problem, k: int) -> torch.Tensor:
    """First guesses from ``k`` sequential steps of the twin: its D interpolated in log-sigma onto the fine grid."""
    seq, opts = twin(p.sampler, {})
    _, ctab, _ = sampler_table(seq, k, **opts)
    x = p.x0.clone()
    ds, levels = [], []
    for j in range(k):
        d = p.g.denoiser((x / ctab.alpha[j])[None], ctab.s[j : j + 1])[0]
        ds.append(d)
        levels.append(math.log(float(ctab.s[j])))
        prev = ds[-2] if j else torch.zeros_like(d)
        b2 = ctab.B2[j] if ctab.B2 is not None else 0.0
        x = (ctab.A[j] + ctab.E[j]) * x + ctab.B[j] * d + b2 * prev  # deterministic coarse path (no noise)
    lv = torch.tensor(levels)
    fine = torch.log(p.s[:-1].clamp_min(float(ctab.s[k - 1])))
    idx = torch.searchsorted(-lv, -fine).clamp(1, k - 1) if k > 1 else torch.zeros_like(fine, dtype=torch.long)
    stack = torch.stack(ds)
    if k == 1:
        return p.walk(stack.expand(p.steps, *stack.shape[1:]))
    lo, hi = idx - 1, idx
    w = ((fine - lv[lo]) / (lv[hi] - lv[lo])).clamp(0, 1)
    d = stack[lo] + _b(w, stack[lo]) * (stack[hi] - stack[lo])
    return p.walk(d)


def run(p: Problem, method: str, rounds: int, coarse: int) -> list[float]:
    traj = coarse_start(p, coarse) if coarse else p.walk(torch.zeros((p.steps, *p.x0.shape), dtype=torch.float64))
    step = {"picard": picard, "newton": newton}.get(method) or Anderson(int(method.removeprefix("anderson")))
    out = []
    for _ in range(rounds):
        traj = step(p, traj)
        out.append(p.dist(traj))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--sampler", default="picard_dpm2m")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--methods", default="picard,anderson2,anderson4,anderson8,newton")
    ap.add_argument("--coarse", default="0,4,8", help="coarse-start steps to try (0: extrapolated first guesses)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    p = Problem(a.size, a.sampler, a.steps)
    rows = []
    for c in (int(v) for v in a.coarse.split(",")):
        for m in a.methods.split(","):
            d = run(p, m, a.rounds, c)
            rows.append({"method": m, "coarse": c, "dist": d})
            first = {t: next((c + i + 1 for i, v in enumerate(d) if v <= t), None) for t in (3e-3, 3e-4)}
            log.info("%-10s coarse=%d  rounds to 3e-3: %s, to 3e-4: %s  | %s", m, c, first[3e-3], first[3e-4],
                     " ".join(f"{v:.1e}" for v in d))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raise SystemExit(main())
