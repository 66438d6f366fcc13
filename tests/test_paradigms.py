"""The ParaDiGMS walk against an independent loop written from Shih et al. 2023, Algorithm 1, as the diffusers
``StableDiffusionParadigmsPipeline`` runs it (batch of one), and against the sequential twin at tight tolerance."""

import pytest
import torch

import sciencegen
from sciencegen.diffusion import make_grid
from sciencegen.samplers import noise, twin
from sciencegen.targets import GaussianRandomField


def item_by_item(den):
    """A batch-invariant denoiser (batched FFTs round differently from single ones)."""
    return lambda x, s: torch.cat([den(x[i : i + 1], s[i : i + 1]) for i in range(x.shape[0])])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def column(v: torch.Tensor, shape) -> torch.Tensor:
    """Per-point coefficients ``[n]`` as ``[n, 1, ...]`` against points of ``shape``."""
    return v.reshape(-1, *[1] * len(shape))


def paradigms_loop(den, shape, steps, seed, member, tol, parallel, method="sde"):
    """One member through ParaDiGMS' pipeline loop, in float64, with the member's noise stream.

    The scheduler step (SDE-DPM-Solver++(1) / DPM-Solver++(1), Lu et al. 2022) is written from its formulas on the
    geometric grid: ``x_{i+1} = ca_i x_i + cd_i D(x_i / alpha_i, s_i) + cz_i z_i``.  The pipeline: a buffer of all
    ``N + 1`` points set to ``x_0``; a window ``[begin, end)`` of ``parallel`` points; new points ``x_begin +
    cumsum(drift) + cumsum(noise)``; error ``|new - old|^2 / (d var)`` against ``tol^2`` with the DDPM posterior
    variance of the step leaving each point (also for DDIM) and ``var = 0`` at the end; slide through the first
    failing point; the points entering the window are copies of the window's last point.

    Returns the sample, the rounds and the network evaluations.
    """
    t = make_grid(steps)
    a, sg = torch.exp(-t), torch.sqrt(-torch.expm1(-2 * t))
    s = sg / a
    r = s[1:] / s[:-1]
    sde_std = sg[1:] * torch.sqrt(1 - r * r)
    if method == "sde":
        ca, cd = sg[1:] / sg[:-1] * r, a[1:] * (1 - r * r)
    else:
        ca, cd = sg[1:] / sg[:-1], a[1:] * (1 - r)
    inv_var = 1.0 / torch.cat([sde_std**2, torch.zeros(1, dtype=torch.float64)])
    x0 = sg[0] * noise.normal(seed, [member], 0, shape, tag=noise.INIT, dtype=torch.float64)[0]
    z = torch.stack([noise.normal(seed, [member], i, shape, dtype=torch.float64)[0] for i in range(steps)])
    noise_array = column(sde_std, shape) * z if method == "sde" else torch.zeros_like(z)
    buf = torch.stack([x0] * (steps + 1))
    dim = x0.numel()
    parallel = min(parallel, steps)
    begin, end, rounds, nfe = 0, parallel, 0, 0
    while begin < steps:
        n = end - begin
        xs = buf[begin:end]
        d = den(xs / column(a[begin:end], shape), s[begin:end])
        delta = (column(ca[begin:end], shape) - 1) * xs + column(cd[begin:end], shape) * d
        new = buf[begin][None] + torch.cumsum(delta, 0) + torch.cumsum(noise_array[begin:end], 0)
        err = (new - buf[begin + 1 : end + 1]).reshape(n, -1).pow(2).sum(1)
        ratio = torch.cat([err * inv_var[begin + 1 : end + 1] / dim, torch.tensor([1e9], dtype=torch.float64)])
        ind = int(torch.argmax((ratio > tol**2).int()))
        new_begin = begin + min(1 + ind, parallel)
        new_end = min(new_begin + parallel, steps)
        buf[begin + 1 : end + 1] = new
        buf[end : new_end + 1] = buf[end][None]
        rounds, nfe = rounds + 1, nfe + n
        begin, end = new_begin, new_end
    return buf[-1], rounds, nfe


def walk(g, members=1, **kw):
    kw.setdefault("seed", 3)
    return sciencegen.sample(item_by_item(g.denoiser), g.shape, members=members, sampler="paradigms",
                             dtype=torch.float64, **kw)


@pytest.mark.parametrize("window", [8, 64])
@pytest.mark.parametrize("tol", [0.1, 0.01])
@pytest.mark.parametrize("steps", [1000, 100])
def test_the_walk_is_the_pipelines_loop(steps, tol, window):
    g = GaussianRandomField(16)
    got = walk(g, steps=steps, tol=tol, window=window, first_member=2)
    ref, rounds, nfe = paradigms_loop(item_by_item(g.denoiser), g.shape, steps, 3, 2, tol, window)
    assert rel(got.samples[0], ref) <= 1e-12
    assert got.stats["rounds"] == rounds and int(got.stats["nfe_per_member"][0]) == nfe
    assert rounds < steps < nfe  # parallel in time, at a price in evaluations


@pytest.mark.parametrize("steps, tol, window", [(100, 0.1, 8), (1000, 0.01, 64)])
def test_the_ode_walk_is_the_pipelines_ddim_loop(steps, tol, window):
    # DDIM: no noise, but the change is still measured against the DDPM posterior variance
    g = GaussianRandomField(16)
    got = walk(g, steps=steps, tol=tol, window=window, method="ode")
    ref, rounds, nfe = paradigms_loop(item_by_item(g.denoiser), g.shape, steps, 3, 0, tol, window, method="ode")
    assert rel(got.samples[0], ref) <= 1e-12
    assert got.stats["rounds"] == rounds and int(got.stats["nfe_per_member"][0]) == nfe


def test_members_in_a_batch_get_their_single_member_results():
    g = GaussianRandomField(16)
    kw = dict(steps=300, tol=0.03, window=16)
    together = walk(g, members=4, **kw)
    assert len(set(together.stats["nfe_per_member"].tolist())) > 1  # the members differ: a real check
    for i in range(4):
        alone = walk(g, first_member=i, **kw)
        assert torch.equal(together.samples[i], alone.samples[0])
        assert int(together.stats["rounds_per_member"][i]) == alone.stats["rounds"]
        assert int(together.stats["nfe_per_member"][i]) == int(alone.stats["nfe_per_member"][0])
    assert together.stats["rounds"] == int(together.stats["rounds_per_member"].max())


@pytest.mark.parametrize("method, tol, bound", [("sde", 1e-6, 1e-8), ("sde", 1e-8, 1e-10), ("ode", 1e-8, 1e-9)])
def test_a_tight_tolerance_reproduces_the_sequential_twin(method, tol, bound):
    g = GaussianRandomField(16)
    kw = dict(members=2, steps=1000, seed=1, dtype=torch.float64)
    seq, opts = twin("paradigms", {"method": method})
    ref = sciencegen.sample(g.denoiser, g.shape, sampler=seq, **kw, **opts)
    got = sciencegen.sample(g.denoiser, g.shape, sampler="paradigms", method=method, tol=tol, **kw)
    assert rel(got.samples, ref.samples) <= bound
    assert got.stats["rounds"] < 100


def test_multistep_tables_reproduce_their_sequential_twin():
    # DPM-Solver++(2M): D_{i-1} inside the window from the same round, at the window's first point the stored one
    g = GaussianRandomField(16)
    kw = dict(members=2, steps=64, seed=5, grid="karras", dtype=torch.float64)
    ref = sciencegen.sample(g.denoiser, g.shape, sampler="dpm2m", **kw)
    got = sciencegen.sample(g.denoiser, g.shape, sampler="paradigms", method="ode", order=2, tol=1e-9, **kw)
    assert rel(got.samples, ref.samples) <= 1e-9 and got.stats["rounds"] < 64


def test_faithful_and_our_sliding_window_differ():
    # the same window and tolerance, other rules: the faithful walk stays much closer to the sequential trajectory
    g = GaussianRandomField(16)
    kw = dict(members=2, steps=400, seed=0, dtype=torch.float64)
    ref = sciencegen.sample(g.denoiser, g.shape, sampler="sequential_sde", **kw).samples
    faithful = sciencegen.sample(g.denoiser, g.shape, sampler="paradigms", **kw)
    ours = sciencegen.sample(g.denoiser, g.shape, sampler="picard_slide", **kw)
    assert rel(faithful.samples, ref) < 0.1 * rel(ours.samples, ref)


@pytest.mark.parametrize("options, match", [
    ({"blocks": 2}, r"paradigms samplers take no blocks"),
    ({"corrector_steps": 1}, r"paradigms samplers take no corrector_steps"),
    ({"lag": "F"}, r"paradigms samplers take no lag"),
    ({"norm": "fourier"}, r"paradigms samplers take no norm"),
    ({"method": "heun"}, r"method='heun' does not fit the paradigms walk"),
    ({"window": 0}, r"window must be an integer >= 1"),
    ({"tol": float("inf")}, r"tol must be a positive number"),
])
def test_options_it_cannot_use_are_refused_in_one_line(options, match):
    with pytest.raises(ValueError, match=match) as err:
        sciencegen.sample(lambda x, s: x, (4,), sampler="paradigms", steps=4, **options)
    assert "\n" not in str(err.value)
