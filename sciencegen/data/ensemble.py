"""The ensemble store on disk: its public API, used by generate, evaluate and the whole pipeline.

* **create** from a template: :func:`template` (the layout: fields over ``member`` + field dims, the per-member
  ``rounds``, ``nfe`` and ``complete`` arrays, the CF ``member`` coordinate, root attributes; a conditional
  ensemble (:class:`ConditionAxis`) adds the ``condition`` and ``lead_time`` dims, ``truth_*`` and ``input_*``),
  then :func:`create_store` (metadata only, renamed into place); :func:`discard_store` removes a store to
  replace it;
* **write a chunk**: :func:`write_chunk` (data first, flags last; a conditional chunk also writes its
  condition's inputs and truth before its members), :func:`chunk_ranges` (the chunks along ``member``),
  :func:`set_flags`, :func:`repair_arrays`;
* **completed members**: :func:`completed_members`, :func:`unreadable_chunks`;
* **open for reading**: :func:`open_store` (lazy xarray), :func:`field_variables`, :func:`read_meta`;
  :func:`export_netcdf` writes a finished store to one netCDF file;
* **the identity a rerun is compared with**: :func:`read_identity` (the ``identity`` recorded in the store's
  ``sciencegen_ensemble`` attribute; generation refuses to continue a store of another identity).

The rules that keep a store true (docs/generate.md, docs/architecture.md):

* the store is created whole (metadata only) in a hidden sibling directory and renamed into place;
* every store carries a random ``store_id`` in its root attributes; a writer checks that the store at its
  path is still the one it planned for **before the data and again before the completion flags** of every
  chunk, so a store replaced underneath a running job (``output.overwrite=true`` elsewhere) is never written
  into, let alone marked complete;
* jobs that write hold a shared lock on ``.NAME.lock`` beside the store; replacing a store needs the
  exclusive lock, so an overwrite cannot delete a store another job is filling;
* a chunk's data go first, its ``complete`` flags last (each Zarr chunk write is atomic on a local store);
* a missing ``complete`` array means "nothing complete", never an error; unreadable chunks count as
  incomplete, and :func:`unreadable_chunks` finds chunks flagged complete whose bytes cannot be decoded.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import warnings
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import SciencegenError
from .masks import ensemble_layout, finite_where_valid, store_valid
from .metadata import clean_template
from .store import CONVENTIONS

__all__ = [
    "ATTR",
    "CONDITION_ATTR",
    "CONVENTIONS",
    "ConditionAxis",
    "FLAG_ARRAYS",
    "FORMAT_VERSION",
    "MEMBER_ATTRS",
    "StoreError",
    "StoreLock",
    "StoreReplaced",
    "chunk_ranges",
    "completed_members",
    "create_store",
    "discard_store",
    "export_netcdf",
    "field_variables",
    "is_zarr",
    "open_store",
    "read_conditioning",
    "read_identity",
    "read_meta",
    "remove_stale_asides",
    "repair_arrays",
    "set_flags",
    "template",
    "unreadable_chunks",
    "write_chunk",
]

#: root attribute holding the JSON description of an ensemble store
ATTR = "sciencegen_ensemble"
FORMAT_VERSION = 1
#: root attribute of a conditional ensemble: JSON of its conditioning (docs/generate.md, "Conditional ensembles")
CONDITION_ATTR = "sciencegen_conditioning"
#: per-member arrays beside the fields
FLAG_ARRAYS = ("rounds", "nfe", "complete")
#: CF attributes of the ``member`` coordinate (a ``realization`` index is a pure number: CF asks for no units)
MEMBER_ATTRS = {"standard_name": "realization", "long_name": "ensemble member (depends only on seed, index)"}


class StoreError(SciencegenError):
    """The ensemble store cannot be used as asked; the message is one line naming the store."""


class StoreReplaced(StoreError):
    """The store at the path is no longer the one this job planned for (it was deleted or replaced)."""


def is_zarr(path: Path) -> bool:
    """Whether ``path`` is a directory that holds Zarr metadata at its root."""
    return path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zgroup", ".zattrs", ".zmetadata"))


def read_meta(path: Path) -> dict[str, Any] | None:
    """The store's ``sciencegen_ensemble`` description; None when it is a Zarr store of something else.

    Raises
    ------
    StoreError
        The root metadata exists but cannot be read (truncated or garbled): the store is corrupt.
    """
    root = Path(path) / "zarr.json"
    if root.exists():
        try:
            attrs = json.loads(root.read_text()).get("attributes") or {}
        except (OSError, ValueError, AttributeError) as exc:
            raise StoreError(f"{path} is corrupt: its root metadata zarr.json cannot be read ({exc}); "
                             "move it away (or delete it) and rerun to regenerate the ensemble") from None
    else:
        import zarr

        try:
            attrs = dict(zarr.open_group(str(path), mode="r").attrs)
        except Exception:
            return None
    text = attrs.get(ATTR)
    if not text:
        return None
    try:
        meta = json.loads(text)
    except (TypeError, ValueError):
        raise StoreError(f"{path} is corrupt: its {ATTR} attribute is not valid JSON; move it away and rerun") from None
    return meta if isinstance(meta, dict) else None


def read_conditioning(path: str | os.PathLike) -> dict[str, Any] | None:
    """The :data:`CONDITION_ATTR` description of a conditional ensemble store (None: unconditional or foreign)."""
    import zarr

    try:
        text = zarr.open_group(str(path), mode="r").attrs.get(CONDITION_ATTR)
        return json.loads(text) if text else None
    except Exception:
        return None


def read_identity(path: str | os.PathLike) -> dict[str, Any] | None:
    """The identity recorded in a store: what a rerun's identity is compared with (None: no sciencegen store).

    The identity is what decides the members' values (dataset, model, sampler, seed, members, dtype,
    variables); generation continues a store only when a rerun's identity equals it.

    Raises
    ------
    StoreError
        The store's root metadata is corrupt (see :func:`read_meta`).
    """
    p = Path(path)
    if not is_zarr(p):
        return None
    meta = read_meta(p)
    return meta.get("identity") if meta else None


def _check_owner(path: str, store_id: str | None) -> None:
    """Raise :class:`StoreReplaced` unless the store at ``path`` carries ``store_id``."""
    if store_id is None:
        return
    try:
        meta = read_meta(Path(path))
    except StoreError:
        meta = None
    if not meta or meta.get("store_id") != store_id:
        raise StoreReplaced(f"{path} was deleted or replaced by another job while this one was writing "
                            "(output.overwrite=true elsewhere?): this job wrote nothing into the new store")


class StoreLock:
    """An advisory ``flock`` on ``.NAME.lock`` beside a store: shared for writers, exclusive to replace it.

    Local and most cluster filesystems honour it; where ``flock`` is unsupported the lock is a no-op and the
    ``store_id`` check of every write still keeps foreign writes out.
    """

    def __init__(self, path: Path) -> None:
        self.file = path.parent / f".{path.name}.lock"
        self.fd: int | None = None

    def _open(self) -> None:
        if self.fd is None:
            self.fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)

    def shared(self) -> None:
        """Hold the lock shared (waits while another job replaces the store)."""
        self._open()
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_SH)

    def exclusive(self) -> bool:
        """Try to hold the lock exclusively, without waiting; False while any other job holds it."""
        self._open()
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
        return True

    def release(self) -> None:
        """Drop the lock (the lock file stays: removing it would race with other jobs)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def chunk_ranges(members: int, chunk: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the store's chunks along ``member``."""
    return [(a, min(a + chunk, members)) for a in range(0, members, chunk)]


@dataclass
class ConditionAxis:
    """The ``condition`` (and ``lead_time``) axes of a conditional ensemble store (docs/generate.md).

    Attributes
    ----------
    count
        Conditions (cases) in the store.
    coords
        The source's sample coordinates along ``condition``: ``{name: (values, attrs)}`` (e.g. ``time``).
    inputs, statics
        Per-condition inputs as the model saw them (physical units) ``{"input_<name>": attrs}``; static ones
        ``{"input_static_<name>": (values on the field dims, attrs)}``.
    truth
        ``{"truth_<var>": attrs}`` where the truth is known (empty: unknown, e.g. a user's condition file).
    lead_times, lead_attrs
        Rollouts: lead times ``1..lead_times`` (``None``: no ``lead_time`` dim), the coordinate's attributes.
    description
        The JSON of the root attribute :data:`CONDITION_ATTR`.
    """

    count: int
    coords: dict[str, tuple[np.ndarray, dict]] = field(default_factory=dict)
    inputs: dict[str, dict] = field(default_factory=dict)
    statics: dict[str, tuple[np.ndarray, dict]] = field(default_factory=dict)
    truth: dict[str, dict] = field(default_factory=dict)
    lead_times: int | None = None
    lead_attrs: dict[str, Any] = field(default_factory=dict)
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def lead(self) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """``(dims, shape)`` of the lead-time axis: ``(("lead_time",), (L,))`` or empty."""
        return (("lead_time",), (int(self.lead_times),)) if self.lead_times else ((), ())


def template(meta: dict[str, Any], variables: tuple[str, ...], field_dims: tuple[str, ...],
             field_shape: tuple[int, ...], members: int, chunk: int, *, coords: dict[str, Any] | None = None,
             var_attrs: dict[str, dict] | None = None, attrs: dict[str, Any] | None = None,
             conditions: ConditionAxis | None = None, masks: dict[str, Any] | None = None) -> xr.Dataset:
    """The layout of an ensemble store as a lazy (Dask, all zeros) dataset, for :func:`create_store`.

    Parameters
    ----------
    meta
        The store's description (``format``, ``identity``, ``chunk``, ``batch_size``, ``store_id``), written
        as JSON into the root attribute :data:`ATTR`.
    variables, field_dims, field_shape
        One float32 field per variable on ``(member, *field_dims)`` (conditional:
        ``(condition, member, [lead_time,] *field_dims)``).
    members, chunk
        Members in the store (per condition) and members per Zarr chunk.
    coords
        Coordinates of the field dims (``{dim: (dim, values, attrs)}``); ``member`` gets :data:`MEMBER_ATTRS`.
    var_attrs
        Attributes per variable (units, long_name, ...).
    attrs
        Further root attributes; ``Conventions`` is :data:`CONVENTIONS`, as in the prepared dataset stores.
    conditions
        A conditional ensemble's ``condition`` axis (``truth_*``, ``input_*``, the ``lead_time`` dim, the root
        attribute :data:`CONDITION_ATTR`); ``None``: the unconditional layout.
    masks
        Masked data ``{variable: (valid, metadata)}``: ``valid_<v>``, ``sciencegen_masks`` (masks.ensemble_layout).
    """
    import dask.array as da

    coords, var_attrs = clean_template(coords, var_attrs, (*variables, *field_dims))  # no stale CF attributes
    lead_dims, lead_shape = conditions.lead if conditions else ((), ())
    outer = ("condition", "member") if conditions else ("member",)
    oshape, ochunk = ((conditions.count, members), (1, chunk)) if conditions else ((members,), (chunk,))
    shape = (*oshape, *lead_shape, *field_shape)
    data: dict[str, Any] = {}
    for v in variables:
        data[v] = ((*outer, *lead_dims, *field_dims), da.zeros(shape, chunks=(*ochunk, *lead_shape, *field_shape),
                                                               dtype="f4"), var_attrs.get(v, {}))
    if conditions:
        data.update(_condition_arrays(conditions, field_dims, field_shape))
    data["rounds"] = (outer, da.zeros(oshape, chunks=ochunk, dtype="i4"),
                      {"long_name": "sequential denoiser rounds of the batch that produced the member"})
    data["nfe"] = (outer, da.zeros(oshape, chunks=ochunk, dtype="i4"),
                   {"long_name": "denoiser evaluations spent on the member"})
    select = "ds.where(ds.complete)" if conditions else "ds.sel(member=ds.complete.values)"
    data["complete"] = (outer, da.zeros(oshape, chunks=ochunk, dtype=bool),
                        {"long_name": f"member written completely (select with {select})"})
    valid, mask_attrs = ensemble_layout(masks, field_dims)
    data.update(valid)
    coords = dict(coords or {})
    coords["member"] = ("member", np.arange(members), dict(MEMBER_ATTRS))
    root = {ATTR: json.dumps(meta, sort_keys=True, default=str), "Conventions": CONVENTIONS, **(attrs or {}),
            **mask_attrs}
    if conditions:
        coords.update(_condition_coords(conditions))
        root[CONDITION_ATTR] = json.dumps(conditions.description, default=str)  # in order: inputs are channels
    return xr.Dataset(data, coords=coords, attrs=root)


def _condition_arrays(axis: ConditionAxis, field_dims: tuple[str, ...], field_shape: tuple[int, ...]
                      ) -> dict[str, Any]:
    """``truth_*`` (condition, [lead_time,] *field), ``input_*`` (condition, *field) lazily; statics as values."""
    import dask.array as da

    lead_dims, lead_shape = axis.lead
    out: dict[str, Any] = {}
    for name, a in axis.truth.items():
        out[name] = (("condition", *lead_dims, *field_dims),
                     da.zeros((axis.count, *lead_shape, *field_shape), chunks=(1, *lead_shape, *field_shape),
                              dtype="f4"), a)
    for name, a in axis.inputs.items():
        out[name] = (("condition", *field_dims),
                     da.zeros((axis.count, *field_shape), chunks=(1, *field_shape), dtype="f4"), a)
    for name, (values, a) in axis.statics.items():
        out[name] = (field_dims, np.asarray(values, dtype=np.float32), a)
    return out


def _condition_coords(axis: ConditionAxis) -> dict[str, Any]:
    """``condition`` (0..C-1), the source's sample coordinates along it, and ``lead_time`` (1..L)."""
    out: dict[str, Any] = {"condition": ("condition", np.arange(axis.count),
                                         {"long_name": "condition (case) of the ensemble"})}
    for name, (values, a) in axis.coords.items():
        out[name] = ("condition", np.asarray(values), a)
    if axis.lead_times:
        out["lead_time"] = ("lead_time", np.arange(1, int(axis.lead_times) + 1), dict(axis.lead_attrs))
    return out


def discard_store(path: Path) -> None:
    """Remove a store to replace it: renamed aside first (atomic), then deleted.

    A kill during the deletion leaves no store at ``path`` claiming members it lost, only a
    ``.NAME.old-HOST-PID`` sibling that :func:`remove_stale_asides` deletes later. Call with the store's
    :class:`StoreLock` held exclusively.
    """
    aside = path.parent / f".{path.name}.old-{socket.gethostname()}-{os.getpid()}"
    os.rename(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


def remove_stale_asides(path: Path) -> list[Path]:
    """Delete ``.NAME.old-*`` siblings left by replacements that were killed (call with the lock held exclusively).

    Returns the folders removed.
    """
    removed = []
    for old in path.parent.glob(f".{path.name}.old-*"):
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old)
    return removed


def create_store(path: Path, template: xr.Dataset, variables: tuple[str, ...]) -> bool:
    """Write the template's metadata into a hidden sibling and rename it into place; False if another won."""
    import zarr

    tmp = path.parent / f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # consolidated metadata is a zarr v3 extension; xarray reads it
            template.to_zarr(tmp, mode="w-", compute=False, encoding=_encoding(template, variables),
                             consolidated=False)
            zarr.consolidate_metadata(str(tmp))
        for _ in range(5):
            try:
                os.rename(tmp, path)
                return True
            except OSError:
                if is_zarr(path):  # another process created it first
                    return False
                if not _stray(path, set(template.variables)):
                    raise
                # chunks a writer of a just-deleted store put back (a filesystem without flock): not ours
                shutil.rmtree(path, ignore_errors=True)
        raise StoreError(f"{path} keeps being written by another job while it is replaced: stop that job first")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _stray(path: Path, names: set[str]) -> bool:
    """A directory without Zarr metadata holding only array folders of an ensemble store."""
    try:
        entries = list(path.iterdir())
    except OSError:
        return False
    return not is_zarr(path) and all(e.is_dir() and e.name in names for e in entries)


def _encoding(template: xr.Dataset, variables: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    # explicit fill values: unwritten members read as NaN and unwritten flags as "not complete". The flags' fill
    # value is the Zarr array's own, not a CF _FillValue: with one, xarray would mask every False as NaN (which
    # is truthy) and decode the flags as objects; without, they read back as plain booleans.
    # zstd with its content checksum: a flipped bit in a chunk fails to decode instead of reading as other numbers
    import zarr

    conditional = [str(v) for v in template.data_vars if str(v).startswith(("truth_", "input_"))]
    enc: dict[str, dict[str, Any]] = {v: {"_FillValue": np.float32("nan")} for v in (*variables, *conditional)}
    enc["complete"] = {"fill_value": False}
    for v in ("rounds", "nfe"):
        enc[v] = {"_FillValue": np.int32(0)}
    for e in enc.values():
        e["compressors"] = [zarr.codecs.ZstdCodec(level=0, checksum=True)]
    return {k: v for k, v in enc.items() if k in template}


def repair_arrays(path: Path, template: xr.Dataset, variables: tuple[str, ...]) -> list[str]:
    """Recreate arrays of the template missing from the store (metadata only); returns their names.

    A missing field or cost array means its members' bytes are gone, so every ``complete`` flag is cleared;
    a missing ``complete`` array alone just means nothing counts as complete.
    """
    import zarr

    group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    have = set(group.array_keys())
    missing = [v for v in template.data_vars if v not in have]
    if not missing:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = _encoding(template, variables)
        part = template[missing]
        part.drop_vars(list(part.coords)).to_zarr(
            str(path), mode="a", compute=False, consolidated=False, encoding={k: enc[k] for k in missing if k in enc})
    if any(v != "complete" for v in missing):
        if "condition" in template.dims:
            zarr.open_array(str(path), path="complete", mode="r+")[...] = False
        else:
            set_flags(str(path), 0, int(template.sizes["member"]), False)
    return missing


def completed_members(path: str | os.PathLike, members: int | tuple[int, ...] | None = None) -> np.ndarray:
    """The ``complete`` flag of every member (a missing array or unreadable chunks count as incomplete).

    ``(member,)`` for an unconditional store, ``(condition, member)`` for a conditional one; ``members`` (an
    int, or that shape) is the shape to return when the array is missing (``None``: raise then).
    """
    import zarr

    try:
        arr = zarr.open_array(str(path), path="complete", mode="r")
    except Exception:
        if members is None:
            raise
        return np.zeros(members, dtype=bool)
    shape = tuple(arr.shape) if members is None else (members,) if isinstance(members, int) else tuple(members)
    out = np.zeros(shape, dtype=bool)
    steps = [int(c) for c in arr.chunks]
    for corner in product(*(range(0, n, s) for n, s in zip(shape, steps, strict=True))):
        region = tuple(slice(a, min(a + s, n)) for a, s, n in zip(corner, steps, shape, strict=True))
        with contextlib.suppress(Exception):
            out[region] = np.asarray(arr[region], dtype=bool)
    return out


def set_flags(path: str, start: int, stop: int, value: bool, condition: int | None = None) -> None:
    """Set the ``complete`` flags of members ``start..stop-1`` (of ``condition`` in a conditional store)."""
    import zarr

    where = _region(condition, start, stop)
    zarr.open_array(path, path="complete", mode="r+")[where] = np.full(stop - start, value, dtype=bool)


def _region(condition: int | None, start: int, stop: int) -> tuple[Any, ...]:
    """The index of members ``start..stop-1`` (of ``condition``) in the per-member arrays."""
    return (slice(start, stop),) if condition is None else (condition, slice(start, stop))


def write_chunk(path: str, store_id: str | None, start: int, stop: int, fields_: dict[str, np.ndarray],
                rounds: np.ndarray, nfe: np.ndarray, condition: int | None = None,
                case: dict[str, np.ndarray] | None = None) -> int:
    """Write one chunk of members: data first, then their completion flags. Returns the bytes of data.

    The store's ``store_id`` is checked before the data and again before the flags, so a store replaced
    under this job is never written into nor marked complete. Straight into the Zarr arrays the template
    created (xarray's region writes cost several times more Python time per chunk). In a conditional store
    the members are those of ``condition``, and ``case`` (its ``input_*`` and ``truth_*`` arrays; every chunk
    of the condition writes the same bytes) goes first, so no member is flagged without them.

    Raises
    ------
    StoreReplaced
        The store at ``path`` is not the one with ``store_id`` any more.
    """
    import zarr

    where = _region(condition, start, stop)
    _check_owner(path, store_id)
    try:
        group = zarr.open_group(path, mode="r+", use_consolidated=False)
        for name, a in (case or {}).items():
            group[name][condition] = a
        for v, a in fields_.items():
            group[v][where] = a
        group["rounds"][where] = rounds.astype(np.int32)
        group["nfe"][where] = nfe.astype(np.int32)
        _check_owner(path, store_id)
        group["complete"][where] = np.ones(stop - start, dtype=bool)  # last: the members are now on disk
    except (OSError, KeyError):  # the store vanished under the write: say so, not which temp file failed
        _check_owner(path, store_id)
        raise
    return int(sum(a.nbytes for a in fields_.values()))


def unreadable_chunks(path: Path, ranges: list[tuple[int, ...]], chunks: list[int],
                      variables: tuple[str, ...]) -> dict[int, str]:
    """Chunks among ``chunks`` whose bytes cannot be decoded, or whose fields are not finite: ``{chunk: why}``.

    ``ranges[k]`` is chunk ``k``'s ``(start, stop)`` of members, or ``(condition, start, stop)`` in a
    conditional store (whose condition's ``input_*`` and ``truth_*`` must decode too). Reads every listed
    chunk of every field and cost array once (``generate.verify=true``).
    """
    import zarr

    group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    extra = [k for k in group.array_keys() if k.startswith(("truth_", "input_")) and not k.startswith("input_static_")]
    valid = store_valid(group)  # masked data: NaN where a variable is invalid
    bad: dict[int, str] = {}
    for c in chunks:
        cond, a, b = ranges[c] if len(ranges[c]) == 3 else (None, *ranges[c])
        where = _region(cond, a, b)
        for name in (*variables, "rounds", "nfe", *(extra if cond is not None else ())):
            try:
                values = np.asarray(group[name][where if name not in extra else cond])
            except Exception as exc:  # truncated or garbled chunk file: any codec error
                bad[c] = f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
                break
            if (name in variables or name.startswith("input_")) and not finite_where_valid(values, name, valid):
                bad[c] = f"{name}: missing or non-finite values in members flagged complete"
                break
    return bad


# --------------------------------------------------------------------------------------------- reading


def open_store(path: str | os.PathLike) -> xr.Dataset:
    """Open an ensemble store lazily (Dask arrays on the store's chunks); read ``complete`` with
    :func:`completed_members`, which counts unreadable flags as incomplete."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # consolidated metadata is a zarr v3 extension
        return xr.open_zarr(str(path), chunks={})


def field_variables(ds: xr.Dataset) -> tuple[str, ...]:
    """The field variables of an opened store: over ``member`` and at least one field dim, not the flag arrays."""
    return tuple(str(v) for v in ds.data_vars
                 if v not in FLAG_ARRAYS and "member" in ds[v].dims and ds[v].ndim >= 2)


def export_netcdf(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Export a finished ensemble store to one netCDF file (written to a temporary name, then renamed).

    Raises
    ------
    StoreError
        Not every member of the store is complete.
    """
    out = Path(out)
    ds = xr.open_zarr(str(path))
    # the flags through completed_members: older stores carry a CF _FillValue on them, which xarray
    # decodes as NaN (truthy) for every False
    shape = tuple(int(ds.sizes[d]) for d in ("condition", "member") if d in ds.dims)
    if not completed_members(path, shape).all():
        raise StoreError(f"{path} is not complete: finish the ensemble before exporting it to netCDF")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    enc = {v: {"zlib": True, "complevel": 1} for v in ds.data_vars if ds[v].dtype.kind == "f"}
    try:
        ds.to_netcdf(tmp, encoding=enc)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return out
