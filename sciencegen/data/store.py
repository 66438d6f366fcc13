"""Prepared datasets: one chunked Zarr store with CF attributes, its statistics beside the data.

Layout of a store written by :func:`write_prepared`:

* root: the data variables (float32 by default) on ``sample dims + field dims``, chunked along the sample dims
  only (a conditional dataset adds ``input_*`` beside them and ``static_*`` on the field dims); root attribute
  ``sciencegen_dataset`` is a JSON string (name, variables, sample/field dims, periodicity, the dataset config,
  version, ``complete``, ``conditioning``), plus ``Conventions`` and ``history``;
* group ``statistics``: ``mean``, ``std``, ``min``, ``max``, ``count`` over dim ``variable`` (order in its
  attribute ``variables``: targets, inputs, statics), opened with ``xr.open_zarr(path, group="statistics")``.

A store is written into a hidden sibling directory ``.NAME.tmp-HOST-PID`` and renamed into place only when
complete, so a crash or bad input never leaves a half-written dataset at the output path. A disk-full or
read-only output, or SIGINT / SIGTERM, removes that directory and ends with one line; the folders of writers that
were killed (``kill -9``, a node failure) are removed by the next run on the same host (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import Interrupted, SciencegenError, StopRequest, os_error_line, stop_requests
from ..owners import host_tag, pid_alive
from .fields import (
    NONFINITE_POLICIES,
    DataError,
    FieldSpec,
    choose_chunks,
    compute_statistics,
    human_bytes,
    nonfinite_report,
    progress_bar,
    short_error,
    store_bytes,
)
from .metadata import clean_dataset

__all__ = ["ATTR", "CONVENTIONS", "DataWriteError", "PreparedData", "open_prepared", "read_metadata",
           "remove_stale_temps", "store_bytes", "write_prepared"]

log = logging.getLogger(__name__)

#: root attribute holding our metadata (JSON)
ATTR = "sciencegen_dataset"
FORMAT = 1
CONVENTIONS = "CF-1.10"
#: ``.NAME.tmp-HOST-PID`` (being written) and ``.NAME.old-HOST-PID`` (the replaced store, during the swap)
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<host>[^-]+)-(?P<pid>\d+)$")
#: the same without the host, as earlier versions named them; see :data:`LEGACY_QUIET_S`
_LEGACY_RE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")
#: a temp folder named without a host is removed only when nothing in it changed for this long (seconds): its
#: writer may be alive on another host sharing the file system, where its pid means nothing here
LEGACY_QUIET_S = 3600.0


class DataWriteError(SciencegenError):
    """The output store cannot be written (disk full, read-only file system, a parent is a file); exit status 1."""

    exit_code = 1


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
        """Per-variable mean in channel order (the target variables; a condition channel's: ``stats``)."""
        return np.asarray(self.stats["mean"].sel(variable=list(self.spec.variables)).values, dtype=float)

    @property
    def std(self) -> np.ndarray:
        """Per-variable standard deviation in channel order (the target variables)."""
        return np.asarray(self.stats["std"].sel(variable=list(self.spec.variables)).values, dtype=float)

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
        raw = zarr.open_group(str(path), mode="r").attrs.get(ATTR)
        meta = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except Exception:  # not a Zarr store, no or garbled metadata: not ours
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
        raise DataError(f"{path}: cannot read dataset: {short_error(exc)}") from exc
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
                   extra_attrs: Mapping[str, Any] | None = None, max_gb: float | None = None,
                   conditioning: Mapping[str, Any] | None = None,
                   masks: Mapping[str, Any] | None = None) -> PreparedData:
    """Write ``ds[spec.variables]`` (and a conditional dataset's inputs and statics) as a prepared store, atomically.

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
    max_gb
        Refuse, before reading anything, an input larger than this many GB (``dataset.max_gb``); ``None``: no limit.
    conditioning
        A conditional dataset's metadata (``build_inputs``): its ``inputs`` and ``static`` variables are written too.
    masks
        ``meta["masks"]`` (:mod:`sciencegen.data.masks`): ``ds``'s ``valid_<v>`` are written too (uint8).

    Raises
    ------
    DataError
        Bad input or configuration (nothing written).
    DataWriteError
        The output cannot be written (disk full, read-only, a parent is a file); the partial store is removed.
    Interrupted
        SIGINT / SIGTERM while writing; the partial store is removed.
    """
    path = Path(path)
    if nonfinite not in NONFINITE_POLICIES:
        raise DataError(f"dataset.nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {nonfinite!r}")
    if dtype not in ("float32", "keep"):
        raise DataError(f"output.dtype must be float32 or keep, got {dtype!r}")
    config = json.loads(json.dumps(dict(config), default=str))
    if path.parent.is_dir():
        remove_stale_temps(path.parent)
    reused = _reuse_or_refuse(path, config, overwrite)
    if reused is not None:
        return reused
    cond = conditioning or {}  # the variables on sample dims (targets, inputs), then those on the field dims only
    sampled = FieldSpec((*spec.variables, *cond.get("inputs", {})), spec.sample_dims, spec.field_dims, spec.periodic)
    names = [*sampled.variables, *cond.get("static", {})]
    valid = [f"valid_{v}" for v in masks or {}]  # validity masks: beside the data, not in the statistics
    out = ds[[*names, *valid]].transpose(*spec.sample_dims, *spec.field_dims)
    dims = set(spec.sample_dims) | set(spec.field_dims)  # coordinates on our dims only, no stale CF attributes
    out = clean_dataset(out.drop_vars([c for c in out.coords if not set(out[c].dims) <= dims]))
    _check_size(out, sampled, label, max_gb, log_reads=check_input)

    def work(stop: StopRequest, tmp: Path) -> None:
        data = _finish_input(out, sampled, label, nonfinite, dtype, chunk_mb, chunks, check_input, progress)
        data = data.assign({v: data[v].astype("uint8") for v in valid})
        data.attrs = _root_attrs(data, spec, name, config, label, nonfinite, extra_attrs, conditioning, masks)
        _check_space(data, sampled, path)
        _stop_point(stop)
        with progress_bar(progress, f"writing {path.name}"):
            data.to_zarr(tmp, mode="w", consolidated=False)
        _stop_point(stop)
        _complete(tmp, FieldSpec(tuple(names), spec.sample_dims, spec.field_dims), label, nonfinite, progress,
                  json.loads(data.attrs[ATTR]))
        _stop_point(stop)
        _swap_into_place(tmp, path)

    _in_temp(path, work)
    return open_prepared(path)


def _reuse_or_refuse(path: Path, config: Mapping[str, Any], overwrite: bool) -> PreparedData | None:
    """The store at ``path`` if it holds the same dataset; refuse a foreign one or another dataset without overwrite."""
    if not path.exists():
        return None
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
    return None


def _check_size(out: xr.Dataset, spec: FieldSpec, label: str, max_gb: float | None, log_reads: bool) -> None:
    """Refuse an input over ``max_gb`` before reading it; say what will be read and how big it is."""
    sizes = {v: int(out[v].size) * out[v].dtype.itemsize for v in spec.variables}
    total = sum(sizes.values())
    what = ", ".join(f"{v} {tuple(int(n) for n in out[v].shape)} {out[v].dtype}" for v in spec.variables)
    if max_gb is not None and total > max_gb * 1e9:
        v = max(sizes, key=sizes.__getitem__)
        also = f" ({human_bytes(total)} with the other variables)" if len(sizes) > 1 else ""
        raise DataError(f"{label}: variable {v!r} has shape {tuple(int(n) for n in out[v].shape)} {out[v].dtype}, "
                        f"{sizes[v] / 1e9:.1f} GB{also}, more than dataset.max_gb={max_gb:g}; raise dataset.max_gb "
                        "to read it all, or read a part with dataset.select")
    if log_reads:
        log.info("reading %s from %s: %s", what, label, human_bytes(total))


def _finish_input(out: xr.Dataset, spec: FieldSpec, label: str, nonfinite: str, dtype: str, chunk_mb: float,
                  chunks: Mapping[str, int] | None, check_input: bool, progress: bool) -> xr.Dataset:
    """The data as written: NaN/Inf policy applied, float32, without backend encodings, chunked along the samples."""
    if check_input:
        out = _apply_nonfinite(out, spec, label, nonfinite, progress)
    for v in out.data_vars:
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
    for v in out.data_vars:
        out[v].encoding["chunks"] = tuple(size[d] for d in out[v].dims)
    return out


def _apply_nonfinite(out: xr.Dataset, spec: FieldSpec, label: str, nonfinite: str, progress: bool) -> xr.Dataset:
    """Scan the input for NaN/Inf and apply the policy: refuse, drop those samples, or mask them."""
    report = nonfinite_report(out, spec, progress)
    if not report["total"]:
        return out
    first = {v: ", ".join(f"{k}={x}" for k, x in c.items()) for v, c in report["first"].items()}
    where = "; ".join(f"{v}: {n}" + (f" (first at {first[v]})" if v in first else "")
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
        return out.isel({spec.sample_dims[0]: np.flatnonzero(good)})
    return out.where(np.isfinite(out))


def _root_attrs(out: xr.Dataset, spec: FieldSpec, name: str, config: Mapping[str, Any], label: str,
                nonfinite: str, extra_attrs: Mapping[str, Any] | None,
                conditioning: Mapping[str, Any] | None = None, masks: Any = None) -> dict[str, Any]:
    """Root attributes: the input's, CF ``Conventions``, a ``history`` line and our metadata (``complete: false``)."""
    from .. import __version__

    now = _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()
    attrs = dict(out.attrs)
    attrs.setdefault("Conventions", CONVENTIONS)
    attrs.update(extra_attrs or {})
    line = f"{now}: prepared by sciencegen {__version__} ({name})"
    attrs["history"] = f"{attrs['history']}\n{line}" if attrs.get("history") else line
    meta = {"format": FORMAT, "name": name, **spec.as_dict(), "config": dict(config), "version": __version__,
            "created": now, "source": label, "nonfinite": nonfinite, "complete": False}
    if conditioning:
        meta["conditioning"] = dict(conditioning)
    meta.update({"masks": dict(masks)} if masks else {})
    attrs[ATTR] = json.dumps(meta)
    return attrs


def _check_space(out: xr.Dataset, spec: FieldSpec, path: Path) -> None:
    """Log what will be written; warn when it may not fit the free space of the output's file system."""
    need = sum(int(out[v].size) * out[v].dtype.itemsize for v in spec.variables)
    samples = math.prod(int(out.sizes[d]) for d in spec.sample_dims)
    log.info("writing %s: %d samples, %s uncompressed", path, samples, human_bytes(need))
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return
    if need > free:
        log.warning("%s needs up to %s uncompressed but only %s are free on its disk; the write may fail "
                    "(compression may make it fit)", path, human_bytes(need), human_bytes(free))


def _complete(tmp: Path, spec: FieldSpec, label: str, nonfinite: str, progress: bool, meta: dict[str, Any]) -> None:
    """Statistics of the written data, the checks on them, then ``complete: true`` and consolidated metadata."""
    import zarr

    written = xr.open_zarr(tmp, consolidated=False)
    stats = compute_statistics(written, spec, progress)
    for i, v in enumerate(spec.variables):
        n, expected = int(stats["count"].values[i]), int(written[v].size)
        if nonfinite == "error" and n != expected:
            raise DataError(f"{label}: variable {v!r} has {expected - n} NaN/Inf values after writing "
                            "(generator blew up?); nothing was kept")
        if n == 0:
            raise DataError(f"{label}: variable {v!r} has no finite values")
        if not stats["std"].values[i] > 0:
            raise DataError(f"{label}: variable {v!r} has zero variance (constant {stats['mean'].values[i]:g}); "
                            "it cannot be normalised, drop it from dataset.variables")
    stats.to_zarr(tmp, group="statistics", mode="w", consolidated=False)
    meta["complete"] = True
    zarr.open_group(str(tmp), mode="a").attrs[ATTR] = json.dumps(meta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # consolidated metadata is an extension in zarr v3; we want it anyway
        zarr.consolidate_metadata(str(tmp))


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Rename the complete ``tmp`` to ``path``; a store already there is moved aside first, then removed."""
    if path.exists():
        old = _temp_path(path, "old")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


# ------------------------------------------------------------------------------- faults, signals, stale temps


def _temp_path(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{host_tag()}-{os.getpid()}")


def _make_temp(path: Path, existed: bool) -> Path:
    """Create the temp folder beside ``path``: an unwritable place fails here, in one line, before any work."""
    tmp = _temp_path(path, "tmp")
    blocker = next((a for a in path.parents if a.exists() and not a.is_dir()), None)
    if blocker is not None:
        raise DataWriteError(f"cannot write {path}: {blocker} is a file, not a directory; nothing was written "
                             "(choose another output.path or data_root)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as exc:
        raise DataWriteError(_fault_line(exc, path, existed, partial=False)) from None
    return tmp


def _fault_line(exc: OSError, path: Path, existed: bool, partial: bool) -> str:
    """``cannot write PATH: the disk is full; ...``: the output path, not a chunk file inside the temp folder.

    An error on another file (the input, while it is read) names that file instead.
    """
    name = str(exc.filename or "")
    ours = name.startswith((str(path), str(_temp_path(path, "tmp")))) or Path(name) in path.parents
    if partial and name and not ours and exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        line = f"cannot read {name}: {exc.strerror or exc}"
    else:
        line = os_error_line(OSError(exc.errno, exc.strerror), str(path))
    kept = f"the store already at {path} is kept as it was" if existed else f"nothing was written to {path}"
    removed = "the partial store was removed, " if partial else ""
    return f"{line}; {removed}{kept} and complete stores stay usable"


class _Stop(Exception):
    """Raised at a safe point (between Dask tasks) once SIGINT / SIGTERM was received."""

    def __init__(self, signal: str):
        super().__init__(signal)
        self.signal = signal


def _stop_point(stop: StopRequest) -> None:
    if stop:
        raise _Stop(stop.signal or "SIGINT")


@contextlib.contextmanager
def _stop_between_tasks(stop: StopRequest) -> Iterator[None]:
    """Poll ``stop`` before each Dask task of the local schedulers; a pool of our own joined on the way out."""
    import dask
    from dask.callbacks import Callback

    class Poll(Callback):
        def _pretask(self, key: Any, dsk: Any, state: Any) -> None:
            _stop_point(stop)

    pool = None
    if dask.config.get("scheduler", None) in (None, "threads", "threading"):
        from concurrent.futures import ThreadPoolExecutor

        from dask.system import CPU_COUNT

        # our own pool, so that on the way out no task still writes into the temp folder once it is removed
        pool = ThreadPoolExecutor(int(dask.config.get("num_workers", None) or CPU_COUNT))
    try:
        with dask.config.set(pool=pool) if pool else contextlib.nullcontext(), Poll():
            yield
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _in_temp(path: Path, work: Callable[[StopRequest, Path], None]) -> None:
    """Create the temp folder, run ``work`` (it fills it and renames it to ``path``); on any failure or signal
    remove the temp folder.

    SIGINT / SIGTERM stop at the next safe point (between Dask tasks; a second Ctrl-C at once) and become
    :class:`~sciencegen.errors.Interrupted`; an operating-system fault (disk full, ...) becomes
    :class:`DataWriteError` naming ``path``. Either way one line says what is kept.
    """
    existed = path.exists()
    with stop_requests() as stop:
        tmp = _make_temp(path, existed)
        try:
            with _stop_between_tasks(stop):
                work(stop, tmp)
        except BaseException as exc:
            _remove_tree(tmp, settle=isinstance(exc, KeyboardInterrupt))
            fault = _as_fault(exc, path, existed)
            if fault is exc:
                raise
            raise fault from None


def _as_fault(exc: BaseException, path: Path, existed: bool) -> BaseException:
    """The one-line error a failed write becomes: :class:`Interrupted`, :class:`DataWriteError`, or ``exc`` itself."""
    kept = f"the store already at {path} is kept as it was" if existed else f"nothing was written to {path}"
    if isinstance(exc, (_Stop, KeyboardInterrupt)):
        sig = exc.signal if isinstance(exc, _Stop) else "SIGINT"
        return Interrupted(f"interrupted ({sig}); {kept} (the partial store was removed), rerun the same command "
                           "to prepare it")
    if isinstance(exc, OSError) and exc.errno is not None:
        return DataWriteError(_fault_line(exc, path, existed, partial=True))
    return exc


def _remove_tree(tmp: Path, settle: bool = False) -> None:
    """Remove ``tmp``; with ``settle`` (a second Ctrl-C cut the wait for the writes in flight) again while one of
    them brings it back within a second."""
    for _ in range(5 if settle else 1):
        shutil.rmtree(tmp, ignore_errors=True)
        if settle:
            time.sleep(0.2)
        if not tmp.exists():
            return


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Remove the temp folders of dead writers in ``directory``; return what was removed (or restored).

    A temp folder ``.NAME.tmp-HOST-PID`` is stale when HOST is this host and process PID is not alive
    (the rule of the checkpoint files, :mod:`sciencegen.models.checkpoint`): folders of live processes and
    of other hosts (a shared file system) are left alone. A stale ``.NAME.old-HOST-PID`` (a writer killed
    while swapping in a new store) is renamed back to ``NAME`` if ``NAME`` is missing. Names without a
    host (earlier versions) are removed only when their PID is not alive here and nothing in them changed
    for :data:`LEGACY_QUIET_S` seconds. Failures to remove are logged, never raised.

    Parameters
    ----------
    directory
        Where stores live (the parent of an output path, e.g. the data root).
    """

    try:
        entries = sorted(Path(directory).iterdir())
    except OSError:
        return []
    host, me, done = host_tag(), os.getpid(), []
    for p in entries:
        m = _TEMP_RE.match(p.name)
        legacy = m is None
        m = m or _LEGACY_RE.match(p.name)
        if m is None or (not legacy and m["host"] != host) or not p.is_dir():
            continue
        pid = int(m["pid"])
        if pid == me or pid_alive(pid) or (legacy and time.time() - _newest_mtime(p) < LEGACY_QUIET_S):
            continue
        final = p.with_name(m["name"])
        try:
            if m["kind"] == "old" and not final.exists() and (read_metadata(p) or {}).get("complete"):
                os.replace(p, final)
                log.warning("restored %s from %s (its writer, process %d, died while replacing it)", final, p, pid)
            else:
                shutil.rmtree(p)
                log.info("removed %s, the temp folder of process %d, which died while writing", p, pid)
        except OSError as exc:
            log.warning("cannot remove the stale temp folder %s: %s", p, exc.strerror or exc)
            continue
        done.append(p)
    return done


def _newest_mtime(p: Path) -> float:
    newest = 0.0
    for root, _, files in os.walk(p):
        for f in [root, *(os.path.join(root, f) for f in files)]:
            with contextlib.suppress(OSError):
                newest = max(newest, os.stat(f).st_mtime)
    return newest
