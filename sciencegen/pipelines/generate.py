"""``run_generate(cfg)``: sample an ensemble and stream it, batch by batch, into one chunked Zarr store.

The Zarr contract (DESIGN.md §5, docs/generate.md): dim ``member`` plus the dataset's field dims and
coordinates, one float32 variable per physical variable in physical units, chunked by ``output.chunk``
members along ``member``; per-member ``rounds``, ``nfe`` and ``complete``; the resolved config, sampler,
model identity, version and CF ``Conventions`` in the attributes.

How it stays correct:

* the store is created up front with its full shape (a lazy Dask template written with
  ``compute=False``: metadata and coordinates only) in a hidden sibling directory and renamed into place,
  so concurrent shards race safely: one creates it, the others open it and check its identity;
* a chunk of members is the unit of work: its data are written first, then its ``complete`` flags (each
  Zarr chunk write is atomic), so a kill at any point leaves flags only on members whose bytes are written;
  a rerun skips flagged chunks and recomputes the rest;
* member ``i`` depends only on ``(seed, i)`` (:func:`sciencegen.sample`), so batch size, shards and
  interruptions do not change a single byte on CPU;
* a shard ``i/n`` owns a contiguous, chunk-aligned slice of members: processes never share a chunk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from ..data.ensemble import (
    ATTR,
    FORMAT_VERSION,
    StoreLock,
    completed_members,
    create_store,
    is_zarr,
    read_meta,
    repair_arrays,
    set_flags,
    unreadable_chunks,
    write_chunk,
)
from ..data.fields import DataError
from ..data.store import store_bytes
from ..errors import Interrupted, SciencegenError, os_error_line, stop_requests
from ..models.checkpoint import _first_difference, _normalise
from .data import _human, dataset_config, make_source
from .train import _plain

__all__ = [
    "ATTR",
    "GenerateError",
    "Plan",
    "chunk_ranges",
    "completed_members",
    "export_netcdf",
    "parse_shard",
    "resolve_denoiser",
    "run_generate",
    "shard_chunks",
]



log = logging.getLogger(__name__)
# former private names, kept for callers of the previous layout (sciencegen.data.ensemble is the public API)
_is_zarr, _read_meta = is_zarr, read_meta


class GenerateError(SciencegenError):
    """Generation cannot start or continue; the message is one line meant for the user."""


# --------------------------------------------------------------------------------------------- pure helpers


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


def chunk_ranges(members: int, chunk: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the store's chunks along ``member``."""
    return [(a, min(a + chunk, members)) for a in range(0, members, chunk)]


def shard_chunks(n_chunks: int, index: int, count: int) -> range:
    """The contiguous chunk indices shard ``index`` of ``count`` owns (as equal as possible; may be empty)."""
    return range(index * n_chunks // count, (index + 1) * n_chunks // count)


# --------------------------------------------------------------------------------------------- the model


@dataclass
class ModelInfo:
    """A denoiser ready to sample and what the ensemble must look like."""

    denoiser: Callable[..., torch.Tensor]
    variables: tuple[str, ...]
    field_dims: tuple[str, ...]
    field_shape: tuple[int, ...]
    mean: np.ndarray | None  # per variable: physical = normalised * std + mean (None: the model is physical)
    std: np.ndarray | None
    identity: dict[str, Any]
    label: str


def _file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def resolve_denoiser(model_cfg: Any, dataset_cfg: Any, spec: Any, field_shape: tuple[int, ...],
                     device: torch.device) -> ModelInfo:
    """Build the denoiser of ``model_cfg`` for the dataset and check that they fit each other.

    Parameters
    ----------
    model_cfg
        ``model`` config: ``oracle`` (the exact denoiser of an analytic dataset) or a trained model with
        ``checkpoint`` (a ``step_*.pt`` file or a training run directory: its newest valid checkpoint).
    dataset_cfg
        ``dataset`` config.
    spec, field_shape
        The dataset's :class:`~sciencegen.data.fields.FieldSpec` and field shape.
    device
        Where to run the model.

    Raises
    ------
    GenerateError
        No checkpoint for a trained model, or a checkpoint trained on other data.
    """
    from .train import TrainError, build_model, load_model

    model = _plain(model_cfg)
    name = str(model.get("name", model.get("_target_", "model")))
    if name == "oracle" or str(model.get("_target_", "")).endswith("oracle_denoiser"):
        try:
            oracle = build_model(model, dataset_cfg)
        except (TrainError, DataError) as exc:
            raise GenerateError(str(exc)) from None
        shape = getattr(oracle, "shape", None)
        if shape is not None and tuple(shape) != (len(spec.variables), *field_shape):
            raise GenerateError(f"model=oracle has sample shape {tuple(shape)} but the dataset has "
                                f"{len(spec.variables)} variables on {field_shape}")
        return ModelInfo(oracle.to(device), tuple(spec.variables), tuple(spec.field_dims), field_shape, None, None,
                         {"name": "oracle"}, "oracle (exact denoiser)")
    ckpt = model.get("checkpoint")
    if not ckpt:
        raise GenerateError(f"model={name} needs model.checkpoint=RUN_DIR or a step_*.pt file "
                            f"(train one with sciencegen-train ... model={name})")
    if not Path(str(ckpt)).exists():
        raise GenerateError(f"model.checkpoint {ckpt}: no such file or directory")
    try:
        net, meta = load_model(str(ckpt), map_location=device)
    except TrainError as exc:
        raise GenerateError(str(exc)) from None
    have = str((meta.get("model") or {}).get("name", "?"))
    if have != name:
        raise GenerateError(f"checkpoint {meta['path']} holds a {have} model, not model={name}")
    data = meta.get("data") or {}
    trained = (tuple(data.get("variables", ())), tuple(data.get("field_dims", ())),
               tuple(int(v) for v in data.get("field_shape", ())))
    asked = (tuple(spec.variables), tuple(spec.field_dims), tuple(field_shape))
    if trained != asked:
        def show(t: tuple) -> str:
            return f"variables {list(t[0])} on {dict(zip(t[1], t[2], strict=False))}"

        ds_name = (meta.get("dataset") or {}).get("name", "?")
        raise GenerateError(f"checkpoint {meta['path']} was trained on {ds_name} with {show(trained)}, but the "
                            f"dataset has {show(asked)}: pick the matching dataset options or another checkpoint")
    differences = dataset_differences(meta.get("dataset") or {}, _plain(dataset_cfg))
    if differences:
        log.warning("checkpoint %s was trained on another dataset configuration (%s): its samples follow the "
                    "training data, not this configuration", meta["path"], "; ".join(differences))
    identity = {"name": name, "checkpoint": str(Path(meta["path"]).resolve()), "step": int(meta["step"]),
                "sha256": _file_digest(meta["path"])}
    return ModelInfo(net, asked[0], asked[1], asked[2], np.asarray(data["mean"], dtype=np.float64),
                     np.asarray(data["std"], dtype=np.float64), identity,
                     f"{name} {meta['path']} (step {meta['step']})")


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def dataset_differences(trained: Mapping[str, Any], asked: Mapping[str, Any]) -> list[str]:
    """``"key: trained -> now"`` for every dataset option whose value differs between a checkpoint's training
    data and the dataset asked for now (grid and variables are checked separately and must agree)."""
    a, b = _flat(_normalise(trained)), _flat(_normalise(asked))
    keys = sorted(k for k in set(a) | set(b) if k.split(".")[0] not in _NOT_THE_LAW)
    return [f"dataset.{k}: {json.dumps(a.get(k, '<unset>'))} in training, {json.dumps(b.get(k, '<unset>'))} now"
            for k in keys if a.get(k) != b.get(k)]


#: dataset keys that change how data are stored or how many there are, not the law of one field
_NOT_THE_LAW = frozenset({"name", "chunk", "device", "engine", "samples", "trajectories", "snapshots", "nonfinite",
                          "max_gb", "progress"})


# --------------------------------------------------------------------------------------------- the store


@dataclass
class Plan:
    """What this process generates: the store, its chunks, and the ones it owns and still has to do."""

    path: Path | None
    members: int
    chunk: int
    chunks: list[tuple[int, int]]
    owned: list[int]
    todo: list[int]
    created: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    lock: StoreLock | None = None


def _template(info: ModelInfo, coords: dict[str, Any], var_attrs: dict[str, dict], members: int, chunk: int,
              attrs: dict[str, Any]) -> xr.Dataset:
    import dask.array as da

    shape = (members, *info.field_shape)
    data: dict[str, Any] = {}
    for v in info.variables:
        data[v] = (("member", *info.field_dims), da.zeros(shape, chunks=(chunk, *info.field_shape), dtype="f4"),
                   var_attrs.get(v, {}))
    data["rounds"] = (("member",), da.zeros(members, chunks=chunk, dtype="i4"),
                      {"long_name": "sequential denoiser rounds of the batch that produced the member"})
    data["nfe"] = (("member",), da.zeros(members, chunks=chunk, dtype="i4"),
                   {"long_name": "denoiser evaluations spent on the member"})
    data["complete"] = (("member",), da.zeros(members, chunks=chunk, dtype=bool),
                        {"long_name": "member written completely (incomplete members read as NaN)"})
    coords = dict(coords)
    coords["member"] = ("member", np.arange(members), {"long_name": "ensemble member (depends only on seed, index)"})
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _check_output_path(path: Path, identity: dict[str, Any], overwrite: bool,
                       lock: StoreLock | None) -> dict[str, Any] | None:
    """The existing store's metadata when it holds this ensemble; None when the path is free (or overwritten).

    Overwriting needs ``lock`` exclusively: a store that another job is writing is never deleted.
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
    diff = _first_difference(meta.get("identity"), _normalise(identity), "")
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
    shutil.rmtree(path)
    return None


def export_netcdf(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Export a finished ensemble store to one netCDF file (written to a temporary name, then renamed)."""
    out = Path(out)
    ds = xr.open_zarr(str(path))
    if not bool(ds["complete"].all()):
        raise GenerateError(f"{path} is not complete: finish the ensemble before exporting it to netCDF")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    enc = {v: {"zlib": True, "complevel": 1} for v in ds.data_vars if ds[v].dtype.kind == "f"}
    try:
        ds.to_netcdf(tmp, encoding=enc)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return out


# --------------------------------------------------------------------------------------------- the job


def _int_option(cfg: Mapping[str, Any], key: str, minimum: int, where: str) -> int:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < minimum:
        raise GenerateError(f"{where}.{key} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def _device(name: str, local_rank: int | None) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank or 0)
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GenerateError(f"generate.device={name} but CUDA is not available (use cpu or auto)")
    if dev.type == "cuda" and dev.index is None and local_rank is not None:
        dev = torch.device("cuda", local_rank)
    return dev


class _Dist:
    """torch.distributed under torchrun (WORLD_SIZE > 1): every rank samples, rank 0 writes."""

    def __init__(self, mode: Any, device: torch.device):
        import torch.distributed as dist

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.on = str(mode) != "false" and mode is not False and self.world > 1
        self.rank, self.started = 0, False
        if not self.on:
            return
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.started = True
        self.rank = dist.get_rank()

    def broadcast(self, obj: Any) -> Any:
        if not self.on:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, flag: bool) -> bool:
        """True on every rank when any rank says True (so all ranks stop at the same chunk)."""
        if not self.on:
            return flag
        import torch.distributed as dist

        flags: list[Any] = [None] * self.world
        dist.all_gather_object(flags, bool(flag))
        return any(flags)

    def close(self) -> None:
        if self.started:
            import torch.distributed as dist

            dist.destroy_process_group()


def _client(address: Any) -> Any:
    if address:
        from distributed import Client

        return Client(str(address))
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def _make_sampler(smp: Any, sde: Any = None) -> Any:
    """Instantiate the ``sampler`` config (its ``_target_``) with the ``sde`` noise range where the sampler
    leaves it unset and it differs from the named sampler's; bad names or options become one line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from ..samplers import SAMPLERS
    from ..samplers.registry import resolve

    extra = {}
    if sde is not None and smp.get("name") in SAMPLERS:
        named = resolve(str(smp.get("name")), {})
        for k in ("sigma_min", "sigma_max"):
            if smp.get(k) is None and sde.get(k) is not None and float(sde[k]) != float(named[k]):
                extra[k] = float(sde[k])
    try:
        return instantiate(smp, _convert_="all", **extra)
    except InstantiationException as exc:
        cause = exc.__cause__
        msg = str(cause) if isinstance(cause, (ValueError, TypeError)) else str(exc).splitlines()[0]
        raise GenerateError(f"sampler {smp.get('name')}: {msg}") from None


def _default_output() -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir) / "samples.zarr"
    except Exception:
        raise GenerateError("output.path is required (e.g. output.path=samples.zarr)") from None


@dataclass
class _Job:
    """The checked options of one generation run."""

    name: str
    steps: int
    sampler: Any
    identity_sampler: dict[str, Any]
    resolved: dict[str, Any]
    members: int
    batch: int
    seed: int
    chunk: int
    dtype: torch.dtype
    shard: tuple[int, int]
    device: torch.device


def _parse(cfg: Any) -> _Job:
    """Check the options (one-line errors) and build the sampler; nothing is read or written yet."""
    from ..samplers import SAMPLERS

    gen, out, smp = cfg["generate"], cfg["output"], cfg["sampler"]
    members = _int_option(gen, "members", 1, "generate")
    batch = _int_option(gen, "batch_size", 1, "generate")
    chunk = _int_option(out, "chunk", 1, "output") if out.get("chunk") is not None else min(batch, members)
    name = str(smp.get("name"))
    if name not in SAMPLERS and str(smp.get("_target_", "")) in ("", "sciencegen.samplers.Sampler"):
        raise GenerateError(f"unknown sampler {name!r}; choose one of {', '.join(sorted(SAMPLERS))}")
    sampler = _make_sampler(smp, cfg.get("sde"))
    steps = _int_option(smp, "steps", 1, "sampler")
    target = str(smp.get("_target_", "sciencegen.samplers.Sampler"))
    ident = {"name": name, "steps": steps, "options": dict(sampler.options),
             **({} if target == "sciencegen.samplers.Sampler" else {"_target_": target})}
    dtype = {"float32": torch.float32, "float64": torch.float64}.get(str(gen.get("dtype", "float32")))
    if dtype is None:
        raise GenerateError(f"generate.dtype must be float32 or float64, got {gen.get('dtype')!r}")
    shard = parse_shard(gen.get("shard"))
    if gen.get("threads"):
        torch.set_num_threads(int(gen["threads"]))
    local_rank = int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ else None
    device = _device(str(gen.get("device", "auto")), local_rank)
    return _Job(name, steps, sampler, ident, dict(getattr(sampler, "resolved", sampler.options)), members, batch,
                _int_option(gen, "seed", 0, "generate"), chunk, dtype, shard, device)


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


def _check_netcdf(target: Any) -> None:
    """``output.netcdf`` must be a writable file path: checked before any work (its parent is created)."""
    if not target:
        return
    out = Path(str(target)).expanduser()
    if out.is_dir():
        raise GenerateError(f"output.netcdf {out} is a directory: give a file name, e.g. {out / 'ensemble.nc'}")
    _make_parent(out, "output.netcdf")
    if not os.access(out.parent, os.W_OK):
        raise GenerateError(f"output.netcdf {out}: its directory {out.parent} is not writable")


def run_generate(cfg: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The ``sciencegen-generate`` job.

    Parameters
    ----------
    cfg
        The composed config of ``conf/generate.yaml`` (``dataset``, ``model``, ``sampler``, ``generate``,
        ``output``).

    Returns
    -------
    dict
        Summary: ``path``, ``members`` (total), ``done`` (this run), ``skipped``, ``complete`` (store-wide),
        ``seconds``, ``rounds``, ``nfe`` (mean per member this run), ``bytes``, ``shard``.

    Raises
    ------
    GenerateError, DataError
        Bad input, with a one-line message.
    Interrupted
        SIGINT / SIGTERM: the job stopped after the chunk in flight; everything complete is kept.
    """
    from ..samplers.distributed import SplitDenoiser

    gen, out = cfg["generate"], cfg["output"]
    job = _parse(cfg)
    dist = _Dist(gen.get("distributed", "auto"), job.device)
    plan = None
    try:
        _check_netcdf(out.get("netcdf"))
        info, identity, make_template, label = _setup(cfg, job)
        path = None if out.get("discard") else Path(str(out.get("path") or _default_output())).expanduser()
        if dist.rank == 0:
            plan = _plan(path, *job.shard, job.members, job.chunk, job.batch, identity, make_template,
                         info.variables, bool(out.get("overwrite", False)), bool(gen.get("verify", False)))
        shared = dist.broadcast(dataclasses.replace(plan, lock=None) if plan is not None else None)
        plan = plan or shared
        model = SplitDenoiser(info.denoiser) if dist.on else info.denoiser
        writer = dist.rank == 0 and plan.path is not None
        run = _announce(job, plan, info, label, dist.rank == 0)
        with stop_requests() as stop:
            _sample_chunks(job, plan, info, model, run, stop, dist, writer, gen)
        return _finish(job, plan, run, writer, out, dist.rank == 0)
    except OSError as exc:
        if exc.errno is None:
            raise
        raise GenerateError(_kept(os_error_line(exc, str(out.get("path"))), plan)) from None
    finally:
        if plan is not None and plan.lock is not None:
            plan.lock.release()
        dist.close()


def _kept(line: str, plan: Plan | None) -> str:
    """``line`` plus what the store still holds (read back; the store stays usable)."""
    if plan is None or plan.path is None:
        return line
    try:
        done = int(completed_members(plan.path, plan.members).sum())
    except Exception:
        return line
    return f"{line}; {done}/{plan.members} members complete in {plan.path} are kept, rerun to resume"


def _setup(cfg: Any, job: _Job) -> tuple[ModelInfo, dict[str, Any], Callable[..., xr.Dataset], str]:
    """Open the dataset, build the model; the store's identity and its template (given the meta and chunk)."""
    from .. import __version__

    dataset = dataset_config(cfg["dataset"])
    ds, spec, label = make_source(dataset).open()
    field_shape = tuple(int(ds.sizes[d]) for d in spec.field_dims)
    info = resolve_denoiser(cfg["model"], dataset, spec, field_shape, job.device)
    identity = {"dataset": dataset, "model": info.identity, "sampler": job.identity_sampler, "seed": job.seed,
                "members": job.members, "dtype": str(job.dtype).replace("torch.", ""),
                "variables": list(info.variables), "field_dims": list(info.field_dims)}
    coords = {d: (d, np.asarray(ds[d].values), dict(ds[d].attrs)) for d in spec.field_dims if d in ds.coords}
    var_attrs = {v: {k: a for k, a in ds[v].attrs.items() if isinstance(a, (str, int, float))}
                 for v in info.variables}

    def make_template(meta: dict[str, Any], chunk: int) -> xr.Dataset:
        attrs = _store_attrs(meta, identity, info, cfg, job.resolved, __version__)
        return _template(info, coords, var_attrs, job.members, chunk, attrs)

    return info, identity, make_template, label


@dataclass
class _Run:
    """What this run did so far."""

    batch: int
    todo_members: int
    skipped: int
    t0: float = field(default_factory=time.perf_counter)
    rounds: int = 0
    nfe_sum: float = 0.0
    written: int = 0
    done: int = 0
    chunks_written: int = 0
    stopped: str | None = None


def _announce(job: _Job, plan: Plan, info: ModelInfo, label: str, talk: bool) -> _Run:
    """Choose the sampling batch (the store's, so that resumed members are bitwise) and say what will happen."""
    ranges = plan.chunks
    todo = sum(ranges[c][1] - ranges[c][0] for c in plan.todo)
    skipped = sum(ranges[c][1] - ranges[c][0] for c in plan.owned) - todo
    batch = int(plan.meta.get("batch_size") or job.batch)
    if talk and batch != job.batch and todo:
        log.warning("the store was sampled in batches of %d: generate.batch_size=%d is ignored so that every "
                    "member is bitwise what an uninterrupted run writes", batch, job.batch)
    index, count = job.shard
    if talk:
        shard_text = f"shard {index}/{count}, " if count > 1 else ""
        print(f"sciencegen-generate: {job.members} members of {label} with {job.name} ({job.steps} steps), "
              f"{info.label}, {shard_text}{todo} to do, {skipped} already written"
              + (f" -> {plan.path}" if plan.path else " (discarded)"), flush=True)
    return _Run(batch, todo, skipped)


def _sample_chunk(job: _Job, info: ModelInfo, model: Any, a: int, b: int, batch: int) -> tuple[dict, Any]:
    """Members ``a..b-1`` in physical units, float32 per variable, and the sampler's result."""
    shape = (len(info.variables), *info.field_shape)
    res = job.sampler(model, shape, b - a, seed=job.seed, batch_size=batch, first_member=a, device=job.device,
                      dtype=job.dtype, progress=False)
    x = res.samples.detach().to("cpu", torch.float64).numpy()
    if info.std is not None:
        bshape = (1, -1) + (1,) * len(info.field_shape)
        x = x * info.std.reshape(bshape) + info.mean.reshape(bshape)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x).reshape(x.shape[0], -1).all(axis=1)).sum())
        raise GenerateError(f"members {a}..{b - 1}: {bad} sample(s) are not finite; the model or the "
                            "sampler diverged (nothing of this chunk was written)")
    return {v: np.ascontiguousarray(x[:, i], dtype=np.float32) for i, v in enumerate(info.variables)}, res


def _sample_chunks(job: _Job, plan: Plan, info: ModelInfo, model: Any, run: _Run, stop: Any, dist: _Dist,
                   writer: bool, gen: Any) -> None:
    """Sample the chunks to do; a writer thread (or a Dask client) stores chunk k while k+1 samples.

    A stop request (SIGINT / SIGTERM) ends the loop after the chunk in flight has been written.
    """
    bar = None
    if bool(gen.get("progress", True)) and dist.rank == 0 and run.todo_members:
        from tqdm.auto import tqdm

        bar = tqdm(total=run.todo_members, desc="members", unit="member", dynamic_ncols=True)
    client = _client(gen.get("dask")) if writer and plan.todo else None
    pool = ThreadPoolExecutor(1, thread_name_prefix="zarr-writer") if writer and client is None else None
    pending: Future | Any | None = None
    store_id = plan.meta.get("store_id")
    try:
        for c in plan.todo:
            a, b = plan.chunks[c]
            fields_, res = _sample_chunk(job, info, model, a, b, run.batch)
            rpm, npm = res.stats["rounds_per_member"].numpy(), res.stats["nfe_per_member"].numpy()
            if writer:
                if pending is not None:
                    run.written += pending.result()
                    run.chunks_written += 1
                args = (str(plan.path), store_id, a, b, fields_, rpm, npm)
                pending = client.submit(write_chunk, *args, pure=False) if client else pool.submit(write_chunk, *args)
            run.rounds += int(res.stats["rounds"])
            run.nfe_sum += float(npm.sum())
            run.done += b - a
            if bar is not None:
                bar.set_postfix(rounds=int(res.stats["rounds"]), nfe=f"{npm.mean():.0f}", refresh=False)
                bar.update(b - a)
            if dist.agree(bool(stop)):
                run.stopped = stop.signal or "a signal on another rank"
                break
        if pending is not None:
            run.written += pending.result()
            run.chunks_written += 1
            pending = None
    finally:
        if bar is not None:
            bar.close()
        if pending is not None:  # an error while sampling: let the last chunk land (it is complete)
            with contextlib.suppress(Exception):
                pending.result()
        if pool is not None:
            pool.shutdown(wait=True)
        if client is not None and gen.get("dask"):  # a client this job opened
            client.close()


def _finish(job: _Job, plan: Plan, run: _Run, writer: bool, out: Any, talk: bool) -> dict[str, Any]:
    """Refresh the consolidated metadata (only if something was written), report, export."""
    seconds = time.perf_counter() - run.t0
    complete = None
    if writer:
        import zarr

        if run.chunks_written or plan.created or (plan.todo and plan.lock is not None):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                zarr.consolidate_metadata(str(plan.path))
        complete = int(completed_members(plan.path, job.members).sum())
    if run.stopped:
        where = f", {complete}/{job.members} complete in {plan.path}" if writer else ""
        raise Interrupted(f"interrupted ({run.stopped}); {run.done} members sampled by this run{where}; "
                          "rerun the same command to resume")
    if writer and out.get("netcdf") and complete == job.members:
        export_netcdf(plan.path, out["netcdf"])
    summary = {"path": str(plan.path) if plan.path else None, "members": job.members, "done": run.done,
               "skipped": run.skipped, "complete": complete, "seconds": seconds, "rounds": run.rounds,
               "nfe": run.nfe_sum / run.done if run.done else 0.0, "bytes": run.written,
               "store_bytes": store_bytes(plan.path) if writer else 0, "shard": f"{job.shard[0]}/{job.shard[1]}",
               "sampler": job.name, "steps": job.steps}
    if talk:
        print(format_summary(summary), flush=True)
    return summary


def _lock(path: Path) -> tuple[StoreLock | None, OSError | None]:
    """Hold the store's lock shared (creating the parent directory); ``(None, why)`` where nothing can be written."""
    _make_parent(path, "output.path")
    lock = StoreLock(path)
    try:
        lock.shared()
    except OSError as exc:  # a read-only or full filesystem: fine as long as there is nothing to write
        return None, exc
    return lock, None


def _store_attrs(meta: dict[str, Any], identity: dict[str, Any], info: ModelInfo, cfg: Any,
                 resolved: dict[str, Any], version: str) -> dict[str, Any]:
    return {
        ATTR: json.dumps(meta, sort_keys=True, default=str),
        "Conventions": "CF-1.8",
        "title": f"{identity['dataset'].get('name', 'dataset')} ensemble from sciencegen",
        "source": f"sciencegen {version}",
        "history": f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}: "
                   f"sciencegen-generate {identity['sampler']['name']}",
        "sampler": identity["sampler"]["name"],
        "sampler_steps": identity["sampler"]["steps"],
        "sampler_options": json.dumps({k: v for k, v in resolved.items() if not _inf(v)}, sort_keys=True,
                                      default=str),
        "model": json.dumps(info.identity, sort_keys=True),
        "seed": identity["seed"],
        "sciencegen_version": version,
        "config": json.dumps(_plain(cfg), sort_keys=True, default=str),
    }


def _plan(path: Path | None, index: int, count: int, members: int, chunk: int, batch: int, identity: dict[str, Any],
          make_template: Callable[[dict[str, Any], int], xr.Dataset], variables: tuple[str, ...], overwrite: bool,
          verify: bool) -> Plan:
    """Create or check the store, lock it when this job will write, and list the chunks still to do."""
    if path is None:
        ranges = chunk_ranges(members, chunk)
        owned = list(shard_chunks(len(ranges), index, count))
        return Plan(None, members, chunk, ranges, owned, list(owned))
    lock, why = _lock(path)
    try:
        return _plan_store(path, lock, why, index, count, members, chunk, batch, identity, make_template, variables,
                           overwrite, verify)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _plan_store(path: Path, lock: StoreLock | None, why: OSError | None, index: int, count: int, members: int,
                chunk: int, batch: int, identity: dict[str, Any], make_template: Callable[..., xr.Dataset],
                variables: tuple[str, ...], overwrite: bool, verify: bool) -> Plan:
    meta = _check_output_path(path, identity, overwrite, lock)
    created = False
    if meta is None:
        if lock is None:
            raise GenerateError(os_error_line(why, str(path)))
        meta = {"format": FORMAT_VERSION, "identity": identity, "chunk": chunk, "batch_size": batch,
                "store_id": uuid.uuid4().hex}
        try:
            created = create_store(path, make_template(meta, chunk), variables)
        except OSError as exc:
            raise GenerateError(os_error_line(exc, str(path))) from None
        lock.shared()  # after an overwrite: back from exclusive
        if not created:
            meta = _check_output_path(path, identity, False, None)
    # the store's chunks are the unit of work (a rerun with another batch size keeps them)
    chunk = int(meta.get("chunk", chunk))
    plan = Plan(path, members, chunk, chunk_ranges(members, chunk), [], [], created, meta, lock)
    plan.owned = list(shard_chunks(len(plan.chunks), index, count))
    plan.todo = _todo(plan, make_template(meta, chunk), variables, verify)
    if plan.todo and lock is None:
        done = int(completed_members(path, members).sum())
        raise GenerateError(f"{os_error_line(why, str(path))}; {len(plan.todo)} chunk(s) to write, "
                            f"{done}/{members} members complete are kept")
    return plan


def _todo(plan: Plan, template: xr.Dataset, variables: tuple[str, ...], verify: bool) -> list[int]:
    """The owned chunks not complete; repairs missing arrays and (``verify``) unreadable chunks first."""
    path, ranges = plan.path, plan.chunks
    if plan.lock is not None:
        for name in repair_arrays(path, template, variables):
            log.warning("%s: the %s array was missing; recreated (its members are regenerated)", path, name)
    flags = completed_members(path, plan.members)
    todo = [c for c in plan.owned if not flags[ranges[c][0]:ranges[c][1]].all()]
    if verify:
        done = [c for c in plan.owned if c not in todo]
        for c, why in unreadable_chunks(path, ranges, done, variables).items():
            log.warning("%s: members %d..%d flagged complete but unreadable (%s); regenerating them",
                        path, ranges[c][0], ranges[c][1] - 1, why)
            if plan.lock is not None:
                set_flags(str(path), ranges[c][0], ranges[c][1], False)
            todo.append(c)
    return sorted(todo)


def _inf(v: Any) -> bool:
    return isinstance(v, float) and not math.isfinite(v)


def format_summary(s: Mapping[str, Any]) -> str:
    """Human summary of :func:`run_generate`'s result."""
    lines = [f"generated {s['done']} members in {s['seconds']:.1f} s ({s['sampler']}, {s['steps']} steps; "
             f"{s['skipped']} already written; shard {s['shard']})"]
    if s["done"]:
        lines.append(f"  rounds {s['rounds']} (sequential denoiser calls, all batches), NFE {s['nfe']:.0f} per member, "
                     f"{s['done'] / max(s['seconds'], 1e-9):.2f} members/s")
    if s["path"]:
        lines.append(f"  store {s['path']}: {s['complete']}/{s['members']} members complete, "
                     f"{_human(s['bytes'])} of fields written now, {_human(s['store_bytes'])} on disk")
        lines.append(f"  open with: xarray.open_zarr({s['path']!r})")
    return "\n".join(lines)
