"""Two-point correlation of latitude-longitude fields against great-circle distance, masks allowed.

On a latitude-longitude grid the distance between two points depends on both latitudes and on the longitude
difference only, so every pair of rows ``(i, j)`` is correlated along longitude with FFTs (circularly for a
periodic longitude, zero-padded otherwise), summed over the samples, then binned by the great-circle distance of
each ``(φ_i, φ_j, Δλ)``. Masked (invalid or NaN) points enter the standard masked estimator
``C(d) = sum w_a w_b m_a m_b a_a a_b / sum w_a w_b m_a m_b`` over the pairs ``(a, b)`` at distance ``d``, with
``m`` the validity of each point in each sample and ``w = cos(latitude)`` the area weights; the result is
``C(d) / C(0)``.
"""

from __future__ import annotations

import dask.array as dsa
import numpy as np
import xarray as xr

from ._common import is_lazy
from .geometry import Geometry, great_circle_km

__all__ = ["great_circle_correlation"]


def _pair_sums_np(x: np.ndarray, valid: np.ndarray, size: int) -> np.ndarray:
    """Per block ``(b, G, nlat, nlon)``: lagged products of every row pair summed over ``b``, and their counts.

    Returns ``(1, 2, G, nlat, nlat, size)``: ``sum_b sum_λ a_i(λ) a_j(λ + k)`` and the same for the validity.
    """
    x = np.asarray(x, dtype=np.float64)
    m = np.isfinite(x) & valid[None]
    a = np.where(m, x, 0.0)
    out = []
    for z in (a, m.astype(np.float64)):
        f = np.fft.rfft(z, n=size, axis=-1)                       # (b, G, i, f)
        f = np.moveaxis(f, 0, -1)                                 # (G, i, f, b)
        f = np.moveaxis(f, 2, 1)                                  # (G, f, i, b)
        cross = np.conj(f) @ np.swapaxes(f, -1, -2)               # (G, f, i, j) = sum_b conj(F_i) F_j
        out.append(np.fft.irfft(np.moveaxis(cross, 1, -1), n=size, axis=-1))  # (G, i, j, k)
    return np.stack(out)[None]


def _pair_distances(geo: Geometry, size: int) -> np.ndarray:
    """Great-circle distance ``(nlat, nlat, size)`` of the row pair ``(i, j)`` at longitude lag ``k``."""
    n = geo.lon.size
    k = np.arange(size)
    lag = k if size == n else np.where(k < n, k, k - size)  # zero-padded: lags past n are negative
    dlon = lag * (geo.lon_spacing or 0.0)
    lat = geo.lat
    return great_circle_km(lat[:, None, None], 0.0, lat[None, :, None], dlon[None, None, :])


def _bin_np(sums: np.ndarray, shell: np.ndarray, pair_w: np.ndarray, nbin: int) -> np.ndarray:
    """``(2, nbin)``: the weighted products and pair counts of ``sums`` summed per distance bin."""
    s = np.asarray(sums, dtype=np.float64).sum(axis=1)  # over the other field dims (levels)
    idx = shell.ravel()
    keep = idx < nbin
    return np.stack([np.bincount(idx[keep], weights=(part * pair_w).ravel()[keep], minlength=nbin)[:nbin]
                     for part in s])


# Masked two-point correlation (sum of weighted products over weighted pair counts), e.g. Wackernagel 2003 (ch. 5).
def great_circle_correlation(da: xr.DataArray, geometry: Geometry, valid: xr.DataArray | None = None,
                             max_lag: int | None = None, bin_km: float | None = None) -> xr.DataArray:
    """Two-point correlation ``C(d)/C(0)`` of latitude-longitude fields in great-circle distance bins.

    The fields are not centred here (pass anomalies, e.g. minus the ensemble-mean map). Bin ``s`` holds the
    pairs with ``round(d / bin_km) = s``.

    Parameters
    ----------
    da : xarray.DataArray
        Fields over the sample dims and ``geometry.field_dims`` (NaN: missing), numpy- or dask-backed.
    geometry : Geometry
        A ``latlon`` geometry with a uniformly spaced longitude (:func:`~sciencegen.analysis.geometry.grid_geometry`).
    valid : xarray.DataArray, optional
        Static validity over the field dims (default: all valid).
    max_lag : int, optional
        Last distance bin; default: half the largest distance on the grid.
    bin_km : float, optional
        Bin width in km; default the latitude spacing (``R |Δφ|``).

    Returns
    -------
    xarray.DataArray
        Over ``separation`` (bin index) with coordinates ``distance`` (bin centre, km, ``long_name``
        "great-circle distance") and ``pairs`` (area-weighted valid pairs summed over the samples).

    Raises
    ------
    ValueError
        Not a latitude-longitude geometry, or a longitude that is not uniformly spaced.
    """
    if not geometry.latlon or not geometry.lon_uniform:
        raise ValueError("great_circle_correlation: needs a latitude-longitude grid with a uniformly spaced longitude")
    lat_d, lon_d = geometry.lat_dim, geometry.lon_dim
    other = tuple(d for d in geometry.field_dims if d not in (lat_d, lon_d))
    sample = tuple(d for d in da.dims if d not in geometry.field_dims)
    nlat, nlon = geometry.lat.size, geometry.lon.size
    size = nlon if geometry.lon_periodic else 2 * nlon
    ok = np.ones(tuple(int(da.sizes[d]) for d in (*other, lat_d, lon_d)), bool) if valid is None else \
        np.asarray(valid.transpose(*other, lat_d, lon_d).values, dtype=bool)
    g = int(np.prod(ok.shape[:-2])) if other else 1
    ok = ok.reshape(g, nlat, nlon)
    x = da.transpose(*sample, *other, lat_d, lon_d)
    lead = int(np.prod([x.sizes[d] for d in sample])) if sample else 1
    sums = _block_sums(x, lead, g, nlat, nlon, ok, size)
    dist = _pair_distances(geometry, size)
    width = float(bin_km) if bin_km else float(np.deg2rad(np.median(np.abs(np.diff(geometry.lat)))) * 6371.0088)
    nbin = (int(dist.max() / 2.0 / width) + 1) if max_lag is None else int(max_lag) + 1
    shell = np.rint(dist / width).astype(np.int64)
    area = np.clip(np.cos(np.deg2rad(geometry.lat)), 0.0, None)
    pair_w = np.broadcast_to(area[:, None, None] * area[None, :, None], shell.shape)
    if isinstance(sums, dsa.Array):
        import dask

        binned = dsa.from_delayed(dask.delayed(_bin_np)(sums, shell, pair_w, nbin), shape=(2, nbin),
                                  dtype=np.float64)
    else:
        binned = _bin_np(sums, shell, pair_w, nbin)
    num, den = binned[0], binned[1]
    cov = num / np.where(den > 0, den, np.nan)
    corr = cov / cov[0]  # lazy for dask input
    out = xr.DataArray(corr, dims=("separation",), coords={
        "separation": ("separation", np.arange(nbin), {"long_name": "distance bin round(d / bin)",
                                                         "units": f"{width:.4g} km"}),
        "distance": ("separation", np.arange(nbin) * width, {"long_name": "great-circle distance", "units": "km"}),
        "pairs": ("separation", den, {"long_name": "area-weighted valid pairs summed over the samples"})})
    out.name = "correlation"
    out.attrs = {"long_name": f"two-point correlation C(d)/C(0) of {da.name or 'field'}", "units": "1",
                 "estimator": "masked: sum w w' m m' a a' / sum w w' m m' (w = cos latitude)",
                 "longitude": "periodic (circular lags)" if geometry.lon_periodic else "not periodic (zero-padded)",
                 "bin_km": width, "field_dims": list(map(str, geometry.field_dims))}
    return out


def _block_sums(x: xr.DataArray, lead: int, g: int, nlat: int, nlon: int, ok: np.ndarray, size: int
                ) -> np.ndarray | dsa.Array:
    """The lagged row-pair sums of every sample, ``(2, G, nlat, nlat, size)`` (lazy for dask input)."""
    if not is_lazy(x):
        return _pair_sums_np(np.asarray(x.values).reshape(lead, g, nlat, nlon), ok, size)[0]
    data = x.data.reshape((lead, g, nlat, nlon)) if x.ndim != 4 else x.data
    data = data.rechunk({1: -1, 2: -1, 3: -1})
    blocks = data.map_blocks(_pair_sums_np, ok, size, new_axis=[1, 4], chunks=(
        (1,) * len(data.chunks[0]), (2,), (g,), (nlat,), (nlat,), (size,)), dtype=np.float64,
        meta=np.empty((0,) * 6, dtype=np.float64))
    return blocks.sum(axis=0)
