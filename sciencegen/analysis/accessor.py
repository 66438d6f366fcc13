"""The ``.sciencegen`` xarray accessor (Dataset and DataArray), registered on import of this module.

Default field dims: the ``field_dims`` of the JSON attribute ``sciencegen_dataset`` (on the Dataset, or on the
DataArray's own attrs) restricted to the variable's dims, else the last two dims of the variable (the last one for
a 1-D variable). Sample dims are the variable's other dims.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from .correlation import spatial_correlation
from .moments import histogram, moments
from .spectra import isotropic_spectrum

__all__ = ["ScienceGenDataArrayAccessor", "ScienceGenDatasetAccessor", "default_field_dims"]

ATTR = "sciencegen_dataset"


def default_field_dims(da: xr.DataArray, attrs: Mapping[str, Any] | None = None) -> tuple[Hashable, ...]:
    """Field dims of a variable: ``field_dims`` from the ``sciencegen_dataset`` attribute, else its last two dims.

    Parameters
    ----------
    da : xarray.DataArray
        The variable.
    attrs : mapping, optional
        Attributes holding ``sciencegen_dataset`` (a JSON string or a mapping); ``da.attrs`` when omitted.

    Returns
    -------
    tuple
        The field dims present in ``da``, in the metadata's order; the last ``min(2, ndim)`` dims otherwise.

    Raises
    ------
    ValueError
        When the attribute is not valid JSON, or none of its field dims is a dim of ``da``.
    """
    meta = (da.attrs if attrs is None else attrs).get(ATTR)
    if meta is not None:
        try:
            meta = json.loads(meta) if isinstance(meta, str | bytes) else dict(meta)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{ATTR} attribute is not a JSON object: {e}") from None
        listed = meta.get("field_dims")
        if listed:
            dims = tuple(d for d in listed if d in da.dims)
            if not dims:
                raise ValueError(f"none of the field dims {listed} from {ATTR} is in the variable dims {da.dims}")
            return dims
    return tuple(da.dims[-2:])


class _Base:
    """Shared methods; subclasses define ``_get(var)`` returning the variable and its metadata attrs."""

    def _get(self, var: Hashable | None) -> tuple[xr.DataArray, Mapping[str, Any]]:  # pragma: no cover
        raise NotImplementedError

    def _dims(self, da: xr.DataArray, attrs: Mapping[str, Any], dims: str | Sequence[Hashable] | None):
        return default_field_dims(da, attrs) if dims is None else dims

    def field_dims(self, var: Hashable | None = None) -> tuple[Hashable, ...]:
        """Default field dims of a variable (see :func:`default_field_dims`).

        Parameters
        ----------
        var : str, optional
            Variable name (Dataset accessor only).

        Returns
        -------
        tuple
            The field dims.
        """
        da, attrs = self._get(var)
        return default_field_dims(da, attrs)

    def _spectrum(self, var, dims, **kwargs) -> xr.DataArray:
        da, attrs = self._get(var)
        return isotropic_spectrum(da, dims=self._dims(da, attrs, dims), **kwargs)

    def _moments(self, var, dims, **kwargs) -> xr.Dataset:
        da, attrs = self._get(var)
        if dims is None:
            field = set(default_field_dims(da, attrs))
            dims = tuple(d for d in da.dims if d not in field)
            if not dims:
                raise ValueError(f"moments: variable {da.name!r} has no sample dims besides its field dims; pass dims=")
        return moments(da, dims, **kwargs)

    def _histogram(self, var, bins, range, density) -> xr.DataArray:
        da, _ = self._get(var)
        return histogram(da, bins=bins, range=range, density=density)

    def _correlation(self, var, dims, **kwargs) -> xr.DataArray:
        da, attrs = self._get(var)
        return spatial_correlation(da, dims=self._dims(da, attrs, dims), **kwargs)


@xr.register_dataset_accessor("sciencegen")
class ScienceGenDatasetAccessor(_Base):
    """``ds.sciencegen``: analysis of one variable of a Dataset with default dims from its metadata.

    Parameters
    ----------
    ds : xarray.Dataset
        The dataset (its ``sciencegen_dataset`` attribute, if any, gives the default field dims).
    """

    def __init__(self, ds: xr.Dataset):
        self._obj = ds

    def _get(self, var: Hashable | None) -> tuple[xr.DataArray, Mapping[str, Any]]:
        if var is None:
            names = list(self._obj.data_vars)
            if len(names) != 1:
                raise ValueError(f"name the variable: the dataset has {len(names)} variables {names}")
            var = names[0]
        if var not in self._obj.data_vars:
            raise ValueError(f"variable {var!r} not in the dataset variables {list(self._obj.data_vars)}")
        return self._obj[var], self._obj.attrs

    def spectrum(self, var: Hashable | None = None, dims: str | Sequence[Hashable] | None = None,
                 **kwargs: Any) -> xr.DataArray:
        """Isotropic power spectrum of a variable (:func:`~sciencegen.analysis.isotropic_spectrum`).

        Parameters
        ----------
        var : str, optional
            Variable name (may be omitted when the dataset has one variable).
        dims : str or sequence of str, optional
            Field dims; from ``sciencegen_dataset`` ``field_dims``, else the variable's last two dims.
        **kwargs
            ``average``, ``truncate``.

        Returns
        -------
        xarray.DataArray
            The spectrum over ``wavenumber``.
        """
        return self._spectrum(var, dims, **kwargs)

    def moments(self, var: Hashable | None = None, dims: str | Sequence[Hashable] | None = None,
                **kwargs: Any) -> xr.Dataset:
        """Moment maps of a variable over its sample dims (:func:`~sciencegen.analysis.moments`).

        Parameters
        ----------
        var : str, optional
            Variable name.
        dims : str or sequence of str, optional
            Sample dims reduced over; by default every dim that is not a field dim.
        **kwargs
            ``ddof``.

        Returns
        -------
        xarray.Dataset
            ``mean``, ``std``, ``skewness``, ``kurtosis``, ``count`` maps.
        """
        return self._moments(var, dims, **kwargs)

    def histogram(self, var: Hashable | None = None, bins: int | Sequence[float] | np.ndarray = 64,
                  range: tuple[float, float] | None = None, density: bool = False) -> xr.DataArray:
        """Histogram of all values of a variable (:func:`~sciencegen.analysis.histogram`).

        Parameters
        ----------
        var : str, optional
            Variable name.
        bins : int or sequence of float, optional
            Number of bins or edges.
        range : (float, float), optional
            Histogram range (data min/max when omitted).
        density : bool, optional
            Density instead of counts.

        Returns
        -------
        xarray.DataArray
            Counts over ``bin``.
        """
        return self._histogram(var, bins, range, density)

    def correlation(self, var: Hashable | None = None, dims: str | Sequence[Hashable] | None = None,
                    **kwargs: Any) -> xr.DataArray:
        """Two-point spatial correlation of a variable (:func:`~sciencegen.analysis.spatial_correlation`).

        Parameters
        ----------
        var : str, optional
            Variable name.
        dims : str or sequence of str, optional
            Field dims; from ``sciencegen_dataset`` ``field_dims``, else the variable's last two dims.
        **kwargs
            ``max_lag``, ``center``, ``average``.

        Returns
        -------
        xarray.DataArray
            ``C(r)/C(0)`` over ``separation``.
        """
        return self._correlation(var, dims, **kwargs)


@xr.register_dataarray_accessor("sciencegen")
class ScienceGenDataArrayAccessor(_Base):
    """``da.sciencegen``: the same analyses on a DataArray (default dims from its own ``sciencegen_dataset`` attr).

    Parameters
    ----------
    da : xarray.DataArray
        The field(s).
    """

    def __init__(self, da: xr.DataArray):
        self._obj = da

    def _get(self, var: Hashable | None) -> tuple[xr.DataArray, Mapping[str, Any]]:
        if var is not None:
            raise TypeError("the DataArray accessor takes no variable name")
        return self._obj, self._obj.attrs

    def spectrum(self, dims: str | Sequence[Hashable] | None = None, **kwargs: Any) -> xr.DataArray:
        """Isotropic power spectrum (:func:`~sciencegen.analysis.isotropic_spectrum`).

        Parameters
        ----------
        dims : str or sequence of str, optional
            Field dims; from a ``sciencegen_dataset`` attribute, else the last two dims.
        **kwargs
            ``average``, ``truncate``.

        Returns
        -------
        xarray.DataArray
            The spectrum over ``wavenumber``.
        """
        return self._spectrum(None, dims, **kwargs)

    def moments(self, dims: str | Sequence[Hashable] | None = None, **kwargs: Any) -> xr.Dataset:
        """Moment maps over the sample dims (:func:`~sciencegen.analysis.moments`).

        Parameters
        ----------
        dims : str or sequence of str, optional
            Sample dims reduced over; by default every dim that is not a field dim.
        **kwargs
            ``ddof``.

        Returns
        -------
        xarray.Dataset
            ``mean``, ``std``, ``skewness``, ``kurtosis``, ``count`` maps.
        """
        return self._moments(None, dims, **kwargs)

    def histogram(self, bins: int | Sequence[float] | np.ndarray = 64, range: tuple[float, float] | None = None,
                  density: bool = False) -> xr.DataArray:
        """Histogram of all values (:func:`~sciencegen.analysis.histogram`).

        Parameters
        ----------
        bins : int or sequence of float, optional
            Number of bins or edges.
        range : (float, float), optional
            Histogram range (data min/max when omitted).
        density : bool, optional
            Density instead of counts.

        Returns
        -------
        xarray.DataArray
            Counts over ``bin``.
        """
        return self._histogram(None, bins, range, density)

    def correlation(self, dims: str | Sequence[Hashable] | None = None, **kwargs: Any) -> xr.DataArray:
        """Two-point spatial correlation (:func:`~sciencegen.analysis.spatial_correlation`).

        Parameters
        ----------
        dims : str or sequence of str, optional
            Field dims; from a ``sciencegen_dataset`` attribute, else the last two dims.
        **kwargs
            ``max_lag``, ``center``, ``average``.

        Returns
        -------
        xarray.DataArray
            ``C(r)/C(0)`` over ``separation``.
        """
        return self._correlation(None, dims, **kwargs)
