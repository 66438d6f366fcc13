"""Prepared datasets: one chunked Zarr store with CF attributes, its statistics beside the data.

Layout of a store written by :func:`write_prepared`:

* root: the data variables (float32 by default) on ``sample dims + field dims``, chunked along
  the sample dims only, with their coordinates and attributes; root attribute
  ``sciencegen_dataset`` is a JSON string (name, variables, sample/field dims, periodicity,
  the dataset config, version, ``complete``), plus ``Conventions`` and ``history``;
* group ``statistics``: ``mean``, ``std``, ``min``, ``max``, ``count`` over dim ``variable``
  (order in its attribute ``variables``), opened with ``xr.open_zarr(path, group="statistics")``.

A store is written into a hidden sibling directory and renamed into place only when
complete, so a crash or bad input never leaves a half-written dataset at the output path.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .fields import (
    NONFINITE_POLICIES,
    DataError,
    FieldSpec,
    _progress,
    _short,
    choose_chunks,
    compute_statistics,
    nonfinite_report,
)

__all__ = ["ATTR", "PreparedData", "open_prepared", "read_metadata", "write_prepared"]

#: root attribute holding our metadata (JSON)
ATTR = "sciencegen_dataset"
FORMAT = 1
CONVENTIONS = "CF-1.10"


@dataclass
class PreparedData:
    """A prepared dataset opened lazily.

    Attributes
    ----------
    path
        The store.
    ds
        Lazy (Dask-backed) dataset.
    spec
        Variables, sample dims, field dims, periodicity.
    stats
        Statistics (loaded, small).
    meta
        The ``sciencegen_dataset`` metadata.
    reused
        True when :func:`write_prepared` found the same dataset already there and wrote nothing.
    """

    path: Path
    ds: xr.Dataset
    spec: FieldSpec
    stats: xr.Dataset
    meta: dict[str, Any]
    reused: bool = False

    @property
    def mean(self) -> np.ndarray:
        """Per-variable mean in channel order."""
        return np.asarray(self.stats["mean"].values, dtype=float)

    @property
    def std(self) -> np.ndarray:
        """Per-variable standard deviation in channel order."""
        return np.asarray(self.stats["std"].values, dtype=float)

    @property
    def field_shape(self) -> tuple[int, ...]:
        """Shape of one field (without channels)."""
        return tuple(int(self.ds.sizes[d]) for d in self.spec.field_dims)

    @property
    def samples(self) -> int:
        """Number of samples (product of the sample dims)."""
        return int(np.prod([self.ds.sizes[d] for d in self.spec.sample_dims]))


def read_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """Our metadata of a store, or ``None`` if ``path`` is not a sciencegen dataset (or not a Zarr store)."""
    import zarr

    try:
        g = zarr.open_group(str(path), mode="r")
        raw = g.attrs.get(ATTR)
    except Exception:
        return None
    if raw is None:
        return None
    try:
        meta = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (TypeError, ValueError):
        return None
    return meta if isinstance(meta, dict) and "variables" in meta else None


def open_prepared(path: str | os.PathLike, chunks: Any = None) -> PreparedData:
    """Open a prepared dataset lazily (data with Dask, statistics loaded).

    Parameters
    ----------
    path
        Store written by ``sciencegen-data``.
    chunks
        Passed to :func:`xarray.open_zarr` (``None``: the store's chunks with Dask).

    Raises
    ------
    DataError
        Not found, not ours, incomplete, or unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such dataset (run sciencegen-data first)")
    meta = read_metadata(path)
    if meta is None:
        raise DataError(f"{path}: not a sciencegen dataset (no {ATTR} attribute)")
    if not meta.get("complete"):
        raise DataError(f"{path}: dataset is incomplete (interrupted write); prepare it again")
    try:
        ds = xr.open_zarr(path, chunks={} if chunks is None else chunks)
        stats = xr.open_zarr(path, group="statistics").load()
        stats = stats.assign_coords(variable=list(stats.attrs.get("variables", meta["variables"])))
    except Exception as exc:
        raise DataError(f"{path}: cannot read dataset: {_short(exc)}") from exc
    return PreparedData(path, ds, FieldSpec.from_dict(meta), stats, meta)


def _clean_encoding(ds: xr.Dataset) -> xr.Dataset:
    """Drop backend encodings of the input (netCDF chunking, compression, fill values, packing)."""
    keep = {"units", "calendar"}
    for name in ds.variables:
        enc = ds[name].encoding
        ds[name].encoding = {k: v for k, v in enc.items() if k in keep and np.issubdtype(ds[name].dtype, np.datetime64)}
    return ds


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def write_prepared(ds: xr.Dataset, spec: FieldSpec, path: str | os.PathLike, *, name: str,
                   config: Mapping[str, Any], label: str = "dataset", overwrite: bool = False,
                   dtype: str = "float32", chunk_mb: float = 8.0, chunks: Mapping[str, int] | None = None,
                   nonfinite: str = "error", check_input: bool = True, progress: bool = False,
                   extra_attrs: Mapping[str, Any] | None = None) -> PreparedData:
    """Write ``ds[spec.variables]`` as a prepared store with statistics, atomically.

    Parameters
    ----------
    ds
        Lazy dataset (user data, or a generator's Dask graph).
    spec
        Variables and dims (see :func:`~sciencegen.data.fields.resolve_spec`).
    path
        Output store. If it holds the same dataset (same ``config``) it is reused as is.
    name
        Dataset name recorded in the metadata.
    config
        The dataset configuration; a store is "the same" only if this matches.
    label
        Names the input in error messages.
    overwrite
        Replace a store of ours that holds a different dataset (never a foreign directory).
    dtype
        ``"float32"`` (default) or ``"keep"``.
    chunk_mb, chunks
        Target chunk size along the sample dims, or explicit chunks per sample dim.
    nonfinite
        ``"error"``, ``"mask"`` (keep as NaN, skipped by statistics, filled by the loader) or
        ``"drop"`` (remove samples holding any; one sample dim only).
    check_input
        Scan the input for NaN/Inf before writing (user data); generated data are checked after.
    progress
        Progress bars.
    extra_attrs
        Attributes added to the root (e.g. generator parameters).
    """
    path = Path(path)
    if nonfinite not in NONFINITE_POLICIES:
        raise DataError(f"dataset.nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {nonfinite!r}")
    if dtype not in ("float32", "keep"):
        raise DataError(f"output.dtype must be float32 or keep, got {dtype!r}")
    config = json.loads(json.dumps(dict(config), default=str))
    if path.exists():
        meta = read_metadata(path)
        if meta is None:
            kind = "directory" if path.is_dir() else "file"
            raise DataError(f"{path}: output path exists and is a {kind} that is not a sciencegen dataset; "
                            "choose another output.path")
        if meta.get("complete") and _same(meta.get("config", {}), config) and not overwrite:
            prepared = open_prepared(path)
            prepared.reused = True
            return prepared
        if meta.get("complete") and not overwrite:
            raise DataError(f"{path}: holds a different dataset ({meta.get('name')}, other config); "
                            "pass output.overwrite=true to replace it")

    out = ds[list(spec.variables)].transpose(*spec.sample_dims, *spec.field_dims)
    # keep only coordinates on our dims
    dims = set(spec.sample_dims) | set(spec.field_dims)
    out = out.drop_vars([c for c in out.coords if not set(out[c].dims) <= dims])
    if check_input:
        report = nonfinite_report(out, spec, progress)
        if report["total"]:
            where = "; ".join(f"{v}: {n}" + (f" (first at {_fmt(report['first'][v])})" if v in report["first"] else "")
                              for v, n in report["per_variable"].items() if n)
            if nonfinite == "error":
                raise DataError(f"{label}: {report['total']} NaN/Inf values ({where}); set dataset.nonfinite=mask to "
                                "keep them masked or dataset.nonfinite=drop to drop those samples")
            if nonfinite == "drop":
                if len(spec.sample_dims) != 1:
                    raise DataError(f"{label}: nonfinite=drop needs one sample dim, got {list(spec.sample_dims)}; "
                                    "use nonfinite=mask")
                good = ~report["bad_samples"]
                if not good.any():
                    raise DataError(f"{label}: every sample holds NaN/Inf values ({where}); nothing left to keep")
                out = out.isel({spec.sample_dims[0]: np.flatnonzero(good)})
            else:
                out = out.where(np.isfinite(out))
    for v in spec.variables:
        if dtype == "float32" or not np.issubdtype(out[v].dtype, np.floating):
            out[v] = out[v].astype("float32")
    out = _clean_encoding(out.copy())
    size = choose_chunks(out, spec, chunk_mb, itemsize=max(out[v].dtype.itemsize for v in spec.variables))
    if chunks:
        for d, c in chunks.items():
            if d not in spec.sample_dims:
                raise DataError(f"output.chunks names {d!r}, which is not a sample dim {list(spec.sample_dims)}")
            size[d] = max(1, min(int(c), out.sizes[d]))
    out = out.chunk({d: size[d] for d in out.dims if d in size})
    for v in spec.variables:
        out[v].encoding["chunks"] = tuple(size[d] for d in out[v].dims)

    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    from .. import __version__

    attrs = dict(out.attrs)
    attrs.setdefault("Conventions", CONVENTIONS)
    attrs.update(extra_attrs or {})
    line = f"{now}: prepared by sciencegen {__version__} ({name})"
    attrs["history"] = f"{attrs['history']}\n{line}" if attrs.get("history") else line
    meta = {"format": FORMAT, "name": name, **spec.as_dict(), "config": config, "version": __version__,
            "created": now, "source": label, "nonfinite": nonfinite, "complete": False}
    attrs[ATTR] = json.dumps(meta)
    out.attrs = attrs

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _progress(progress, f"writing {path.name}"):
            out.to_zarr(tmp, mode="w", consolidated=False)
        written = xr.open_zarr(tmp, consolidated=False)
        stats = compute_statistics(written, spec, progress)
        expected = int(np.prod([written.sizes[d] for d in spec.sample_dims + spec.field_dims]))
        for i, v in enumerate(spec.variables):
            n = int(stats["count"].values[i])
            if nonfinite == "error" and n != expected:
                raise DataError(f"{label}: variable {v!r} has {expected - n} NaN/Inf values after writing "
                                "(generator blew up?); nothing was kept")
            if n == 0:
                raise DataError(f"{label}: variable {v!r} has no finite values")
            if not stats["std"].values[i] > 0:
                raise DataError(f"{label}: variable {v!r} has zero variance (constant {stats['mean'].values[i]:g}); "
                                "it cannot be normalised, drop it from dataset.variables")
        stats.to_zarr(tmp, group="statistics", mode="w", consolidated=False)
        import zarr

        meta["complete"] = True
        zarr.open_group(str(tmp), mode="a").attrs[ATTR] = json.dumps(meta)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # consolidated metadata is an extension in zarr v3; we want it anyway
            zarr.consolidate_metadata(str(tmp))
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_prepared(path)


def _fmt(coords: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in coords.items())


def store_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk under a store."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, f))
    return total
