"""Fields on disk through xarray: open user netCDF/Zarr lazily, select, validate, compute statistics.

Everything here works on lazy (Dask-backed) :class:`xarray.Dataset` objects and
never loads a whole dataset into memory. Errors about the data are raised as
:class:`DataError`, whose message is one line naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from ..errors import SciencegenError

__all__ = [
    "DataError",
    "FieldSpec",
    "NONFINITE_POLICIES",
    "apply_selection",
    "choose_chunks",
    "compute_statistics",
    "detect_periodic",
    "expand_paths",
    "human_bytes",
    "nonfinite_report",
    "open_user_data",
    "progress_bar",
    "resolve_spec",
    "short_error",
    "store_bytes",
]

#: what to do with NaN/Inf values in user data
NONFINITE_POLICIES = ("error", "mask", "drop")


class DataError(SciencegenError, ValueError):
    """Bad input data or configuration; the message is a single line meant for the user."""


@dataclass(frozen=True)
class FieldSpec:
    """What a dataset is made of: its variables (channels) and which dims index samples and fields.

    Parameters
    ----------
    variables
        Data variables, in channel order.
    sample_dims
        Dims that index samples (e.g. ``("time",)`` or ``("trajectory", "time")``), outermost first.
    field_dims
        Dims of one field (e.g. ``("y", "x")`` or ``("level", "lat", "lon")``).
    periodic
        Whether each field dim is periodic (used by the model for circular padding).
    """

    variables: tuple[str, ...]
    sample_dims: tuple[str, ...]
    field_dims: tuple[str, ...]
    periodic: Mapping[str, bool] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (lists and plain dicts)."""
        return {
            "variables": list(self.variables),
            "sample_dims": list(self.sample_dims),
            "field_dims": list(self.field_dims),
            "periodic": {d: bool(self.periodic.get(d, False)) for d in self.field_dims},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FieldSpec:
        """Inverse of :meth:`as_dict`."""
        return cls(tuple(d["variables"]), tuple(d["sample_dims"]), tuple(d["field_dims"]), dict(d.get("periodic", {})))


def _as_tuple(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        out = tuple(str(v) for v in value)
    except TypeError:
        raise DataError(f"{what} must be a name or a list of names, got {value!r}") from None
    return out


def expand_paths(path: str | os.PathLike | Sequence[str | os.PathLike], kind: str) -> list[str]:
    """Expand a file, a glob or a list of them into existing paths (sorted per pattern).

    Raises
    ------
    DataError
        When a pattern matches nothing or a file does not exist.
    """
    patterns = [path] if isinstance(path, str | os.PathLike) else list(path)
    if not patterns:
        raise DataError(f"no {kind} path given (set dataset.path)")
    out: list[str] = []
    for pat in patterns:
        pat = os.path.expanduser(str(pat))
        if glob.has_magic(pat):
            hits = sorted(glob.glob(pat))
            if not hits:
                raise DataError(f"{pat}: no {kind} file matches this pattern")
            out.extend(hits)
        elif not os.path.exists(pat):
            raise DataError(f"{pat}: no such {kind} file or directory")
        else:
            out.append(pat)
    return out


def human_bytes(n: float) -> str:
    """``n`` bytes in decimal units: ``"512 B"``, ``"16.8 MB"``, ``"32.0 GB"``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def store_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk under a store (a directory tree)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, f))
    return total


def short_error(exc: BaseException) -> str:
    """One-line summary of an exception: ``"TypeName: first line of its message"``."""
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")


def open_user_data(path: Any, kind: str = "netcdf", engine: str | None = None) -> tuple[xr.Dataset, str]:
    """Open a user netCDF file / glob of files, or a Zarr store, lazily with Dask.

    Parameters
    ----------
    path
        File, glob pattern, or list of them (netCDF); a store path (Zarr).
    kind
        ``"netcdf"`` or ``"zarr"``.
    engine
        xarray backend engine for netCDF (default: xarray's choice).

    Returns
    -------
    dataset, label
        The lazy dataset (lazily indexed backend arrays; one Dask chunk per file for a glob) and a
        short label naming the source. Chunk it (:func:`choose_chunks`) before computing anything.
    """
    paths = expand_paths(path, kind)
    label = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} more files)"
    try:
        if kind == "zarr":
            if len(paths) != 1:
                raise DataError(f"{label}: a zarr dataset is one store, got {len(paths)} paths")
            ds = xr.open_zarr(paths[0], chunks=None)
        elif kind == "netcdf":
            if len(paths) == 1:
                ds = xr.open_dataset(paths[0], engine=engine, chunks=None)
            else:
                # the combine options spelled out (today's defaults, which xarray will change: a FutureWarning)
                ds = xr.open_mfdataset(paths, engine=engine, combine="by_coords", parallel=False, data_vars="all",
                                       coords="different", compat="no_conflicts", join="outer")
        else:
            raise DataError(f"unknown data kind {kind!r} (netcdf or zarr)")
    except DataError:
        raise
    except Exception as exc:  # corrupt or unreadable input: say which and why, in one line
        raise DataError(f"{label}: cannot open as {kind}: {short_error(exc)}") from exc
    return ds, label


def apply_selection(ds: xr.Dataset, select: Mapping[str, Any] | None, label: str) -> xr.Dataset:
    """Label-based selection ``{dim: value | [values] | {start:, stop:}}``; an empty result is an error."""
    if not select:
        return ds
    indexers: dict[str, Any] = {}
    for dim, value in select.items():
        if dim not in ds.dims:
            raise DataError(f"{label}: cannot select on unknown dim {dim!r} (dims: {', '.join(map(str, ds.dims))})")
        if isinstance(value, Mapping):
            unknown = set(value) - {"start", "stop"}
            if unknown:
                raise DataError(f"{label}: selection on {dim!r} takes start/stop, got {sorted(unknown)}")
            value = slice(value.get("start"), value.get("stop"))
        elif not isinstance(value, str) and isinstance(value, Sequence):
            value = list(value)
        indexers[dim] = value
    try:
        out = ds.sel(indexers)
    except Exception as exc:
        raise DataError(f"{label}: selection {dict(select)} failed: {short_error(exc)}") from exc
    for dim in indexers:
        if dim in out.dims and out.sizes[dim] == 0:
            raise DataError(f"{label}: the selection on {dim!r} is empty ({select[dim]!r} matches no value)")
    return out


def detect_periodic(ds: xr.Dataset, dim: str) -> bool:
    """A longitude-like dim with uniform spacing spanning 360 degrees is periodic; nothing else is by default."""
    if dim not in ds.coords or dim.lower() not in ("lon", "longitude", "x_lon"):
        return False
    c = np.asarray(ds[dim].values, dtype=float)
    if c.size < 3:
        return False
    d = np.diff(c)
    return bool(np.allclose(d, d[0], rtol=1e-4) and math.isclose(abs(d[0]) * c.size, 360.0, rel_tol=1e-3))


def resolve_spec(ds: xr.Dataset, variables: Any, sample_dims: Any, field_dims: Any = None,
                 periodic: Mapping[str, bool] | None = None, label: str = "dataset") -> FieldSpec:
    """Check the configured variables and dims against the data and complete what the data imply.

    Field dims default to each variable's dims minus the sample dims (in data order);
    all variables must share the same dims. Shapes always come from the data.
    """
    variables = _as_tuple(variables, "dataset.variables")
    sample_dims = _as_tuple(sample_dims, "dataset.sample_dims")
    if not variables:
        raise DataError(f"{label}: no variables selected (set dataset.variables)")
    if not sample_dims:
        raise DataError(f"{label}: no sample dims given (set dataset.sample_dims, e.g. [time])")
    for v in variables:
        if v not in ds.data_vars:
            avail = ", ".join(map(str, ds.data_vars)) or "none"
            raise DataError(f"{label}: variable {v!r} not found (available: {avail})")
        if not (np.issubdtype(ds[v].dtype, np.floating) or np.issubdtype(ds[v].dtype, np.integer)):
            raise DataError(f"{label}: variable {v!r} is not numeric (dtype {ds[v].dtype})")
    for d in sample_dims:
        if d not in ds.dims:
            raise DataError(f"{label}: unknown sample dim {d!r} (dims: {', '.join(map(str, ds.dims))})")
    first = ds[variables[0]].dims
    for v in variables:
        missing = [d for d in sample_dims if d not in ds[v].dims]
        if missing:
            raise DataError(f"{label}: variable {v!r} has no dim {missing[0]!r} (its dims: {', '.join(ds[v].dims)})")
        if set(ds[v].dims) != set(first):
            raise DataError(f"{label}: variables {variables[0]!r} {first} and {v!r} {ds[v].dims} have different dims; "
                            "multiple variables become channels and must share one grid")
    if field_dims is None or (not isinstance(field_dims, str) and len(field_dims) == 0):
        fdims = tuple(d for d in first if d not in sample_dims)
    else:
        fdims = _as_tuple(field_dims, "dataset.field_dims")
        for d in fdims:
            if d not in ds.dims:
                raise DataError(f"{label}: unknown field dim {d!r} (dims: {', '.join(map(str, ds.dims))})")
        extra = [d for d in first if d not in sample_dims and d not in fdims]
        if extra:
            raise DataError(f"{label}: dim {extra[0]!r} of {variables[0]!r} is neither a sample nor a field dim; "
                            "add it to one of them or select a single value with dataset.select")
    if set(fdims) & set(sample_dims):
        raise DataError(f"{label}: dims {sorted(set(fdims) & set(sample_dims))} are both sample and field dims")
    if not fdims:
        raise DataError(f"{label}: no field dims left after the sample dims {list(sample_dims)}")
    if len(fdims) > 3:
        raise DataError(f"{label}: fields may be 1-D, 2-D or 3-D, got dims {list(fdims)}")
    periodic = dict(periodic or {})
    for d in periodic:
        if d not in fdims:
            raise DataError(f"{label}: dataset.periodic names {d!r}, which is not a field dim {list(fdims)}")
    per = {d: bool(periodic[d]) if d in periodic else detect_periodic(ds, d) for d in fdims}
    for d in sample_dims + fdims:
        if ds.sizes[d] == 0:
            raise DataError(f"{label}: dim {d!r} is empty")
    return FieldSpec(variables, sample_dims, fdims, per)


def nonfinite_report(ds: xr.Dataset, spec: FieldSpec, progress: bool = False) -> dict[str, Any]:
    """Count NaN/Inf per variable and find the samples that hold them (one lazy pass).

    Returns
    -------
    dict
        ``{"total": int, "per_variable": {v: n}, "bad_samples": bool mask over sample dims (numpy),
        "first": {v: {dim: coordinate value}}}``.
    """
    import dask

    counts = {v: (~np.isfinite(ds[v])).sum(spec.field_dims) for v in spec.variables}
    with progress_bar(progress, "checking values"):
        (computed,) = dask.compute(counts)
    per_var, first, bad = {}, {}, None
    for v, c in computed.items():
        arr = np.asarray(c.transpose(*spec.sample_dims).values)
        per_var[v] = int(arr.sum())
        mask = arr > 0
        bad = mask if bad is None else bad | mask
        if per_var[v]:
            idx = np.unravel_index(int(np.argmax(mask)), mask.shape)
            first[v] = {d: _coord_value(ds, d, i) for d, i in zip(spec.sample_dims, idx, strict=True)}
    return {"total": sum(per_var.values()), "per_variable": per_var, "bad_samples": bad, "first": first}


def _coord_value(ds: xr.Dataset, dim: str, i: int) -> Any:
    if dim in ds.coords:
        val = ds[dim].values[i]
        if isinstance(val, np.datetime64):
            return np.datetime_as_string(val, unit="s")
        return str(val) if isinstance(val, np.timedelta64) else val.item()
    return int(i)


def choose_chunks(ds: xr.Dataset, spec: FieldSpec, target_mb: float = 8.0, itemsize: int = 4,
                  min_chunks: int = 16) -> dict[str, int]:
    """Chunk sizes along the sample dims (field dims whole) so one chunk of all variables is about ``target_mb``.

    The innermost sample dim is filled first; outer sample dims grow only once it is whole. A small dataset
    still gets about ``min_chunks`` chunks, so that a held-out split (whole chunks) and DDP ranks have some.
    """
    per_sample = itemsize * len(spec.variables) * math.prod(ds.sizes[d] for d in spec.field_dims)
    budget = max(1, int(target_mb * 2**20 // max(per_sample, 1)))
    total = math.prod(ds.sizes[d] for d in spec.sample_dims)
    budget = max(1, min(budget, -(-total // max(1, min_chunks))))
    chunks = {d: ds.sizes[d] for d in spec.field_dims}
    for d in reversed(spec.sample_dims):
        n = ds.sizes[d]
        take = max(1, min(n, budget))
        chunks[d] = take
        budget = max(1, budget // n) if take == n else 1
    return chunks


def progress_bar(enabled: bool, desc: str) -> contextlib.AbstractContextManager[Any]:
    """Context manager showing a tqdm bar ``desc`` over Dask tasks (local schedulers) when ``enabled``, else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    from tqdm.dask import TqdmCallback

    return TqdmCallback(desc=desc, leave=False, mininterval=0.5)


def compute_statistics(ds: xr.Dataset, spec: FieldSpec, progress: bool = False) -> xr.Dataset:
    """Normalisation statistics per variable over all samples and grid points, in one lazy Dask pass.

    NaN (masked values) are skipped. Moments are accumulated in float64.

    Returns
    -------
    xarray.Dataset
        Dim ``variable`` (names in attribute ``variables``, in order); data variables ``mean``, ``std``,
        ``min``, ``max``, ``count`` (finite values). No string coordinate: Zarr v3 has no stable string dtype.
    """
    import dask

    parts = {}
    for v in spec.variables:
        x = ds[v].astype("float64")
        finite = np.isfinite(x)
        x0 = x.where(finite, 0.0)
        parts[v] = (finite.sum(), x0.sum(), (x0 * x0).sum(), x.min(skipna=True), x.max(skipna=True))
    with progress_bar(progress, "statistics"):
        (done,) = dask.compute(parts)
    rows = {k: [] for k in ("mean", "std", "min", "max", "count")}
    for v in spec.variables:
        n, s1, s2, lo, hi = (float(np.asarray(a.values)) for a in done[v])
        mean = s1 / n if n else math.nan
        var = max(s2 / n - mean * mean, 0.0) if n else math.nan
        rows["mean"].append(mean)
        rows["std"].append(math.sqrt(var))
        rows["min"].append(lo)
        rows["max"].append(hi)
        rows["count"].append(int(n))
    # the one-pass variance loses digits when |mean| >> std: refine with a second centred pass where it matters
    redo = [i for i, v in enumerate(spec.variables)
            if rows["count"][i] and rows["std"][i] < 1e-3 * max(abs(rows["mean"][i]), 1e-300)]
    if redo:
        centred = {}
        for i in redo:
            v = spec.variables[i]
            centred[v] = ((ds[v].astype("float64") - rows["mean"][i]) ** 2).sum(skipna=True)
        with progress_bar(progress, "statistics (centred)"):
            (c2,) = dask.compute(centred)
        for i in redo:
            rows["std"][i] = math.sqrt(float(c2[spec.variables[i]].values) / rows["count"][i])
    stats = xr.Dataset(
        {k: ("variable", np.asarray(val, dtype="int64" if k == "count" else "float64")) for k, val in rows.items()},
        attrs={"variables": list(spec.variables)},
    )
    stats["mean"].attrs["long_name"] = "mean over all samples and grid points"
    stats["std"].attrs["long_name"] = "standard deviation over all samples and grid points"
    stats["count"].attrs["long_name"] = "number of finite values"
    for v in spec.variables:
        units = ds[v].attrs.get("units")
        if units is not None:
            stats.attrs[f"units_{v}"] = str(units)
    return stats
