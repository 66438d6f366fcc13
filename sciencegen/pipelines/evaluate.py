"""``run_evaluate(cfg)``: score an ensemble store against the exact law or held-out data, lazily.

The samples are the *complete* members of a store written by ``sciencegen-generate`` (dim ``member`` plus the
dataset's field dims, one float32 variable per physical variable, per-member ``complete``/``rounds``/``nfe``);
incomplete members (a store still being written, or an unfinished shard) are excluded and counted, never
averaged in. So are complete members whose chunks cannot be decoded or hold non-finite values (a damaged
store: :func:`unreadable_members` reads each chunk once first; the warning names them and the repair,
``generate.verify=true``). ``output.dir`` is probed before any work and the outputs are written atomically,
``metrics.json`` last; SIGINT / SIGTERM stop the evaluation with one line. The reference is

* ``exact`` (analytic datasets such as ``grf``): the exact per-mode variance of the law radially averaged in
  the same shells as the sample spectrum, plus exact reference samples for the histograms, the correlation and
  the panel. They are drawn by the dataset's own generator at sample indices *past* the training set
  (``dataset.samples`` onwards, rounded up to a chunk), so they are never data a model was trained on;
* ``heldout``: the held-out split of the prepared dataset (:func:`~sciencegen.pipelines.data.prepare`, which
  reuses the cached store): the last ``ceil(holdout * n_chunks)`` chunks in store order, exactly the
  validation split of :class:`~sciencegen.data.loader.FieldStream` (never trained on), flattened over the
  sample dims;
* a path: another ensemble store (its complete members) or a prepared dataset (all of it).

Everything is computed with :mod:`sciencegen.analysis` on Dask arrays in two streaming passes (spectra,
moments, ensemble-mean maps and value range; then histograms, Wasserstein distance and the two-point
correlation centred on the ensemble-mean maps of the first pass), with tasks of about :data:`TASK_BYTES` of
float32 fields, so memory is bounded by a few tasks whatever the store size. The small results are written to
``metrics.json``, ``report.md`` and figures.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..data.fields import DataError
from ..errors import Interrupted, SciencegenError, os_error_line
from .data import dataset_config, make_source

__all__ = ["EXACT_VALUES", "EvaluateError", "TASK_BYTES", "exact_spectrum", "format_summary", "open_ensemble",
           "run_evaluate", "unreadable_members"]

#: target size of one Dask task's float32 fields (the store's chunks are split or merged to about this)
TASK_BYTES = 16 << 20
#: default cap on the exact reference samples, in values: 2^26 (256 MiB of float32; 1024 fields of 256², 16384 of 64²)
EXACT_VALUES = 1 << 26
#: common bins of the streaming Wasserstein distance (its discretisation error is at most one bin width)
W1_BINS = 4096
FIGURES = ("samples.png", "spectrum.png", "histogram.png", "correlation.png")
_BOOKKEEPING = ("complete", "rounds", "nfe")

log = logging.getLogger(__name__)


class EvaluateError(SciencegenError):
    """Evaluation cannot run; the message is one line meant for the user."""


# --------------------------------------------------------------------------------------------- small helpers


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    """``cfg.a.b`` with a one-line error for a missing mandatory value (``???``)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(cfg, DictConfig):
        try:
            value = OmegaConf.select(cfg, dotted, default=default, throw_on_missing=True)
        except MissingMandatoryValue:
            raise EvaluateError(f"{dotted} is required (set it on the command line, e.g. {dotted}=...)") from None
        return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value
    node: Any = cfg
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    if node == "???":
        raise EvaluateError(f"{dotted} is required (set it on the command line, e.g. {dotted}=...)")
    return node


def _dims_text(dims: Sequence[Hashable], sizes: Mapping[Hashable, int]) -> str:
    return ", ".join(f"{d}={sizes[d]}" for d in dims)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the runs of ``True`` in a 1-D mask."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > 1)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    stops = np.concatenate([idx[breaks] + 1, [idx[-1] + 1]])
    return [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


def _task_members(field_shape: Sequence[int], itemsize: int = 4) -> int:
    """Samples per Dask task so that a task holds about :data:`TASK_BYTES` of fields."""
    per = max(1, int(np.prod(field_shape)) * itemsize)
    return max(1, TASK_BYTES // per)


def _rechunk(da: xr.DataArray, dim: str, members: int) -> xr.DataArray:
    """Chunk ``dim`` by about ``members`` (merging or splitting the store's chunks), field dims whole."""
    chunks = da.chunks
    if chunks is None:
        return da
    first = int(da.chunksizes[dim][0]) if da.sizes[dim] else 1
    size = (members // first) * first if first <= members else members
    return da.chunk({dim: max(1, min(size, max(1, da.sizes[dim])))} | {d: -1 for d in da.dims if d != dim})


def _jsonable(x: Any) -> Any:
    """Plain JSON types; non-finite floats become ``null``."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, Path):
        return str(x)
    return x


def _pretty_units(units: str) -> str:
    return units.replace("^2", "²")


def _squared(units: str) -> str:
    from ..analysis._common import squared_units

    return squared_units(units)


def _model_label(attr: Any, identity: Any) -> str | None:
    """``oracle`` or ``unet (step 1200)`` from the store's ``model`` attribute (JSON) or identity."""
    model = identity
    if isinstance(attr, str):
        with contextlib.suppress(ValueError, TypeError):
            model = json.loads(attr)
    if not isinstance(model, Mapping):
        return None if model is None else str(model)
    name = str(model.get("name", "?"))
    return f"{name} (step {model['step']})" if "step" in model else name


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- the stores


@dataclass
class Side:
    """One side of the comparison: lazy fields per variable over ``(dim, *field_dims)``."""

    kind: str                    # samples | exact | heldout | store
    label: str                   # legend label
    dim: str                     # the sample dim of ``data``
    data: dict[str, xr.DataArray]
    field_dims: tuple[str, ...]
    count: int
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ensemble:
    """An ensemble store opened lazily with its completion flags."""

    path: Path
    ds: xr.Dataset
    complete: np.ndarray
    meta: dict[str, Any] | None
    variables: tuple[str, ...]


def open_ensemble(path: str | os.PathLike, what: str = "samples.path") -> Ensemble:
    """Open an ensemble store (``sciencegen-generate``'s contract) lazily and read its ``complete`` flags.

    Parameters
    ----------
    path
        The store.
    what
        The config key naming it, for error messages.

    Raises
    ------
    EvaluateError
        Missing path, not a Zarr store, corrupt metadata, unreadable, no ``member`` dim, or no field variable.
    """
    from ..data.ensemble import completed_members, is_zarr

    p = Path(str(path)).expanduser()
    if not p.exists():
        raise EvaluateError(f"{what} {p}: no such store (write one with sciencegen-generate ... output.path={p})")
    if not is_zarr(p):
        kind = "a file" if p.is_file() else "a directory without Zarr metadata"
        raise EvaluateError(f"{what} {p} is not a Zarr store ({kind})")
    _check_metadata(p, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = xr.open_zarr(p, chunks={})
    except Exception as exc:
        raise EvaluateError(f"{what} {p}: cannot read the Zarr store: {_short(exc)}") from None
    if "member" not in ds.dims:
        raise EvaluateError(f"{what} {p} is not an ensemble store: no member dim (dims {dict(ds.sizes)}); "
                            "ensembles are written by sciencegen-generate")
    variables = tuple(str(v) for v in ds.data_vars
                      if v not in _BOOKKEEPING and "member" in ds[v].dims and ds[v].ndim >= 2)
    if not variables:
        raise EvaluateError(f"{what} {p} holds no field variable over (member, ...) (variables {list(ds.data_vars)})")
    n = int(ds.sizes["member"])
    flags = np.ones(n, dtype=bool)
    if "complete" in ds.data_vars and n:
        flags = completed_members(p, n)  # unreadable chunks of the flags count as incomplete
    return Ensemble(p, ds, flags, _store_meta(p, what), variables)


#: the JSON metadata files of a Zarr store (v3, then v2), at its root and in each array
_METADATA = ("zarr.json", ".zmetadata", ".zgroup", ".zattrs", ".zarray")


def _check_metadata(p: Path, what: str) -> None:
    """Raise a one-line "is corrupt" error when a metadata file of the store (root or array) is not valid JSON."""
    redo = ("move it away (or delete it) and rerun the sciencegen-generate command that wrote it to regenerate "
            "the ensemble")
    for f in _METADATA:
        try:
            text = (p / f).read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise EvaluateError(f"{what} {p}: cannot read its root metadata {f}: {exc.strerror or exc}") from None
        try:
            json.loads(text)
        except ValueError as exc:
            why = "it is empty" if not text.strip() else f"{_short(exc)}, {len(text)} bytes"
            raise EvaluateError(f"{what} {p} is corrupt (its root metadata {f} cannot be read: {why}); "
                                f"{redo}") from None
    for sub in sorted(q for q in p.iterdir() if q.is_dir()):
        for f in _METADATA:
            q = sub / f
            if not q.is_file():
                continue
            try:
                json.loads(q.read_bytes())
            except (OSError, ValueError) as exc:
                raise EvaluateError(f"{what} {p} is corrupt (the metadata {sub.name}/{f} cannot be read: "
                                    f"{_short(exc)}); {redo}") from None


def _store_meta(p: Path, what: str) -> dict[str, Any] | None:
    """The store's ``sciencegen_ensemble`` description (None: a Zarr store not written by sciencegen-generate)."""
    from ..data.ensemble import read_meta

    try:
        return read_meta(p)
    except SciencegenError as exc:  # the description exists but is garbled
        raise EvaluateError(f"{what} {exc}") from None


def _complete_members(ds: xr.Dataset, flags: np.ndarray, variables: Sequence[str]) -> xr.Dataset:
    """The complete members of ``ds[variables]`` (contiguous runs of slices, concatenated lazily)."""
    sub = ds[list(variables)]
    runs = _runs(flags)
    if len(runs) == 1:
        return sub.isel(member=slice(*runs[0]))
    return xr.concat([sub.isel(member=slice(a, b)) for a, b in runs], dim="member")


# --------------------------------------------------------------------------------------------- readability


def _nonfinite(arr: Any, axis: int, a: int, b: int) -> np.ndarray:
    """Per member of ``a..b-1``: whether its field holds a non-finite value (missing chunks read as NaN)."""
    sel = [slice(None)] * arr.ndim
    sel[axis] = slice(a, b)
    x = np.moveaxis(np.asarray(arr[tuple(sel)]), axis, 0).reshape(b - a, -1)
    return ~np.isfinite(x).all(axis=1)


def _scan_members(path: str, var: str, axis: int, ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int, str]]:
    """Unreadable members of ``var`` in consecutive member chunks ``ranges``: ``[(start, stop, why), ...]``.

    The chunks are read in one call (Zarr decodes them concurrently); only when that fails is each chunk read
    alone, so that a chunk that cannot be decoded marks exactly its own members.
    """
    import zarr

    arr = zarr.open_array(path, path=var, mode="r")
    start, stop = ranges[0][0], ranges[-1][1]
    bad: list[tuple[int, int, str]] = []
    try:
        masks = [(start, _nonfinite(arr, axis, start, stop))]
    except Exception:  # a truncated or garbled chunk: any codec (or I/O) error
        masks = []
        for a, b in ranges:
            try:
                masks.append((a, _nonfinite(arr, axis, a, b)))
            except Exception as exc:
                bad.append((a, b, f"chunk cannot be decoded: {_short(exc)}"))
    for first, mask in masks:
        bad += [(first + a, first + b, "missing chunk or non-finite values") for a, b in _runs(mask)]
    return bad


def _scan_tasks(ens: Ensemble, var: str, flags: np.ndarray) -> list[tuple[str, str, int, list[tuple[int, int]]]]:
    """Read tasks of about :data:`TASK_BYTES` over the member chunks of ``var`` holding a member of ``flags``."""
    da = ens.ds[var]
    axis = da.dims.index("member")
    n = int(da.sizes["member"])
    stored = da.encoding.get("chunks")  # the store's chunks (Dask's may have been merged or split)
    if stored and len(stored) == da.ndim:
        step = int(stored[axis])
    else:
        step = int(da.chunksizes["member"][0]) if da.chunks is not None and n else max(n, 1)
    per = max(1, TASK_BYTES // max(1, step * int(np.prod([s for d, s in da.sizes.items() if d != "member"])) * 4))
    tasks: list[tuple[str, str, int, list[tuple[int, int]]]] = []
    group: list[tuple[int, int]] = []
    for a in range(0, n, step):
        b = min(a + step, n)
        if not flags[a:b].any() or len(group) >= per:
            if group:
                tasks.append((str(ens.path), var, axis, group))
            group = []
        if flags[a:b].any():
            group.append((a, b))
    if group:
        tasks.append((str(ens.path), var, axis, group))
    return tasks


def unreadable_members(ens: Ensemble, variables: Sequence[str], flags: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """The members flagged in ``flags`` whose data cannot be read: ``{variable: {why: member mask}}``.

    Every member chunk of each variable that holds a flagged member is read and decoded once, in tasks of
    about :data:`TASK_BYTES` on the active Dask scheduler (about 2 % of the evaluation's time). A chunk that
    cannot be decoded (truncated, garbled, unreadable file) marks its members; so does a non-finite value in
    a member (a chunk file missing while its members are flagged complete reads as the fill value NaN).
    Variables with nothing unreadable are left out.

    Parameters
    ----------
    ens
        The store.
    variables
        The field variables to check.
    flags
        Members to check (the complete ones).
    """
    import dask

    tasks = [t for v in variables for t in _scan_tasks(ens, v, flags)]
    found = dask.compute(*[dask.delayed(_scan_members, pure=False)(*t) for t in tasks]) if tasks else ()
    out: dict[str, dict[str, np.ndarray]] = {}
    for (_, var, _, _), bad in zip(tasks, found, strict=True):
        for a, b, why in bad:
            mask = out.setdefault(var, {}).setdefault(why, np.zeros(flags.size, dtype=bool))
            mask[a:b] |= flags[a:b]
    return {v: {w: m for w, m in d.items() if m.any()} for v, d in out.items() if any(m.any() for m in d.values())}


def _members_text(mask: np.ndarray) -> str:
    """``members 24..31, 40..47`` (inclusive ranges) or ``member 5``."""
    runs = _runs(mask)
    text = ", ".join(f"{a}..{b - 1}" if b - a > 1 else f"{a}" for a, b in runs)
    return f"member {text}" if len(runs) == 1 and runs[0][1] - runs[0][0] == 1 else f"members {text}"


def _unreadable_line(ens: Ensemble, what: str, bad: dict[str, dict[str, np.ndarray]], verdict: str) -> str:
    """One line: which complete members of which variables cannot be read and why, ``verdict``, and the repair."""
    masks = [m for d in bad.values() for m in d.values()]
    union = np.logical_or.reduce(masks)
    parts = [f"{_members_text(m)} of {v} ({why})" for v, d in bad.items() for why, m in d.items()]
    line = (f"{what} {ens.path}: {int(union.sum())} of its {int(ens.complete.sum())} complete members cannot be "
            f"read: {', '.join(parts)}; {verdict}")
    if ens.meta is None:
        return line + " (the store was not written by sciencegen-generate: repair or rewrite it)"
    return (line + "; to repair the store, rerun the same sciencegen-generate command with generate.verify=true "
            f"to regenerate {_members_text(union)}")


def _readable(ens: Ensemble, variables: Sequence[str], what: str) -> tuple[np.ndarray, dict[str, Any], str | None]:
    """The complete members whose data can be read, what is unreadable (for metrics.json), and the warning line.

    Raises
    ------
    EvaluateError
        Fewer than 2 readable complete members are left.
    """
    bad = unreadable_members(ens, variables, ens.complete)
    if not bad:
        return ens.complete, {"unreadable": 0, "unreadable_members": {}}, None
    per_var = {v: np.logical_or.reduce(list(d.values())) for v, d in bad.items()}
    union = np.logical_or.reduce(list(per_var.values()))
    keep = ens.complete & ~union
    info = {"unreadable": int(union.sum()),
            "unreadable_members": {v: [[a, b - 1] for a, b in _runs(m)] for v, m in per_var.items()}}
    left = int(keep.sum())
    if left < 2:
        raise EvaluateError(_unreadable_line(ens, what, bad, f"only {left} readable complete member(s) are left, "
                                             "the ensemble statistics need at least 2"))
    return keep, info, _unreadable_line(ens, what, bad, "they are excluded")


def exact_spectrum(target: Any, shape: Sequence[int]) -> np.ndarray:
    """Exact isotropic spectrum of an analytic law: its per-mode variance averaged in the shells ``round(|k|)``.

    The shells are those of :func:`~sciencegen.analysis.isotropic_spectrum` (all of them, ``0..max``), so the two
    are directly comparable; an empty shell is NaN.

    Parameters
    ----------
    target
        A law with a full-grid per-mode ``variance`` tensor (e.g. :class:`~sciencegen.targets.GaussianRandomField`).
    shape
        Field shape (must be the law's grid).
    """
    from ..analysis._common import radial_shells, shell_counts, shell_reduce

    v = np.asarray(target.variance.detach().cpu().numpy(), dtype=np.float64)
    shape = tuple(int(n) for n in shape)
    if v.shape != shape:
        raise EvaluateError(f"the exact law is defined on a {v.shape} grid, the fields are {shape}")
    shells = radial_shells(shape)
    nshell = int(shells.max()) + 1
    sums = shell_reduce(v, shells, nshell, len(shape))
    counts = shell_counts(shells, nshell)
    return sums / np.where(counts > 0, counts, np.nan)


def _exact_moments(target: Any) -> dict[str, float] | None:
    """Exact one-point moments of a stationary Gaussian law with mean zero (GRF): N(0, mean per-mode variance)."""
    from ..targets import GaussianRandomField

    if not isinstance(target, GaussianRandomField):
        return None
    return {"mean": 0.0, "std": float(target.variance.double().mean().sqrt()), "skewness": 0.0, "kurtosis": 0.0}


def _flatten_samples(ds: xr.Dataset, var: str, sample_dims: Sequence[str], field_dims: Sequence[str],
                     blocks: Sequence[Mapping[str, slice]]) -> xr.DataArray:
    """``ds[var]`` restricted to ``blocks`` (one selection per chunk), flattened over the sample dims."""
    import dask.array as dsa

    da = ds[var].transpose(*sample_dims, *field_dims)
    shape = tuple(int(da.sizes[d]) for d in field_dims)
    parts = []
    for sel in blocks:
        part = da.isel(dict(sel)).data
        if not isinstance(part, dsa.Array):
            part = dsa.from_array(part)
        parts.append(part.reshape((-1, *shape)))
    data = dsa.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    coords = {d: ds[d] for d in field_dims if d in ds.coords}
    return xr.DataArray(data, dims=("sample", *field_dims), coords=coords, attrs=dict(ds[var].attrs), name=var)


# --------------------------------------------------------------------------------------------- references


def _exact_reference(dataset: dict[str, Any], source: Any, variables: Sequence[str], field_dims: tuple[str, ...],
                     field_shape: tuple[int, ...], count: int) -> Side:
    """Exact samples past the training set, drawn lazily by the dataset's own generator."""
    if "samples" not in dataset:
        raise EvaluateError(f"dataset {dataset.get('name')}: its generator takes no samples option; "
                            "use reference.source=heldout")
    task = _task_members(field_shape)
    conf = dict(dataset)
    first = int(math.ceil(int(dataset["samples"]) / task) * task)
    conf["samples"] = first + count
    if "chunk" in conf:
        conf["chunk"] = task
    ds, spec, _ = make_source(conf).open()
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise EvaluateError(f"the exact law of dataset {dataset.get('name')} has no variable(s) {missing} "
                            f"(it has {list(spec.variables)})")
    sample = spec.sample_dims[0]
    data = {v: _rechunk(ds[v].isel({sample: slice(first, first + count)}).rename({sample: "sample"}), "sample", task)
            .transpose("sample", *field_dims) for v in variables}
    target = source.target()
    info = {"source": "exact", "law": type(target).__name__, "samples": count,
            "sample_indices": [first, first + count],
            "description": f"exact law of {dataset.get('name')}: exact per-mode variance for the spectrum; "
                           f"{count} exact samples (generator indices {first}..{first + count - 1}, past the "
                           f"{dataset['samples']} training samples) for moments, histograms, correlation, panel"}
    return Side("exact", "exact law", "sample", data, field_dims, count, info)


def _heldout_reference(dataset: dict[str, Any], data_root: str, holdout: float, variables: Sequence[str],
                       cap: int | None) -> Side:
    """The validation split of the prepared dataset (the loader's split), flattened over the sample dims."""
    from ..data.loader import FieldStream
    from .data import prepare

    if not 0.0 < holdout < 1.0:
        raise EvaluateError(f"reference.holdout must be in (0, 1), got {holdout!r}")
    print(f"sciencegen-evaluate: preparing the reference dataset {dataset.get('name')} under {data_root} "
          "(reused when cached)", flush=True)
    prepared = prepare(dataset, data_root=data_root)
    spec = prepared.spec
    missing = [v for v in variables if v not in spec.variables]
    if missing:
        raise EvaluateError(f"dataset {dataset.get('name')} has no variable(s) {missing} (it has "
                            f"{list(spec.variables)}); choose samples.variables")
    try:
        stream = FieldStream(prepared.path, list(spec.variables), list(spec.sample_dims), prepared.mean,
                             prepared.std, batch_size=1, split="validation", holdout=holdout)
    except (ValueError, FileNotFoundError) as exc:
        raise EvaluateError(f"reference.holdout={holdout}: {_short(exc)}") from None
    blocks = []
    for cid in stream.chunk_ids:
        idx = np.unravel_index(int(cid), stream.chunk_grid)
        blocks.append({d: slice(int(i) * c, min((int(i) + 1) * c, n)) for d, i, c, n in
                       zip(spec.sample_dims, idx, stream.chunk_shape, stream.sample_shape, strict=True)})
    field_dims = tuple(spec.field_dims)
    task = _task_members(prepared.field_shape)
    data = {}
    for v in variables:
        da = _flatten_samples(prepared.ds, v, spec.sample_dims, field_dims, blocks)
        if cap is not None:
            da = da.isel(sample=slice(0, cap))
        data[v] = _rechunk(da, "sample", task)
    count = int(next(iter(data.values())).sizes["sample"])
    n_chunks = int(np.prod(stream.chunk_grid))
    info = {"source": "heldout", "store": str(prepared.path), "holdout": holdout, "chunks": len(stream.chunk_ids),
            "store_chunks": n_chunks, "samples": count, "sample_dims": list(spec.sample_dims),
            "periodic": {str(k): bool(x) for k, x in spec.periodic.items()},
            "description": f"held-out split of {prepared.path}: the last {len(stream.chunk_ids)} of {n_chunks} "
                           f"chunks (holdout {holdout}, as the training loader's validation split), "
                           f"{count} samples flattened over {list(spec.sample_dims)}"}
    if len(stream.chunk_ids) == n_chunks:
        info["warning"] = (f"the held-out split is the whole dataset ({n_chunks} chunk): a model trained on it has "
                           "seen this reference")
    return Side("heldout", "held-out data", "sample", data, field_dims, count, info)


def _store_reference(path: str, variables: Sequence[str], cap: int | None) -> Side:
    """Another ensemble store (complete members) or a prepared dataset (all samples) as the reference."""
    from ..data.store import open_prepared, read_metadata

    p = Path(path).expanduser()
    warning = None
    if p.exists() and read_metadata(p) is not None:
        try:
            prepared = open_prepared(p)
        except DataError as exc:
            raise EvaluateError(f"reference.source {p}: {exc}") from None
        spec = prepared.spec
        missing = [v for v in variables if v not in spec.variables]
        if missing:
            raise EvaluateError(f"reference.source {p} has no variable(s) {missing} (it has {list(spec.variables)})")
        blocks = [{d: slice(None) for d in spec.sample_dims}]
        data = {v: _flatten_samples(prepared.ds, v, spec.sample_dims, spec.field_dims, blocks) for v in variables}
        desc = f"prepared dataset {p} (all {prepared.samples} samples)"
        field_dims = tuple(spec.field_dims)
    else:
        ens = open_ensemble(p, "reference.source")
        missing = [v for v in variables if v not in ens.variables]
        if missing:
            raise EvaluateError(f"reference.source {p} has no variable(s) {missing} (it has {list(ens.variables)})")
        if not ens.complete.any():
            raise EvaluateError(f"reference.source {p}: none of its {ens.complete.size} members is complete")
        keep, _, line = _readable(ens, variables, "reference.source")
        if line:
            log.warning(line)
            warning = line
        sub = _complete_members(ens.ds, keep, variables).rename({"member": "sample"})
        field_dims = tuple(d for d in sub[variables[0]].dims if d != "sample")
        data = {v: sub[v].transpose("sample", *field_dims) for v in variables}
        desc = f"ensemble store {p} ({int(keep.sum())} readable complete members)"
    shape = tuple(int(next(iter(data.values())).sizes[d]) for d in field_dims)
    task = _task_members(shape)
    data = {v: _rechunk(da.isel(sample=slice(0, cap)) if cap is not None else da, "sample", task)
            for v, da in data.items()}
    count = int(next(iter(data.values())).sizes["sample"])
    info = {"source": "store", "store": str(p), "samples": count, "description": desc}
    if warning:
        info["warning"] = warning
    return Side("store", "reference store", "sample", data, field_dims, count, info)


def _check_grid(samples: Side, ref: Side, hint: str) -> Side:
    """Same field dims and sizes (and coordinates) on both sides; the samples transposed to the reference's order."""
    for v in samples.data:
        s, r = samples.data[v], ref.data[v]
        sd = tuple(d for d in s.dims if d != samples.dim)
        rd = tuple(d for d in r.dims if d != ref.dim)
        if set(sd) != set(rd) or any(s.sizes[d] != r.sizes[d] for d in sd):
            raise EvaluateError(f"mismatched grids: samples {samples.info['path']} have {v} on "
                                f"({_dims_text(sd, s.sizes)}) but the reference ({ref.label}) has "
                                f"({_dims_text(rd, r.sizes)}){hint}")
        for d in rd:
            if d in s.coords and d in r.coords and np.issubdtype(s[d].dtype, np.number) and \
                    np.issubdtype(r[d].dtype, np.number) and not np.allclose(s[d].values, r[d].values):
                raise EvaluateError(f"mismatched grids: the {d} coordinates of the samples {samples.info['path']} "
                                    f"and of the reference ({ref.label}) differ{hint}")
        samples.data[v] = s.transpose(samples.dim, *rd)
    samples.field_dims = ref.field_dims
    return samples


def _dataset_hint(store_dataset: Mapping[str, Any] | None, dataset: Mapping[str, Any]) -> tuple[str, list[str]]:
    """Differences between the dataset config a store was generated with and the one given now."""
    if not store_dataset:
        return "", []
    keys = [k for k in sorted(set(store_dataset) | set(dataset)) if store_dataset.get(k) != dataset.get(k)]
    diffs = [f"dataset.{k}={json.dumps(store_dataset.get(k))} (now {json.dumps(dataset.get(k))})" for k in keys]
    if not diffs:
        return "", []
    shown = [f"dataset.{k}={json.dumps(store_dataset.get(k))}" for k in keys if k not in ("samples", "chunk", "seed")]
    hint = f" (the store was generated with {', '.join(shown)}: pass those options)" if shown else ""
    return hint, diffs


# --------------------------------------------------------------------------------------------- computation


@contextlib.contextmanager
def _scheduler(address: Any, threads: Any):
    """Dask scheduler for the computation: a client at ``address``, a running client, or local threads."""
    import dask

    client, owned = None, False
    if address:
        try:
            from distributed import Client

            client = Client(str(address), timeout="20s")
        except Exception as exc:
            raise EvaluateError(f"evaluate.dask={address}: cannot connect to the Dask scheduler: "
                                f"{_short(exc)}") from None
        owned = True
    else:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):
            client = None
    try:
        if client is not None:
            with dask.config.set(scheduler=client):
                yield f"Dask distributed client {client.scheduler.address}"
        else:
            n = int(threads) if threads else (os.cpu_count() or 1)
            with dask.config.set(scheduler="threads", num_workers=n):
                yield f"local Dask threads ({n})"
    finally:
        if owned:
            with contextlib.suppress(Exception):
                client.close()


def _spectral_error(p: np.ndarray, q: np.ndarray, shells: np.ndarray) -> float:
    """``mean_k |log(p_k / q_k)|`` over the shells ``shells`` (NaN when a ratio is not positive and finite)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.log(p[shells] / q[shells])
    return float(np.mean(np.abs(r))) if np.all(np.isfinite(r)) else float("nan")


def _moment_dict(ds: xr.Dataset) -> dict[str, float]:
    return {k: float(ds[k]) for k in ("mean", "std", "skewness", "kurtosis")} | {"count": int(ds["count"])}


def _compute(samples: Side, ref: Side, exact: dict[str, np.ndarray] | None, bins: int, max_lag: Any,
             ) -> dict[str, dict[str, Any]]:
    """The two streaming passes; returns small numpy results per variable."""
    import dask

    from ..analysis import histogram, isotropic_spectrum, moment_scalars, spatial_correlation, wasserstein1

    fd = ref.field_dims
    lazy1: dict[str, dict[str, Any]] = {}
    for v in samples.data:
        s, r = samples.data[v], ref.data[v]
        lazy1[v] = {
            "spec_s": isotropic_spectrum(s, dims=fd), "spec_r": isotropic_spectrum(r, dims=fd),
            "mom_s": moment_scalars(s), "mom_r": moment_scalars(r),
            "mean_s": s.mean(samples.dim), "mean_r": r.mean(ref.dim),
            "lo": [s.where(np.isfinite(s)).min(), r.where(np.isfinite(r)).min()],
            "hi": [s.where(np.isfinite(s)).max(), r.where(np.isfinite(r)).max()],
        }
    (res1,) = dask.compute(lazy1)
    out: dict[str, dict[str, Any]] = {}
    lazy2: dict[str, dict[str, Any]] = {}
    for v, r1 in res1.items():
        s, r = samples.data[v], ref.data[v]
        ms, mr = _moment_dict(r1["mom_s"]), _moment_dict(r1["mom_r"])
        expected_s = int(np.prod([s.sizes[d] for d in s.dims]))
        if ms["count"] != expected_s:
            raise EvaluateError(f"samples {samples.info['path']}: {expected_s - ms['count']} NaN values in the "
                                f"complete members of {v} (a corrupt or foreign store)")
        vals = [float(x) for x in r1["lo"] + r1["hi"]]
        lo, hi = float(np.nanmin(vals[:2])), float(np.nanmax(vals[2:]))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise EvaluateError(f"variable {v}: no finite values to compare")
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, int(bins) + 1)
        out[v] = {"spec_s": r1["spec_s"], "spec_r": r1["spec_r"], "mom_s": ms, "mom_r": mr, "edges": edges,
                  "range": (lo, hi)}
        lazy2[v] = {
            "hist_s": histogram(s, bins=edges, density=True), "hist_r": histogram(r, bins=edges, density=True),
            "w1": wasserstein1(s, r, bins=W1_BINS, range=(lo, hi), exact=False),
            "corr_s": spatial_correlation(s - r1["mean_s"], dims=fd, max_lag=max_lag, center=None),
            "corr_r": spatial_correlation(r - r1["mean_r"], dims=fd, max_lag=max_lag, center=None),
        }
    (res2,) = dask.compute(lazy2)
    for v, r2 in res2.items():
        out[v].update(r2)
    return out


def _variable_metrics(v: str, c: dict[str, Any], samples: Side, ref: Side, exact: np.ndarray | None,
                      exact_mom: dict[str, float] | None, units: str) -> dict[str, Any]:
    spec_s, spec_r = c["spec_s"], c["spec_r"]
    k = np.asarray(spec_s["wavenumber"].values)
    modes = np.asarray(spec_s["modes"].values)
    complete = np.asarray(spec_s["complete"].values, dtype=bool)
    shape = [int(samples.data[v].sizes[d]) for d in ref.field_dims]
    kmax = min(shape) // 2
    shells = np.arange(1, kmax + 1)
    ps, pr = np.asarray(spec_s.values, dtype=np.float64), np.asarray(spec_r.values, dtype=np.float64)
    m: dict[str, Any] = {"units": units}
    spectrum = {"wavenumber": k, "modes": modes, "complete": complete, "sample": ps}
    if exact is not None:
        m["spectral_error"] = _spectral_error(ps, exact, shells)
        m["spectral_error_floor"] = _spectral_error(pr, exact, shells)
        nonempty = np.flatnonzero(modes > 0)
        if len(set(shape)) == 1:
            m["spectral_error_all_shells"] = _spectral_error(ps, exact, nonempty)
        spectrum |= {"reference": exact, "reference_samples": pr}
    else:
        m["spectral_error"] = _spectral_error(ps, pr, shells)
        spectrum |= {"reference": pr}
    m["spectral_shells"] = [1, kmax]
    mom = {"sample": c["mom_s"], "reference": c["mom_r"]}
    if exact_mom is not None:
        mom["exact"] = exact_mom
    m["moments"] = mom
    w1 = c["w1"]
    m["w1"] = float(w1)
    sd = exact_mom["std"] if exact_mom is not None else c["mom_r"]["std"]
    m["w1_normalised"] = float(w1) / sd if sd > 0 else float("nan")
    m["w1_max_discretisation_error"] = float(w1.attrs.get("max_discretisation_error", float("nan")))
    hs, hr = c["hist_s"], c["hist_r"]
    m["histogram"] = {"edges": c["edges"], "sample": np.asarray(hs.values), "reference": np.asarray(hr.values),
                      "density": True}
    cs, cr = c["corr_s"], c["corr_r"]
    corr = {"separation": np.asarray(cs["separation"].values), "sample": np.asarray(cs.values),
            "reference": np.asarray(cr.values), "center": "ensemble-mean map (computed in the first pass)"}
    if "distance" in cs.coords:
        corr["distance"] = np.asarray(cs["distance"].values)
        corr["distance_units"] = str(cs["distance"].attrs.get("units", ""))
    corr["max_abs_diff"] = float(np.nanmax(np.abs(corr["sample"] - corr["reference"])))
    m["correlation"] = corr
    m["spectrum"] = spectrum
    return m


# --------------------------------------------------------------------------------------------- figures


def _save(fig: Any, path: Path) -> None:
    """Write the figure as PNG to ``path`` (a hidden temporary file of :func:`_write_outputs`)."""
    fig.savefig(path, dpi=110, format="png")


def _plot_samples(path: Path, panels: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], ref_label: str,
                  units: dict[str, str], coords: dict[str, tuple[np.ndarray, ...]], title: str) -> None:
    """``N`` generated fields (top row) next to ``N`` reference fields (bottom row) per variable."""
    from matplotlib.figure import Figure

    k = max(g.shape[0] for g, _, _ in panels.values())
    rows = 2 * len(panels)
    fig = Figure(figsize=(2.3 * k + 1.4, 2.35 * rows + 0.5), layout="constrained")
    grid = fig.add_gridspec(rows, k)
    for i, (v, (gen, ref, ids)) in enumerate(panels.items()):
        both = np.concatenate([gen.reshape(-1), ref.reshape(-1)])
        lo, hi = np.nanpercentile(both, [0.5, 99.5])
        if lo < 0 < hi:
            lim = max(-lo, hi)
            lo, hi, cmap = -lim, lim, "RdBu_r"
        else:
            cmap = "viridis"
        axes, im = [], None
        for r, (fields, label) in enumerate([(gen, "generated"), (ref, ref_label)]):
            for j in range(fields.shape[0]):
                ax = fig.add_subplot(grid[2 * i + r, j])
                axes.append(ax)
                f = fields[j]
                note = ""
                if f.ndim == 3:
                    f, note = f[0], " (first slice)"
                if f.ndim == 1:
                    x = coords[v][-1]
                    ax.plot(x, f, lw=0.8)
                    ax.set_ylim(lo, hi)
                else:
                    ext = None
                    cy, cx = coords[v][-2], coords[v][-1]
                    if cx.size > 1 and cy.size > 1:
                        ext = (cx[0], cx[-1] + (cx[-1] - cx[0]) / (cx.size - 1),
                               cy[0], cy[-1] + (cy[-1] - cy[0]) / (cy.size - 1))
                    im = ax.imshow(f, origin="lower", cmap=cmap, vmin=lo, vmax=hi, extent=ext, aspect="auto"
                                   if ext is None else "equal", interpolation="nearest")
                    ax.set_xticks([])
                    ax.set_yticks([])
                name = f"member {int(ids[j])}" if r == 0 else f"#{j}"
                ax.set_title(f"{label}: {name}{note}", fontsize=8)
                if j == 0:
                    ax.set_ylabel(f"{v}\n{label}", fontsize=9)
        if im is not None:
            u = units.get(v) or "1"
            fig.colorbar(im, ax=axes, shrink=0.85, label=f"{v} [{_pretty_units(u)}]")
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def _plot_spectrum(path: Path, metrics: dict[str, Any], samples: Side, ref: Side, title: str) -> None:
    """Both spectra on log-log axes (top) and their ratio (bottom), over the complete shells."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    nv = len(metrics)
    fig = Figure(figsize=(5.0 * nv + 0.6, 5.4), layout="constrained")
    grid = fig.add_gridspec(2, nv, height_ratios=[3, 1])
    for i, (v, m) in enumerate(metrics.items()):
        ax = fig.add_subplot(grid[0, i])
        rx = fig.add_subplot(grid[1, i], sharex=ax)
        sp = m["spectrum"]
        k = np.asarray(sp["wavenumber"])
        a, b = m["spectral_shells"]
        sel = (k >= a) & (k <= b)
        ks = k[sel]
        ps, pr = np.asarray(sp["sample"], dtype=float)[sel], np.asarray(sp["reference"], dtype=float)[sel]
        ax.loglog(ks, ps, "C0-", lw=1.8, label=f"generated ({samples.count} members)")
        rx.semilogx(ks, ps / pr, "C0-", lw=1.5)
        if ref.kind == "exact":
            pe = np.asarray(sp["reference_samples"], dtype=float)[sel]
            ax.loglog(ks, pe, "-", color="0.6", lw=1, label=f"exact samples ({ref.count}): sampling noise")
            rx.semilogx(ks, pe / pr, "-", color="0.6", lw=1)
            ax.loglog(ks, pr, "k--", lw=1.5, label="exact law")
        else:
            ax.loglog(ks, pr, "C1--", lw=1.5, label=f"{ref.label} ({ref.count})")
        rx.axhline(1.0, color="k", ls="--", lw=1)
        rx.xaxis.set_major_formatter(ScalarFormatter())
        ax.tick_params(labelbottom=False)
        rx.set_xlabel("wavenumber k (shells of 2π/L)")
        ax.set_ylabel(f"power per mode [{_pretty_units(_squared(m['units']) or '1')}]")
        rx.set_ylabel("generated / reference")
        ax.set_title(f"{v}: spectral error {m['spectral_error']:.3g} (shells {a}..{b})", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        rx.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def _plot_histogram(path: Path, metrics: dict[str, Any], samples: Side, ref: Side, title: str) -> None:
    from matplotlib.figure import Figure

    nv = len(metrics)
    fig = Figure(figsize=(5.0 * nv + 0.6, 4.0), layout="constrained")
    for i, (v, m) in enumerate(metrics.items()):
        ax = fig.add_subplot(1, nv, i + 1)
        h = m["histogram"]
        e = np.asarray(h["edges"])
        for dens, style, label in ((h["sample"], "C0-", f"generated ({samples.count} members)"),
                                   (h["reference"], "C1--", f"{'exact samples' if ref.kind == 'exact' else ref.label}"
                                                             f" ({ref.count})")):
            d = np.asarray(dens, dtype=float)
            ax.stairs(np.where(d > 0, d, np.nan), e, color=style[:2], linestyle=style[2:], lw=1.5, label=label)
        ex = m["moments"].get("exact")
        if ex is not None:
            x = np.linspace(e[0], e[-1], 400)
            pdf = np.exp(-0.5 * ((x - ex["mean"]) / ex["std"]) ** 2) / (ex["std"] * math.sqrt(2 * math.pi))
            ax.plot(x, pdf, "k:", lw=1.2, label=f"exact law N({ex['mean']:g}, {ex['std']:.3g}²)")
        ax.set_yscale("log")
        ax.set_xlabel(f"{v} [{_pretty_units(m['units'] or '1')}]")
        ax.set_ylabel("probability density")
        ax.set_title(f"{v}: W1 {m['w1']:.3g} ({m['w1_normalised']:.3g} std)", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def _plot_correlation(path: Path, metrics: dict[str, Any], samples: Side, ref: Side, title: str) -> None:
    from matplotlib.figure import Figure

    nv = len(metrics)
    fig = Figure(figsize=(5.0 * nv + 0.6, 4.0), layout="constrained")
    for i, (v, m) in enumerate(metrics.items()):
        ax = fig.add_subplot(1, nv, i + 1)
        c = m["correlation"]
        if "distance" in c:
            x = np.asarray(c["distance"])
            xl = f"separation r [{_pretty_units(c.get('distance_units') or 'grid points')}]"
        else:
            x = np.asarray(c["separation"])
            xl = "separation r [grid points]"
        ax.plot(x, c["sample"], "C0-o", ms=3, lw=1.5, label=f"generated ({samples.count} members)")
        ax.plot(x, c["reference"], "C1--s", ms=3, lw=1.5,
                label=f"{'exact samples' if ref.kind == 'exact' else ref.label} ({ref.count})")
        ax.axhline(0.0, color="0.5", lw=0.8)
        ax.set_xlabel(xl)
        ax.set_ylabel("two-point correlation C(r)/C(0)")
        ax.set_title(f"{v}: max |difference| {c['max_abs_diff']:.3g}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


# --------------------------------------------------------------------------------------------- report


def _fmt(x: Any, spec: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return format(x, spec)


def _report(result: dict[str, Any], figures: list[str]) -> str:
    s, ref = result["samples"], result["reference"]
    lines = [f"# Evaluation of {s['path']}", ""]
    lines.append(f"{result['created']} · sciencegen {result['version']} · {result['seconds']:.1f} s · "
                 f"{result['scheduler']}")
    lines += ["", "## Data", ""]
    excluded = ([f"{s['incomplete']} incomplete"] if s["incomplete"] else []) + (
        [f"{s['unreadable']} complete but unreadable"] if s.get("unreadable") else [])
    lines.append(f"* **samples**: `{s['path']}` — {s.get('evaluated', s['complete'])} of {s['members']} members "
                 "evaluated" + (f" ({', '.join(excluded)}: excluded)" if excluded else "")
                 + f"; model {s.get('model') or '?'}, sampler {s.get('sampler') or '?'} "
                 f"({s.get('sampler_steps') or '?'} steps), seed {s.get('seed')}")
    lines.append(f"* **reference** ({ref['source']}): {ref['description']}")
    lines.append(f"* **dataset**: {result['dataset'].get('name')} — grid "
                 + ", ".join(f"{d}={n}" for d, n in zip(result["grid"]["field_dims"], result["grid"]["shape"],
                                                       strict=True)))
    if result.get("command"):
        lines.append(f"* **command**: `{result['command']}`")
    for w in result.get("warnings", []):
        lines.append(f"* **note**: {w}")
    lines += ["", "## Key numbers", ""]
    exact = ref["source"] == "exact"
    head = ["variable", "spectral error", "W1", "W1 / std", "mean (gen / ref)", "std (gen / ref)",
            "skewness (gen / ref)", "excess kurtosis (gen / ref)", "max ΔC(r)"]
    if exact:
        head[2:2] = ["project spectral_error", "noise floor"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for v, m in result["variables"].items():
        ms, mr = m["moments"]["sample"], m["moments"]["reference"]
        mx = m["moments"].get("exact", mr)
        row = [f"{v} [{m['units'] or '1'}]", _fmt(m["spectral_error"])]
        if exact:
            row += [_fmt(m.get("spectral_error_all_shells")), _fmt(m.get("spectral_error_floor"))]
        row += [_fmt(m["w1"]), _fmt(m["w1_normalised"])]
        row += [f"{_fmt(ms[q])} / {_fmt(mx[q])}" for q in ("mean", "std", "skewness", "kurtosis")]
        row.append(_fmt(m["correlation"]["max_abs_diff"]))
        lines.append("| " + " | ".join(row) + " |")
    c = result["cost"]
    lines += ["", f"Sampler cost: {_fmt(c['rounds_mean'], '.1f')} sequential rounds and {_fmt(c['nfe_mean'], '.1f')}"
              " denoiser evaluations (NFE) per member (means over the complete members).", ""]
    k1, k2 = next(iter(result["variables"].values()))["spectral_shells"]
    lines.append(f"Definitions (docs/evaluate.md): *spectral error* = mean over the complete shells k = {k1}..{k2} "
                 "of |log(P_gen(k) / P_ref(k))|, P the isotropic power per mode (orthonormal DFT); "
                 + ("*project spectral_error* = `sciencegen.targets.spectral_error` (every non-empty shell, k = 0 "
                    f"and the corners included); *noise floor* = the spectral error of the {ref['samples']} exact "
                    "reference samples, i.e. what a perfect sampler scores with that many members; " if exact else "")
                 + "*W1* = Wasserstein-1 distance of the one-point value distributions ("
                 + ("normalised by the exact std" if exact else "normalised by the reference std")
                 + "); *max ΔC(r)* = largest absolute difference of the two-point correlation curves.")
    if figures:
        lines += ["", "## Figures", ""]
        captions = {"samples.png": "Generated fields (top) next to reference fields (bottom), shared colour scale",
                    "spectrum.png": "Isotropic power spectrum",
                    "histogram.png": "One-point value distribution",
                    "correlation.png": "Two-point correlation"}
        for f in figures:
            lines += [f"![{captions.get(f, f)}]({f})", "", f"*{captions.get(f, f)}.*", ""]
    return "\n".join(lines).rstrip() + "\n"


def format_summary(result: Mapping[str, Any]) -> str:
    """The printed summary of :func:`run_evaluate`'s result."""
    s, ref = result["samples"], result["reference"]
    lines = [f"evaluated {s.get('evaluated', s['complete'])} members of {s['path']} against the {ref['source']} "
             f"reference ({ref['samples']} samples) in {result['seconds']:.1f} s"]
    for w in result.get("warnings", []):
        lines.append(f"  note: {w}")
    for v, m in result["variables"].items():
        ms = m["moments"]["sample"]
        mr = m["moments"].get("exact", m["moments"]["reference"])
        extra = ""
        if "spectral_error_all_shells" in m:
            extra = f" (project spectral_error {_fmt(m['spectral_error_all_shells'], '.4f')}"
            extra += f", noise floor {_fmt(m.get('spectral_error_floor'), '.4f')})"
        elif "spectral_error_floor" in m:
            extra = f" (noise floor {_fmt(m.get('spectral_error_floor'), '.4f')})"
        dc = _fmt(m["correlation"]["max_abs_diff"], ".3g")
        lines.append(f"  {v}: spectral error {_fmt(m['spectral_error'], '.4f')}{extra}, W1 {_fmt(m['w1'], '.4g')} "
                     f"({_fmt(m['w1_normalised'], '.3g')} std), max dC(r) {dc}")
        pairs = ", ".join(f"{q} {_fmt(ms[q], '.4g')} / {_fmt(mr[q], '.4g')}"
                          for q in ("mean", "std", "skewness", "kurtosis"))
        lines.append(f"      {pairs} (generated / reference)")
    c = result["cost"]
    if c["nfe_mean"] is not None:
        lines.append(f"  cost: {_fmt(c['rounds_mean'], '.1f')} rounds, {_fmt(c['nfe_mean'], '.1f')} NFE per member")
    out = result["output"]
    lines.append(f"  wrote {out['metrics']}, {out['report']}" + (f" and {len(out['figures'])} figures"
                                                                if out["figures"] else ""))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- the job


def _output_dir(out: Any) -> Path:
    d = out.get("dir") if out is not None else None
    if d:
        return Path(str(d)).expanduser()
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        raise EvaluateError("output.dir is required (e.g. output.dir=runs/evaluate/grf64)") from None


def _command() -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return "sciencegen-evaluate " + " ".join(HydraConfig.get().overrides.task)
    except Exception:
        return None


def _positive_int(value: Any, key: str, minimum: int = 1) -> int:
    try:
        n = int(value)
        if n != value and not (isinstance(value, str) and str(n) == value.strip()):
            raise ValueError
    except (TypeError, ValueError):
        raise EvaluateError(f"{key} must be an integer >= {minimum}, got {value!r}") from None
    if n < minimum:
        raise EvaluateError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return n


@dataclass
class _Options:
    """The checked options of one evaluation."""

    store: str
    want: Any
    source: str
    cap: int | None
    holdout: float
    bins: int
    max_lag: int | None
    panel: int
    figures: bool
    data_root: str
    out_dir: Path
    overwrite: bool
    dask: Any
    threads: Any


def _options(cfg: Any) -> _Options:
    """Read and check the options (one-line errors); nothing is read or written yet."""
    store_path = _get(cfg, "samples.path")
    if not store_path:
        raise EvaluateError("samples.path is required (e.g. samples.path=runs/generate/grf.zarr)")
    cap = _get(cfg, "reference.members")
    max_lag = _get(cfg, "evaluate.max_lag")
    return _Options(
        store=str(store_path), want=_get(cfg, "samples.variables"),
        source=str(_get(cfg, "reference.source", "auto") or "auto"),
        cap=None if cap is None else _positive_int(cap, "reference.members"),
        holdout=float(_get(cfg, "reference.holdout", 0.1)),
        bins=_positive_int(_get(cfg, "evaluate.bins", 64), "evaluate.bins"),
        max_lag=None if max_lag is None else _positive_int(max_lag, "evaluate.max_lag", 0),
        panel=_positive_int(_get(cfg, "evaluate.panel", 4), "evaluate.panel"),
        figures=bool(_get(cfg, "evaluate.figures", True)), data_root=str(_get(cfg, "data_root", "data")),
        out_dir=_output_dir({"dir": _get(cfg, "output.dir")}), overwrite=bool(_get(cfg, "output.overwrite", False)),
        dask=_get(cfg, "evaluate.dask"), threads=_get(cfg, "evaluate.threads"))


# --------------------------------------------------------------------------------------------- output.dir


def _out_line(path: Path, exc: OSError) -> str:
    """``cannot write PATH: the disk is full`` for ``exc`` met while writing ``path`` (or a file in it)."""
    return os_error_line(OSError(exc.errno, exc.strerror, str(path)))


def _prepare_output(out_dir: Path, overwrite: bool) -> list[Path]:
    """Check before any work that ``output.dir`` can take the outputs; returns the directories it created.

    The directory is created and a small probe file is written in it and removed, so a read-only or full
    filesystem, a parent that is a file, or a missing permission is one line before anything is computed.
    """
    if (out_dir / "metrics.json").exists() and not overwrite:
        raise EvaluateError(f"output.dir {out_dir} already holds an evaluation (metrics.json); choose another "
                            "output.dir or set output.overwrite=true")
    if out_dir.exists() and not out_dir.is_dir():
        raise EvaluateError(f"output.dir {out_dir} is a file, not a directory")
    missing = []
    for d in (out_dir, *out_dir.parents):
        if d.exists():
            if not d.is_dir():
                raise EvaluateError(f"output.dir {out_dir}: {d} is a file, not a directory; choose another "
                                    "output.dir")
            break
        missing.append(d)
    probe = out_dir / f".probe-{os.getpid()}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)  # a full filesystem refuses the first block
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink()
        _remove_dirs(missing)
        raise EvaluateError(f"output.dir: {_out_line(out_dir, exc)}; nothing was evaluated (choose another "
                            "output.dir)") from None
    probe.unlink()
    return missing


def _remove_dirs(dirs: Sequence[Path]) -> None:
    """Remove the directories ``dirs`` (deepest first) where they are still empty."""
    for d in dirs:
        with contextlib.suppress(OSError):
            d.rmdir()


def _write_outputs(out_dir: Path, writers: Mapping[str, Any]) -> None:
    """Write each output with ``writers[name](tmp_path)`` to a hidden file, then rename all into place.

    ``metrics.json`` (the last name) marks a finished evaluation. A failure (disk full, read-only, an
    interrupt) removes the hidden files: ``output.dir`` never holds a half-written output, and an earlier
    evaluation there stays whole.
    """
    tmps = {name: out_dir / f".{name}.tmp-{os.getpid()}" for name in writers}
    name = ""
    try:
        for name, write in writers.items():
            write(tmps[name])
        for name in writers:
            os.replace(tmps[name], out_dir / name)
    except OSError as exc:
        if exc.errno is None:
            raise
        raise EvaluateError(f"{_out_line(out_dir / name, exc)}; no metrics.json was written (what {out_dir} "
                            "held before is unchanged): free space or choose another output.dir") from None
    finally:
        for tmp in tmps.values():
            with contextlib.suppress(OSError):
                tmp.unlink()


class _Terminated(KeyboardInterrupt):
    """SIGTERM during an evaluation (SIGINT raises :class:`KeyboardInterrupt` by itself)."""


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    """SIGTERM raises :class:`_Terminated` in the main thread for the block, as SIGINT does KeyboardInterrupt.

    The evaluation holds no state worth a safe point (nothing is written before the end, atomically), so it
    stops at once: Dask's waiting main thread is interrupted and the tasks in flight are abandoned.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise _Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_evaluate(cfg: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The ``sciencegen-evaluate`` job.

    Parameters
    ----------
    cfg
        The composed config of ``conf/evaluate.yaml`` (``dataset``, ``data_root``, ``samples``, ``reference``,
        ``output``, ``evaluate``).

    Returns
    -------
    dict
        The content of ``metrics.json`` (small numpy arrays as lists), plus ``output`` (paths written).

    Raises
    ------
    EvaluateError, DataError
        Bad input, an unusable ``output.dir``, or no readable complete members, with a one-line message.
    Interrupted
        SIGINT / SIGTERM: the evaluation stopped; no ``metrics.json`` was written.
    """
    t0 = time.perf_counter()
    opts = _options(cfg)
    created = _prepare_output(opts.out_dir, opts.overwrite)
    finished = False
    try:
        with _sigterm_stops():
            result = _evaluate(cfg, opts, t0)
        finished = True
        return result
    except KeyboardInterrupt as exc:
        sig = "SIGTERM" if isinstance(exc, _Terminated) else "SIGINT"
        raise Interrupted(f"interrupted ({sig}); the evaluation of {opts.store} stopped before writing "
                          f"{opts.out_dir / 'metrics.json'}: rerun the same command") from None
    finally:
        if not finished:
            _remove_dirs(created)


def _open_samples(cfg: Any, o: _Options) -> tuple[Ensemble, dict[str, Any], Any, Any, str, list[str]]:
    """The ensemble store, the dataset (config, source, spec, label) and the variables to evaluate."""
    ens = open_ensemble(o.store)
    dataset = dataset_config(cfg["dataset"])
    source = make_source(dataset)
    _, spec, ds_label = source.open()
    if o.want is None:
        variables = [v for v in spec.variables]
    else:
        variables = [o.want] if isinstance(o.want, str) else [str(v) for v in o.want]
        if not variables:
            raise EvaluateError("samples.variables is empty; give at least one variable or null for all")
    missing = [v for v in variables if v not in ens.variables]
    if missing:
        advice = ("choose samples.variables" if o.want is not None
                  else f"is it an ensemble of dataset {dataset.get('name')}?")
        raise EvaluateError(f"samples.path {ens.path} has no variable {', '.join(map(repr, missing))} (it has "
                            f"{', '.join(ens.variables)}); {advice}")
    members, n_complete = int(ens.complete.size), int(ens.complete.sum())
    if members == 0:
        raise EvaluateError(f"samples.path {ens.path} is empty: it holds 0 members")
    if n_complete == 0:
        raise EvaluateError(f"samples.path {ens.path}: none of its {members} members is complete (still being "
                            "written? rerun its sciencegen-generate command to finish it)")
    if n_complete < 2:
        raise EvaluateError(f"samples.path {ens.path}: only 1 of its {members} members is complete; the ensemble "
                            "statistics need at least 2")
    return ens, dataset, source, spec, ds_label, variables


def _samples_side(ens: Ensemble, variables: list[str], keep: np.ndarray, unread: dict[str, Any],
                  ) -> tuple[Side, xr.Dataset, list[str]]:
    """The generated side (the readable complete members ``keep``, lazily), its subset and its warnings."""
    identity = (ens.meta or {}).get("identity", {}) if isinstance(ens.meta, dict) else {}
    members, n_complete, n_eval = int(ens.complete.size), int(ens.complete.sum()), int(keep.sum())
    sub = _complete_members(ens.ds, keep, variables)
    field_dims = tuple(d for d in sub[variables[0]].dims if d != "member")
    task = _task_members(tuple(int(sub.sizes[d]) for d in field_dims))
    sdata = {v: _rechunk(sub[v].transpose("member", *field_dims), "member", task) for v in variables}
    attrs = ens.ds.attrs
    sinfo: dict[str, Any] = {
        "path": str(ens.path), "members": members, "complete": n_complete, "incomplete": members - n_complete,
        **unread, "evaluated": n_eval,
        "model": _model_label(attrs.get("model"), identity.get("model")),
        "sampler": attrs.get("sampler", (identity.get("sampler") or {}).get("name")),
        "sampler_steps": attrs.get("sampler_steps", (identity.get("sampler") or {}).get("steps")),
        "seed": identity.get("seed", attrs.get("seed")), "dataset": identity.get("dataset"),
        "written_by_sciencegen": ens.meta is not None,
    }
    warn: list[str] = []
    if ens.meta is None:
        warn.append(f"{ens.path} was not written by sciencegen-generate (no sciencegen_ensemble attribute)")
    if members > n_complete:
        warn.append(f"{members - n_complete} of {members} members incomplete: excluded")
    return Side("samples", "generated", "member", sdata, field_dims, n_eval, sinfo), sub, warn


def _reference_side(o: _Options, dataset: dict[str, Any], source: Any, spec: Any, ds_label: str,
                    samples: Side, sub: xr.Dataset, variables: list[str], hint: str,
                    ) -> tuple[Side, dict[str, np.ndarray] | None, dict[str, float] | None]:
    """The reference side (``reference.source``), the exact spectra and the exact moments where there is a law."""
    target = source.target()
    kind = o.source
    if kind == "auto":
        kind = "exact" if target is not None else "heldout"
    if kind == "heldout":
        return _heldout_reference(dataset, o.data_root, o.holdout, variables, o.cap), None, None
    if kind != "exact":
        return _store_reference(kind, variables, o.cap), None, None
    if target is None:
        raise EvaluateError(f"dataset {dataset.get('name')} has no exact law; use reference.source=heldout (or auto)")
    field_dims = samples.field_dims
    rshape = tuple(int(n) for n in target.variance.shape)
    if rshape != tuple(int(sub.sizes[d]) for d in field_dims) or set(field_dims) != set(spec.field_dims):
        sizes = dict(zip(spec.field_dims, rshape, strict=False))
        raise EvaluateError(f"mismatched grids: samples {samples.info['path']} have {variables[0]} on "
                            f"({_dims_text(field_dims, sub.sizes)}) but the reference (exact law of "
                            f"{ds_label}) has ({_dims_text(spec.field_dims, sizes)}){hint}")
    count = min(samples.count, o.cap if o.cap is not None else max(2, EXACT_VALUES // int(np.prod(rshape))))
    ref = _exact_reference(dataset, source, variables, tuple(spec.field_dims), rshape, count)
    spectrum = exact_spectrum(target, tuple(ref.data[variables[0]].sizes[d] for d in ref.field_dims))
    return ref, {v: spectrum for v in variables}, _exact_moments(target)


def _cost(ens: Ensemble, keep: np.ndarray) -> tuple[dict[str, Any], list[str]]:
    """Mean ``rounds`` and ``nfe`` over the evaluated members (None, with a note, where they cannot be read)."""
    cost: dict[str, Any] = {"rounds_mean": None, "nfe_mean": None}
    notes: list[str] = []
    for key in ("rounds", "nfe"):
        if key not in ens.ds.data_vars:
            continue
        try:
            vals = np.asarray(ens.ds[key].values, dtype=np.float64)[keep]
        except Exception as exc:  # a corrupt chunk of the per-member costs: report, do not fail
            notes.append(f"the {key} array of {ens.path} cannot be read ({_short(exc)}): its mean is not reported")
            continue
        cost[f"{key}_mean"] = float(vals.mean())
    return cost, notes


def _evaluate(cfg: Any, o: _Options, t0: float) -> dict[str, Any]:
    """The evaluation proper (after the output directory was checked)."""
    ens, dataset, source, spec, ds_label, variables = _open_samples(cfg, o)
    identity = (ens.meta or {}).get("identity", {}) if isinstance(ens.meta, dict) else {}
    hint, diffs = _dataset_hint(identity.get("dataset"), dataset)
    with _scheduler(o.dask, o.threads) as sched:
        keep, unread, line = _readable(ens, variables, "samples.path")
        if line:
            log.warning(line)
        samples, sub, warn = _samples_side(ens, variables, keep, unread)
        warn += [line] if line else []
        ref, exact, exact_mom = _reference_side(o, dataset, source, spec, ds_label, samples, sub, variables, hint)
        if ref.count < 2:
            raise EvaluateError(f"the reference ({ref.label}) has {ref.count} sample(s); need at least 2")
        warn += [ref.info["warning"]] if ref.info.get("warning") else []
        samples = _check_grid(samples, ref, hint)
        if diffs:
            warn.append("the store was generated from another dataset config: " + "; ".join(diffs[:4])
                        + (" ..." if len(diffs) > 4 else ""))
        s = samples.info
        skipped = [f"{s['incomplete']} of {s['members']} members incomplete"] if s["incomplete"] else []
        skipped += [f"{s['unreadable']} unreadable"] if s["unreadable"] else []
        print(f"sciencegen-evaluate: {samples.count} complete members of {ens.path} "
              f"({_dims_text(ref.field_dims, sub.sizes)}, variables {', '.join(variables)}) against the "
              f"{ref.info.get('source', ref.kind)} reference ({ref.count} samples); {sched}"
              + (f"; {', '.join(skipped)}: excluded" if skipped else ""), flush=True)
        comp = _compute(samples, ref, exact, o.bins, o.max_lag)
        panels = _panels(samples, ref, variables, o.panel) if o.figures else {}
    cost, notes = _cost(ens, keep)
    units = {v: str(ens.ds[v].attrs.get("units", "") or ref.data[v].attrs.get("units", "")) for v in variables}
    metrics = {v: _variable_metrics(v, comp[v], samples, ref, None if exact is None else exact[v], exact_mom, units[v])
               for v in variables}
    result = _result(dataset, samples, ref, metrics, cost, warn + notes, sched, o)
    return _finish(result, o, samples, ref, panels, units, t0)


def _panels(samples: Side, ref: Side, variables: list[str], panel: int) -> dict[str, tuple[Any, Any]]:
    """The first ``panel`` fields of each side, computed."""
    import dask

    npanel = min(panel, samples.count, ref.count)
    lazy = {v: (samples.data[v].isel(member=slice(0, npanel)), ref.data[v].isel(sample=slice(0, npanel)))
            for v in variables}
    (got,) = dask.compute(lazy)
    return got


def _result(dataset: dict[str, Any], samples: Side, ref: Side, metrics: dict[str, Any], cost: dict[str, Any],
            warn: list[str], sched: str, o: _Options) -> dict[str, Any]:
    """The content of ``metrics.json`` (before ``seconds``, ``figures`` and ``output``)."""
    from .. import __version__

    v0 = next(iter(samples.data))
    return {
        "version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": _command(),
        "dataset": dataset,
        "samples": samples.info,
        "reference": {**{k: x for k, x in ref.info.items() if k != "warning"}, "label": ref.label},
        "grid": {"field_dims": list(ref.field_dims),
                 "shape": [int(samples.data[v0].sizes[d]) for d in ref.field_dims]},
        "variables": metrics,
        "cost": cost,
        "warnings": warn,
        "scheduler": sched,
        "settings": {"bins": o.bins, "max_lag": o.max_lag, "w1_bins": W1_BINS, "task_bytes": TASK_BYTES},
    }


def _finish(result: dict[str, Any], o: _Options, samples: Side, ref: Side, panels: dict[str, Any],
            units: dict[str, str], t0: float) -> dict[str, Any]:
    """Write the figures, ``report.md`` and ``metrics.json`` (atomically, metrics last), print the summary and
    return the content of ``metrics.json``."""
    out_dir = o.out_dir
    metrics, sinfo = result["variables"], result["samples"]
    writers: dict[str, Any] = {}
    if o.figures:
        title = (f"{result['dataset'].get('name')} {'x'.join(map(str, result['grid']['shape']))}: generated "
                 f"({sinfo.get('model') or '?'}, {sinfo.get('sampler') or '?'} {sinfo.get('sampler_steps') or '?'} "
                 f"steps) vs {ref.label}")
        fields, coords = _panel_arrays(panels, ref.field_dims)
        label = "exact law" if ref.kind == "exact" else ref.label
        writers = {
            "samples.png": lambda p: _plot_samples(p, fields, label, units, coords, title),
            "spectrum.png": lambda p: _plot_spectrum(p, metrics, samples, ref, title),
            "histogram.png": lambda p: _plot_histogram(p, metrics, samples, ref, title),
            "correlation.png": lambda p: _plot_correlation(p, metrics, samples, ref, title),
        }
    figures = list(writers)
    result["seconds"] = time.perf_counter() - t0
    result["figures"] = figures
    result["output"] = {"dir": str(out_dir), "metrics": str(out_dir / "metrics.json"),
                        "report": str(out_dir / "report.md"), "figures": [str(out_dir / f) for f in figures]}
    clean = _jsonable(result)
    writers["report.md"] = lambda p: p.write_text(_report(clean, figures))
    writers["metrics.json"] = lambda p: p.write_text(json.dumps(clean, indent=1) + "\n")
    _write_outputs(out_dir, writers)
    print(format_summary(clean), flush=True)
    return clean


def _panel_arrays(panels: dict[str, Any], field_dims: tuple[str, ...],
                  ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], dict[str, tuple[np.ndarray, ...]]]:
    """The panel fields as float64 arrays with member numbers, and the field coordinates, per variable."""
    fields, coords = {}, {}
    for v, (g, r) in panels.items():
        ids = np.asarray(g["member"].values) if "member" in g.coords else np.arange(g.shape[0])
        fields[v] = (np.asarray(g.values, dtype=np.float64), np.asarray(r.values, dtype=np.float64), ids)
        coords[v] = tuple(np.asarray(g[d].values, dtype=np.float64) if d in g.coords and
                          np.issubdtype(g[d].dtype, np.number) else np.arange(g.sizes[d], dtype=np.float64)
                          for d in field_dims)
    return fields, coords
