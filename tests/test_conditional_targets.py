"""Exact conditional laws of the GRF (:class:`~sciencegen.targets.CoarseGRF`, :class:`~sciencegen.targets.AR1GRF`,
:class:`~sciencegen.targets.StaticGRF`), the conditional oracle and :func:`~sciencegen.models.oracle.exact_law`.

The truths are independent of the FFT code: brute-force dense Gaussian conditioning in float64 (the prior
covariance built from an explicit DFT matrix, the block-mean operator from its definition), exact posterior
draws within their Monte Carlo error, and the samplers run on the exact conditional denoiser.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

import sciencegen
from sciencegen.config import config_dir
from sciencegen.data.fields import DataError
from sciencegen.errors import TrainError
from sciencegen.models.build import oracle_denoiser
from sciencegen.models.oracle import Oracle, exact_law
from sciencegen.targets import AR1GRF, CoarseGRF, GaussianRandomField, StaticGRF, spectral_error

F64 = torch.float64


# ---------------------------------------------------------------- dense truths


def _positions(n: int, ndim: int) -> np.ndarray:
    return np.array(list(itertools.product(range(n), repeat=ndim)))  # C order, as reshape(-1) flattens


def _dft(n: int, ndim: int) -> torch.Tensor:
    """The orthonormal DFT matrix ``F[k, j] = exp(-2πi k·j / n) / sqrt(N)`` over C-ordered multi-indices."""
    p = torch.as_tensor(_positions(n, ndim), dtype=F64)
    return torch.exp(-2j * math.pi * (p @ p.T) / n) / math.sqrt(n**ndim)


def _prior(g: GaussianRandomField) -> torch.Tensor:
    """Pixel covariance of one channel: ``F^* diag(v) F`` with ``v`` from the spectrum's definition."""
    k = torch.as_tensor(_positions(g.n, g.ndim), dtype=F64)
    k = torch.where(k > g.n // 2, k - g.n, k)  # signed wavenumbers; |k| is what matters
    v = (1 + (k.pow(2).sum(1) / g.k0**2)) ** (-g.slope / 2)
    v = v / v.mean()
    f = _dft(g.n, g.ndim)
    return (f.conj().T @ torch.diag(v.to(f.dtype)) @ f).real


def _blocks(n: int, f: int, ndim: int) -> torch.Tensor:
    """The block-mean operator ``A[J, j] = f^-ndim`` where ``j // f == J`` (coarse grid C-ordered)."""
    fine, coarse = _positions(n, ndim), _positions(n // f, ndim)
    member = (fine[None, :, :] // f == coarse[:, None, :]).all(-1)
    return torch.as_tensor(member, dtype=F64) / f**ndim


def _conditional(cov_xy: torch.Tensor, cov_y: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return cov_xy @ torch.linalg.solve(cov_y, y)


def _mode_variance(cov: torch.Tensor, n: int, ndim: int) -> torch.Tensor:
    f = _dft(n, ndim)
    return torch.diagonal(f @ cov.to(f.dtype) @ f.conj().T).real


# ---------------------------------------------------------------- CoarseGRF against dense conditioning


@pytest.mark.parametrize("n,f,ndim,channels", [(8, 2, 2, 1), (8, 4, 2, 2), (16, 4, 2, 1), (9, 3, 2, 1), (16, 2, 1, 1),
                                               (8, 2, 3, 1)])
def test_coarse_law_equals_dense_gaussian_conditioning(n, f, ndim, channels):
    g = GaussianRandomField(n, slope=2.5, k0=2.0, channels=channels, ndim=ndim)
    law = CoarseGRF(g, f)
    s, a = _prior(g), _blocks(n, f, ndim)
    d = s.shape[0]
    gen = torch.Generator().manual_seed(1)
    x0 = g.sample(3, gen)
    extra = torch.randn(3, 2, *g.shape[1:], generator=gen, dtype=F64)  # static channels: ignored
    cond = torch.cat([law.coarsen(x0), extra], 1)
    sig = torch.tensor([0.05, 1.0, 7.0], dtype=F64)
    x = x0 + sig.reshape(-1, *[1] * (ndim + 1)) * torch.randn(x0.shape, generator=gen, dtype=F64)
    got = law.denoiser(x, sig, cond)
    post = s - _conditional(s @ a.T, a @ s @ a.T, a @ s)
    for b, c in itertools.product(range(3), range(channels)):
        y = a @ x0[b, c].reshape(-1)
        # joint law of (x = x0 + s·noise, y = A x0) and E[x0 | x, y], by brute force
        cov_z = torch.cat([torch.cat([s + sig[b] ** 2 * torch.eye(d, dtype=F64), s @ a.T], 1),
                           torch.cat([a @ s, a @ s @ a.T], 1)])
        want = _conditional(torch.cat([s, s @ a.T], 1), cov_z, torch.cat([x[b, c].reshape(-1), y]))
        assert torch.allclose(got[b, c].reshape(-1), want, atol=1e-10, rtol=0)
        mean = law.posterior_mean(cond[b])
        assert mean.shape == g.shape
        assert torch.allclose(mean[c].reshape(-1), _conditional(s @ a.T, a @ s @ a.T, y), atol=1e-10, rtol=0)
    assert torch.allclose(law.posterior_mean(cond), torch.stack([law.posterior_mean(c) for c in cond]), atol=1e-12)
    var = law.posterior_variance()
    assert var.shape == g.shape
    for c in range(channels):
        assert torch.allclose(var[c].reshape(-1), torch.diagonal(post), atol=1e-10, rtol=0)
    assert torch.allclose(law.mode_variance().reshape(-1), _mode_variance(post, n, ndim), atol=1e-10, rtol=0)
    # no noise: a field with these block means is returned as it is; the mean mode is fixed by the condition
    assert torch.allclose(law.denoiser(x0, torch.zeros(3, dtype=F64), cond), x0, atol=1e-10, rtol=0)
    assert float(law.mode_variance().flatten()[0]) < 1e-12


def test_coarsen_is_the_block_mean_repeated():
    gen = torch.Generator().manual_seed(0)
    for ndim, n, f in [(1, 12, 3), (2, 8, 4), (3, 4, 2)]:
        law = CoarseGRF(GaussianRandomField(n, ndim=ndim, channels=2), f)
        x = torch.randn(3, 2, *[n] * ndim, generator=gen, dtype=F64)
        xn = x.numpy()
        want = np.empty_like(xn)
        for j in itertools.product(range(n), repeat=ndim):  # the loop of the definition
            block = tuple(slice(i // f * f, i // f * f + f) for i in j)
            want[(..., *j)] = xn[(..., *block)].mean(axis=tuple(range(2, 2 + ndim)))
        assert np.allclose(law.coarsen(x).numpy(), want, atol=1e-14)


def test_coarse_law_refuses_a_factor_that_does_not_divide_and_a_wrong_condition():
    g = GaussianRandomField(12)
    with pytest.raises(ValueError, match="dividing the grid size 12"):
        CoarseGRF(g, 5)
    law = CoarseGRF(g, 4)
    x = g.sample(2)
    with pytest.raises(ValueError, match=r"expects cond of shape \[2, C_cond >= 1, \*\[12, 12\]\], got \(2, 1, 6, 6\)"):
        law.denoiser(x, torch.ones(2, dtype=F64), x[..., :6, :6])


# ---------------------------------------------------------------- AR1GRF against dense conditioning


@pytest.mark.parametrize("n,ndim,channels,a", [(8, 2, 2, 0.8), (16, 1, 1, -0.5)])
def test_ar1_law_equals_dense_gaussian_conditioning(n, ndim, channels, a):
    g = GaussianRandomField(n, slope=3.0, k0=3.0, channels=channels, ndim=ndim)
    law = AR1GRF(g, a)
    s = _prior(g)
    d = s.shape[0]
    # the stationary AR(1) pair: Cov(x_t) = Cov(x_{t+1}) = S, Cov(x_{t+1}, x_t) = a S
    gen = torch.Generator().manual_seed(2)
    xt = g.sample(3, gen)
    x1 = law.posterior_sample(xt[0], 3, gen)
    sig = torch.tensor([0.02, 0.7, 20.0], dtype=F64)
    x = x1 + sig.reshape(-1, *[1] * (ndim + 1)) * torch.randn(x1.shape, generator=gen, dtype=F64)
    got = law.denoiser(x, sig, xt)
    for b, c in itertools.product(range(3), range(channels)):
        cov_z = torch.cat([torch.cat([s + sig[b] ** 2 * torch.eye(d, dtype=F64), a * s], 1),
                           torch.cat([a * s, s], 1)])
        want = _conditional(torch.cat([s, a * s], 1), cov_z, torch.cat([x[b, c].reshape(-1), xt[b, c].reshape(-1)]))
        assert torch.allclose(got[b, c].reshape(-1), want, atol=1e-10, rtol=0)
        mean = _conditional(a * s, s, xt[b, c].reshape(-1))
        assert torch.allclose(law.posterior_mean(xt[b])[c].reshape(-1), mean, atol=1e-10, rtol=0)
    post = s - a * s @ torch.linalg.solve(s, a * s)
    assert torch.allclose(law.posterior_variance()[0].reshape(-1), torch.diagonal(post), atol=1e-10, rtol=0)
    assert torch.allclose(law.mode_variance().reshape(-1), _mode_variance(post, n, ndim), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="-1 < a < 1"):
        AR1GRF(g, 1.0)


def test_ar1_trajectories_have_the_lag_correlation_and_the_stationary_variance():
    g = GaussianRandomField(16)
    law = AR1GRF(g, 0.8)
    traj = law.trajectory(256, 6, torch.Generator().manual_seed(0))
    assert traj.shape == (256, 6, 1, 16, 16)
    for lag in (1, 2):
        u, w = traj[:, :-lag].flatten(), traj[:, lag:].flatten()
        # 256·(6-lag) fields of 256 correlated pixels: a few hundred effective samples, se about 0.03
        assert abs(float((u * w).mean() / (u * u).mean()) - 0.8**lag) < 0.1
    for t in (0, 5):  # every time is the GRF: its spectrum within the Monte Carlo noise
        assert spectral_error(traj[:, t], g) < 0.05
    innovation = (traj[:, 1:] - 0.8 * traj[:, :-1]).reshape(-1, *g.shape) / 0.6
    assert spectral_error(innovation, g) < 0.05


def test_ar1_law_is_the_law_of_the_grf_dataset_with_ar():
    # helper-independent check that the data generator (dataset=grf, ar) and the exact law agree
    pytest.importorskip("dask")
    from sciencegen.physics.datasets import GRFSource

    src = GRFSource(size=16, samples=128, ar=0.7, length=4, chunk=128)
    ds, _, _ = src.open()
    x = torch.as_tensor(np.asarray(ds["field"].values), dtype=F64)  # (trajectory, time, y, x)
    assert x.shape == (128, 4, 16, 16)
    law = AR1GRF(src.target(), 0.7)
    innovation = (x[:, 1:] - law.posterior_mean(x[:, :-1].reshape(-1, 1, 16, 16)).reshape(128, 3, 16, 16))
    assert spectral_error(innovation.reshape(-1, 1, 16, 16) / math.sqrt(1 - 0.49), src.target()) < 0.05
    assert spectral_error(innovation.reshape(-1, 1, 16, 16), src.target()) > 0.3  # the (1 - a²) is seen


# ---------------------------------------------------------------- exact posterior draws


def _z_bounds(post: torch.Tensor, false_alarm: float = 1e-3) -> tuple[float, float, float]:
    """For pixel z-scores ``(mean - mu) / sqrt(var / members)`` of exact draws (each exactly N(0, 1)):
    the sd of their pixel mean (``sqrt(Σρ) / P``), of their pixel mean square (``sqrt(2 Σρ²) / P``), and the
    union bound on ``max |z|`` at ``false_alarm`` (ρ the posterior correlation matrix)."""
    sd = torch.diagonal(post).clamp_min(1e-300).sqrt()
    rho = post / sd[:, None] / sd[None, :]
    p = post.shape[0]
    zmax = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - false_alarm / (2 * p), dtype=F64)))
    return float(rho.sum().sqrt()) / p, float((2 * rho.pow(2).sum()).sqrt()) / p, zmax


def _z_stats(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> tuple[float, float, float]:
    z = (x.double().mean(0) - mean) / (var / x.shape[0]).sqrt()
    return float(z.mean()), float(z.pow(2).mean()), float(z.abs().max())


def _check_means(x: torch.Tensor, law, cond: torch.Tensor, post: torch.Tensor, k: float = 4.0) -> tuple:
    """Sample means within the Monte Carlo error of the exact posterior mean (pixel z-scores)."""
    zm, z2, zmax = _z_stats(x, law.posterior_mean(cond), law.posterior_variance())
    sd_mean, sd_sq, bound = _z_bounds(post)
    assert abs(zm) < k * sd_mean, (zm, sd_mean)
    assert abs(z2 - 1) < k * sd_sq, (z2, sd_sq)
    assert zmax < bound, (zmax, bound)
    return zm, z2, zmax


def _posterior_cov(law) -> torch.Tensor:
    s = _prior(law.field)
    if isinstance(law, CoarseGRF):
        a = _blocks(law.field.n, law.factor, law.ndim)
        return s - _conditional(s @ a.T, a @ s @ a.T, a @ s)
    return (1 - law.a**2) * s


@pytest.mark.parametrize("make", [lambda g: CoarseGRF(g, 4), lambda g: AR1GRF(g, 0.8)], ids=["coarse", "ar1"])
def test_exact_posterior_draws_have_the_closed_form_moments(make):
    g = GaussianRandomField(16)
    law = make(g)
    post = _posterior_cov(law)
    gen = torch.Generator().manual_seed(3)
    x0 = g.sample(1, gen)
    cond = torch.cat([law.coarsen(x0) if isinstance(law, CoarseGRF) else x0, g.sample(1, gen)], 1)[0]
    draws = law.posterior_sample(cond, 4000, gen)
    assert draws.shape == (4000, *g.shape)
    _check_means(draws, law, cond, post)
    ratio = draws.var(0) / law.posterior_variance()
    assert float((ratio - 1).abs().max()) < 5 * math.sqrt(2 / 3999)  # per pixel, 256 pixels
    assert law.spectral_error(draws, cond) < 0.03
    assert law.spectral_error(g.sample(4000, gen), cond) > 0.2  # the prior is not the posterior
    if isinstance(law, CoarseGRF):  # every draw has exactly the observed block means
        assert torch.allclose(law.coarsen(draws), law.coarsen(cond[None, :1]).expand_as(draws), atol=1e-12)


def test_static_law_is_the_prior_behind_the_conditional_interface():
    g = GaussianRandomField(8, channels=2)
    law = StaticGRF(g)
    x = g.sample(3, torch.Generator().manual_seed(0))
    s = torch.tensor([0.1, 1.0, 3.0], dtype=F64)
    cond = torch.randn(3, 4, 8, 8, dtype=F64)
    assert torch.equal(law.denoiser(x, s, cond), g.denoiser(x, s))
    assert torch.equal(law.posterior_mean(cond[0]), torch.zeros(g.shape, dtype=F64))
    assert torch.allclose(law.posterior_variance(), torch.ones(g.shape, dtype=F64))
    assert law.posterior_sample(cond[0], 5).shape == (5, *g.shape)


# ---------------------------------------------------------------- the conditional oracle


def test_conditional_oracle_gives_the_exact_law_and_one_line_errors():
    g = GaussianRandomField(16)
    law = CoarseGRF(g, 4)
    oracle = Oracle(law)
    assert oracle.conditional and oracle.shape == (1, 16, 16) and list(oracle.parameters()) == []
    x = g.sample(4, torch.Generator().manual_seed(0), dtype=torch.float32)
    cond = law.coarsen(x.double()).float()
    s = torch.tensor([0.01, 0.3, 2.0, 50.0])
    got = oracle(x, s, cond)
    assert got.dtype == torch.float32 and torch.equal(got, law.denoiser(x, s, cond))
    assert torch.equal(oracle(x, 0.5, cond), law.denoiser(x, torch.full((4,), 0.5), cond))
    cases = [((x, s), "is conditional: call it as oracle"),
             ((x, s, cond[:2]), r"expects cond of shape \[4, C_cond, \*\[16, 16\]\], got \(2, 1, 16, 16\)"),
             ((x, s, cond[..., :8]), r"expects cond of shape"),
             ((x, s, cond[:, :0]), r"C_cond >= 1")]
    for args, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            oracle(*args)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="unconditional") as info:
        Oracle(g)(x, s, cond)
    assert "\n" not in str(info.value)
    assert not Oracle(g).conditional


def _dataset(*overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("data", overrides=list(overrides)).dataset


def test_exact_law_from_dataset_configs():
    assert type(exact_law(_dataset("dataset=grf"))) is GaussianRandomField
    law = exact_law(_dataset("dataset=grf", "dataset.size=16", "+conditioning=[coarse,static]"))
    assert isinstance(law, CoarseGRF) and law.factor == 4 and law.shape == (1, 16, 16)
    assert isinstance(exact_law(_dataset("+experiment=grf_downscale")), CoarseGRF)
    law = exact_law(_dataset("dataset=grf", "+conditioning=state", "dataset.ar=0.8",
                             "dataset.conditioning.state.lag=2"))
    assert isinstance(law, AR1GRF) and math.isclose(law.a, 0.64)  # two steps of a = 0.8
    assert isinstance(exact_law(_dataset("dataset=grf", "+conditioning=static")), StaticGRF)
    assert exact_law(_dataset("dataset=grf", "+conditioning=state")) is None  # independent samples: no state law
    assert exact_law(_dataset("dataset=grf", "+conditioning=[coarse,state]", "dataset.ar=0.5")) is None
    assert exact_law(_dataset("dataset=kolmogorov")) is None
    assert exact_law(_dataset("dataset=kolmogorov", "+conditioning=state")) is None
    with pytest.raises(DataError, match=r"^dataset.conditioning.coarse: factor must be a positive integer dividing"
                                        r" the grid size 32, got 5$"):
        exact_law(_dataset("dataset=grf", "+conditioning=coarse", "dataset.conditioning.coarse.factor=5"))
    # model=oracle builds on it
    oracle = oracle_denoiser(_dataset("dataset=grf", "+conditioning=coarse"))
    assert oracle.conditional and isinstance(oracle.target, CoarseGRF)
    with pytest.raises(TrainError, match="needs a dataset with an exact law .* kolmogorov with conditioning state"):
        oracle_denoiser(_dataset("dataset=kolmogorov", "+conditioning=state"))


# ---------------------------------------------------------------- the samplers on the exact conditional laws


def _laws(n: int):
    g = GaussianRandomField(n)
    return g, {"coarse": CoarseGRF(g, 4), "ar1": AR1GRF(g, 0.8)}


def _condition(law, g: GaussianRandomField, c: int) -> torch.Tensor:
    x0 = g.sample(1, torch.Generator().manual_seed(1000 + c))
    return (law.coarsen(x0) if isinstance(law, CoarseGRF) else x0)[0]


def _sampler_check(name: str, n: int, members: int, conditions: int) -> list[dict]:
    """Each condition: means in MC error, per-mode posterior variance at the MC floor; returns the numbers."""
    g, laws = _laws(n)
    law = laws[name]
    post = _posterior_cov(law)
    kw = dict(sampler="picard_dpm2m", steps=64)
    free = sciencegen.sample(Oracle(g), g.shape, members, seed=0, **kw)
    out = []
    for c in range(conditions):
        cond = _condition(law, g, c)
        res = sciencegen.sample(Oracle(law), g.shape, members, seed=c, cond=cond, **kw)
        x = res.samples.double()
        zm, z2, zmax = _check_means(x, law, cond, post)
        err = law.spectral_error(x, cond)
        floor = law.spectral_error(law.posterior_sample(cond, members, torch.Generator().manual_seed(c)), cond)
        wrong = law.spectral_error(free.samples, cond)  # the unconditional ensemble: the test can fail
        assert err < 1.5 * floor + 0.02, (err, floor)
        assert wrong > 3 * (1.5 * floor + 0.02), (wrong, floor)
        out.append(dict(z_mean=zm, z2=z2, z_max=zmax, spectral=err, floor=floor, unconditional=wrong,
                        rounds=res.stats["rounds"], free_rounds=free.stats["rounds"]))
    return out


@pytest.mark.parametrize("name", ["coarse", "ar1"])
def test_picard_ensembles_follow_the_exact_posterior(name):
    _sampler_check(name, 16, 64, 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["coarse", "ar1"])
def test_picard_ensembles_follow_the_exact_posterior_at_32(name):
    _sampler_check(name, 32, 256, 3)


@pytest.mark.parametrize("name", ["coarse", "ar1"])
def test_picard_rounds_given_a_condition_stay_near_the_unconditional_ones(name):
    # given conditions the first guesses freeze D at its value at the start (the posterior mean), one round;
    # with D frozen at 0, a mean in the directions the coarse condition fixes doubled the rounds (17 vs 8)
    g, laws = _laws(16)
    law = laws[name]
    # like with like: given conditions newton="auto" walks plain Picard (docs/samplers.md), so does the free run
    free = sciencegen.sample(Oracle(g), g.shape, 64, "picard_dpm2m", 64, seed=0, newton="none").stats["rounds"]
    for c in range(2):
        res = sciencegen.sample(Oracle(law), g.shape, 64, "picard_dpm2m", 64, seed=c, cond=_condition(law, g, c))
        assert abs(res.stats["rounds"] - free) <= 0.2 * free, (res.stats["rounds"], free)
        plain = sciencegen.sample(Oracle(law), g.shape, 64, "picard_dpm2m", 64, seed=c, cond=_condition(law, g, c),
                                  newton="none")
        assert torch.equal(res.samples, plain.samples)


@pytest.mark.parametrize("name", ["coarse", "ar1"])
def test_per_member_conditions_give_each_member_its_own_posterior(name):
    g, laws = _laws(16)
    law = laws[name]
    members = 48
    cond = torch.stack([_condition(law, g, c) for c in range(members)])
    res = sciencegen.sample(Oracle(law), g.shape, members, "picard_dpm2m", 64, seed=5, cond=cond)
    x = res.samples.double()
    var = law.posterior_variance()
    z = (x - law.posterior_mean(cond)) / var.sqrt()  # each member against its own condition's posterior
    shuffled = (x - law.posterior_mean(cond.roll(1, 0))) / var.sqrt()
    # members are independent draws: the pooled mean square of 48 fields is 1 within a few percent
    post = _posterior_cov(law)
    _, sd_sq, _ = _z_bounds(post)
    assert abs(float(z.pow(2).mean()) - 1) < 4 * sd_sq / math.sqrt(members), float(z.pow(2).mean())
    assert float(shuffled.pow(2).mean()) > 1.5  # another member's condition does not fit
    assert law.spectral_error(x, cond) < 0.1
