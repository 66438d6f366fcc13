"""Spectra along one dim, row by row: the zonal spectrum of a latitude-longitude field, by latitude band.

On the sphere the 2-D FFT of the grid treats latitude as periodic and mixes scales (a degree of longitude is
111 km at the equator, 0 at the pole). The zonal spectrum instead transforms along longitude only, one latitude
row at a time, and averages the rows' power with area weights ``cos(latitude)`` over latitude bands. It is
also how a masked field keeps a spectrum: only *complete* rows (every point valid) are transformed.

Conventions: the DFT along the dim is orthonormal and the power of wavenumber ``m`` counts both ``±m``
(``P(m) = c_m |F_m|²`` with ``c_m = 2`` except ``m = 0`` and the Nyquist wavenumber), so ``sum_m P(m) = sum_λ
x(λ)²`` per row (Parseval). A row that is not periodic (a regional longitude box) is multiplied by a Hann window
scaled to mean square 1 before the transform (``attrs["window"]``), which keeps the edge discontinuity from
leaking power to every wavenumber.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import dask.array as dsa
import numpy as np
import xarray as xr

from ._common import as_dims, check_dims, is_lazy, rfft_weights, squared_units

__all__ = ["LATITUDE_BANDS", "latitude_bands", "row_spectrum"]

#: the latitude bands of the zonal spectra: name -> (lowest, highest) absolute latitude in degrees
LATITUDE_BANDS = {"tropics": (0.0, 30.0), "midlatitudes": (30.0, 60.0), "high latitudes": (60.0, 90.0)}


def latitude_bands(lat: xr.DataArray) -> dict[str, xr.DataArray]:
    """Boolean row selections of the whole grid and of each band of :data:`LATITUDE_BANDS` (``|lat|`` in
    ``[low, high)``, the last band closed).

    Parameters
    ----------
    lat : xarray.DataArray
        The latitude coordinate (degrees).

    Returns
    -------
    dict
        ``{"whole": all rows, "tropics": ..., "midlatitudes": ..., "high latitudes": ...}``.
    """
    a = np.abs(lat)
    out = {"whole": xr.ones_like(lat, dtype=bool)}
    for name, (lo, hi) in LATITUDE_BANDS.items():
        out[name] = (a >= lo) & ((a < hi) if hi < 90.0 else (a <= hi))
    return out


def _window(n: int, periodic: bool) -> np.ndarray:
    """No window for a periodic row; a Hann window of mean square 1 otherwise."""
    if periodic:
        return np.ones(n)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * (np.arange(n) + 0.5) / n)
    return w / np.sqrt(np.mean(w * w))


def _row_power_np(x: np.ndarray, rows: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Per block ``(b, R, n)``: sums over ``b`` of the power of the rows ``rows`` that are finite, and counts.

    Returns ``(1, len(rows), n//2 + 2)``: the power sums per wavenumber, then the number of samples counted.
    """
    n = x.shape[-1]
    sel = np.asarray(x, dtype=np.float64)[:, rows, :]
    ok = np.isfinite(sel).all(axis=-1)
    f = np.fft.rfft(np.where(ok[..., None], sel, 0.0) * window, axis=-1, norm="ortho")
    p = (f.real**2 + f.imag**2) * rfft_weights((n,))
    out = np.concatenate([p.sum(axis=0), ok.sum(axis=0)[:, None].astype(np.float64)], axis=-1)
    return out[None]


def _row_sums(x: xr.DataArray, sample: tuple[Hashable, ...], rows_dims: tuple[Hashable, ...], dim: Hashable,
              rows: np.ndarray, window: np.ndarray) -> np.ndarray | dsa.Array:
    """Power sums and counts of the selected rows over every sample (a dask sum of per-chunk sums)."""
    x = x.transpose(*sample, *rows_dims, dim)
    n = int(x.sizes[dim])
    nrow = int(np.prod([x.sizes[d] for d in rows_dims])) if rows_dims else 1
    data = x.data
    lead = int(np.prod([x.sizes[d] for d in sample])) if sample else 1
    if not is_lazy(x):
        return _row_power_np(np.asarray(data).reshape(lead, nrow, n), rows, window)[0]
    if len(sample) != 1:
        data = data.reshape((lead, nrow, n))
    else:
        data = data.rechunk({i: -1 for i in range(1, data.ndim)}).reshape((lead, nrow, n))
    blocks = data.map_blocks(_row_power_np, rows, window, chunks=((1,) * len(data.chunks[0]), (rows.size,),
                                                                  (n // 2 + 2,)),
                             dtype=np.float64, meta=np.empty((0, 0, 0), dtype=np.float64))
    return blocks.sum(axis=0)


def _on_rows(a: xr.DataArray, template: xr.DataArray) -> xr.DataArray:
    """``a`` (over some of the row dims) broadcast over all of them, in the template's order."""
    a = a.drop_vars([c for c in a.coords if c not in a.dims]) if a.coords else a
    plain = xr.DataArray(np.asarray(a.values), dims=a.dims)
    return plain.broadcast_like(template).transpose(*template.dims)


# Zonal spectra by latitude band (FFT along longitude per row, area-weighted), e.g. Boer & Shepherd 1983 (JAS 40).
def row_spectrum(da: xr.DataArray, dim: Hashable, dims: str | Sequence[Hashable],
                 row_weights: xr.DataArray | None = None, valid: xr.DataArray | None = None, periodic: bool = True,
                 bands: Mapping[str, xr.DataArray] | None = None, spacing: float | None = None) -> xr.DataArray:
    """Power spectrum along ``dim``, row by row, averaged over samples and over the complete rows of each band.

    ``P_band(m) = sum_r w_r Pbar_r(m) / sum_r w_r`` over the rows ``r`` of the band that are complete (every
    point valid in ``valid`` and finite), ``Pbar_r`` the row's power averaged over the samples in which it is
    finite, ``w_r`` its weight (``cos(latitude)`` for zonal spectra).

    Parameters
    ----------
    da : xarray.DataArray
        Fields, numpy- or dask-backed; every dim not in ``dims`` is a sample dim.
    dim : str
        The dim transformed (longitude).
    dims : str or sequence of str
        The field dims (``dim`` and the row dims, e.g. ``("lat", "lon")``).
    row_weights : xarray.DataArray, optional
        Weight per row over the row dims (default 1).
    valid : xarray.DataArray, optional
        Boolean validity over the field dims (default: all valid); rows with an invalid point are left out.
    periodic : bool, optional
        The rows are periodic (no window); ``False``: a Hann window (see the module notes).
    bands : mapping of str to xarray.DataArray, optional
        Boolean row selections over the row dims (default ``{"whole": all rows}``).
    spacing : float, optional
        Grid spacing along ``dim`` in degrees of longitude: the wavenumber is then labelled a zonal wavenumber in
        cycles per ``n · spacing`` degrees (per 360 degrees for a periodic longitude); without it, in cycles per
        row length.

    Returns
    -------
    xarray.DataArray
        Over ``(band, wavenumber)`` (``m = 0..n//2``, with ``long_name`` and ``units``), with coordinate ``rows``
        (complete rows per band; a band without one is NaN), attributes ``long_name``, ``units``, ``window``,
        ``rows_used``.

    Raises
    ------
    ValueError
        When a dim is missing or ``dim`` is not a field dim.
    """
    dims = check_dims(da, as_dims(dims), "row_spectrum")
    if dim not in dims:
        raise ValueError(f"row_spectrum: dim {dim!r} is not one of the field dims {list(dims)}")
    rows_dims = tuple(d for d in dims if d != dim)
    sample = tuple(d for d in da.dims if d not in dims)
    shape_rows = tuple(int(da.sizes[d]) for d in rows_dims)
    n = int(da.sizes[dim])
    template = xr.DataArray(np.zeros(shape_rows), dims=rows_dims)
    ok = np.ones(shape_rows + (n,), dtype=bool) if valid is None else \
        np.asarray(valid.transpose(*rows_dims, dim).values, dtype=bool)
    complete = ok.reshape(-1, n).all(axis=-1)
    rows = np.flatnonzero(complete)
    w_all = np.ones(complete.size) if row_weights is None else \
        np.asarray(_on_rows(row_weights, template).values, dtype=np.float64).ravel()
    window = _window(n, periodic)
    sums = _row_sums(da, sample, rows_dims, dim, rows, window) if rows.size else np.zeros((0, n // 2 + 2))
    counts = sums[:, -1]
    seen = counts > 0
    mean = sums[:, :-1] / np.where(seen, counts, 1.0)[:, None]
    bands = {"whole": None} if bands is None else dict(bands)
    out, nrows = [], []
    for sel in bands.values():
        inband = np.ones(complete.size, bool) if sel is None else \
            np.asarray(_on_rows(sel, template).values, dtype=bool).ravel()
        w = np.where(seen, (w_all * inband)[rows], 0.0)  # lazy with dask input: no data-dependent shapes
        nrows.append((w > 0).sum())
        total = w.sum()
        out.append(np.where(total > 0, (w[:, None] * mean).sum(0) / np.where(total > 0, total, 1.0), np.nan))
    m = np.arange(n // 2 + 1)
    k = m
    kattrs = ({"long_name": "zonal wavenumber", "units": f"cycles per {n * spacing:g} degrees of longitude"}
              if spacing else {"long_name": f"wavenumber along {dim}", "units": f"cycles per {n} grid points"})
    stack = dsa.stack if any(isinstance(o, dsa.Array) for o in out) else np.stack
    res = xr.DataArray(stack(out), dims=("band", "wavenumber"), coords={
        "band": ("band", list(bands)), "wavenumber": ("wavenumber", k, kattrs),
        })
    res = res.assign_coords(rows=("band", stack(nrows), {"long_name": "complete rows averaged"}))
    res.name = f"{da.name}_row_spectrum" if da.name is not None else "row_spectrum"
    res.attrs = {"long_name": f"{'zonal' if spacing else 'row'} power spectrum of {da.name or 'field'} "
                              "(power per wavenumber, both signs)",
                 "units": squared_units(da.attrs.get("units")),
                 "window": "none (periodic rows)" if periodic else "Hann, mean square 1 (rows not periodic)",
                 "rows_used": int(rows.size), "rows_total": int(complete.size), "dim": str(dim)}
    return res
