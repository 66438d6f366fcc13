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
import datetime
import hashlib
import json
import math
import os
import shutil
import socket
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

from ..data.fields import DataError
from ..data.store import store_bytes
from ..errors import SciencegenError
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

#: root attribute holding the JSON description of an ensemble store
ATTR = "sciencegen_ensemble"
FORMAT_VERSION = 1


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
    identity = {"name": name, "checkpoint": str(Path(meta["path"]).resolve()), "step": int(meta["step"]),
                "sha256": _file_digest(meta["path"])}
    return ModelInfo(net, asked[0], asked[1], asked[2], np.asarray(data["mean"], dtype=np.float64),
                     np.asarray(data["std"], dtype=np.float64), identity,
                     f"{name} {meta['path']} (step {meta['step']})")


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


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zgroup", ".zattrs", ".zmetadata"))


def _read_meta(path: Path) -> dict[str, Any] | None:
    import zarr

    try:
        root = zarr.open_group(str(path), mode="r")
        text = root.attrs.get(ATTR)
    except Exception:
        return None
    if not text:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def _check_output_path(path: Path, identity: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The existing store's metadata when it holds this ensemble; None when the path is free (or overwritten)."""
    if path.is_file() or (path.exists() and not path.is_dir()):
        raise GenerateError(f"output.path {path} is a file, not a Zarr store: choose another output.path")
    if not path.exists():
        return None
    if not _is_zarr(path):
        if any(path.iterdir()):
            raise GenerateError(f"output.path {path} is a non-empty directory that is not a Zarr store: "
                                "choose another output.path")
        return None
    meta = _read_meta(path)
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
    shutil.rmtree(path)
    return None


def _create(path: Path, template: xr.Dataset, info: ModelInfo) -> bool:
    """Write the template's metadata into a hidden sibling and rename it into place; False if another won."""
    import zarr

    tmp = path.parent / f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    encoding = {v: {"_FillValue": np.float32("nan")} for v in info.variables}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # consolidated metadata is a zarr v3 extension; xarray reads it
            template.to_zarr(tmp, mode="w-", compute=False, encoding=encoding, consolidated=False)
            zarr.consolidate_metadata(str(tmp))
        try:
            os.rename(tmp, path)
        except OSError:
            if _is_zarr(path):  # another process created it first
                return False
            raise
        return True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def completed_members(path: str | os.PathLike, members: int | None = None) -> np.ndarray:
    """The ``complete`` flag of every member of an ensemble store (unreadable chunks count as incomplete)."""
    import zarr

    arr = zarr.open_array(str(path), path="complete", mode="r")
    n = arr.shape[0] if members is None else members
    out = np.zeros(n, dtype=bool)
    step = int(arr.chunks[0])
    for a in range(0, n, step):
        with contextlib.suppress(Exception):
            out[a:a + step] = np.asarray(arr[a:min(a + step, n)], dtype=bool)
    return out


def _write_chunk(path: str, start: int, stop: int, fields_: dict[str, np.ndarray], rounds: np.ndarray,
                 nfe: np.ndarray) -> int:
    """Write one chunk of members: data first, then their completion flags. Returns the bytes of data.

    Straight into the Zarr arrays the template created (xarray's region writes cost several times more
    Python time per chunk, which competes with sampling for the interpreter lock).
    """
    import zarr

    group = zarr.open_group(path, mode="r+", use_consolidated=False)
    for v, a in fields_.items():
        group[v][start:stop] = a
    group["rounds"][start:stop] = rounds.astype(np.int32)
    group["nfe"][start:stop] = nfe.astype(np.int32)
    group["complete"][start:stop] = np.ones(stop - start, dtype=bool)  # last: the members are now on disk
    return int(sum(a.nbytes for a in fields_.values()))


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
    """
    from .. import __version__
    from ..samplers import SAMPLERS
    from ..samplers.distributed import SplitDenoiser

    gen, out, smp = cfg["generate"], cfg["output"], cfg["sampler"]
    members = _int_option(gen, "members", 1, "generate")
    batch = _int_option(gen, "batch_size", 1, "generate")
    seed = _int_option(gen, "seed", 0, "generate")
    chunk = _int_option(out, "chunk", 1, "output") if out.get("chunk") is not None else min(batch, members)
    steps = _int_option(smp, "steps", 1, "sampler")
    name = str(smp.get("name"))
    if name not in SAMPLERS and str(smp.get("_target_", "")) in ("", "sciencegen.samplers.Sampler"):
        raise GenerateError(f"unknown sampler {name!r}; choose one of {', '.join(sorted(SAMPLERS))}")
    sampler = _make_sampler(smp, cfg.get("sde"))
    options = dict(sampler.options)
    target = str(smp.get("_target_", "sciencegen.samplers.Sampler"))
    dtype = {"float32": torch.float32, "float64": torch.float64}.get(str(gen.get("dtype", "float32")))
    if dtype is None:
        raise GenerateError(f"generate.dtype must be float32 or float64, got {gen.get('dtype')!r}")
    index, count = parse_shard(gen.get("shard"))
    if gen.get("threads"):
        torch.set_num_threads(int(gen["threads"]))
    local_rank = int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ else None
    device = _device(str(gen.get("device", "auto")), local_rank)
    dist = _Dist(gen.get("distributed", "auto"), device)
    writer = dist.rank == 0 and not bool(out.get("discard", False))
    progress = bool(gen.get("progress", True)) and dist.rank == 0
    talk = dist.rank == 0
    try:
        # ---- the dataset's fields and the model
        dataset = dataset_config(cfg["dataset"])
        source = make_source(dataset)
        ds, spec, label = source.open()
        field_shape = tuple(int(ds.sizes[d]) for d in spec.field_dims)
        info = resolve_denoiser(cfg["model"], dataset, spec, field_shape, device)
        resolved = dict(getattr(sampler, "resolved", options))
        identity = {
            "dataset": dataset, "model": info.identity, "sampler": {"name": name, "steps": steps, "options": options,
                                                              **({} if target == "sciencegen.samplers.Sampler"
                                                                 else {"_target_": target})},
            "seed": seed, "members": members, "dtype": str(dtype).replace("torch.", ""),
            "variables": list(info.variables), "field_dims": list(info.field_dims),
        }
        coords = {d: (d, np.asarray(ds[d].values), dict(ds[d].attrs)) for d in spec.field_dims if d in ds.coords}
        var_attrs = {v: {k: a for k, a in ds[v].attrs.items() if isinstance(a, (str, int, float))}
                     for v in info.variables}

        # ---- the store (rank 0 creates or checks it; the others learn the plan)
        path = None if out.get("discard") else Path(str(out.get("path") or _default_output())).expanduser()
        plan = None
        if dist.rank == 0:
            plan = _plan(path, index, count, members, chunk, identity, info, coords, var_attrs, cfg, resolved,
                         bool(out.get("overwrite", False)), __version__)
        plan = dist.broadcast(plan)
        ranges = plan.chunks
        model = SplitDenoiser(info.denoiser) if dist.on else info.denoiser

        # ---- sample chunk by chunk; a writer thread (or a Dask client) stores chunk k while k+1 samples
        todo_members = sum(ranges[c][1] - ranges[c][0] for c in plan.todo)
        skipped = sum(ranges[c][1] - ranges[c][0] for c in plan.owned) - todo_members
        shard_text = f"shard {index}/{count}, " if count > 1 else ""
        if talk:
            print(f"sciencegen-generate: {members} members of {label} with {name} ({steps} steps), "
                  f"{info.label}, {shard_text}{todo_members} to do, {skipped} already written"
                  + (f" -> {plan.path}" if plan.path else " (discarded)"), flush=True)
        bar = None
        if progress and todo_members:
            from tqdm.auto import tqdm

            bar = tqdm(total=todo_members, desc="members", unit="member", dynamic_ncols=True)
        client = _client(gen.get("dask")) if writer and plan.todo else None
        pool = ThreadPoolExecutor(1, thread_name_prefix="zarr-writer") if writer and client is None else None
        pending: Future | Any | None = None
        t0 = time.perf_counter()
        rounds_total, nfe_sum, written, done = 0, 0.0, 0, 0
        shape = (len(info.variables), *info.field_shape)
        try:
            for c in plan.todo:
                a, b = ranges[c]
                res = sampler(model, shape, b - a, seed=seed, batch_size=batch, first_member=a, device=device,
                              dtype=dtype, progress=False)
                x = res.samples.detach().to("cpu", torch.float64).numpy()
                if info.std is not None:
                    bshape = (1, -1) + (1,) * len(info.field_shape)
                    x = x * info.std.reshape(bshape) + info.mean.reshape(bshape)
                if not np.isfinite(x).all():
                    bad = int((~np.isfinite(x).reshape(x.shape[0], -1).all(axis=1)).sum())
                    raise GenerateError(f"members {a}..{b - 1}: {bad} sample(s) are not finite; the model or the "
                                        "sampler diverged (nothing of this chunk was written)")
                fields_ = {v: np.ascontiguousarray(x[:, i], dtype=np.float32) for i, v in enumerate(info.variables)}
                rpm = res.stats["rounds_per_member"].numpy()
                npm = res.stats["nfe_per_member"].numpy()
                if writer:
                    if pending is not None:
                        written += pending.result()
                    job = (str(plan.path), a, b, fields_, rpm, npm)
                    pending = client.submit(_write_chunk, *job, pure=False) if client else pool.submit(
                        _write_chunk, *job)
                rounds_total += int(res.stats["rounds"])
                nfe_sum += float(npm.sum())
                done += b - a
                if bar is not None:
                    bar.set_postfix(rounds=int(res.stats["rounds"]), nfe=f"{npm.mean():.0f}", refresh=False)
                    bar.update(b - a)
            if pending is not None:
                written += pending.result()
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
        seconds = time.perf_counter() - t0

        # ---- finish: refresh the consolidated metadata, report, export
        complete = None
        if writer:
            import zarr

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                zarr.consolidate_metadata(str(plan.path))
            flags = completed_members(plan.path, members)
            complete = int(flags.sum())
            if out.get("netcdf") and complete == members:
                export_netcdf(plan.path, out["netcdf"])
        summary = {"path": str(plan.path) if plan.path else None, "members": members, "done": done,
                   "skipped": skipped, "complete": complete, "seconds": seconds, "rounds": rounds_total,
                   "nfe": nfe_sum / done if done else 0.0, "bytes": written,
                   "store_bytes": store_bytes(plan.path) if writer else 0, "shard": f"{index}/{count}",
                   "sampler": name, "steps": steps}
        if talk:
            print(format_summary(summary), flush=True)
        return summary
    except PermissionError as exc:
        raise GenerateError(f"cannot write {exc.filename or out.get('path')}: permission denied") from None
    finally:
        dist.close()


def _plan(path: Path | None, index: int, count: int, members: int, chunk: int, identity: dict[str, Any],
          info: ModelInfo, coords: dict[str, Any], var_attrs: dict[str, dict], cfg: Any, resolved: dict[str, Any],
          overwrite: bool, version: str) -> Plan:
    if path is None:
        ranges = chunk_ranges(members, chunk)
        owned = list(shard_chunks(len(ranges), index, count))
        return Plan(None, members, chunk, ranges, owned, list(owned))
    meta = _check_output_path(path, identity, overwrite)
    created = False
    if meta is None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GenerateError(f"cannot create the directory of output.path {path}: {exc.strerror}") from None
        if not os.access(path.parent, os.W_OK):
            raise GenerateError(f"cannot write output.path {path}: its directory is not writable")
        meta = {"format": FORMAT_VERSION, "identity": identity, "chunk": chunk}
        config = _plain(cfg)
        attrs = {
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
            "config": json.dumps(config, sort_keys=True, default=str),
        }
        template = _template(info, coords, var_attrs, members, chunk, attrs)
        try:
            created = _create(path, template, info)
        except OSError as exc:
            raise GenerateError(f"cannot write output.path {path}: {exc.strerror or exc}") from None
        if not created:
            meta = _check_output_path(path, identity, False)
    # the store's chunks are the unit of work (a rerun with another batch size keeps them)
    chunk = int(meta.get("chunk", chunk))
    ranges = chunk_ranges(members, chunk)
    owned = list(shard_chunks(len(ranges), index, count))
    flags = completed_members(path, members)
    todo = [c for c in owned if not flags[ranges[c][0]:ranges[c][1]].all()]
    return Plan(path, members, chunk, ranges, owned, todo, created, meta)


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
