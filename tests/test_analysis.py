"""Tests of :mod:`sciencegen.analysis` against analytic truths, on numpy- and dask-backed xarray objects.

Random fields are built here with numpy (white noise coloured in Fourier space), independently of the library.
Statistical tolerances are a few standard errors of the Monte Carlo estimate, with fixed seeds.
"""

from __future__ import annotations

import json
import math

import dask
import dask.array as dsa
import numpy as np
import pytest
import xarray as xr

import sciencegen.analysis as A

DIMS = {1: ("x",), 2: ("y", "x"), 3: ("z", "y", "x")}


# --------------------------------------------------------------------------------------------- helpers


def kgrid(shape):
    """|k| on the full FFT grid with integer wavenumbers fftfreq(n, 1/n) (lags, for a grid of lags)."""
    axes = np.meshgrid(*[np.fft.fftfreq(n, 1.0 / n) for n in shape], indexing="ij")
    return np.sqrt(sum(a * a for a in axes))


def shell_mean(values, shape):
    """Mean of ``values`` (on the full FFT grid) in shells round(|k|), computed independently of the library."""
    s = np.rint(kgrid(shape)).astype(int).ravel()
    return np.bincount(s, weights=values.ravel()) / np.bincount(s), np.bincount(s)


def coloured(shape, per_mode_variance, count, seed):
    """``count`` exact periodic Gaussian fields with ``E|FFT_ortho(x)_k|² = per_mode_variance[k]``."""
    rng = np.random.default_rng(seed)
    axes = tuple(range(-len(shape), 0))
    white = rng.standard_normal((count, *shape))
    f = np.fft.fftn(white, axes=axes, norm="ortho") * np.sqrt(per_mode_variance)
    return np.fft.ifftn(f, axes=axes, norm="ortho").real


def power_law(shape):
    """Per-mode variance ``(1 + |k|²/16)^(-3/2)``."""
    return (1.0 + kgrid(shape) ** 2 / 16.0) ** -1.5


def as_da(x, ndim, sample="member", **attrs):
    return xr.DataArray(x, dims=(sample,) + DIMS[ndim], attrs=attrs)


# --------------------------------------------------------------------------------------------- spectra


@pytest.mark.parametrize("shape, count", [((64, 64), 48), ((256,), 64), ((16, 16, 16), 8)])
def test_spectrum_of_grf_matches_known_spectrum(shape, count):
    p = power_law(shape)
    x = as_da(coloured(shape, p, count, seed=1), len(shape), units="m").chunk(member=count // 4)
    est = A.isotropic_spectrum(x, dims=DIMS[len(shape)])
    assert isinstance(est.data, dsa.Array)
    est = est.compute()
    expected, modes = shell_mean(p, shape)
    np.testing.assert_array_equal(est["modes"].values, modes)
    assert est.dims == ("wavenumber",) and est.attrs["units"] == "m^2" and "long_name" in est.attrs
    # standard error of a shell sum S of |F_k|² over `count` fields: var S = 2 sum_shell P_k² / count, for real
    # modes (|F|² ~ P χ²_1) and conjugate pairs (two equal |F|² ~ P χ²_2 / 2) alike
    s = np.rint(kgrid(shape)).astype(int).ravel()
    se = np.sqrt(2.0 * np.bincount(s, weights=p.ravel() ** 2) / count) / np.bincount(s, weights=p.ravel())
    z = np.abs(est.values / expected - 1.0) / se
    assert np.all(z < 5), z.max()
    assert np.mean(z**2) < 1 + 4 * np.sqrt(2 / z.size)  # mean z² ≈ 1: no systematic error in the shape


@pytest.mark.parametrize("shape", [(30,), (8, 12), (6, 8, 10), (9, 9)])
def test_spectrum_parseval_exact(shape):
    rng = np.random.default_rng(2)
    x = as_da(rng.standard_normal((3, *shape)) + 0.3, len(shape))
    dims = DIMS[len(shape)]
    s = A.isotropic_spectrum(x, dims=dims, average=False)
    assert s.dims == ("member", "wavenumber")
    assert int(s["modes"].sum()) == math.prod(shape)
    total = (s * s["modes"]).sum("wavenumber")
    np.testing.assert_allclose(total.values, (x**2).sum(dims).values, rtol=1e-10)
    # the average over members is the mean of the per-member spectra
    np.testing.assert_allclose(A.isotropic_spectrum(x, dims=dims).values, s.mean("member").values, rtol=1e-12)
    # complex fields take the full FFT: still Parseval
    z = x + 1j * x.roll({dims[-1]: 1})
    sz = A.isotropic_spectrum(z, dims=dims, average=False)
    np.testing.assert_allclose((sz * sz["modes"]).sum("wavenumber").values, (abs(z) ** 2).sum(dims).values, rtol=1e-10)
    # truncation keeps the shells up to the Nyquist wavenumber of the smallest dim
    t = A.isotropic_spectrum(x, dims=dims, truncate=True)
    assert t["wavenumber"].values[-1] == min(shape) // 2 and bool(t["complete"].all())


@pytest.mark.parametrize("shape, kvec, shell", [((64,), (7,), 7), ((32, 32), (3, 4), 5), ((16, 16, 16), (1, 2, 2), 3)])
def test_spectrum_cosine_mode_lands_in_its_shell(shape, kvec, shell):
    amp = 2.0
    grids = np.meshgrid(*[np.arange(n) / n for n in shape], indexing="ij")
    phase = 2 * np.pi * sum(k * g for k, g in zip(kvec, grids, strict=True))
    x = xr.DataArray(amp * np.cos(phase + 0.4), dims=DIMS[len(shape)])
    s = A.isotropic_spectrum(x, dims=DIMS[len(shape)])
    n = math.prod(shape)
    expected = np.zeros(s.sizes["wavenumber"])
    expected[shell] = amp**2 * n / 2 / int(s["modes"][shell])  # two modes ±k with |F|² = A²N/4 each
    np.testing.assert_allclose(s.values, expected, atol=1e-10 * amp**2)


def test_spectrum_agrees_with_targets_radial_spectrum():
    torch = pytest.importorskip("torch")
    from sciencegen.targets import GaussianRandomField, radial_spectrum

    grf = GaussianRandomField(16)
    x = grf.sample(6, generator=torch.Generator().manual_seed(0))[:, 0]  # [6, 16, 16]
    k, ref = radial_spectrum(x, ndim=2)
    s = A.isotropic_spectrum(as_da(x.numpy(), 2), dims=("y", "x"))
    np.testing.assert_array_equal(s["wavenumber"].values, k.numpy().astype(int))
    np.testing.assert_allclose(s.values, ref.numpy(), rtol=1e-10)


def test_energy_and_enstrophy_spectra_are_shell_sums():
    rng = np.random.default_rng(3)
    shape = (16, 20)
    u, v, w = (as_da(rng.standard_normal((4, *shape)), 2, units="m s-1").chunk(member=2) for _ in range(3))
    e = A.energy_spectrum(u, v, dims=("y", "x")).compute()
    ke = 0.5 * (u**2 + v**2).sum(("y", "x")).mean("member")  # N · mean kinetic energy
    np.testing.assert_allclose(float(e.sum()), float(ke), rtol=1e-10)
    assert e.attrs["units"] == "(m s-1)^2"
    # shell sums = 0.5 · modes · per-mode mean power
    pu, pv = A.isotropic_spectrum(u), A.isotropic_spectrum(v)
    np.testing.assert_allclose(e.values, (0.5 * (pu + pv) * pu["modes"]).values, rtol=1e-10)
    e3 = A.energy_spectrum(u, v, dims=("y", "x"), w=w, average=False)
    np.testing.assert_allclose(e3.sum("wavenumber").values, (0.5 * (u**2 + v**2 + w**2)).sum(("y", "x")).values,
                               rtol=1e-10)
    z = A.enstrophy_spectrum(u, dims=("y", "x"), average=False)
    np.testing.assert_allclose(z.sum("wavenumber").values, (0.5 * u**2).sum(("y", "x")).values, rtol=1e-10)
    with pytest.raises(ValueError, match="different field shapes"):
        A.energy_spectrum(u, v.isel(x=slice(0, 10)), dims=("y", "x"))


# --------------------------------------------------------------------------------------------- moments, histograms


def test_moments_of_exponential_and_against_numpy():
    rng = np.random.default_rng(4)
    v = rng.exponential(size=400_000)
    x = xr.DataArray(v.reshape(400, 1000), dims=("sample", "point")).chunk(sample=100, point=500)
    m = A.moment_scalars(x).compute()
    assert abs(float(m["mean"]) - 1) < 0.01 and abs(float(m["std"]) - 1) < 0.01
    assert abs(float(m["skewness"]) - 2) < 0.15 and abs(float(m["kurtosis"]) - 6) < 1.2
    d = v - v.mean()
    mu2, mu3, mu4 = (np.mean(d**p) for p in (2, 3, 4))
    np.testing.assert_allclose(float(m["skewness"]), mu3 / mu2**1.5, rtol=1e-10)
    np.testing.assert_allclose(float(m["kurtosis"]), mu4 / mu2**2 - 3, rtol=1e-10)
    assert int(m["count"]) == v.size


def test_moment_maps_over_sample_dims():
    rng = np.random.default_rng(5)
    loc = np.arange(12.0).reshape(3, 4) * 1e6  # a large offset does not spoil the one-pass sums
    scale = 1.0 + np.arange(12.0).reshape(3, 4)
    v = loc + scale * rng.gamma(2.0, size=(500, 3, 4))
    x = as_da(v, 2).chunk(member=128)
    m = A.moments(x, dims="member", ddof=1).compute()
    assert m["mean"].dims == ("y", "x")
    d = v - v.mean(0)
    np.testing.assert_allclose(m["mean"].values, v.mean(0), rtol=1e-13)
    np.testing.assert_allclose(m["std"].values, v.std(0, ddof=1), rtol=1e-8)
    mu2 = np.mean(d**2, 0)
    np.testing.assert_allclose(m["skewness"].values, np.mean(d**3, 0) / mu2**1.5, rtol=1e-6)
    np.testing.assert_allclose(m["kurtosis"].values, np.mean(d**4, 0) / mu2**2 - 3, rtol=1e-6)
    # NaNs are skipped
    vn = v.copy()
    vn[::7, 0, 0] = np.nan
    mn = A.moments(as_da(vn, 2), dims=("member",))
    assert int(mn["count"][0, 0]) == 500 - len(range(0, 500, 7))
    np.testing.assert_allclose(float(mn["mean"][0, 0]), np.nanmean(vn[:, 0, 0]), rtol=1e-13)


def test_histogram_equals_numpy_histogram():
    rng = np.random.default_rng(6)
    v = rng.normal(size=(40, 30, 20))
    x = xr.DataArray(v, dims=("member", "y", "x"), attrs={"units": "K"}).chunk(member=7, y=16)
    h = A.histogram(x, bins=25, range=(-3.0, 3.5))
    assert isinstance(h.data, dsa.Array)
    ref, edges = np.histogram(v, bins=25, range=(-3.0, 3.5))
    np.testing.assert_array_equal(h.values, ref)
    np.testing.assert_allclose(h.attrs["bin_edges"], edges)
    np.testing.assert_allclose(h["bin"].values, 0.5 * (edges[1:] + edges[:-1]))
    np.testing.assert_allclose(h["bin_left"].values, edges[:-1])
    # range from the data (min/max pass), and the in-memory path
    ref2, edges2 = np.histogram(v, bins=17)
    np.testing.assert_array_equal(A.histogram(x, bins=17).values, ref2)
    np.testing.assert_array_equal(A.histogram(x.compute(), bins=17).values, ref2)
    np.testing.assert_allclose(A.histogram(x, bins=17).attrs["bin_edges"], edges2)
    # explicit edges, NaNs ignored, density integrates to 1
    vn = v.copy()
    vn[0, 0, :5] = np.nan
    e = np.array([-4.0, -1.0, 0.0, 0.5, 4.0])
    xn = xr.DataArray(vn, dims=("member", "y", "x")).chunk(member=9)
    np.testing.assert_array_equal(A.histogram(xn, bins=e).values, np.histogram(vn[np.isfinite(vn)], bins=e)[0])
    dens = A.histogram(xn, bins=e, density=True)
    np.testing.assert_allclose(float((dens * dens["bin_width"]).sum()), 1.0, rtol=1e-12)


def test_wasserstein_of_shifted_normals_and_by_hand():
    rng = np.random.default_rng(7)
    a = xr.DataArray(rng.normal(size=(200, 1000)), dims=("s", "p"))
    b = xr.DataArray(rng.normal(size=(150, 1000)) + 0.7, dims=("s", "p"))
    streaming = A.wasserstein1(a.chunk(s=50), b.chunk(s=50))
    assert "histogram" in streaming.attrs["method"]
    exact = A.wasserstein1(a, b)
    assert "exact" in exact.attrs["method"]
    assert abs(float(exact) - 0.7) < 0.02  # sampling error of the empirical distributions ~ 0.005
    assert abs(float(streaming) - float(exact)) <= streaming.attrs["max_discretisation_error"]
    # lazy with a given range
    lazy = A.wasserstein1(a.chunk(s=50), b.chunk(s=50), bins=2000, range=(-8.0, 9.0))
    assert isinstance(lazy.data, dsa.Array)
    assert abs(float(lazy) - float(exact)) <= lazy.attrs["max_discretisation_error"]
    # by hand: equal sizes -> mean |a_(i) - b_(i)|; unequal sizes -> area between the CDFs
    w = A.wasserstein1(xr.DataArray([3.0, 0.0, 1.0]), xr.DataArray([5.0, 1.0, 2.0]), exact=True)
    assert float(w) == pytest.approx(4.0 / 3.0, abs=1e-14)
    w = A.wasserstein1(xr.DataArray([0.0]), xr.DataArray([1.0, 3.0]), exact=True)
    assert float(w) == pytest.approx(2.0, abs=1e-14)
    w = A.wasserstein1(xr.DataArray([0.0, 1.0]), xr.DataArray([0.0, 1.0]), exact=True)
    assert float(w) == 0.0
    # the histogram path is exact for values on bin centres
    w = A.wasserstein1(xr.DataArray([0.5, 1.5]), xr.DataArray([2.5, 2.5]), bins=[0, 1, 2, 3], exact=False)
    assert float(w) == pytest.approx(1.5, abs=1e-14)


# --------------------------------------------------------------------------------------------- correlation


def test_correlation_of_gaussian_kernel():
    shape, ell, count = (64, 64), 3.0, 24
    r = kgrid(shape)  # minimum-image lags
    kernel = np.exp(-(r**2) / (2 * ell**2))  # periodic images negligible (exp(-32²/18))
    per_mode = np.clip(np.fft.fftn(kernel).real, 0, None)  # DFT of the periodised kernel: backward-norm variance
    rng = np.random.default_rng(8)
    white = rng.standard_normal((count, *shape))
    x = np.fft.ifftn(np.fft.fftn(white, axes=(1, 2)) * np.sqrt(per_mode), axes=(1, 2)).real
    da = xr.DataArray(x, dims=("member", "y", "x"),
                      coords={"y": np.arange(64) * 0.5, "x": np.arange(64) * 0.5}).chunk(member=8)
    c = A.spatial_correlation(da, dims=("y", "x"))
    assert isinstance(c.data, dsa.Array)
    c = c.compute()
    expected, lags = shell_mean(kernel, shape)
    expected = expected[: c.sizes["separation"]] / expected[0]
    assert c.sizes["separation"] == 33 and float(c[0]) == 1.0
    np.testing.assert_array_equal(c["lags"].values, lags[:33])
    np.testing.assert_allclose(c.values, expected, atol=0.04)
    np.testing.assert_allclose(c["distance"].values, 0.5 * np.arange(33))
    # field centring and no centring agree here (zero-mean field, decorrelated well within the domain)
    for center in ("field", None):
        cf = A.spatial_correlation(da, dims=("y", "x"), max_lag=10, center=center)
        np.testing.assert_allclose(cf.values, expected[:11], atol=0.05)
    # per field: each normalised by its own C(0)
    per = A.spatial_correlation(da, dims=("y", "x"), max_lag=5, average=False)
    assert per.dims == ("member", "separation") and np.allclose(per.isel(separation=0), 1.0)


def test_correlation_unequal_spacing_distance():
    rng = np.random.default_rng(9)
    da = xr.DataArray(rng.standard_normal((3, 8, 12)), dims=("t", "y", "x"),
                      coords={"y": np.arange(8) * 2.0, "x": np.arange(12) * 1.0})
    c = A.spatial_correlation(da, dims=("y", "x"), max_lag=3)
    # shell 1 holds lags (±1,0),(0,±1) [distances 2, 1] and (±1,±1) [sqrt(5)]
    assert float(c["distance"][1]) == pytest.approx((2 * 2 + 2 * 1 + 4 * math.sqrt(5)) / 8)
    c1 = A.spatial_correlation(da.isel(y=0), dims="x", center="field")
    assert c1.sizes["separation"] == 7 and "distance" in c1.coords


# --------------------------------------------------------------------------------------------- scores


def test_crps_formula_by_hand_and_bruteforce():
    f = xr.DataArray([[0.0, 1.0, 3.0]], dims=("case", "member"))
    y = xr.DataArray([2.0], dims=("case",))
    assert float(A.crps_ensemble(f, y)) == pytest.approx(2.0 / 3.0)  # 4/3 - 0.5·12/9
    assert float(A.crps_ensemble(f, y, fair=True)) == pytest.approx(1.0 / 3.0)  # 4/3 - 0.5·12/6
    rng = np.random.default_rng(10)
    x = rng.normal(size=(5, 7))
    t = rng.normal(size=5)
    pairs = np.abs(x[:, :, None] - x[:, None, :]).sum((1, 2))
    skill = np.abs(x - t[:, None]).mean(1)
    got = A.crps_ensemble(xr.DataArray(x, dims=("case", "member")), xr.DataArray(t, dims="case"), dims=())
    np.testing.assert_allclose(got.values, skill - 0.5 * pairs / 49, rtol=1e-12)


def test_crps_large_ensemble_matches_gaussian_closed_form():
    rng = np.random.default_rng(11)
    ncase, m = 40, 20_000
    mu, sigma = rng.normal(size=ncase), rng.uniform(0.5, 2.0, size=ncase)
    y = rng.normal(size=ncase) * 1.5
    x = mu[:, None] + sigma[:, None] * rng.standard_normal((ncase, m))
    f = xr.DataArray(x, dims=("case", "member")).chunk(case=10)
    truth = xr.DataArray(y, dims="case")
    ens = A.crps_ensemble(f, truth, dims=()).compute()
    exact = A.crps_gaussian(xr.DataArray(mu, dims="case"), xr.DataArray(sigma, dims="case"), truth, dims=())
    # Monte Carlo error of one case's CRPS is ~ sigma/sqrt(m) ≈ 0.014 at most
    np.testing.assert_allclose(ens.values, exact.values, atol=5 * 2.0 / math.sqrt(m))
    assert abs(float(ens.mean() - exact.mean())) < 0.005


def test_fair_crps_unbiased_and_standard_biased_for_small_ensembles():
    rng = np.random.default_rng(12)
    ncase, m = 100_000, 4
    mu = rng.normal(size=ncase)
    x = xr.DataArray(mu[:, None] + rng.standard_normal((ncase, m)), dims=("case", "member")).chunk(case=25_000)
    y = xr.DataArray(mu + rng.standard_normal(ncase), dims="case")
    gauss = A.crps_gaussian(xr.DataArray(mu, dims="case"), 1.0, y, dims=())
    fair = A.crps_ensemble(x, y, fair=True, dims=()).compute()
    std = A.crps_ensemble(x, y, dims=()).compute()
    d = (fair - gauss).values
    assert abs(d.mean()) < 4 * d.std() / math.sqrt(ncase)
    bias = 1.0 / (math.sqrt(math.pi) * m)  # E|X - X'|/(2m) for sigma = 1
    d2 = (std - gauss).values
    assert abs(d2.mean() - bias) < 4 * d2.std() / math.sqrt(ncase)
    assert d2.mean() > bias / 2


def test_spread_skill_calibrated_ensemble():
    rng = np.random.default_rng(13)
    ncase, m = 20_000, 5
    mu = 2.0 * rng.normal(size=(ncase, 2))
    x = xr.DataArray(mu[:, None, :] + rng.standard_normal((ncase, m, 2)), dims=("case", "member", "x"))
    y = xr.DataArray(mu + rng.standard_normal((ncase, 2)), dims=("case", "x"))
    ss = A.spread_skill(x.chunk(case=5000), y).compute()
    assert float(ss["ratio_corrected"]) == pytest.approx(1.0, abs=0.03)
    assert float(ss["ratio"]) == pytest.approx(math.sqrt(m / (m + 1)), abs=0.03)
    assert float(ss["spread"]) == pytest.approx(1.0, abs=0.02)
    kept = A.spread_skill(x, y, dims="case")
    assert kept["ratio"].dims == ("x",)


def test_rank_histogram_flat_when_calibrated_and_u_shaped_when_underdispersed():
    rng = np.random.default_rng(14)
    n, m = 20_000, 9
    y = xr.DataArray(rng.normal(size=(n // 100, 100)), dims=("case", "x"))
    good = xr.DataArray(rng.normal(size=(n // 100, 100, m)), dims=("case", "x", "member")).chunk(case=50)
    h = A.rank_histogram(good, y)
    assert isinstance(h.data, dsa.Array)
    h = h.compute()
    assert h.dims == ("rank",) and h.sizes["rank"] == m + 1 and float(h.sum()) == n
    e = n / (m + 1)
    chi2 = float(((h - e) ** 2 / e).sum())
    assert chi2 < 40  # 9 degrees of freedom: P(chi2 > 40) ~ 1e-5
    narrow = A.rank_histogram(0.5 * good, y).compute()
    middle = float(narrow[1:-1].mean())
    assert float(narrow[0]) > 3 * middle and float(narrow[-1]) > 3 * middle
    kept = A.rank_histogram(good, y, dims="case")
    assert kept.dims == ("x", "rank") and float(kept.sum()) == n
    # ties share the count equally among the tied ranks
    t = A.rank_histogram(xr.DataArray([[1.0, 2.0, 2.0, 3.0]], dims=("c", "member")), xr.DataArray([2.0], dims="c"))
    np.testing.assert_allclose(t.values, [0, 1 / 3, 1 / 3, 1 / 3, 0])


# --------------------------------------------------------------------------------------------- laziness


def test_lazy_no_compute_and_chunked_equals_unchunked():
    calls = []

    def counting_get(dsk, keys, **kwargs):
        calls.append(keys)
        return dask.get(dsk, keys, **kwargs)

    rng = np.random.default_rng(15)
    x = as_da(rng.standard_normal((8, 16, 12)), 2)
    u = x.roll(x=2)
    y = xr.DataArray(rng.standard_normal((16, 12)), dims=("y", "x"))
    xc = x.chunk(member=3, y=5, x=7)  # field dims chunked too: rechunked inside
    uc, yc = u.chunk(member=4), y.chunk(y=8)

    def run(a, b, t):
        return {
            "spectrum": A.isotropic_spectrum(a),
            "spectrum_members": A.isotropic_spectrum(a, average=False),
            "energy": A.energy_spectrum(a, b),
            "enstrophy": A.enstrophy_spectrum(a),
            "moments": A.moments(a, "member"),
            "scalars": A.moment_scalars(a),
            "correlation": A.spatial_correlation(a),
            "crps": A.crps_ensemble(a, t, fair=True),
            "crps_map": A.crps_ensemble(a, t, dims=()),
            "gauss": A.crps_gaussian(a.mean("member"), a.std("member"), t),
            "spread_skill": A.spread_skill(a, t),
            "ranks": A.rank_histogram(a, t),
            "hist": A.histogram(a, bins=10, range=(-4.0, 4.0)),
            "w1": A.wasserstein1(a, b, bins=100, range=(-5.0, 5.0), exact=False),
        }

    with dask.config.set(scheduler=counting_get):
        lazy = run(xc, uc, yc)
        assert calls == [], "building the results computed something"
        for name, r in lazy.items():
            arrays = r.data_vars.values() if isinstance(r, xr.Dataset) else [r]
            assert all(isinstance(a.data, dsa.Array) for a in arrays), name
        A.histogram(xc, bins=10)  # the range pass: one compute of the min and max
        assert len(calls) == 1
        computed = {k: v.compute() for k, v in lazy.items()}
    eager = run(x, u, y)
    for name, r in eager.items():
        xr.testing.assert_allclose(computed[name], r, rtol=1e-12, atol=1e-12)


def test_lazy_on_a_zarr_store(tmp_path):
    rng = np.random.default_rng(17)
    v = rng.standard_normal((12, 2, 16, 16)).astype("float32")
    ds = xr.Dataset({"field": (("sample", "channel", "y", "x"), v)})
    ds.attrs["sciencegen_dataset"] = json.dumps({"field_dims": ["y", "x"], "sample_dims": ["sample"]})
    ds.to_zarr(tmp_path / "s.zarr", encoding={"field": {"chunks": (4, 1, 16, 16)}}, consolidated=False)
    store = xr.open_zarr(tmp_path / "s.zarr", consolidated=False)
    s = store.sciencegen.spectrum("field", average=False)
    m = store.sciencegen.moments("field", dims="sample")
    assert isinstance(s.data, dsa.Array) and isinstance(m["std"].data, dsa.Array)
    assert s.dims == ("sample", "channel", "wavenumber")
    xr.testing.assert_allclose(s.compute(), A.isotropic_spectrum(ds["field"], average=False), rtol=1e-10)
    xr.testing.assert_allclose(m.compute(), A.moments(ds["field"], "sample"), rtol=1e-10)


# --------------------------------------------------------------------------------------------- accessor


def test_accessor_on_dataset_with_metadata_and_on_dataarray():
    rng = np.random.default_rng(16)
    v = rng.standard_normal((16, 12, 10))  # the field dims first: "last two dims" would be wrong here
    ds = xr.Dataset({"vorticity": (("y", "x", "sample"), v), "other": (("sample",), np.arange(10.0))})
    ds.attrs["sciencegen_dataset"] = json.dumps({"field_dims": ["y", "x"], "sample_dims": ["sample"]})
    s = ds.sciencegen.spectrum("vorticity")
    xr.testing.assert_identical(s, A.isotropic_spectrum(ds["vorticity"], dims=("y", "x")))
    assert ds.sciencegen.field_dims("vorticity") == ("y", "x")
    m = ds.sciencegen.moments("vorticity")
    assert m["mean"].dims == ("y", "x")
    c = ds.sciencegen.correlation("vorticity", max_lag=4)
    xr.testing.assert_identical(c, A.spatial_correlation(ds["vorticity"], dims=("y", "x"), max_lag=4))
    h = ds.sciencegen.histogram("vorticity", bins=8)
    np.testing.assert_array_equal(h.values, np.histogram(v, bins=8)[0])
    with pytest.raises(ValueError, match="not in the dataset variables"):
        ds.sciencegen.spectrum("nope")

    da = xr.DataArray(v.transpose(2, 0, 1), dims=("sample", "lat", "lon"))  # no metadata: last two dims
    xr.testing.assert_identical(da.sciencegen.spectrum(), A.isotropic_spectrum(da, dims=("lat", "lon")))
    assert da.sciencegen.moments()["std"].dims == ("lat", "lon")
    assert da.sciencegen.correlation().sizes["separation"] == 7
    assert da.sciencegen.histogram(bins=5).sum() == v.size
    assert A.default_field_dims(da.isel(lat=0)) == ("sample", "lon")


# --------------------------------------------------------------------------------------------- bad input


def test_bad_input_raises_clear_errors():
    x = as_da(np.zeros((3, 4, 4)), 2)
    y = xr.DataArray(np.zeros((4, 4)), dims=("y", "x"))
    cases = [
        (lambda: A.isotropic_spectrum(x, dims=("y", "z")), r"isotropic_spectrum: dim\(s\) \['z'\] not in the array"),
        (lambda: A.spatial_correlation(x, dims=("lat",)), "not in the array dims"),
        (lambda: A.moments(x, dims="time"), "not in the array dims"),
        (lambda: A.enstrophy_spectrum(x, dims="q"), "not in the array dims"),
        (lambda: A.crps_ensemble(x.rename(member="ens"), y), "member dim 'member' not in the forecast dims"),
        (lambda: A.crps_ensemble(x, x), "must not have the member dim"),
        (lambda: A.spread_skill(x, y, member_dim="ens"), "member dim 'ens'"),
        (lambda: A.rank_histogram(x.isel(member=0), y), "member dim"),
        (lambda: A.crps_ensemble(x, y, dims="time"), "not in the array dims"),
        (lambda: A.spatial_correlation(y, center="sample"), "needs a non-field dim"),
        (lambda: A.spatial_correlation(x, max_lag=99), "max_lag"),
        (lambda: A.histogram(x, bins=[1.0, 0.0]), "increasing"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            call()
        assert "\n" not in str(info.value)
