"""Observation guidance against the exact posterior of a Gaussian random field (issue 16's exactness table).

For each (observed fraction, sampler, likelihood) one case: a GRF truth, a random mask of observed points with
noise ``s``, members drawn with the exact (oracle) denoiser wrapped by :class:`sciencegen.samplers.Guided`, and
compared per pixel with the exact posterior (:class:`sciencegen.targets.ObservedGRF`, dense Gaussian
conditioning)::

    OMP_NUM_THREADS=1 python benchmarks/assimilate_exact.py --size 64 --members 256 \\
        --fractions 0.05 0.25 --samplers dpm2m picard_dpm2m --likelihoods gaussian dps

Columns: the share of pixels whose member mean lies within 3 standard errors of the exact posterior mean, the
mean ratio of member variance to exact posterior variance, the CRPS of the members against the truth next to the
exact posterior's (closed form), sequential rounds per batch (and the unguided sampler's), network evaluations
per member (a vector-Jacobian product counted as 2) and wall time.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import sciencegen
from sciencegen.samplers import SAMPLERS, Guided, draw_observations, mask_operator, random_mask
from sciencegen.targets import GaussianRandomField, ObservedGRF


def crps_members(x: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean over pixels of the ensemble CRPS (fair estimator: ``E|X - y| - E|X - X'|/2`` over distinct pairs)."""
    m = x.shape[0]
    a = (x - truth).abs().mean(0)
    xs = x.sort(0).values
    k = torch.arange(1, m + 1, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    pair = (2 * (2 * k - m - 1) * xs).sum(0) / (m * (m - 1))  # E|X - X'| over distinct pairs
    return float((a - pair / 2).mean())


def crps_gaussian(mean: torch.Tensor, std: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean over pixels of the closed-form CRPS of N(mean, std²) at ``truth`` (Gneiting & Raftery 2007)."""
    z = (truth - mean) / std
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    return float((std * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))).mean())


def row(field, truth, obs, law, sampler, likelihood, members, free_rounds, step_size, steps):
    guided = Guided(field.denoiser, obs, likelihood=likelihood, step_size=step_size)
    t0 = time.perf_counter()
    res = sciencegen.sample(guided, field.shape, members, sampler, steps, seed=0, dtype=torch.float64)
    wall = time.perf_counter() - t0
    x = res.samples
    mean, var = law.posterior_mean(), law.posterior_variance()
    within = float(((x.mean(0) - mean).abs() < 3 * (var / members).sqrt()).double().mean())
    return (f"| {sampler} | {likelihood} | {100 * within:.1f} % | {float((x.var(0) / var).mean()):.3f} | "
            f"{crps_members(x, truth):.4f} | {crps_gaussian(mean, var.sqrt(), truth):.4f} | {res.stats['rounds']}"
            f" ({free_rounds[sampler]}) | {res.stats['nfe']:.0f} | {wall:.0f} s |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--members", type=int, default=256)
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.25])
    p.add_argument("--samplers", nargs="+", default=["dpm2m", "picard_dpm2m"], help="names, or: all")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--steps-of", nargs="*", default=[], metavar="NAME=STEPS", help="other steps for some samplers")
    p.add_argument("--likelihoods", nargs="+", default=["gaussian", "dps"])
    p.add_argument("--step-size", type=float, default=10.0, help="dps step size")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(1)
    field = GaussianRandomField(a.size)
    samplers = list(SAMPLERS) if a.samplers == ["all"] else a.samplers
    steps = {s: a.steps for s in samplers} | {k: int(v) for k, v in (o.split("=") for o in a.steps_of)}
    free = {s: sciencegen.sample(field.denoiser, field.shape, a.members, s, steps[s], seed=0,
                                 dtype=torch.float64).stats["rounds"] for s in samplers}
    for frac in a.fractions:
        g = torch.Generator().manual_seed(a.seed)
        truth = field.sample(1, g)[0]
        obs = draw_observations(truth, mask_operator(random_mask(field.shape, frac, g)), a.noise, g)
        law = ObservedGRF.from_observations(field, obs)
        print(f"\n{a.size}², {obs.operator.count} points observed ({100 * frac:g} %), s = {a.noise}, "
              f"{a.members} members; exact posterior variance {float(law.posterior_variance().mean()):.3f} "
              "(prior 1)\n")
        print("| sampler | likelihood | mean within 3 SE | variance ratio | CRPS members | CRPS exact | rounds "
              "(unguided) | NFE/member | wall |")
        print("|---|---|---|---|---|---|---|---|---|")
        for s in samplers:
            for lik in a.likelihoods:
                print(row(field, truth, obs, law, s, lik, a.members, free, a.step_size, steps[s]), flush=True)


if __name__ == "__main__":
    main()
