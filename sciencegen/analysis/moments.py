"""Value distributions: moment maps, histograms and the 1-D Wasserstein distance, lazily per chunk.

Moments come from one pass of shifted power sums (float64); histograms from per-chunk ``np.histogram`` counts
with fixed bin edges summed by dask; the streaming Wasserstein distance integrates ``|F_a - F_b|`` on a common
fine histogram. NaNs are skipped everywhere (they count as missing values).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import dask
import dask.array as dsa
import numpy as np
import xarray as xr

from ._common import check_dims, is_lazy

__all__ = ["histogram", "moment_scalars", "moments", "wasserstein1"]

#: inputs below this many values (both in memory) use the exact sort-based Wasserstein distance by default
EXACT_W1_MAX_SIZE = 2_000_000


def _central_from_raw(n: xr.DataArray, s1: xr.DataArray, s2: xr.DataArray, s3: xr.DataArray,
                      s4: xr.DataArray) -> tuple[xr.DataArray, ...]:
    """Mean and central moments 2..4 from raw power sums ``s_p = sum d^p`` of ``n`` values."""
    m1, r2, r3, r4 = s1 / n, s2 / n, s3 / n, s4 / n
    mu2 = r2 - m1**2
    mu3 = r3 - 3 * m1 * r2 + 2 * m1**3
    mu4 = r4 - 4 * m1 * r3 + 6 * m1**2 * r2 - 3 * m1**4
    return m1, mu2, mu3, mu4


# Moments from power sums (one pass, shifted for stability): Chan, Golub & LeVeque 1983 (Am. Stat. 37, 242).
def moments(da: xr.DataArray, dims: str | Sequence[Hashable], ddof: int = 0) -> xr.Dataset:
    """Mean, standard deviation, skewness and excess kurtosis over the sample dims ``dims``.

    One pass over the data: the sums of ``d, d², d³, d⁴`` with ``d = x - x_0`` (``x_0`` the first sample,
    a cheap shift that keeps the float64 power sums well conditioned when the mean is large compared with the
    spread) reduced by dask, then converted to central moments. Skewness ``g1 = μ3/μ2^1.5`` and excess kurtosis
    ``g2 = μ4/μ2² - 3`` are the plain (biased, population) estimators; a constant sample gives NaN for both.

    Parameters
    ----------
    da : xarray.DataArray
        Data, numpy- or dask-backed.
    dims : str or sequence of str
        Sample dims reduced over (e.g. ``("member",)``); the remaining dims form the maps.
    ddof : int, optional
        Delta degrees of freedom of ``std`` only (default 0, consistent with skewness and kurtosis).

    Returns
    -------
    xarray.Dataset
        ``mean``, ``std``, ``skewness``, ``kurtosis`` (excess) and ``count`` (non-NaN values) over the
        remaining dims; lazy for dask input.

    Raises
    ------
    ValueError
        When a dim is missing.
    """
    dims = check_dims(da, dims, "moments")
    if not dims:
        raise ValueError("moments: dims must name at least one sample dim")
    x = da.astype(np.float64)
    shift = x.isel({d: 0 for d in dims}, drop=True).fillna(0.0)
    d = x - shift
    n = d.notnull().sum(dims)
    sums = [(d**p).sum(dims, skipna=True) for p in (1, 2, 3, 4)]
    out = _moment_set(shift, _central_from_raw(n, *sums), n, ddof, da.attrs.get("units", ""), "")
    out["count"].attrs["long_name"] = "number of non-NaN values"
    out.attrs["sample_dims"] = list(map(str, dims))
    return out


def moment_scalars(da: xr.DataArray, ddof: int = 0, weights: xr.DataArray | None = None) -> xr.Dataset:
    """Mean, standard deviation, skewness and excess kurtosis over all values of ``da``.

    :func:`moments` with every dim as a sample dim. With ``weights`` (e.g. area weights ``cos(latitude)`` over
    the field dims, zero at masked points), every value counts with its weight: the weighted power sums
    ``sum w d^p / sum w`` give the weighted mean and central moments (``ddof`` then corrects by the number of
    values counted, as for frequency weights).

    Parameters
    ----------
    da : xarray.DataArray
        Data, numpy- or dask-backed.
    ddof : int, optional
        Delta degrees of freedom of ``std``.
    weights : xarray.DataArray, optional
        Non-negative weights broadcast against ``da`` by dim name; ``None`` (default): every value counts once.

    Returns
    -------
    xarray.Dataset
        0-d ``mean``, ``std``, ``skewness``, ``kurtosis`` and ``count`` (values counted: non-NaN, weight > 0).
    """
    if da.ndim == 0:
        da = da.expand_dims("value")
    if weights is None:
        return moments(da, tuple(da.dims), ddof=ddof)
    return _weighted_scalars(da, weights, ddof)


# Weighted moments from weighted power sums (shifted for stability): Chan, Golub & LeVeque 1983 (Am. Stat. 37, 242).
def _weighted_scalars(da: xr.DataArray, weights: xr.DataArray, ddof: int) -> xr.Dataset:
    """:func:`moment_scalars` with weights (NaN values and zero weights do not count)."""
    x = da.astype(np.float64)
    w = weights.astype(np.float64)
    extra = [d for d in w.dims if d not in x.dims]
    if extra:
        raise ValueError(f"moment_scalars: weight dims {extra} not in the data dims {tuple(x.dims)}")
    counted = x.notnull() & (w > 0)
    ww = w.where(counted, 0.0)
    shift = x.isel({x.dims[0]: 0}).mean(skipna=True).fillna(0.0)
    d = (x - shift).where(counted, 0.0)
    n = counted.sum()
    wsum = ww.sum()
    sums = [(ww * d**p).sum() for p in (1, 2, 3, 4)]
    out = _moment_set(shift, _central_from_raw(wsum, *sums), n, ddof, da.attrs.get("units", ""), "weighted ")
    out["count"].attrs["long_name"] = "number of values counted (non-NaN, weight > 0)"
    out.attrs["weighted"] = 1
    return out


def _moment_set(shift: xr.DataArray, central: tuple[xr.DataArray, ...], n: xr.DataArray, ddof: int, units: str,
                prefix: str) -> xr.Dataset:
    """Mean, std, skewness, excess kurtosis and count from a shift and the central moments about it."""
    m1, mu2, mu3, mu4 = central
    mu2 = mu2.clip(min=0.0)
    var = mu2 * n / (n - ddof)
    return xr.Dataset({
        "mean": (shift + m1).assign_attrs(long_name=f"{prefix}mean", units=units),
        "std": np.sqrt(var).assign_attrs(long_name=f"{prefix}standard deviation (ddof={ddof})", units=units),
        "skewness": (mu3 / mu2**1.5).assign_attrs(long_name=f"{prefix}skewness mu3/mu2^1.5", units="1"),
        "kurtosis": (mu4 / mu2**2 - 3.0).assign_attrs(long_name=f"{prefix}excess kurtosis mu4/mu2^2 - 3",
                                                      units="1"),
        "count": n.copy(),
    })


def _value_range(*arrays: xr.DataArray) -> tuple[float, float]:
    """Joint finite min and max of several arrays (one streaming pass, computed together)."""
    reds = []
    for a in arrays:
        f = a.where(np.isfinite(a))
        reds += [f.min(), f.max()]
    vals = [float(v) for v in dask.compute(*reds)]
    lo, hi = np.nanmin(vals[0::2]), np.nanmax(vals[1::2])
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("histogram: no finite values to set the range from")
    return float(lo), float(hi)


def _edges(arrays: Sequence[xr.DataArray], bins: int | Sequence[float] | np.ndarray,
           range: tuple[float, float] | None) -> np.ndarray:
    """Fixed bin edges: given edges, or ``bins`` equal bins over ``range`` (the data's min/max when ``None``)."""
    if not np.isscalar(bins):
        edges = np.asarray(bins, dtype=np.float64)
        if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
            raise ValueError("histogram: bin edges must be a 1-D increasing sequence of at least 2 values")
        return edges
    if int(bins) != bins or bins < 1:
        raise ValueError(f"histogram: bins must be a positive integer or a sequence of edges, got {bins!r}")
    lo, hi = _value_range(*arrays) if range is None else (float(range[0]), float(range[1]))
    if not hi >= lo:
        raise ValueError(f"histogram: range must satisfy min <= max, got {(lo, hi)}")
    if lo == hi:  # as numpy: a degenerate range is widened by 0.5 either side
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, int(bins) + 1)


def _block_counts(block: np.ndarray, edges: np.ndarray, ndim: int) -> np.ndarray:
    """``np.histogram`` counts of the finite values of one block, shaped ``(1,)*ndim + (nbins,)``."""
    v = np.asarray(block, dtype=np.float64).ravel()
    counts, _ = np.histogram(v[np.isfinite(v)], bins=edges)
    return counts.astype(np.int64).reshape((1,) * ndim + (edges.size - 1,))


def _block_weighted(block: np.ndarray, wblock: np.ndarray, edges: np.ndarray, ndim: int) -> np.ndarray:
    """Weighted ``np.histogram`` of the finite values of one block, shaped ``(1,)*ndim + (nbins,)``."""
    v = np.asarray(block, dtype=np.float64).ravel()
    w = np.broadcast_to(np.asarray(wblock, dtype=np.float64), np.shape(block)).ravel()
    ok = np.isfinite(v)
    counts, _ = np.histogram(v[ok], bins=edges, weights=w[ok])
    return counts.reshape((1,) * ndim + (edges.size - 1,))


def _weighted_counts(da: xr.DataArray, weights: xr.DataArray, edges: np.ndarray) -> np.ndarray | dsa.Array:
    """Sums of ``weights`` of the values of ``da`` in fixed bins (numpy, or a dask sum of per-chunk sums)."""
    nb = edges.size - 1
    extra = [d for d in weights.dims if d not in da.dims]
    if extra:
        raise ValueError(f"histogram: weight dims {extra} not in the data dims {tuple(da.dims)}")
    w = weights.astype(np.float64).transpose(*[d for d in da.dims if d in weights.dims])
    w = w.expand_dims({d: 1 for d in da.dims if d not in weights.dims}).transpose(*da.dims)
    if not is_lazy(da):
        return _block_weighted(da.values, np.asarray(w.values), edges, 0)
    data = da.data
    wdata = dsa.broadcast_to(dsa.from_array(np.asarray(w.values)), data.shape).rechunk(data.chunks)
    per_block = dsa.map_blocks(
        _block_weighted, data, wdata, edges, data.ndim,
        new_axis=data.ndim,
        chunks=tuple((1,) * len(c) for c in data.chunks) + ((nb,),),
        dtype=np.float64,
        meta=np.empty((0,) * (data.ndim + 1), dtype=np.float64),
    )
    return per_block.sum(axis=tuple(range(data.ndim)))


def _counts(da: xr.DataArray, edges: np.ndarray, weights: xr.DataArray | None = None) -> np.ndarray | dsa.Array:
    """Counts of the values of ``da`` in fixed bins: numpy, or a dask sum of per-chunk histograms."""
    if weights is not None:
        return _weighted_counts(da, weights, edges)
    nb = edges.size - 1
    if not is_lazy(da):
        return _block_counts(da.values, edges, 0)
    data = da.data
    if data.ndim == 0:
        data = data[None]
    per_block = data.map_blocks(
        _block_counts, edges, data.ndim,
        new_axis=data.ndim,
        chunks=tuple((1,) * len(c) for c in data.chunks) + ((nb,),),
        dtype=np.int64,
        meta=np.empty((0,) * (data.ndim + 1), dtype=np.int64),
    )
    return per_block.sum(axis=tuple(range(data.ndim)))


# Histogram with fixed bin edges, summed over chunks (as np.histogram; last bin closed).
def histogram(da: xr.DataArray, bins: int | Sequence[float] | np.ndarray = 64,
              range: tuple[float, float] | None = None, density: bool = False,
              weights: xr.DataArray | None = None) -> xr.DataArray:
    """Histogram of all finite values of ``da`` with fixed bin edges, chunk by chunk.

    Bins follow :func:`numpy.histogram` (half-open ``[e_i, e_{i+1})``, the last one closed); values outside the
    edges and NaNs are not counted. With dask input each chunk is histogrammed with the same edges and the counts
    are summed, so memory is one chunk; the result stays lazy unless ``range`` must first be found, in which case
    the min and max are computed first (one extra streaming pass).

    Parameters
    ----------
    da : xarray.DataArray
        Data, numpy- or dask-backed, any shape.
    bins : int or sequence of float, optional
        Number of equal bins over ``range`` (default 64), or the bin edges themselves.
    range : (float, float), optional
        Lower and upper edge when ``bins`` is an int; the data's min and max when omitted.
    density : bool, optional
        Return ``counts / (total · width)`` (integrates to 1) instead of counts.
    weights : xarray.DataArray, optional
        Weight of every value (broadcast against ``da`` by dim name, e.g. area weights over the field dims):
        each value counts with its weight instead of 1.

    Returns
    -------
    xarray.DataArray
        Over ``bin`` (bin centres), with coordinates ``bin_left``, ``bin_right`` and ``bin_width``; the edges
        are also in ``attrs["bin_edges"]`` (a coordinate of length ``nbins + 1`` cannot live on a DataArray
        over ``bin``).
    """
    edges = _edges([da], bins, range)
    counts = xr.DataArray(_counts(da, edges, weights), dims=("bin",))
    width = np.diff(edges)
    units = da.attrs.get("units", "")
    if density:
        counts = counts / (counts.sum() * xr.DataArray(width, dims=("bin",)))
        attrs = {"long_name": f"probability density of {da.name or 'values'}", "units": f"1/({units})" if units else ""}
    else:
        attrs = {"long_name": f"{'weighted ' if weights is not None else ''}counts of {da.name or 'values'}",
                 "units": "count"}
    out = counts.assign_coords(
        bin=("bin", 0.5 * (edges[:-1] + edges[1:]), {"long_name": "bin centre", "units": units}),
        bin_left=("bin", edges[:-1]),
        bin_right=("bin", edges[1:]),
        bin_width=("bin", width),
    )
    out.name = "density" if density else "counts"
    out.attrs = {**attrs, "bin_edges": edges}
    return out


def _w1_exact(a: np.ndarray, b: np.ndarray) -> float:
    """``∫|F_a - F_b| dx`` of two empirical distributions, exactly, by sorting."""
    a, b = np.sort(a), np.sort(b)
    both = np.concatenate([a, b])
    both.sort()
    fa = np.searchsorted(a, both[:-1], side="right") / a.size
    fb = np.searchsorted(b, both[:-1], side="right") / b.size
    return float(np.sum(np.abs(fa - fb) * np.diff(both)))


def _finite_values(da: xr.DataArray) -> np.ndarray:
    """All finite values of ``da`` as a 1-D float64 numpy array (loads the data)."""
    v = np.asarray(da.values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


# 1-D Wasserstein-1 distance as the L1 distance between CDFs: Vallender 1974 (Theory Probab. Appl. 18, 784).
def wasserstein1(a: xr.DataArray, b: xr.DataArray, bins: int | Sequence[float] | np.ndarray = 4096,
                 range: tuple[float, float] | None = None, exact: bool | None = None,
                 weights_a: xr.DataArray | None = None, weights_b: xr.DataArray | None = None) -> xr.DataArray:
    """1-D Wasserstein distance ``W1 = ∫|F_a(x) - F_b(x)| dx`` between the value distributions of two arrays.

    Two methods:

    * exact (sort based, numpy only): sorts all finite values of both arrays and integrates the difference of the
      empirical CDFs between consecutive values. Loads both arrays into memory.
    * streaming (default for dask input or large arrays): a common fine histogram (``bins`` equal bins over the
      joint min/max, or over ``range``), built chunk by chunk. It is the exact ``W1`` between the two
      distributions with every value moved to its bin centre, ``sum_i |F_a(e_i) - F_b(e_i)| (c_i - c_{i-1})`` over
      interior edges ``e_i`` and centres ``c_i``. Moving a distribution's values by at most half a bin changes
      ``W1`` by at most half a bin, so the discretisation error is at most one (the largest) bin width
      (``attrs["max_discretisation_error"]``). Values outside ``range`` are ignored.

    Parameters
    ----------
    a, b : xarray.DataArray
        The two samples (any shapes; NaNs skipped), numpy- or dask-backed.
    bins : int or sequence of float, optional
        Number of common bins (default 4096) or their edges (streaming method).
    range : (float, float), optional
        Common histogram range; the joint min/max of both arrays when omitted (one extra streaming pass).
    exact : bool, optional
        Force the sort-based (``True``) or histogram (``False``) method. By default the exact method is used when
        both arrays are in memory (numpy-backed) with at most ``EXACT_W1_MAX_SIZE`` values together.
    weights_a, weights_b : xarray.DataArray, optional
        Weights of the values of ``a`` and ``b`` (e.g. area weights; both or neither): the weighted value
        distributions are compared, always by the histogram method.

    Returns
    -------
    xarray.DataArray
        0-d distance (lazy for the streaming method with ``range`` given), with ``attrs["method"]`` and, for the
        streaming method, ``attrs["max_discretisation_error"]``.
    """
    weighted = weights_a is not None or weights_b is not None
    if weighted and (weights_a is None or weights_b is None):
        raise ValueError("wasserstein1: give weights for both arrays or for neither")
    if weighted and exact:
        raise ValueError("wasserstein1: weighted distributions are compared by the histogram method (exact=False)")
    if exact is None:
        exact = not weighted and not is_lazy(a) and not is_lazy(b) and a.size + b.size <= EXACT_W1_MAX_SIZE
    if exact:
        va, vb = _finite_values(a), _finite_values(b)
        if va.size == 0 or vb.size == 0:
            raise ValueError("wasserstein1: both arrays need at least one finite value")
        return xr.DataArray(_w1_exact(va, vb), name="wasserstein1",
                            attrs={"long_name": "Wasserstein-1 distance", "method": "exact (sorted values)",
                                   "units": a.attrs.get("units", "")})
    edges = _edges([a, b], bins, range)
    ca, cb = _counts(a, edges, weights_a), _counts(b, edges, weights_b)
    centres = 0.5 * (edges[:-1] + edges[1:])
    fa = ca.cumsum(axis=0) / ca.sum()
    fb = cb.cumsum(axis=0) / cb.sum()
    w = (abs(fa[:-1] - fb[:-1]) * np.diff(centres)).sum()
    return xr.DataArray(w, name="wasserstein1",
                        attrs={"long_name": "Wasserstein-1 distance", "method": f"histogram ({edges.size - 1} bins)",
                               "max_discretisation_error": float(np.max(np.diff(edges))),
                               "units": a.attrs.get("units", "")})
