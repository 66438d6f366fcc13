"""``run_generate(cfg)``: sample an ensemble and stream it, batch by batch, into one chunked Zarr store.

The Zarr contract (DESIGN.md §5, docs/generate.md): dim ``member`` plus the dataset's field dims and
coordinates, one float32 variable per physical variable in physical units, chunked by ``output.chunk``
members along ``member``; per-member ``rounds``, ``nfe`` and ``complete``; the resolved config, sampler,
model identity, version and CF ``Conventions`` in the attributes.

How it stays correct: the store's on-disk rules (identity token, lock, data before flags) are in
:mod:`sciencegen.data.ensemble`, its planning in :mod:`.generate_store`. Member ``i`` depends only on
``(seed, i)`` and on the batch that sampled it, which the store records, so resumes, shards and interruptions
give the same bytes; a shard ``i/n`` owns a contiguous, chunk-aligned slice of members. SIGINT / SIGTERM stop
the job after the chunk in flight.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
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
    completed_members,
    write_chunk,
)
from ..data.fields import DataError
from ..data.store import store_bytes
from ..errors import Interrupted, os_error_line, stop_requests
from ..models.checkpoint import _normalise
from .data import _human, dataset_config, dataset_identity, make_source
from .generate_store import (
    GenerateError,
    Plan,
    _check_netcdf,
    _plan,
    chunk_ranges,
    export_netcdf,
    parse_shard,
    shard_chunks,
    store_attrs,
    template,
)
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


# --------------------------------------------------------------------------------------------- pure helpers


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
    _warn_other_dataset(meta, dataset_cfg)
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


def _warn_other_dataset(meta: Mapping[str, Any], dataset_cfg: Any) -> None:
    differences = dataset_differences(meta.get("dataset") or {}, _plain(dataset_cfg))
    if differences:
        log.warning("checkpoint %s was trained on another dataset configuration (%s): its samples follow the "
                    "training data, not this configuration", meta["path"], "; ".join(differences))


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
    gen, out = cfg["generate"], cfg["output"]
    job = _parse(cfg)
    dist = _Dist(gen.get("distributed", "auto"), job.device)
    held: list[Plan] = []  # the plan once made (rank 0 holds the store's lock in it)
    try:
        with stop_requests() as stop:  # a signal from here on stops the job at its next safe point
            return _run(cfg, job, dist, stop, held)
    except OSError as exc:
        if exc.errno is None:
            raise
        raise GenerateError(_kept(os_error_line(exc, str(out.get("path"))), held[0] if held else None)) from None
    finally:
        if held and held[0].lock is not None:
            held[0].lock.release()
        dist.close()


def _run(cfg: Any, job: _Job, dist: _Dist, stop: Any, held: list[Plan]) -> dict[str, Any]:
    """The phases of :func:`run_generate`: check outputs, set up, plan the store, sample, finish."""
    from ..samplers.distributed import SplitDenoiser

    gen, out = cfg["generate"], cfg["output"]
    _check_netcdf(out.get("netcdf"))
    info, identity, make_template, label = _setup(cfg, job)
    path = None if out.get("discard") else Path(str(out.get("path") or _default_output())).expanduser()
    plan = None
    if dist.rank == 0:
        plan = _plan(path, *job.shard, job.members, job.chunk, job.batch, identity, make_template,
                     info.variables, bool(out.get("overwrite", False)), bool(gen.get("verify", False)))
        held.append(plan)
    shared = dist.broadcast(dataclasses.replace(plan, lock=None) if plan is not None else None)
    plan = plan or shared
    model = SplitDenoiser(info.denoiser) if dist.on else info.denoiser
    writer = dist.rank == 0 and plan.path is not None
    run = _announce(job, plan, info, label, dist.rank == 0)
    _sample_chunks(job, plan, info, model, run, stop, dist, writer, gen)
    return _finish(job, plan, run, writer, out, dist.rank == 0)


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
    identity = {"dataset": dataset_identity(dataset), "model": info.identity, "sampler": job.identity_sampler,
                "seed": job.seed, "members": job.members, "dtype": str(job.dtype).replace("torch.", ""),
                "variables": list(info.variables), "field_dims": list(info.field_dims)}
    coords = {d: (d, np.asarray(ds[d].values), dict(ds[d].attrs)) for d in spec.field_dims if d in ds.coords}
    var_attrs = {v: {k: a for k, a in ds[v].attrs.items() if isinstance(a, (str, int, float))}
                 for v in info.variables}

    def make_template(meta: dict[str, Any], chunk: int) -> xr.Dataset:
        attrs = store_attrs(meta, identity, info, cfg, job.resolved, __version__)
        return template(info, coords, var_attrs, job.members, chunk, attrs)

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
            if dist.agree(bool(stop)):
                run.stopped = stop.signal or "a signal on another rank"
                break
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
