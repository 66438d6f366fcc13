"""Ensemble verification scores against a truth: CRPS, spread–skill and rank histograms.

The forecast carries the ensemble dim (``member_dim``, default ``"member"``); the truth must not, and is
broadcast against the forecast by dim name (e.g. one truth map per case/time). Per-point scores are computed per
chunk with ``xr.apply_ufunc(dask="parallelized")`` (the member dim rechunked to one chunk, other dims keep their
chunks) and then averaged by dask, so results stay lazy.

``dims`` selects the dims averaged over: ``None`` (default) averages over every non-member dim, a sequence
averages over those only and keeps the rest, and ``()`` keeps the full per-point field.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
import xarray as xr

from ._common import as_dims, check_dims, single_chunk

__all__ = ["crps_ensemble", "crps_gaussian", "rank_chi2", "rank_histogram", "spread_skill"]


def _check_pair(forecast: xr.DataArray, truth: xr.DataArray, member_dim: Hashable, func: str) -> int:
    """Validate the member dim of a forecast/truth pair; return the ensemble size."""
    if member_dim not in forecast.dims:
        raise ValueError(f"{func}: member dim {member_dim!r} not in the forecast dims {tuple(forecast.dims)}")
    if member_dim in truth.dims:
        raise ValueError(f"{func}: the truth must not have the member dim {member_dim!r} (dims {tuple(truth.dims)})")
    extra = [d for d in truth.dims if d not in forecast.dims]
    if extra:
        raise ValueError(f"{func}: truth dims {extra} not in the forecast dims {tuple(forecast.dims)}")
    return int(forecast.sizes[member_dim])


def _reduce(score: xr.DataArray, dims: str | Sequence[Hashable] | None, func: str,
            weights: xr.DataArray | None = None) -> xr.DataArray:
    """Mean over ``dims`` (every dim when ``None``); weighted by ``weights`` (NaN skipped) when given."""
    if weights is not None:
        dims = list(score.dims) if dims is None else list(check_dims(score, dims, func))
        return score.weighted(weights.fillna(0.0)).mean(dims) if dims else score
    if dims is None:
        return score.mean()
    dims = check_dims(score, dims, func)
    return score.mean(dims) if dims else score


def _crps_np(x: np.ndarray, y: np.ndarray, fair: bool) -> np.ndarray:
    """Per-point ensemble CRPS with members on the last axis, by the sorted-members formula."""
    m = x.shape[-1]
    x = x.astype(np.float64, copy=False)
    skill = np.abs(x - np.asarray(y, dtype=np.float64)[..., None]).mean(-1)
    xs = np.sort(x, axis=-1)
    # sum_{i,j} |x_i - x_j| = 2 sum_i (2i - m - 1) x_(i), i = 1..m (sorted members)
    half_pairs = (xs * (2.0 * np.arange(1, m + 1) - m - 1)).sum(-1)
    return skill - half_pairs / (m * (m - 1) if fair else m * m)


# Ensemble CRPS: Gneiting & Raftery 2007 (JASA 102, 359; kernel form); fair CRPS: Ferro 2014 (QJRMS 140, 1917).
def crps_ensemble(forecast: xr.DataArray, truth: xr.DataArray, member_dim: Hashable = "member", fair: bool = False,
                  dims: str | Sequence[Hashable] | None = None, weights: xr.DataArray | None = None) -> xr.DataArray:
    """Continuous ranked probability score of an ensemble forecast.

    ``CRPS = mean_i |X_i - y| - ½ mean_{i,j} |X_i - X_j|`` over all ``m²`` member pairs (``i = j`` included), the
    CRPS of the empirical distribution. ``fair=True`` divides the pair sum by ``m(m-1)`` instead (Ferro 2014),
    an unbiased estimate of the CRPS of the distribution the members are drawn from; the standard score exceeds it
    by ``E|X - X'| / (2m)`` on average (``σ/(√π m)`` for a Gaussian).

    The pair term uses sorted members, ``sum_{i,j}|x_i - x_j| = 2 sum_i (2i - m - 1) x_(i)``: ``O(m log m)``
    time and ``O(m)`` memory per point (a chunk's worth of values), instead of ``O(m²)`` for all pairs.

    Parameters
    ----------
    forecast : xarray.DataArray
        Ensemble with the member dim, numpy- or dask-backed.
    truth : xarray.DataArray
        Verifying values without the member dim (its dims a subset of the forecast's).
    member_dim : str, optional
        Ensemble dim (default ``"member"``).
    fair : bool, optional
        Fair (unbiased, Ferro 2014) version; needs ``m >= 2``.
    dims : str or sequence of str, optional
        Dims averaged over; all non-member dims by default, ``()`` for the per-point score.
    weights : xarray.DataArray, optional
        Weights of the mean (e.g. ``cos(latitude)`` area weights over the field dims); NaN scores (invalid
        points) are skipped with their weights.

    Returns
    -------
    xarray.DataArray
        Mean CRPS (units of the data), lazy for dask input.

    Raises
    ------
    ValueError
        When the member dim is missing from the forecast or present in the truth, or ``fair`` with one member.
    """
    m = _check_pair(forecast, truth, member_dim, "crps_ensemble")
    if fair and m < 2:
        raise ValueError("crps_ensemble: the fair CRPS needs at least 2 members")
    score = xr.apply_ufunc(
        _crps_np, single_chunk(forecast, [member_dim]), truth,
        kwargs={"fair": fair},
        input_core_dims=[[member_dim], []],
        dask="parallelized",
        output_dtypes=[np.float64],
    )
    out = _reduce(score, dims, "crps_ensemble", weights)
    out.name = "crps_fair" if fair else "crps"
    out.attrs = {"long_name": f"{'fair ' if fair else ''}continuous ranked probability score",
                 "units": forecast.attrs.get("units", ""), "members": m}
    return out


def _erf(z: np.ndarray) -> np.ndarray:
    """Error function, elementwise (scipy when installed, else ``math.erf``)."""
    try:
        from scipy.special import erf
    except ImportError:  # pragma: no cover - scipy is optional
        return np.vectorize(math.erf, otypes=[np.float64])(z)
    return erf(z)


def _crps_gaussian_np(mu: np.ndarray, sigma: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Closed-form CRPS of ``N(mu, sigma²)`` at ``y``."""
    z = (np.asarray(y, dtype=np.float64) - mu) / sigma
    cdf = 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return sigma * (z * (2.0 * cdf - 1.0) + 2.0 * pdf - 1.0 / math.sqrt(math.pi))


# Closed-form Gaussian CRPS: Gneiting et al. 2005 (MWR 133, 1098); Gneiting & Raftery 2007 (JASA 102, 359).
def crps_gaussian(mu: xr.DataArray | float, sigma: xr.DataArray | float, truth: xr.DataArray,
                  dims: str | Sequence[Hashable] | None = None) -> xr.DataArray:
    """CRPS of a Gaussian forecast ``N(mu, sigma²)``: ``σ [z(2Φ(z) - 1) + 2φ(z) - 1/√π]``, ``z = (y - mu)/σ``.

    Parameters
    ----------
    mu, sigma : xarray.DataArray or float
        Forecast mean and standard deviation (``sigma > 0``), broadcast against ``truth`` by dim name.
    truth : xarray.DataArray
        Verifying values, numpy- or dask-backed.
    dims : str or sequence of str, optional
        Dims averaged over; all dims by default, ``()`` for the per-point score.

    Returns
    -------
    xarray.DataArray
        Mean CRPS, lazy for dask input.
    """
    mu = mu if isinstance(mu, xr.DataArray) else xr.DataArray(float(mu))
    sigma = sigma if isinstance(sigma, xr.DataArray) else xr.DataArray(float(sigma))
    score = xr.apply_ufunc(_crps_gaussian_np, mu.astype(np.float64), sigma.astype(np.float64), truth,
                           dask="parallelized", output_dtypes=[np.float64])
    out = _reduce(score, dims, "crps_gaussian")
    out.name = "crps_gaussian"
    out.attrs = {"long_name": "continuous ranked probability score of a Gaussian forecast",
                 "units": truth.attrs.get("units", "")}
    return out


# Spread-skill ratio with the finite-ensemble correction sqrt((m+1)/m): Fortin et al. 2014 (J. Hydrometeor. 15, 1708).
def spread_skill(forecast: xr.DataArray, truth: xr.DataArray, member_dim: Hashable = "member",
                 dims: str | Sequence[Hashable] | None = None, weights: xr.DataArray | None = None) -> xr.Dataset:
    """Ensemble spread, skill (RMSE of the ensemble mean) and their ratio.

    ``spread = sqrt(mean s²)`` with ``s²`` the unbiased (``ddof=1``) ensemble variance, ``skill =
    sqrt(mean (x̄ - y)²)``. For a calibrated ensemble (truth exchangeable with the members)
    ``E(x̄ - y)² = (m+1)/m · E s²``, so ``ratio = spread/skill`` tends to ``sqrt(m/(m+1))`` and the corrected
    ``ratio_corrected = sqrt((m+1)/m) · spread/skill`` to 1 (Fortin et al. 2014).

    Parameters
    ----------
    forecast : xarray.DataArray
        Ensemble with the member dim (``m >= 2``), numpy- or dask-backed.
    truth : xarray.DataArray
        Verifying values without the member dim.
    member_dim : str, optional
        Ensemble dim (default ``"member"``).
    dims : str or sequence of str, optional
        Dims averaged over (inside the square roots); all non-member dims by default.
    weights : xarray.DataArray, optional
        Weights of those means (e.g. area weights); NaN values skipped with their weights.

    Returns
    -------
    xarray.Dataset
        ``spread``, ``skill``, ``ratio`` and ``ratio_corrected``, lazy for dask input.

    Raises
    ------
    ValueError
        When the member dim is missing from the forecast or present in the truth, or ``m < 2``.
    """
    m = _check_pair(forecast, truth, member_dim, "spread_skill")
    if m < 2:
        raise ValueError("spread_skill: needs at least 2 members")
    f = forecast.astype(np.float64)
    var = f.var(member_dim, ddof=1)
    err2 = (f.mean(member_dim) - truth) ** 2
    spread = np.sqrt(_reduce(var, dims, "spread_skill", weights))
    skill = np.sqrt(_reduce(err2, dims, "spread_skill", weights))
    units = forecast.attrs.get("units", "")
    out = xr.Dataset({
        "spread": spread.assign_attrs(long_name="ensemble spread sqrt(mean unbiased variance)", units=units),
        "skill": skill.assign_attrs(long_name="RMSE of the ensemble mean", units=units),
        "ratio": (spread / skill).assign_attrs(long_name="spread/skill", units="1"),
        "ratio_corrected": (math.sqrt((m + 1) / m) * spread / skill).assign_attrs(
            long_name="sqrt((m+1)/m) spread/skill (1 when calibrated)", units="1"),
    })
    out.attrs["members"] = m
    return out


def _rank_np(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-point rank weights over ``0..m``: 1 at the rank of ``y``, ties shared equally."""
    m = x.shape[-1]
    y = np.asarray(y, dtype=np.float64)[..., None]
    below = (x < y).sum(-1)
    ties = (x == y).sum(-1)
    r = np.arange(m + 1)
    hit = (r >= below[..., None]) & (r <= (below + ties)[..., None])
    w = hit / (ties[..., None] + 1.0)
    return np.where(np.isnan(y), 0.0, w)  # a NaN truth counts nowhere


# Rank (Talagrand) histogram: Hamill 2001 (MWR 129, 550); ties shared equally, the mean of random tie-breaking.
def rank_histogram(forecast: xr.DataArray, truth: xr.DataArray, member_dim: Hashable = "member",
                   dims: str | Sequence[Hashable] | None = None) -> xr.DataArray:
    """Rank histogram: counts of the rank of the truth among the ``m`` members, ranks ``0..m``.

    The rank is the number of members below the truth. When the truth ties with ``t`` members, its count is shared
    equally among the ``t + 1`` ranks it could take (``1/(t+1)`` each) — the expectation of breaking ties at
    random, deterministic and independent of chunking — so counts may be fractional. A flat histogram indicates a
    calibrated ensemble, a U shape an under-dispersed one.

    Memory: the per-point rank indicator has ``m + 1`` entries, i.e. about one forecast chunk per chunk.

    Parameters
    ----------
    forecast : xarray.DataArray
        Ensemble with the member dim, numpy- or dask-backed.
    truth : xarray.DataArray
        Verifying values without the member dim (NaN truths are not counted).
    member_dim : str, optional
        Ensemble dim (default ``"member"``).
    dims : str or sequence of str, optional
        Dims summed over; all non-member dims by default.

    Returns
    -------
    xarray.DataArray
        Counts over ``rank`` (``0..m``, plus any kept dims), lazy for dask input.

    Raises
    ------
    ValueError
        When the member dim is missing from the forecast or present in the truth.
    """
    m = _check_pair(forecast, truth, member_dim, "rank_histogram")
    w = xr.apply_ufunc(
        _rank_np, single_chunk(forecast, [member_dim]), truth,
        input_core_dims=[[member_dim], []],
        output_core_dims=[["rank"]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"rank": m + 1}},
    )
    pointwise = [d for d in w.dims if d != "rank"]
    reduce = pointwise if dims is None else list(check_dims(w.isel(rank=0), as_dims(dims), "rank_histogram"))
    out = w.sum(reduce) if reduce else w
    out = out.assign_coords(rank=np.arange(m + 1))
    out.name = "rank_histogram"
    out.attrs = {"long_name": "rank histogram (number of members below the truth)", "units": "count",
                 "ties": "shared equally among the tied ranks", "members": m}
    return out


# Pearson chi-squared test of a flat rank histogram (e.g. Jolliffe & Primo 2008, MWR 136, 1505), ranks pooled.
def rank_chi2(counts: np.ndarray | Sequence[float], min_expected: float = 5.0) -> dict[str, float | int | None]:
    """Chi-squared test that a rank histogram is flat (each of the ``m + 1`` ranks equally likely).

    Adjacent ranks are pooled into ``B = min(m + 1, floor(n / min_expected))`` nearly equal groups (``n`` the
    total count) so that every expected count is at least ``min_expected``; the statistic
    ``sum_g (O_g - E_g)² / E_g`` with ``E_g = n · |g| / (m + 1)`` is referred to a chi-squared law with ``B - 1``
    degrees of freedom. The test assumes independent counts: thin correlated points before counting.

    Parameters
    ----------
    counts
        Rank counts over ranks ``0..m`` (may be fractional: shared ties).
    min_expected
        Smallest expected count per group.

    Returns
    -------
    dict
        ``statistic``, ``dof``, ``p_value`` (``None`` when fewer than 2 groups can be formed), ``groups``,
        ``points`` (``n``).
    """
    import torch

    c = np.asarray(counts, dtype=np.float64).ravel()
    n = float(c.sum())
    groups = int(min(c.size, math.floor(n / min_expected))) if n > 0 else 0
    if groups < 2:
        return {"statistic": None, "dof": None, "p_value": None, "groups": groups, "points": n}
    parts = np.array_split(np.arange(c.size), groups)
    obs = np.array([c[p].sum() for p in parts])
    exp = np.array([n * p.size / c.size for p in parts])
    stat = float(((obs - exp) ** 2 / exp).sum())
    dof = groups - 1
    p = float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64),
                                      torch.tensor(stat / 2.0, dtype=torch.float64)))
    return {"statistic": stat, "dof": dof, "p_value": p, "groups": groups, "points": n}
