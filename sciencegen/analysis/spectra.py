"""Isotropic (radially binned) spectra of periodic fields, lazily per chunk.

Conventions
-----------
* The DFT is orthonormal (``norm="ortho"``), so ``sum_k |F_k|² = sum_x |x|²`` (Parseval) for every field.
* Wavenumbers along each field dim are the integers ``np.fft.fftfreq(n, 1/n)``, i.e. multiples of that dim's
  fundamental ``2π/L``; ``|k| = sqrt(sum_i k_i²)`` and shell ``k`` holds the modes with ``round(|k|) = k``.
  For a 1-D field the shell is ``|k|``. On a non-square grid each dim is measured in its own fundamental.
* By default every non-empty shell ``0..max round(|k|)`` is returned, including the "corner" shells past the
  Nyquist wavenumber of the smallest dim ``floor(min(n)/2)``; those are only partly covered by the grid
  (not isotropic averages) but keeping them makes the Parseval identity exact. The boolean coordinate
  ``complete`` marks the shells ``k <= floor(min(n)/2)``; ``truncate=True`` returns only those.
* :func:`isotropic_spectrum` is the *mean power per mode* in a shell (the per-mode variance of a Gaussian random
  field), while :func:`energy_spectrum` and :func:`enstrophy_spectrum` are *shell sums* (the physicists'
  ``E(k)`` whose sum over ``k`` is the total).
* Fields are assumed periodic along ``dims``; non-periodic fields are not windowed or detrended, so their
  spectra carry the usual edge-discontinuity leakage. NaNs propagate (a field holding one gives NaNs).

All functions take xarray objects, numpy- or dask-backed; with dask the field dims are rechunked to one chunk
each (other dims keep their chunks) and the FFT runs per chunk through ``xr.apply_ufunc(dask="parallelized")``,
followed by a streaming mean, so the results stay lazy and memory is bounded by a chunk.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import xarray as xr

from ._common import (
    as_dims,
    check_dims,
    other_dims,
    radial_shells,
    rfft_weights,
    shell_counts,
    shell_reduce,
    single_chunk,
    squared_units,
)

# the radial shells are public here too: the evaluation's exact spectrum bins the law's modes the same way
__all__ = ["energy_spectrum", "enstrophy_spectrum", "isotropic_spectrum", "radial_shells", "shell_counts",
           "shell_reduce"]


def _nshell(shape: Sequence[int], truncate: bool) -> int:
    """Number of shells returned: all non-empty ones, or ``0..floor(min(n)/2)`` when truncating."""
    if truncate:
        return min(shape) // 2 + 1
    return int(radial_shells(shape).max()) + 1


def _power_shell_sums_np(x: np.ndarray, shape: tuple[int, ...], nshell: int) -> np.ndarray:
    """Shell sums of ``|FFT_ortho(x)|²`` over the last ``len(shape)`` axes of a numpy block."""
    ndim = len(shape)
    lead = x.shape[: x.ndim - ndim]
    if x.size == 0:
        return np.zeros(lead + (nshell,))
    axes = tuple(range(-ndim, 0))
    if np.iscomplexobj(x):
        f = np.fft.fftn(x.astype(np.complex128, copy=False), axes=axes, norm="ortho")
        p = f.real**2 + f.imag**2
        shells = radial_shells(shape)
    else:
        # real field: half spectrum, the modes with a conjugate twin counted twice
        f = np.fft.rfftn(x.astype(np.float64, copy=False), axes=axes, norm="ortho")
        p = (f.real**2 + f.imag**2) * rfft_weights(shape)
        shells = radial_shells(shape, rfft=True)
    return shell_reduce(p, shells, nshell, ndim)


def _power_shell_sums(da: xr.DataArray, dims: tuple[Hashable, ...], truncate: bool, func: str) -> xr.DataArray:
    """Per-field shell sums of ``|F_k|²`` over ``wavenumber``, with ``modes`` and ``complete`` coordinates."""
    if not dims:
        raise ValueError(f"{func}: dims must name at least one field dim")
    if len(dims) > 3:
        raise ValueError(f"{func}: at most 3 field dims are supported, got {list(dims)}")
    shape = tuple(int(da.sizes[d]) for d in dims)
    nshell = _nshell(shape, truncate)
    da = single_chunk(da, dims)
    out = xr.apply_ufunc(
        _power_shell_sums_np,
        da,
        kwargs={"shape": shape, "nshell": nshell},
        input_core_dims=[list(dims)],
        output_core_dims=[["wavenumber"]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"wavenumber": nshell}},
        keep_attrs=False,
    )
    k = np.arange(nshell)
    modes = shell_counts(radial_shells(shape), nshell)
    return out.assign_coords(
        wavenumber=("wavenumber", k, {"long_name": "wavenumber shell round(|k|)", "units": "2π/L"}),
        modes=("wavenumber", modes, {"long_name": "number of DFT modes in the shell"}),
        complete=("wavenumber", k <= min(shape) // 2,
                  {"long_name": "shell within the Nyquist wavenumber of the smallest field dim"}),
    )


def _finish(out: xr.DataArray, average: bool, kept: tuple[Hashable, ...]) -> xr.DataArray:
    """Mean over every non-field dim when ``average``."""
    return out.mean(kept) if (average and kept) else out


# Isotropic power spectrum: radially averaged periodogram, e.g. Durran et al. 2017 (MWR 145, 3901).
def isotropic_spectrum(da: xr.DataArray, dims: str | Sequence[Hashable] = ("y", "x"), average: bool = True,
                       truncate: bool = False) -> xr.DataArray:
    """Isotropic power spectrum: mean power per DFT mode in integer wavenumber shells.

    ``P(k) = mean_{round(|k'|) = k} |F_{k'}|²`` with the orthonormal DFT over ``dims``, averaged over all
    other dims (members, time, …). For a Gaussian random field this estimates the per-mode variance; Parseval
    gives ``sum_k modes(k)·P(k) = sum_x |x|²`` per field (exactly, with the default ``truncate=False``).

    Parameters
    ----------
    da : xarray.DataArray
        Periodic field(s), numpy- or dask-backed; real or complex.
    dims : str or sequence of str, optional
        The 1, 2 or 3 field dims transformed (default ``("y", "x")``).
    average : bool, optional
        Average over every dim not in ``dims`` (default). ``False`` keeps them.
    truncate : bool, optional
        Return only the shells ``k <= floor(min(n)/2)`` (up to the Nyquist wavenumber of the smallest dim).
        The default keeps every non-empty shell so that Parseval is exact; see the module notes.

    Returns
    -------
    xarray.DataArray
        Over ``wavenumber`` (integers, in units of each dim's fundamental ``2π/L``; plus the kept dims when
        ``average=False``), with coordinates ``modes`` (modes per shell) and ``complete`` and attributes
        ``long_name`` and ``units`` (units of ``da`` squared). Lazy for dask input.

    Raises
    ------
    ValueError
        When a dim is missing from ``da`` or more than 3 dims are given.
    """
    dims = check_dims(da, dims, "isotropic_spectrum")
    sums = _power_shell_sums(da, dims, truncate, "isotropic_spectrum")
    power = sums / sums["modes"].where(sums["modes"] > 0)
    power = _finish(power, average, other_dims(da, dims))
    power.name = f"{da.name}_spectrum" if da.name is not None else "spectrum"
    power.attrs = {
        "long_name": f"isotropic power spectrum (mean power per mode) of {da.name or 'field'}",
        "units": squared_units(da.attrs.get("units")),
        "normalisation": "orthonormal DFT; sum_k modes*P = sum_x |x|^2",
        "field_dims": list(map(str, dims)),
    }
    return power


# Kinetic energy spectrum E(k) as a shell sum (Kolmogorov/Kraichnan convention), e.g. Durran et al. 2017.
def energy_spectrum(u: xr.DataArray, v: xr.DataArray, dims: str | Sequence[Hashable] = ("y", "x"),
                    w: xr.DataArray | None = None, average: bool = True, truncate: bool = False) -> xr.DataArray:
    """Kinetic energy spectrum ``E(k) = sum_{round(|k'|)=k} ½(|û|² + |v̂|² [+ |ŵ|²])`` (shell sum).

    A shell *sum* (physicists' convention), unlike the per-mode mean of :func:`isotropic_spectrum`. With the
    orthonormal DFT, Parseval gives ``sum_k E(k) = sum_x ½(u² + v² [+ w²]) = N · mean kinetic energy``
    per field (``N`` grid points), exactly with ``truncate=False``.

    Parameters
    ----------
    u, v : xarray.DataArray
        Velocity components on the same grid, numpy- or dask-backed.
    dims : str or sequence of str, optional
        Field dims (default ``("y", "x")``).
    w : xarray.DataArray, optional
        Third velocity component (3-D flows).
    average : bool, optional
        Average over every dim not in ``dims`` (default).
    truncate : bool, optional
        Only shells ``k <= floor(min(n)/2)``.

    Returns
    -------
    xarray.DataArray
        ``E`` over ``wavenumber`` with ``modes``/``complete`` coordinates, ``long_name`` and ``units``.

    Raises
    ------
    ValueError
        When a dim is missing or the components' field shapes differ.
    """
    comps = [u, v] + ([w] if w is not None else [])
    dims = as_dims(dims)
    for c in comps:
        check_dims(c, dims, "energy_spectrum")
    shapes = {tuple(int(c.sizes[d]) for d in dims) for c in comps}
    if len(shapes) != 1:
        raise ValueError(f"energy_spectrum: velocity components have different field shapes {sorted(shapes)}")
    sums = [_power_shell_sums(c, dims, truncate, "energy_spectrum") for c in comps]
    e = 0.5 * sum(sums[1:], sums[0])
    e = _finish(e, average, other_dims(e, ("wavenumber",)))
    e.name = "energy_spectrum"
    e.attrs = {
        "long_name": "kinetic energy spectrum (shell sum of 0.5|u_k|^2)",
        "units": squared_units(u.attrs.get("units")),
        "normalisation": "orthonormal DFT; sum_k E = sum_x 0.5|u|^2 = N * mean kinetic energy",
        "field_dims": list(map(str, dims)),
    }
    return e


# Enstrophy spectrum Z(k) as a shell sum (Kraichnan 1967 2-D turbulence convention).
def enstrophy_spectrum(vorticity: xr.DataArray, dims: str | Sequence[Hashable] = ("y", "x"), average: bool = True,
                       truncate: bool = False) -> xr.DataArray:
    """Enstrophy spectrum ``Z(k) = sum_{round(|k'|)=k} ½|ω̂|²`` (shell sum).

    A shell *sum*, so ``sum_k Z(k) = sum_x ½ω² = N · mean enstrophy`` per field (orthonormal DFT).

    Parameters
    ----------
    vorticity : xarray.DataArray
        Vorticity field(s), numpy- or dask-backed.
    dims : str or sequence of str, optional
        Field dims (default ``("y", "x")``).
    average : bool, optional
        Average over every dim not in ``dims`` (default).
    truncate : bool, optional
        Only shells ``k <= floor(min(n)/2)``.

    Returns
    -------
    xarray.DataArray
        ``Z`` over ``wavenumber`` with ``modes``/``complete`` coordinates, ``long_name`` and ``units``.

    Raises
    ------
    ValueError
        When a dim is missing.
    """
    dims = check_dims(vorticity, dims, "enstrophy_spectrum")
    z = 0.5 * _power_shell_sums(vorticity, dims, truncate, "enstrophy_spectrum")
    z = _finish(z, average, other_dims(vorticity, dims))
    z.name = "enstrophy_spectrum"
    z.attrs = {
        "long_name": "enstrophy spectrum (shell sum of 0.5|omega_k|^2)",
        "units": squared_units(vorticity.attrs.get("units")),
        "normalisation": "orthonormal DFT; sum_k Z = sum_x 0.5 omega^2",
        "field_dims": list(map(str, dims)),
    }
    return z
