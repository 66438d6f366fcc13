"""The ensemble store as the generate pipeline plans it: output paths checked before any work, the store
created or checked (identity, lock, missing arrays, unreadable chunks) and the chunks this process still owns.

Used by :mod:`sciencegen.pipelines.generate` (a pipeline imports no other pipeline, so the command's planning
lives here): shards, the root attributes generation records, which chunks are still to do, and the one-line
errors of ``sciencegen-generate``. The store itself (its layout, create, lock, write a chunk, completed
members, the recorded identity, export) is the public API of :mod:`sciencegen.data.ensemble`.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xarray as xr

from ..config import plain
from ..data.ensemble import (
    FORMAT_VERSION,
    StoreLock,
    chunk_ranges,
    completed_members,
    create_store,
    discard_store,
    is_zarr,
    read_meta,
    remove_stale_asides,
    repair_arrays,
    set_flags,
    unreadable_chunks,
)
from ..errors import SciencegenError, os_error_line
from ..models.meta import first_difference, normalise
from ..samplers.noise import STREAMS

if TYPE_CHECKING:
    from .model import ModelInfo

log = logging.getLogger(__name__)

__all__ = [
    "LEGACY_STREAM",
    "NEW_STORE_STREAM",
    "STREAM_ATTR",
    "GenerateError",
    "Plan",
    "check_netcdf",
    "check_output_path",
    "parse_noise_stream",
    "parse_shard",
    "plan",
    "recorded_stream",
    "shard_chunks",
    "store_attrs",
]

#: the root attribute that records the noise stream a store's members were drawn with
STREAM_ATTR = "sciencegen_noise_stream"
#: the noise stream of a new store (``generate.noise_stream=null``): integer tensor ops on the sampling device
NEW_STORE_STREAM = "counter"
#: the noise stream of a store written before streams were recorded
LEGACY_STREAM = "cpu"


class GenerateError(SciencegenError):
    """Generation cannot start or continue; the message is one line meant for the user."""


def parse_shard(spec: Any, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(index, count)`` of this process's shard.

    Parameters
    ----------
    spec
        ``"i/n"`` (0-based ``i < n``), or ``None`` to take ``SLURM_ARRAY_TASK_ID`` /
        ``SLURM_ARRAY_TASK_COUNT`` from ``env`` (the index relative to ``SLURM_ARRAY_TASK_MIN``; not inside a
        Hydra submitit sweep, whose array tasks are different configs), else ``0/1``.
    env
        Environment (default ``os.environ``).

    Raises
    ------
    GenerateError
        A malformed spec, ``n < 1`` or ``i`` outside ``0..n-1``.
    """
    env = os.environ if env is None else env
    if spec is None or str(spec).strip() == "":
        # a job array of hydra-submitit-launcher is a sweep (one config per task), not shards of one store
        if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env and "SUBMITIT_EXECUTOR" not in env:
            try:
                task, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
                first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            except ValueError:
                raise GenerateError("SLURM_ARRAY_TASK_ID/COUNT/MIN are not integers") from None
            index = task - first
            if not 0 <= index < count:
                raise GenerateError(f"SLURM array task {task} (min {first}) is outside a {count}-task array: "
                                    "use a contiguous --array range, or set generate.shard=i/n")
            return index, count
        return 0, 1
    text = str(spec).strip()
    parts = text.split("/")
    try:
        if len(parts) != 2:
            raise ValueError
        index, count = int(parts[0]), int(parts[1])
    except ValueError:
        raise GenerateError(f"generate.shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise GenerateError(f"generate.shard={text}: need 0 <= i < n (shards are numbered from 0)")
    return index, count


def shard_chunks(n_chunks: int, index: int, count: int) -> range:
    """The contiguous chunk indices shard ``index`` of ``count`` owns (as equal as possible; may be empty)."""
    return range(index * n_chunks // count, (index + 1) * n_chunks // count)


@dataclass
class Plan:
    """What this process generates: the store, its chunks, and the ones it owns and still has to do.

    ``chunks`` are the member ranges of one condition; the units of work (``owned`` and ``todo`` index them) are
    :attr:`units`: ``(condition, start, stop)`` in condition-major order (``condition`` ``None`` in an
    unconditional store, where unit ``k`` is chunk ``k``).
    """

    path: Path | None
    members: int
    chunk: int
    chunks: list[tuple[int, int]]
    owned: list[int]
    todo: list[int]
    created: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    lock: StoreLock | None = None
    conditions: int | None = None
    noise_stream: str = NEW_STORE_STREAM

    @property
    def units(self) -> list[tuple[int | None, int, int]]:
        """The units of work: ``(condition, start, stop)``, condition-major (``condition`` None: unconditional)."""
        if self.conditions is None:
            return [(None, a, b) for a, b in self.chunks]
        return [(c, a, b) for c in range(self.conditions) for a, b in self.chunks]

    @property
    def shape(self) -> int | tuple[int, int]:
        """The shape of the per-member arrays: ``members`` or ``(conditions, members)``."""
        return self.members if self.conditions is None else (self.conditions, self.members)

    @property
    def total(self) -> int:
        """Members in the store (over every condition)."""
        return self.members * (self.conditions or 1)

    def flags(self, flags: Any, unit: int) -> Any:
        """The ``complete`` flags (:func:`~sciencegen.data.ensemble.completed_members`) of unit ``unit``."""
        c, a, b = self.units[unit]
        return flags[a:b] if c is None else flags[c, a:b]


def check_output_path(path: Path, identity: dict[str, Any], overwrite: bool,
                      lock: StoreLock | None) -> dict[str, Any] | None:
    """The existing store's metadata when it holds this ensemble; None when the path is free (or overwritten).

    A store holds this ensemble when its recorded identity (:func:`sciencegen.data.ensemble.read_identity`)
    equals ``identity``. Overwriting needs ``lock`` exclusively: a store that another job is writing is never
    deleted.

    Raises
    ------
    GenerateError
        The path is a file, a foreign directory or store, another ensemble (without ``overwrite``), or a store
        another job is writing.
    """
    if path.is_file() or (path.exists() and not path.is_dir()):
        raise GenerateError(f"output.path {path} is a file, not a Zarr store: choose another output.path")
    if not path.exists():
        return None
    if not is_zarr(path):
        if any(path.iterdir()):
            raise GenerateError(f"output.path {path} is a non-empty directory that is not a Zarr store: "
                                "choose another output.path")
        return None
    meta = read_meta(path)
    if meta is None:
        raise GenerateError(f"output.path {path} is a Zarr store not written by sciencegen-generate: "
                            "it is never overwritten; choose another output.path")
    diff = first_difference(meta.get("identity"), normalise(identity), "")
    if diff is None:
        return meta
    at, was, now = diff
    if not overwrite:
        raise GenerateError(f"output.path {path} holds an ensemble of another config ({at.lstrip('.')}: "
                            f"{json.dumps(was)} in the store, {json.dumps(now)} now); rerun with that "
                            "config, choose another output.path, or set output.overwrite=true")
    if lock is None or not lock.exclusive():
        raise GenerateError(f"output.path {path} is being written by another sciencegen-generate job (it holds "
                            f"{lock.file if lock else 'the lock'}): output.overwrite=true would delete its members; "
                            "wait for it or stop it, then rerun")
    discard_store(path)  # renamed aside first: a kill while deleting leaves no store claiming lost members
    return None


def _make_parent(path: Path, key: str) -> None:
    """Create the parent directory of ``path``; one line naming the culprit when a parent is a file."""
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise GenerateError(f"{key} {path}: a parent of it is a file, not a directory ({blocker})")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if not path.parent.is_dir():
            raise GenerateError(f"{key} {path}: cannot create its directory: "
                                f"{os_error_line(exc).split(': ', 1)[-1]}") from None


def check_netcdf(target: Any) -> None:
    """``output.netcdf`` must be a writable file path: checked before any work (its parent is created).

    Raises
    ------
    GenerateError
        The path is a directory, a parent of it is a file, or its directory is not writable.
    """
    if not target:
        return
    out = Path(str(target)).expanduser()
    if out.is_dir():
        raise GenerateError(f"output.netcdf {out} is a directory: give a file name, e.g. {out / 'ensemble.nc'}")
    _make_parent(out, "output.netcdf")
    if not os.access(out.parent, os.W_OK):
        raise GenerateError(f"output.netcdf {out}: its directory {out.parent} is not writable")


def _lock(path: Path) -> tuple[StoreLock | None, OSError | None]:
    """Hold the store's lock shared (creating the parent directory); ``(None, why)`` where nothing can be written."""
    _make_parent(path, "output.path")
    lock = StoreLock(path)
    try:
        lock.shared()
    except OSError as exc:  # a read-only or full filesystem: fine as long as there is nothing to write
        return None, exc
    return lock, None


def store_attrs(identity: dict[str, Any], info: ModelInfo, cfg: Any, resolved: dict[str, Any],
                version: str) -> dict[str, Any]:
    """The root attributes generation records beside the store's description and ``Conventions``
    (:func:`sciencegen.data.ensemble.template`): title, source, history, sampler, model, seed, the config.

    Parameters
    ----------
    identity
        The ensemble's identity (dataset, model, sampler, seed, ...).
    info
        The model (its identity is recorded).
    cfg
        The job's config (recorded resolved).
    resolved
        The sampler's resolved options.
    version
        sciencegen's version.
    """
    return {
        "title": f"{identity['dataset'].get('name', 'dataset')} ensemble from sciencegen",
        "source": f"sciencegen {version}",
        "history": f"{datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}: "
                   f"sciencegen-generate {identity['sampler']['name']}",
        "sampler": identity["sampler"]["name"],
        "sampler_steps": identity["sampler"]["steps"],
        "sampler_options": json.dumps({k: v for k, v in resolved.items() if not _inf(v)}, sort_keys=True,
                                      default=str),
        "model": json.dumps(info.identity, sort_keys=True),
        "seed": identity["seed"],
        "sciencegen_version": version,
        "config": json.dumps(plain(cfg, GenerateError), sort_keys=True, default=str),
    }


def plan(path: Path | None, index: int, count: int, members: int, chunk: int, batch: int, identity: dict[str, Any],
         make_template: Callable[[dict[str, Any], int], xr.Dataset], variables: tuple[str, ...], overwrite: bool,
         verify: bool, conditions: int | None = None, noise_stream: str | None = None) -> Plan:
    """Create or check the store, lock it when this job will write, and list the chunks still to do.

    Parameters
    ----------
    path
        The store (None: samples are discarded, every owned chunk is to do).
    index, count
        This process's shard (:func:`parse_shard`).
    members, chunk, batch
        Members in the ensemble, members per store chunk, the sampling batch recorded in a new store.
    identity
        What decides the members' values; an existing store must record the same.
    make_template
        ``(meta, chunk) -> template`` (:func:`sciencegen.data.ensemble.template`).
    variables
        The field variables.
    overwrite, verify
        ``output.overwrite``, ``generate.verify``.
    conditions
        A conditional ensemble: its number of conditions (the units of work are ``(condition, member range)``
        pairs in condition-major order, which shards split).
    noise_stream
        ``generate.noise_stream``: ``None`` takes :data:`NEW_STORE_STREAM` for a new store and the recorded one
        (:func:`recorded_stream`, :data:`LEGACY_STREAM` where none is) when resuming; a name must agree with an
        existing store's. :attr:`Plan.noise_stream` is the stream to sample with.
    """
    if path is None:
        made = Plan(None, members, chunk, chunk_ranges(members, chunk), [], [], conditions=conditions,
                    noise_stream=noise_stream or NEW_STORE_STREAM)
        made.owned = list(shard_chunks(len(made.units), index, count))
        made.todo = list(made.owned)
        return made
    lock, why = _lock(path)
    try:
        return _plan_store(path, lock, why, index, count, members, chunk, batch, identity, make_template, variables,
                           overwrite, verify, conditions, noise_stream)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _plan_store(path: Path, lock: StoreLock | None, why: OSError | None, index: int, count: int, members: int,
                chunk: int, batch: int, identity: dict[str, Any], make_template: Callable[..., xr.Dataset],
                variables: tuple[str, ...], overwrite: bool, verify: bool, conditions: int | None,
                noise_stream: str | None) -> Plan:
    meta = check_output_path(path, identity, overwrite, lock)
    created = False
    stream = noise_stream or NEW_STORE_STREAM

    def streamed(meta: dict[str, Any], chunk: int) -> xr.Dataset:  # the store's template records its stream
        made = make_template(meta, chunk)
        made.attrs[STREAM_ATTR] = stream
        return made

    if meta is None:
        if lock is None:
            raise GenerateError(os_error_line(why, str(path)))
        if lock.exclusive():  # nobody else is at this path: leftovers of killed overwrites can go
            for old in remove_stale_asides(path):
                log.info("removed %s, left by an overwrite that was interrupted", old)
        meta = {"format": FORMAT_VERSION, "identity": identity, "chunk": chunk, "batch_size": batch,
                "store_id": uuid.uuid4().hex}
        try:
            created = create_store(path, streamed(meta, chunk), variables)
        except OSError as exc:
            raise GenerateError(os_error_line(exc, str(path))) from None
        lock.shared()  # after an overwrite: back from exclusive
        if not created:
            meta = check_output_path(path, identity, False, None)
    if not created:
        stream = _resumed_stream(path, noise_stream)
    # the store's chunks are the unit of work (a rerun with another batch size keeps them)
    chunk = int(meta.get("chunk", chunk))
    made = Plan(path, members, chunk, chunk_ranges(members, chunk), [], [], created, meta, lock, conditions, stream)
    made.owned = list(shard_chunks(len(made.units), index, count))
    made.todo = _todo(made, streamed(meta, chunk), variables, verify)
    if made.todo and lock is None:
        done = int(completed_members(path, made.shape).sum())
        raise GenerateError(f"{os_error_line(why, str(path))}; {len(made.todo)} chunk(s) to write, "
                            f"{done}/{made.total} members complete are kept")
    return made


def parse_noise_stream(value: Any) -> str | None:
    """``generate.noise_stream``: ``None`` (auto: see :func:`plan`) or one of
    :data:`~sciencegen.samplers.noise.STREAMS`.

    Raises
    ------
    GenerateError
        Any other value.
    """
    if value is None or (isinstance(value, str) and value in STREAMS):
        return value
    raise GenerateError(f"generate.noise_stream must be null (auto), {' or '.join(STREAMS)}, got {value!r}")


def recorded_stream(path: Path) -> str | None:
    """The noise stream a store records (its root attribute :data:`STREAM_ATTR`); None where it records none.

    Raises
    ------
    GenerateError
        The attribute names no known stream.
    """
    import zarr

    value = zarr.open_group(str(path), mode="r", use_consolidated=False).attrs.get(STREAM_ATTR)
    if value is None or value in STREAMS:
        return value
    raise GenerateError(f"{path}: its {STREAM_ATTR} attribute is {value!r}, not one of {', '.join(STREAMS)}; "
                        "the store is damaged, choose another output.path")


def _resumed_stream(path: Path, wanted: str | None) -> str:
    """The stream that resumes the store at ``path``: the one it records (:data:`LEGACY_STREAM` where it records
    none: its members so far were drawn with it); ``wanted`` (``generate.noise_stream``) must agree."""
    recorded = recorded_stream(path)
    stream = recorded or LEGACY_STREAM
    if wanted is not None and wanted != stream:
        how = "records" if recorded else "was written before streams were recorded, so it uses"
        raise GenerateError(f"generate.noise_stream={wanted}: the store {path} {how} the {stream} noise stream; "
                            "unset generate.noise_stream (null) to resume it, or choose another output.path")
    return stream


def _todo(plan: Plan, template: xr.Dataset, variables: tuple[str, ...], verify: bool) -> list[int]:
    """The owned chunks not complete; repairs missing arrays and (``verify``) unreadable chunks first."""
    path, units = plan.path, plan.units
    if plan.lock is not None:
        for name in repair_arrays(path, template, variables):
            log.warning("%s: the %s array was missing; recreated (its members are regenerated)", path, name)
    flags = completed_members(path, plan.shape)
    todo = [k for k in plan.owned if not plan.flags(flags, k).all()]
    if verify:
        done = [k for k in plan.owned if k not in todo]
        ranges = [u[1:] if u[0] is None else u for u in units]
        for k, why in unreadable_chunks(path, ranges, done, variables).items():
            c, a, b = units[k]
            log.warning("%s: members %d..%d%s flagged complete but unreadable (%s); regenerating them",
                        path, a, b - 1, "" if c is None else f" of condition {c}", why)
            if plan.lock is not None:
                set_flags(str(path), a, b, False, c)
            todo.append(k)
    return sorted(todo)


def _inf(v: Any) -> bool:
    return isinstance(v, float) and not math.isfinite(v)
