"""Shared helpers of :mod:`sciencegen.analysis`: dim checks, lazy chunking and radial shells."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np
import xarray as xr

__all__ = [
    "as_dims", "check_dims", "is_lazy", "other_dims", "radial_shells", "rfft_weights", "shell_counts", "shell_reduce",
    "single_chunk", "squared_units",
]

Dims = str | Sequence[Hashable]


def as_dims(dims: Dims | None) -> tuple[Hashable, ...]:
    """Normalise a dim name or a sequence of names to a tuple (``None`` gives ``()``).

    Parameters
    ----------
    dims : str or sequence of str or None
        One dim name or several.

    Returns
    -------
    tuple
        The names, in order.
    """
    if dims is None:
        return ()
    if isinstance(dims, str):
        return (dims,)
    return tuple(dims)


def check_dims(obj: xr.DataArray | xr.Dataset, dims: Dims | None, func: str, what: str = "dim") -> tuple[Hashable, ...]:
    """Check that every name in ``dims`` is a dim of ``obj``; return them as a tuple.

    Parameters
    ----------
    obj : xarray.DataArray or xarray.Dataset
        The array whose dims are checked.
    dims : str or sequence of str or None
        The names to check.
    func : str
        Name of the calling function, used in the error message.
    what : str, optional
        What the names are (``"dim"``, ``"member dim"``, …), used in the error message.

    Returns
    -------
    tuple
        ``dims`` as a tuple.

    Raises
    ------
    ValueError
        One line naming the missing dims and the dims the array has, or on repeated names.
    """
    dims = as_dims(dims)
    missing = [d for d in dims if d not in obj.dims]
    if missing:
        raise ValueError(f"{func}: {what}(s) {missing} not in the array dims {tuple(obj.dims)}")
    if len(set(dims)) != len(dims):
        raise ValueError(f"{func}: repeated {what} in {list(dims)}")
    return dims


def other_dims(obj: xr.DataArray, dims: Iterable[Hashable]) -> tuple[Hashable, ...]:
    """Dims of ``obj`` not in ``dims``, in the array's order.

    Parameters
    ----------
    obj : xarray.DataArray
        The array.
    dims : iterable of str
        The dims to leave out.

    Returns
    -------
    tuple
        The remaining dims.
    """
    dims = set(dims)
    return tuple(d for d in obj.dims if d not in dims)


def is_lazy(obj: xr.DataArray) -> bool:
    """Whether ``obj`` is backed by a dask array (or another chunked array).

    Parameters
    ----------
    obj : xarray.DataArray
        The array.

    Returns
    -------
    bool
        ``True`` when the data is chunked (nothing computed yet).
    """
    return obj.chunks is not None


def single_chunk(obj: xr.DataArray, dims: Iterable[Hashable]) -> xr.DataArray:
    """Rechunk a dask-backed array so that each of ``dims`` is one chunk (a no-op for numpy data).

    Parameters
    ----------
    obj : xarray.DataArray
        The array.
    dims : iterable of str
        Core dims of a per-chunk computation (field dims of an FFT, the member dim of a score).

    Returns
    -------
    xarray.DataArray
        The same values; other dims keep their chunks.
    """
    if not is_lazy(obj):
        return obj
    return obj.chunk({d: -1 for d in dims})


def radial_shells(shape: Sequence[int], rfft: bool = False) -> np.ndarray:
    """Integer shell index ``round(|k|)`` of every point of an FFT grid.

    Each axis uses the integer wavenumbers (or lags) ``np.fft.fftfreq(n, 1/n)``, i.e. multiples of the
    fundamental ``2π/L`` of that axis, so ``|k| = sqrt(sum_i k_i²)``. ``|k|²`` is an integer, so ``|k|`` is
    never half-integer and the rounding has no ties.

    Parameters
    ----------
    shape : sequence of int
        Grid shape (1, 2 or 3 axes, any sizes).
    rfft : bool, optional
        The half grid of ``np.fft.rfftn`` (last axis ``0..n//2``) instead of the full grid.

    Returns
    -------
    numpy.ndarray
        Integer array of the grid's shape (or rfft shape).
    """
    axes = [np.fft.fftfreq(n, 1.0 / n) for n in shape]
    if rfft:
        axes[-1] = np.arange(shape[-1] // 2 + 1, dtype=np.float64)
    grids = np.meshgrid(*axes, indexing="ij")
    k2 = sum(g * g for g in grids)
    return np.rint(np.sqrt(k2)).astype(np.int64)


def rfft_weights(shape: Sequence[int]) -> np.ndarray:
    """Multiplicity of each ``rfftn`` mode in the full Hermitian-symmetric spectrum of a real field.

    Parameters
    ----------
    shape : sequence of int
        Grid shape of the real field.

    Returns
    -------
    numpy.ndarray
        Weights (1 or 2) broadcastable along the last rfft axis, shape ``(n//2 + 1,)``.
    """
    n = shape[-1]
    w = np.full(n // 2 + 1, 2.0)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    return w


def shell_reduce(values: np.ndarray, shells: np.ndarray, nshell: int, ndim: int) -> np.ndarray:
    """Sum ``values`` over radial shells, batched over leading axes.

    Parameters
    ----------
    values : numpy.ndarray
        ``(..., *grid)`` values; the last ``ndim`` axes form the grid of ``shells``.
    shells : numpy.ndarray
        Integer shell index per grid point.
    nshell : int
        Number of shells returned (``0..nshell-1``); points of larger shells are dropped.
    ndim : int
        Number of grid axes.

    Returns
    -------
    numpy.ndarray
        ``(..., nshell)`` shell sums (zero for an empty shell).
    """
    lead = values.shape[: values.ndim - ndim]
    flat = values.reshape((-1, shells.size))
    s = shells.ravel()
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    present, starts = np.unique(s_sorted, return_index=True)
    keep = present < nshell
    out = np.zeros((flat.shape[0], nshell), dtype=np.float64)
    if flat.shape[0] and keep.any():
        sums = np.add.reduceat(flat[:, order], starts, axis=1)
        out[:, present[keep]] = sums[:, keep]
    return out.reshape(lead + (nshell,))


def shell_counts(shells: np.ndarray, nshell: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Number of grid points (optionally weighted) in each shell ``0..nshell-1``.

    Parameters
    ----------
    shells : numpy.ndarray
        Integer shell index per grid point.
    nshell : int
        Number of shells.
    weights : numpy.ndarray, optional
        Multiplicity per point (broadcast against ``shells``).

    Returns
    -------
    numpy.ndarray
        Integer counts per shell.
    """
    w = None if weights is None else np.broadcast_to(weights, shells.shape).ravel()
    c = np.bincount(shells.ravel(), weights=w, minlength=nshell)[:nshell]
    return np.rint(c).astype(np.int64)


def squared_units(units: str | None) -> str:
    """Units of a squared quantity: ``"m"`` gives ``"m^2"``, ``"m s-1"`` gives ``"(m s-1)^2"``.

    Parameters
    ----------
    units : str or None
        Units of the field (``None`` or empty when unknown).

    Returns
    -------
    str
        Units of its square; empty when unknown.
    """
    if not units:
        return ""
    u = str(units).strip()
    if u == "1":
        return "1"
    simple = u.replace("_", "").isalnum()
    return f"{u}^2" if simple else f"({u})^2"
