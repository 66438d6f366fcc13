"""Two-point spatial correlation of periodic fields via FFT (Wiener–Khinchin), lazily per chunk.

Lags along each field dim are the integers ``np.fft.fftfreq(n, 1/n)`` (minimum-image, periodic), binned in
radial shells ``round(|r|)`` exactly as wavenumbers are in :mod:`sciencegen.analysis.spectra`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Literal

import dask.array as dsa
import numpy as np
import xarray as xr

from ._common import check_dims, other_dims, radial_shells, shell_counts, shell_reduce, single_chunk

__all__ = ["masked_correlation", "spatial_correlation"]


def _autocov_shells_np(x: np.ndarray, shape: tuple[int, ...], nshell: int) -> np.ndarray:
    """Shell sums of the circular autocovariance ``mean_x a(x) a(x+r)`` over the last ``len(shape)`` axes."""
    ndim = len(shape)
    lead = x.shape[: x.ndim - ndim]
    if x.size == 0:
        return np.zeros(lead + (nshell,))
    axes = tuple(range(-ndim, 0))
    f = np.fft.rfftn(x.astype(np.float64, copy=False), axes=axes)
    acov = np.fft.irfftn(f.real**2 + f.imag**2, s=shape, axes=axes) / np.prod(shape)
    return shell_reduce(acov, radial_shells(shape), nshell, ndim)


def _spacing(da: xr.DataArray, dim: Hashable) -> tuple[float, str] | None:
    """Uniform spacing (and units) of a numeric 1-D coordinate along ``dim``; ``None`` when there is none."""
    if dim not in da.coords or da.coords[dim].ndim != 1 or da.sizes[dim] < 2:
        return None
    c = da.coords[dim]
    if not np.issubdtype(c.dtype, np.number):
        return None
    diffs = np.diff(np.asarray(c.values, dtype=np.float64))
    if diffs[0] == 0 or not np.allclose(diffs, diffs[0], rtol=1e-6, atol=0.0):
        return None
    return abs(float(diffs[0])), str(c.attrs.get("units", ""))


def _distance(da: xr.DataArray, dims: tuple[Hashable, ...], shape: tuple[int, ...], nshell: int,
              counts: np.ndarray) -> tuple[np.ndarray, str] | None:
    """Physical separation per shell when every field dim has a uniformly spaced coordinate.

    Equal spacings ``dx``: ``separation · dx``. Unequal spacings: the mean physical ``|r|`` over the lags of the shell.
    """
    sp = [_spacing(da, d) for d in dims]
    if any(s is None for s in sp):
        return None
    dx = np.array([s[0] for s in sp])
    units = {s[1] for s in sp}
    unit = units.pop() if len(units) == 1 else ""
    if np.allclose(dx, dx[0], rtol=1e-6):
        return np.arange(nshell) * dx[0], unit
    lags = np.meshgrid(*[np.fft.fftfreq(n, 1.0 / n) * h for n, h in zip(shape, dx, strict=True)], indexing="ij")
    r = np.sqrt(sum(g * g for g in lags))
    sums = shell_reduce(r, radial_shells(shape), nshell, len(shape))
    return sums / np.maximum(counts, 1), unit


# Two-point correlation via the Wiener–Khinchin theorem (autocovariance = inverse FFT of |F|²), periodic fields.
def spatial_correlation(da: xr.DataArray, dims: str | Sequence[Hashable] = ("y", "x"), max_lag: int | None = None,
                        center: Literal["sample", "field"] | None = "sample", average: bool = True) -> xr.DataArray:
    """Radially binned two-point correlation ``C(r)/C(0)`` of periodic fields.

    The anomaly ``a`` is ``da`` minus a mean (see ``center``); its circular autocovariance
    ``C(r) = mean_x a(x) a(x + r)`` is computed per field with FFTs (``IFFT(|FFT(a)|²)/N``), averaged over the
    lags in each shell ``round(|r|)`` and over every non-field dim, and divided by ``C(0)`` (the ratio of the
    averages, not the average of per-field ratios).

    Parameters
    ----------
    da : xarray.DataArray
        Periodic real field(s), numpy- or dask-backed.
    dims : str or sequence of str, optional
        The 1, 2 or 3 field dims (default ``("y", "x")``).
    max_lag : int, optional
        Largest separation shell returned; default ``floor(min(n)/2)`` (shells past that are only partly covered
        by the periodic grid).
    center : {"sample", "field", None}, optional
        ``"sample"`` (default): subtract the mean over the non-field dims at each grid point (the ensemble-mean
        map), i.e. the correlation of deviations from the ensemble mean; needs at least one non-field dim.
        ``"field"``: subtract each field's spatial mean. ``None``: no centring (raw second moment).
    average : bool, optional
        Average over every non-field dim (default); ``False`` keeps them and normalises each field by its own
        ``C(0)``.

    Returns
    -------
    xarray.DataArray
        Over ``separation`` (integer lag shells in grid units), with coordinate ``lags`` (number of lags per shell)
        and, when every field dim has a uniformly spaced numeric coordinate, ``distance`` (physical separation:
        ``separation · dx`` for equal spacings, else the mean physical ``|r|`` of the shell's lags). Lazy for dask
        input.

    Raises
    ------
    ValueError
        When a dim is missing, ``center`` is unknown, ``center="sample"`` has no non-field dim, or ``max_lag`` is
        out of range.
    """
    dims = check_dims(da, dims, "spatial_correlation")
    if not 1 <= len(dims) <= 3:
        raise ValueError(f"spatial_correlation: 1 to 3 field dims are supported, got {list(dims)}")
    shape = tuple(int(da.sizes[d]) for d in dims)
    sample = other_dims(da, dims)
    if center not in ("sample", "field", None):
        raise ValueError(f"spatial_correlation: center must be 'sample', 'field' or None, got {center!r}")
    if center == "sample" and not sample:
        raise ValueError("spatial_correlation: center='sample' needs a non-field dim to average over; "
                         "use center='field'")
    largest = int(radial_shells(shape).max())
    max_lag = min(shape) // 2 if max_lag is None else int(max_lag)
    if not 0 <= max_lag <= largest:
        raise ValueError(f"spatial_correlation: max_lag must be in [0, {largest}], got {max_lag}")
    nshell = max_lag + 1

    x = da.astype(np.float64)
    if center == "sample":
        x = x - x.mean(sample)
    elif center == "field":
        x = x - x.mean(dims)
    x = single_chunk(x, dims)
    sums = xr.apply_ufunc(
        _autocov_shells_np, x,
        kwargs={"shape": shape, "nshell": nshell},
        input_core_dims=[list(dims)],
        output_core_dims=[["separation"]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"separation": nshell}},
    )
    counts = shell_counts(radial_shells(shape), nshell)
    cov = sums / np.where(counts > 0, counts, np.nan)
    if average and sample:
        cov = cov.mean(sample)
    corr = cov / cov.isel(separation=0)
    coords = {
        "separation": ("separation", np.arange(nshell), {"long_name": "lag shell round(|r|)", "units": "grid points"}),
        "lags": ("separation", counts, {"long_name": "number of lags in the shell"}),
    }
    dist = _distance(da, dims, shape, nshell, counts)
    if dist is not None:
        coords["distance"] = ("separation", dist[0], {"long_name": "physical separation", "units": dist[1]})
    corr = corr.assign_coords(coords)
    corr.name = "correlation"
    corr.attrs = {"long_name": f"two-point correlation C(r)/C(0) of {da.name or 'field'}", "units": "1",
                  "center": str(center), "field_dims": list(map(str, dims))}
    return corr


def _masked_shells_np(x: np.ndarray, valid: np.ndarray, shape: tuple[int, ...], nshell: int) -> np.ndarray:
    """Per block ``(b, *shape)``: shell sums of the circular autocovariances of ``m a`` and of ``m``, summed over
    ``b``: ``(1, 2, nshell)``."""
    ndim = len(shape)
    axes = tuple(range(-ndim, 0))
    x = np.asarray(x, dtype=np.float64).reshape((-1, *shape))
    m = np.isfinite(x) & valid
    out = []
    for z in (np.where(m, x, 0.0), m.astype(np.float64)):
        f = np.fft.rfftn(z, axes=axes)
        acov = np.fft.irfftn(f.real**2 + f.imag**2, s=shape, axes=axes).sum(axis=0)
        out.append(shell_reduce(acov, radial_shells(shape), nshell, ndim))
    return np.stack(out)[None]


# Masked two-point correlation (sum of products over the count of valid pairs per lag), e.g. Wackernagel 2003.
def masked_correlation(da: xr.DataArray, dims: str | Sequence[Hashable], valid: xr.DataArray,
                       max_lag: int | None = None) -> xr.DataArray:
    """Radially binned two-point correlation ``C(r)/C(0)`` of periodic fields with invalid points.

    ``C(r) = sum m(x) a(x) m(x+r) a(x+r) / sum m(x) m(x+r)`` over every sample and every lag in the shell
    ``round(|r|)`` (circular lags, as :func:`spatial_correlation`), ``m`` the validity of each point in each
    sample (``valid`` and finite). The fields are not centred here (pass anomalies).

    Parameters
    ----------
    da : xarray.DataArray
        Fields over the sample dims and ``dims``, numpy- or dask-backed (NaN: missing).
    dims : str or sequence of str
        The 1 to 3 field dims.
    valid : xarray.DataArray
        Boolean static validity over ``dims``.
    max_lag : int, optional
        Last separation shell; default ``floor(min(n)/2)``.

    Returns
    -------
    xarray.DataArray
        Over ``separation`` (grid points) with coordinates ``pairs`` (valid pairs per shell) and, where the field
        dims have uniformly spaced coordinates, ``distance``.
    """
    import dask

    dims = check_dims(da, dims, "masked_correlation")
    shape = tuple(int(da.sizes[d]) for d in dims)
    nshell = (min(shape) // 2 if max_lag is None else int(max_lag)) + 1
    sample = other_dims(da, dims)
    x = single_chunk(da.transpose(*sample, *dims), dims)
    ok = np.asarray(valid.transpose(*dims).values, dtype=bool)
    if x.chunks is None:
        sums = _masked_shells_np(x.values, ok, shape, nshell)[0]
    else:
        data = x.data.reshape((-1, *shape)) if len(sample) != 1 else x.data
        parts = [dask.delayed(_masked_shells_np)(b, ok, shape, nshell) for b in data.to_delayed().ravel()]
        sums = sum(dsa.from_delayed(p, shape=(1, 2, nshell), dtype=np.float64)[0] for p in parts)
    cov = sums[0] / np.where(sums[1] > 0, sums[1], np.nan)
    corr = xr.DataArray(cov / cov[0], dims=("separation",))
    coords = {"separation": ("separation", np.arange(nshell), {"long_name": "lag shell round(|r|)",
                                                               "units": "grid points"}),
              "pairs": ("separation", sums[1], {"long_name": "valid pairs summed over the samples"})}
    dist = _distance(da, dims, shape, nshell, shell_counts(radial_shells(shape), nshell))
    if dist is not None:
        coords["distance"] = ("separation", dist[0], {"long_name": "physical separation", "units": dist[1]})
    corr = corr.assign_coords(coords)
    corr.name = "correlation"
    corr.attrs = {"long_name": f"two-point correlation C(r)/C(0) of {da.name or 'field'}", "units": "1",
                  "estimator": "masked: sum m m' a a' / sum m m'", "field_dims": list(map(str, dims))}
    return corr
