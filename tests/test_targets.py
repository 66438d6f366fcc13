import math

import pytest
import torch

from sciencegen.targets import GaussianMixture, GaussianRandomField, radial_spectrum, spectral_error


def _dense_covariance(g: GaussianRandomField) -> torch.Tensor:
    # covariance in pixel space, built column by column from the spectral definition
    d = g.dim
    eye = torch.eye(d, dtype=torch.float64).reshape(d, *g.shape)
    half = g._filter(eye, g._var(eye).sqrt())  # C^{1/2} applied to unit vectors
    half = half.reshape(d, d)
    return half @ half.T


def test_grf_variance_is_normalised_and_follows_the_law():
    g = GaussianRandomField(32, slope=3, k0=4)
    assert math.isclose(float(g.variance.mean()), 1.0, rel_tol=1e-12)
    k = g.wavenumber
    ratio = g.variance / (1 + (k / 4) ** 2) ** -1.5
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-12)


def test_grf_denoiser_equals_the_dense_gaussian_posterior_mean():
    g = GaussianRandomField(6, slope=2.5, k0=2)
    c = _dense_covariance(g)
    assert math.isclose(float(torch.diagonal(c).mean()), 1.0, rel_tol=1e-10)
    x = torch.randn(3, *g.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    s = torch.tensor([0.1, 1.0, 7.0], dtype=torch.float64)
    got = g.denoiser(x, s).reshape(3, -1)
    for i in range(3):
        want = c @ torch.linalg.solve(c + s[i] ** 2 * torch.eye(g.dim, dtype=torch.float64), x[i].reshape(-1))
        assert torch.allclose(got[i], want, atol=1e-10)


def test_grf_exact_samples_have_the_exact_spectrum():
    g = GaussianRandomField(32)
    x = g.sample(256, torch.Generator().manual_seed(0))
    assert x.shape == (256, 1, 32, 32)
    err = spectral_error(x, g)
    assert err < 0.03  # Monte Carlo noise only (about 0.013-0.016)
    assert spectral_error(1.3 * x, g) > 0.4  # a 30 % amplitude error is seen


def test_radial_spectrum_of_white_noise_is_flat():
    x = torch.randn(64, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k, p = radial_spectrum(x)
    assert k[0] == 0 and torch.allclose(p[1:], torch.ones_like(p[1:]), atol=0.15)


@pytest.mark.parametrize("ndim", [1, 3])
def test_grf_works_in_other_ranks(ndim):
    g = GaussianRandomField(8, ndim=ndim, channels=2)
    assert g.shape == (2,) + (8,) * ndim
    x = g.sample(4, torch.Generator().manual_seed(0))
    d = g.denoiser(x, torch.full((4,), 0.5, dtype=torch.float64))
    assert d.shape == x.shape and bool(torch.isfinite(d).all())


def test_grf_at_megapixel_size():
    g = GaussianRandomField(1024)
    x = g.sample(1, torch.Generator().manual_seed(0), dtype=torch.float32)
    assert x.shape == (1, 1, 1024, 1024)
    assert abs(float(x.var()) - 1.0) < 0.2
    d = g.denoiser(x, torch.tensor([0.0]))
    assert torch.allclose(d, x, atol=1e-4)  # no noise: the denoiser is the identity


def test_gmm_denoiser_matches_tweedie_by_autograd():
    gm = GaussianMixture.random((5,), components=3, spread=1.5, scale=0.4, seed=2)
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    s = torch.tensor([0.05, 0.3, 1.0, 5.0], dtype=torch.float64)
    # log p_s(x) of the noised mixture, then D = x + s^2 grad log p_s
    xg = x.clone().requires_grad_(True)
    var = gm.scales[None, :] ** 2 + s[:, None] ** 2
    d2 = ((xg[:, None, :] - gm.means[None]) ** 2).sum(-1)
    logp = torch.logsumexp(gm.weights.log()[None] - 0.5 * d2 / var - 2.5 * torch.log(2 * math.pi * var), dim=1)
    (grad,) = torch.autograd.grad(logp.sum(), xg)
    want = x + s[:, None] ** 2 * grad
    assert torch.allclose(gm.denoiser(x, s), want, atol=1e-10)


def test_gmm_samples_have_the_mixture_moments():
    gm = GaussianMixture(torch.tensor([[-2.0], [3.0]]), [0.5, 1.0], [0.25, 0.75])
    x = gm.sample(200_000, torch.Generator().manual_seed(0))
    assert abs(float(x.mean()) - (0.25 * -2 + 0.75 * 3)) < 0.02


def test_bad_targets():
    with pytest.raises(ValueError, match="n must be"):
        GaussianRandomField(1)
    with pytest.raises(ValueError, match="scales"):
        GaussianMixture(torch.zeros(2, 3), [1.0, -1.0])
