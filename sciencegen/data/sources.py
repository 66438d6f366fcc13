"""Dataset sources: what ``conf/dataset/*.yaml`` instantiates (Hydra ``_target_``).

A source knows how to produce a lazy :class:`xarray.Dataset` and its
:class:`~sciencegen.data.fields.FieldSpec`; :func:`~sciencegen.data.store.write_prepared`
turns that into a prepared store. User data (:class:`NetCDFSource`, :class:`ZarrSource`)
live here; generated datasets (``grf``, ``kolmogorov``) live in :mod:`sciencegen.physics`.
To add a dataset, subclass :class:`FieldSource` and point a ``conf/dataset/NAME.yaml`` at it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import xarray as xr

from .fields import (
    NONFINITE_POLICIES,
    DataError,
    FieldSpec,
    apply_selection,
    choose_chunks,
    open_user_data,
    resolve_spec,
)

__all__ = ["FieldSource", "NetCDFSource", "ZarrSource"]


class FieldSource:
    """Base class of dataset sources.

    Parameters
    ----------
    name
        Dataset name (recorded in the store and used for the default store name).
    nonfinite
        NaN/Inf policy: ``error``, ``mask`` or ``drop``.
    """

    #: generated data are checked for NaN/Inf after writing instead of before
    generated: bool = False
    #: inputs larger than this many GB are refused before anything is read (``None``: no limit)
    max_gb: float | None = None
    #: further variables to keep beside the dataset's (a conditioning's inputs and static variables); set by
    #: :func:`~sciencegen.data.prepare.make_source`; a source that has them keeps them in :meth:`open`
    keep: tuple[str, ...] = ()

    def __init__(self, name: str, nonfinite: str = "error"):
        if nonfinite not in NONFINITE_POLICIES:
            raise DataError(f"dataset.nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {nonfinite!r}")
        self.name = str(name)
        self.nonfinite = nonfinite

    def open(self, progress: bool = False) -> tuple[xr.Dataset, FieldSpec, str]:
        """Lazy dataset, its spec, and a label naming it in messages."""
        raise NotImplementedError

    def target(self) -> Any:
        """The analytic law of the data (with an exact denoiser), or ``None``."""
        return None

    def attrs(self) -> dict[str, Any]:
        """Extra root attributes for the store (generator parameters)."""
        return {}

    def chunks(self) -> Mapping[str, int] | None:
        """Preferred chunks along the sample dims (``None``: by size)."""
        return None


class _UserSource(FieldSource):
    kind = "netcdf"

    def __init__(self, path: Any = None, variables: Sequence[str] | str | None = None,
                 sample_dims: Sequence[str] | str | None = None, field_dims: Sequence[str] | None = None,
                 select: Mapping[str, Any] | None = None, periodic: Mapping[str, bool] | None = None,
                 engine: str | None = None, nonfinite: str = "error", name: str | None = None,
                 max_gb: float | None = 64.0):
        super().__init__(name or self.kind, nonfinite)
        if path is None or path == "" or path == "???":
            raise DataError(f"dataset.path is required for dataset={self.kind}")
        if max_gb is not None and not float(max_gb) > 0:
            raise DataError(f"dataset.max_gb must be a positive number of GB or null (no limit), got {max_gb!r}")
        self.max_gb = None if max_gb is None else float(max_gb)
        self.path, self.variables, self.sample_dims, self.field_dims = path, variables, sample_dims, field_dims
        self.select, self.periodic, self.engine = select, periodic, engine

    def open(self, progress: bool = False) -> tuple[xr.Dataset, FieldSpec, str]:
        """Open lazily, select, and check variables and dims against the data."""
        ds, label = open_user_data(self.path, self.kind, self.engine)
        ds = apply_selection(ds, self.select, label)
        spec = resolve_spec(ds, self.variables, self.sample_dims, self.field_dims, self.periodic, label)
        # Dask chunks of bounded size along the sample dims, so no task ever reads a whole variable
        itemsize = max(ds[v].dtype.itemsize for v in spec.variables)
        extra = [v for v in self.keep if v in ds.data_vars and v not in spec.variables]
        ds = ds[[*spec.variables, *extra]].chunk(choose_chunks(ds, spec, 8.0, itemsize))
        return ds, spec, label


class NetCDFSource(_UserSource):
    """A user netCDF file, a glob of files, or a list of them (combined by coordinates).

    Parameters
    ----------
    path
        File, glob pattern (e.g. ``'era/*.nc'``) or list of them.
    variables
        Variables to keep; they become channels, in this order.
    sample_dims
        Dims that index samples (e.g. ``[time]`` or ``[trajectory, time]``).
    field_dims
        Dims of one field; default: every other dim of the variables.
    select
        Label selection before anything else: ``{dim: value | [values] | {start:, stop:}}``.
    periodic
        ``{dim: bool}``; default: longitude spanning 360 degrees is periodic, nothing else.
    engine
        xarray backend engine (default: xarray's choice).
    nonfinite
        ``error`` (default), ``mask`` or ``drop``.
    max_gb
        Refuse, before reading anything, selected variables larger than this many GB in the file (``None``: no
        limit). Opening stays lazy and cheap; the size is checked when the data are about to be read.
    """

    kind = "netcdf"


class ZarrSource(_UserSource):
    """A user Zarr store (any Zarr format xarray reads); same options as :class:`NetCDFSource`."""

    kind = "zarr"
