"""The exact GRF posterior given linear Gaussian observations (:class:`sciencegen.targets.ObservedGRF`).

Independent truth: the full ``d x d`` prior covariance built column by column from ``field.colour`` applied to the
identity (``C = colour ∘ colour``), the dense ``H`` of ``operator.dense()``, and the textbook Gaussian
conditioning formulas solved with ``torch.linalg`` — checked on small grids in 1-, 2- and 3-D, two channels,
masks, points, block means and per-observation noise; the noise-free limit against :class:`CoarseGRF`; the
draws against the exact law within Monte Carlo bounds; the Wiener closed form against the dense path.
"""

from __future__ import annotations

import math

import pytest
import torch

from sciencegen.samplers.guidance import (
    ObservationOperator,
    Observations,
    block_operator,
    draw_observations,
    gridded_observations,
    mask_operator,
    point_operator,
    random_mask,
)
from sciencegen.targets import MAX_OBSERVATIONS, CoarseGRF, GaussianRandomField, ObservedGRF


def _dense_law(field: GaussianRandomField, operator: ObservationOperator, value: torch.Tensor,
               noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Textbook conditioning: (mean, covariance, per-point variance, log evidence), flattened C order."""
    d = field.dim
    eye = torch.eye(d, dtype=torch.float64).reshape(d, *field.shape)
    cov = field.colour(field.colour(eye)).reshape(d, d)  # row i = C e_i
    cov = 0.5 * (cov + cov.T)
    h = operator.dense()
    k = h @ cov @ h.T + torch.diag(noise.double() ** 2)
    gain = torch.linalg.solve(k, h @ cov).T  # C Hᵀ K⁻¹
    mean = gain @ value.double()
    post = cov - gain @ h @ cov
    evidence = torch.distributions.MultivariateNormal(torch.zeros(len(value), dtype=torch.float64), k)
    return mean, post, post.diagonal(), float(evidence.log_prob(value.double()))


class _Bare:
    """A duck-typed operator without ``index``/``weight``: forces the dense path."""

    def __init__(self, op: ObservationOperator):
        self.op, self.shape, self.count = op, op.shape, op.count

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.apply(x)

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        return self.op.adjoint(r)

    def dense(self) -> torch.Tensor:
        return self.op.dense()


def _cases():
    """(name, field, operator, noise) on small grids: masks, points, blocks, per-observation noise."""
    g = torch.Generator().manual_seed(11)
    f2 = GaussianRandomField(8, slope=3.0, k0=3.0)
    f1 = GaussianRandomField(16, slope=2.0, k0=2.0, ndim=1)
    fc = GaussianRandomField(6, slope=2.5, k0=2.0, channels=2)
    f3 = GaussianRandomField(4, slope=2.0, k0=1.5, ndim=3)
    pts2 = torch.rand(12, 2, generator=g, dtype=torch.float64) * 8
    pts1 = torch.rand(5, 1, generator=g, dtype=torch.float64) * 16
    ptsc = torch.rand(9, 2, generator=g, dtype=torch.float64) * 6
    per_obs = 0.05 + 0.3 * torch.rand(64, generator=g, dtype=torch.float64)
    return [
        ("mask-2d", f2, mask_operator(random_mask(f2.shape, 0.2, g)), 0.1),
        ("mask-2d-per-obs", f2, mask_operator(random_mask(f2.shape, 0.5, g)), per_obs[:32]),
        ("points-2d", f2, point_operator(pts2, f2.shape), 0.1),
        ("blocks-2d", f2, block_operator(f2.shape, 2), 0.05),
        ("mask-1d", f1, mask_operator(random_mask(f1.shape, 0.25, g)), 0.2),
        ("points-1d", f1, point_operator(pts1, f1.shape, periodic=False), per_obs[:5]),
        ("blocks-1d", f1, block_operator(f1.shape, 4), 0.1),
        ("mask-2ch", fc, mask_operator(random_mask(fc.shape, 0.3, g)), torch.tensor([0.1, 0.3])),
        ("points-2ch", fc, point_operator(ptsc, fc.shape, channel=torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1])), 0.1),
        ("blocks-2ch-one", fc, block_operator(fc.shape, 3, channels=[1]), 0.02),
        ("mask-3d", f3, mask_operator(random_mask(f3.shape, 0.3, g)), 0.1),
    ]


@pytest.mark.parametrize("name, field, op, noise", _cases(), ids=[c[0] for c in _cases()])
def test_dense_path_is_textbook_conditioning(name, field, op, noise):
    g = torch.Generator().manual_seed(5)
    truth = field.sample(1, g)[0]
    obs = draw_observations(truth, op, noise, g)
    law = ObservedGRF.from_observations(field, obs)
    assert not law.closed_form
    mean, _, var, evidence = _dense_law(field, op, obs.value, obs.noise)
    got_mean, got_var = law.posterior_mean(), law.posterior_variance()
    assert got_mean.shape == field.shape and got_var.shape == field.shape
    assert got_mean.dtype == torch.float64 and got_var.dtype == torch.float64
    torch.testing.assert_close(got_mean.reshape(-1), mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(got_var.reshape(-1), var, rtol=0, atol=1e-10)
    assert law.log_evidence() == pytest.approx(evidence, rel=1e-10, abs=1e-9)
    # the posterior variance is below the prior's, and far below it where a point is observed by itself
    assert bool((got_var <= float(field.variance.mean()) + 1e-12).all())


def test_chunked_basis_fields_match_one_chunk():
    """Chunks of one basis field at a time (memory bound) give the same law as one chunk."""
    field = GaussianRandomField(8, channels=2)
    g = torch.Generator().manual_seed(2)
    obs = draw_observations(field.sample(1, g)[0], mask_operator(random_mask(field.shape, 0.3, g)), 0.1, g)
    whole, one = ObservedGRF.from_observations(field, obs), ObservedGRF.from_observations(field, obs)
    one._chunk = 1
    torch.testing.assert_close(one.posterior_mean(), whole.posterior_mean(), rtol=0, atol=1e-12)
    torch.testing.assert_close(one.posterior_variance(), whole.posterior_variance(), rtol=0, atol=1e-12)
    a = one.posterior_sample(3, torch.Generator().manual_seed(1))
    b = whole.posterior_sample(3, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("ndim, n, factor", [(2, 16, 4), (1, 32, 4)])
def test_noise_free_limit_is_coarse_grf(ndim, n, factor):
    """Block means observed with s = 1e-6 → the exact constraint of :class:`CoarseGRF` (mean and variance)."""
    field = GaussianRandomField(n, ndim=ndim, channels=2)
    coarse = CoarseGRF(field, factor)
    truth = field.sample(1, torch.Generator().manual_seed(3))[0]
    op = block_operator(field.shape, factor)
    law = ObservedGRF(field, op, op.apply(truth[None])[0], torch.full((op.count,), 1e-6, dtype=torch.float64))
    ref = coarse.posterior_mean(truth)
    assert float((ref - coarse.posterior_mean(coarse.coarsen(truth[None])[0])).abs().max()) < 1e-12
    torch.testing.assert_close(law.posterior_mean(), ref, rtol=0, atol=1e-9)
    torch.testing.assert_close(law.posterior_variance(), coarse.posterior_variance(), rtol=0, atol=1e-9)
    # and the observations are honoured: H mean = y up to the noise
    assert float((op.apply(law.posterior_mean()[None])[0] - law.value).abs().max()) < 1e-7


def test_posterior_sample_has_the_exact_law():
    """4000 draws against the exact law, bounds in Monte Carlo standard errors (N = 4000):

    * the mean: per-point ``z = (mean_N - mean) / sqrt(var / N)``, ``|z| < 5`` at all 64 points;
    * the variance: per-point ``var_N / var - 1`` within 5 standard errors ``5 sqrt(2 / (N - 1)) ≈ 0.112``;
    * the whole covariance: the draws whitened by the exact posterior covariance (dense reference) have a sample
      covariance within ``5.5 / sqrt(N)`` of the identity off the diagonal (2016 entries, std ``1 / sqrt(N)``)
      and ``5.5 sqrt(2 / N)`` on it (64 entries, std ``sqrt(2 / N)``).

    A false failure has probability about 1e-4 in all (Gaussian tails; the seed is fixed). Prior draws fail.
    """
    field = GaussianRandomField(8, slope=3.0, k0=3.0)
    g = torch.Generator().manual_seed(7)
    op = mask_operator(random_mask(field.shape, 0.2, g))
    obs = draw_observations(field.sample(1, g)[0], op, 0.1, g)
    law = ObservedGRF.from_observations(field, obs)
    n = 4000
    x = law.posterior_sample(n, torch.Generator().manual_seed(8))
    assert x.shape == (n, *field.shape) and x.dtype == torch.float64
    mean, var = law.posterior_mean(), law.posterior_variance()
    z = (x.mean(0) - mean) / (var / n).sqrt()
    assert float(z.abs().max()) < 5.0, float(z.abs().max())
    ratio = x.var(0) / var
    assert float((ratio - 1).abs().max()) < 5 * math.sqrt(2 / (n - 1)), float((ratio - 1).abs().max())
    _, post, _, _ = _dense_law(field, op, obs.value, obs.noise)
    evals, evecs = torch.linalg.eigh(post)
    white = ((x - mean).reshape(n, -1) @ evecs) / evals.clamp_min(1e-300).sqrt()
    dev = white.T @ white / n - torch.eye(field.dim, dtype=torch.float64)
    diag = float(dev.diagonal().abs().max())
    off = float((dev - torch.diag(dev.diagonal())).abs().max())
    assert diag < 5.5 * math.sqrt(2 / n) and off < 5.5 / math.sqrt(n), (diag, off)
    # the same check rejects draws from the prior (so it can fail)
    prior = field.sample(n, torch.Generator().manual_seed(9))
    pz = (prior.mean(0) - mean) / (var / n).sqrt()
    assert float(pz.abs().max()) > 5.0
    # reproducible from the generator
    torch.testing.assert_close(law.posterior_sample(3, torch.Generator().manual_seed(1)),
                               law.posterior_sample(3, torch.Generator().manual_seed(1)), rtol=0, atol=0)


@pytest.mark.parametrize("permute", [False, True])
def test_wiener_closed_form_equals_dense_path(permute):
    """A full mask with one noise per channel takes the Wiener filter; it equals the dense path and the
    textbook law (mean, variance, log evidence, and the draws from the same generator)."""
    field = GaussianRandomField(8, slope=2.5, k0=3.0, channels=2)
    g = torch.Generator().manual_seed(4)
    truth = field.sample(1, g)[0]
    noise = torch.tensor([0.1, 0.4], dtype=torch.float64)
    if permute:  # the observations in a scrambled order
        idx = torch.randperm(field.dim, generator=g)
        op = ObservationOperator(idx[:, None], torch.ones(field.dim, 1, dtype=torch.float64), field.shape)
    else:
        op = gridded_observations(truth, noise).operator
    obs = draw_observations(truth, op, noise, g)
    fast = ObservedGRF.from_observations(field, obs)
    slow = ObservedGRF(field, _Bare(op), obs.value, obs.noise)
    assert fast.closed_form and not slow.closed_form
    mean, _, var, evidence = _dense_law(field, op, obs.value, obs.noise)
    for law in (fast, slow):
        torch.testing.assert_close(law.posterior_mean().reshape(-1), mean, rtol=0, atol=1e-10)
        torch.testing.assert_close(law.posterior_variance().reshape(-1), var, rtol=0, atol=1e-10)
        assert law.log_evidence() == pytest.approx(evidence, rel=1e-10)
    torch.testing.assert_close(fast.posterior_sample(5, torch.Generator().manual_seed(2)),
                               slow.posterior_sample(5, torch.Generator().manual_seed(2)), rtol=0, atol=1e-10)
    # per-mode variance v s² / (v + s²), averaged over modes = the per-point variance
    mv = fast.mode_variance()
    torch.testing.assert_close(mv[1], field.variance * 0.16 / (field.variance + 0.16), rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="per-mode"):
        slow.mode_variance()


def test_full_mask_needs_one_noise_per_channel_for_the_closed_form():
    field = GaussianRandomField(6)
    op = mask_operator(torch.ones(field.shape, dtype=torch.bool))
    truth = field.sample(1, torch.Generator().manual_seed(0))[0]
    noise = torch.full((op.count,), 0.1, dtype=torch.float64)
    noise[3] = 0.2
    law = ObservedGRF(field, op, op.apply(truth[None])[0], noise)
    assert not law.closed_form
    mean, _, var, _ = _dense_law(field, op, law.value, law.noise)
    torch.testing.assert_close(law.posterior_mean().reshape(-1), mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(law.posterior_variance().reshape(-1), var, rtol=0, atol=1e-10)


def test_closed_form_at_a_size_the_dense_path_refuses():
    """256² fully observed (m = 65536 > MAX_OBSERVATIONS): the Wiener filter needs no dense algebra."""
    field = GaussianRandomField(256)
    g = torch.Generator().manual_seed(0)
    truth = field.sample(1, g)[0]
    obs = draw_observations(truth, gridded_observations(truth, 0.1).operator, 0.1, g)
    law = ObservedGRF.from_observations(field, obs)
    assert law.closed_form and law.count > MAX_OBSERVATIONS
    v = field.variance
    torch.testing.assert_close(law.posterior_variance(), (v * 0.01 / (v + 0.01)).mean().expand(field.shape),
                               rtol=1e-12, atol=0)
    # the posterior mean is closer to the truth than the observations are
    assert float((law.posterior_mean() - truth).pow(2).mean()) < float((obs.gridded() - truth).pow(2).mean())


def test_no_observations_is_the_prior():
    field = GaussianRandomField(8, ndim=1)
    op = ObservationOperator(torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.float64),
                             field.shape)
    law = ObservedGRF(field, op, torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64))
    assert float(law.posterior_mean().abs().max()) == 0.0
    torch.testing.assert_close(law.posterior_variance(), torch.full(field.shape, float(field.variance.mean()),
                                                                    dtype=torch.float64))
    assert law.log_evidence() == 0.0


def test_bad_input_is_one_line_value_error():
    field = GaussianRandomField(8)
    op = mask_operator(random_mask(field.shape, 0.25, torch.Generator().manual_seed(0)))
    m = op.count
    good = torch.zeros(m, dtype=torch.float64)
    cases = [
        (lambda: ObservedGRF(field, op, torch.zeros(m + 1), torch.full((m + 1,), 0.1)), "must be \\[16\\]"),
        (lambda: ObservedGRF(field, op, good, torch.full((m - 1,), 0.1)), "must be \\[16\\]"),
        (lambda: ObservedGRF(field, op, good, torch.zeros(m)), "positive"),
        (lambda: ObservedGRF(field, op, good, torch.full((m,), -0.1)), "positive"),
        (lambda: ObservedGRF(field, op, good, torch.full((m,), float("nan"))), "positive"),
        (lambda: ObservedGRF(field, op, torch.full((m,), float("nan")), torch.full((m,), 0.1)), "finite"),
        (lambda: ObservedGRF(GaussianRandomField(4), op, good, torch.full((m,), 0.1)), "shape"),
        (lambda: ObservedGRF("grf", op, good, torch.full((m,), 0.1)), "GaussianRandomField"),
    ]
    big_field = GaussianRandomField(129)
    mask = torch.zeros(big_field.dim, dtype=torch.bool)
    mask[: MAX_OBSERVATIONS + 1] = True
    big = mask_operator(mask.reshape(big_field.shape))
    ones = torch.ones(big.count, dtype=torch.float64)
    cases.append((lambda: ObservedGRF(big_field, big, ones, ones), f"{MAX_OBSERVATIONS + 1} observations > "))
    for make, match in cases:
        with pytest.raises(ValueError, match=match) as err:
            make()
        assert "\n" not in str(err.value), str(err.value)


def test_from_observations_matches_the_constructor():
    field = GaussianRandomField(6, channels=2)
    g = torch.Generator().manual_seed(1)
    op = point_operator(torch.rand(7, 2, generator=g) * 6, field.shape, channel=torch.tensor([0, 1] * 3 + [1]))
    obs = Observations(op, torch.randn(7, generator=g, dtype=torch.float64), torch.full((7,), 0.2,
                                                                                       dtype=torch.float64))
    a = ObservedGRF.from_observations(field, obs)
    b = ObservedGRF(field, op, obs.value, obs.noise)
    torch.testing.assert_close(a.posterior_mean(), b.posterior_mean(), rtol=0, atol=0)
