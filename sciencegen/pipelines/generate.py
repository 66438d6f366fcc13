"""``run_generate(cfg)``: sample an ensemble and stream it, batch by batch, into one chunked Zarr store.

The Zarr contract (docs/generate.md, "The store"; docs/architecture.md): dim ``member`` (CF
``standard_name: realization``) plus the dataset's field dims and coordinates, one float32 variable per physical
variable in physical units, chunked by ``output.chunk`` members along ``member``; per-member ``rounds``, ``nfe``
and ``complete``; the resolved config, sampler, model identity, version and CF ``Conventions`` in the attributes.

How it stays correct: the store's layout and on-disk rules (identity token, lock, data before flags) are the
public API of :mod:`sciencegen.data.ensemble`, the generation-specific planning is
:mod:`sciencegen.generation.plan` and the model :mod:`sciencegen.generation.model`.
Member ``i`` depends only on ``(seed, i)`` and on the batch that sampled it, which the store records, so
resumes, shards and interruptions give the same bytes; a shard ``i/n`` owns a contiguous, chunk-aligned slice
of members. SIGINT / SIGTERM stop the job after the chunk in flight.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from ..config import instantiate
from ..data.conditioning import condition_layout, make_kinds
from ..data.ensemble import (
    ATTR,
    chunk_ranges,
    completed_members,
    export_netcdf,
    template,
    write_chunk,
)
from ..data.metadata import field_coords
from ..data.prepare import dataset_config, dataset_identity, human_bytes, make_source, prepare
from ..data.store import store_bytes
from ..errors import Interrupted, SciencegenError, os_error_line, stop_requests
from ..generation.conditions import (
    Cases,
    check_rollout,
    default_holdout,
    file_cases,
    heldout_cases,
    layout_dict,
    lead_attrs,
)
from ..generation.masks import ensemble_masks, mask_members
from ..generation.model import ModelInfo, dataset_differences, resolve_denoiser
from ..generation.observe import ObservedCases, ObserveOptions, observed_cases, parse_observe
from ..generation.plan import (
    NEW_STORE_STREAM,
    GenerateError,
    Plan,
    check_netcdf,
    parse_noise_stream,
    parse_shard,
    plan,
    shard_chunks,
    store_attrs,
)
from ..generation.progress import Progress, Tracked
from ..generation.rollout import StaticConditioned, sample_condition, to_model
from ..ranks import Ranks, pick_device
from ..samplers.noise import NoiseSeed

__all__ = [
    "ATTR",
    "GenerateError",
    "Plan",
    "chunk_ranges",
    "completed_members",
    "dataset_differences",
    "export_netcdf",
    "format_summary",
    "parse_shard",
    "resolve_denoiser",
    "run_generate",
    "shard_chunks",
]


log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- the job


def _int_option(cfg: Mapping[str, Any], key: str, minimum: int, where: str) -> int:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < minimum:
        raise GenerateError(f"{where}.{key} must be an integer >= {minimum}, got {v!r}")
    return int(v)


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
    from ..samplers import SAMPLERS
    from ..samplers.registry import resolve

    extra = {}
    if sde is not None and smp.get("name") in SAMPLERS:
        named = resolve(str(smp.get("name")), {})
        for k in ("sigma_min", "sigma_max"):
            if smp.get(k) is None and sde.get(k) is not None and float(sde[k]) != float(named[k]):
                extra[k] = float(sde[k])
    return instantiate(smp, f"sampler {smp.get('name')}", GenerateError, **extra)


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
    conditions: int = 8
    lead_times: int | None = None
    observe: ObserveOptions | None = None
    noise_stream: str | None = None  # generate.noise_stream; after planning, the stream the store is sampled with

    @property
    def noise_seed(self) -> NoiseSeed:
        """The run's seed with its noise stream."""
        return NoiseSeed(self.seed, self.noise_stream or NEW_STORE_STREAM)


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
    dtype = {"float32": torch.float32, "float64": torch.float64}.get(str(gen["dtype"]))
    if dtype is None:
        raise GenerateError(f"generate.dtype must be float32 or float64, got {gen.get('dtype')!r}")
    shard = parse_shard(gen.get("shard"))
    if gen.get("threads"):
        torch.set_num_threads(int(gen["threads"]))
    local_rank = int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ else None
    device = pick_device(str(gen["device"]), local_rank, "generate.device", GenerateError)
    conditions = _int_option(gen, "conditions", 1, "generate") if gen.get("conditions") is not None else 8
    leads = _int_option(gen, "lead_times", 1, "generate") if gen.get("lead_times") is not None else None
    observe = parse_observe(cfg.get("observe"))
    if observe is not None and leads is not None:
        raise GenerateError(f"generate.lead_times={leads} with observe.{observe.form}: forecast rollouts given "
                            "observations are not supported (unset one of them)")
    return _Job(name, steps, sampler, ident, dict(getattr(sampler, "resolved", sampler.options)), members, batch,
                _int_option(gen, "seed", 0, "generate"), chunk, dtype, shard, device, conditions, leads, observe,
                parse_noise_stream(gen.get("noise_stream")))


def run_generate(cfg: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The ``sciencegen-generate`` job.

    Parameters
    ----------
    cfg
        The composed config of ``conf/generate.yaml`` (``dataset``, ``model``, ``sampler``, ``generate``,
        ``output``, ``condition``, ``observe``). A dataset with ``conditioning`` makes a conditional ensemble
        (docs/generate.md, "Conditional ensembles"); ``observe`` one conditioned on observations ("Observations
        (data assimilation)").

    Returns
    -------
    dict
        Summary: ``path``, ``members`` (per condition), ``conditions`` (``None``: unconditional), ``total``
        (members in the store), ``lead_times``, ``done`` (this run), ``skipped``, ``complete`` (store-wide),
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
    mode = gen["distributed"]
    dist = Ranks(job.device, enabled=str(mode) != "false" and mode is not False, error=GenerateError)
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


def _run(cfg: Any, job: _Job, dist: Ranks, stop: Any, held: list[Plan]) -> dict[str, Any]:
    """The phases of :func:`run_generate`: check outputs, set up, plan the store, sample, finish."""
    from ..samplers.distributed import SplitDenoiser

    gen, out = cfg["generate"], cfg["output"]
    check_netcdf(out.get("netcdf"))
    info, identity, make_template, label, cases = _setup(cfg, job, dist)
    path = None if out.get("discard") else Path(str(out.get("path") or _default_output())).expanduser()
    mine = None
    if dist.rank == 0:
        mine = plan(path, *job.shard, job.members, job.chunk, job.batch, identity, make_template,
                    info.variables, bool(out["overwrite"]), bool(gen["verify"]), cases.count if cases else None,
                    job.noise_stream)
        held.append(mine)
    shared = dist.broadcast(dataclasses.replace(mine, lock=None) if mine is not None else None)
    todo = mine or shared
    job = dataclasses.replace(job, noise_stream=todo.noise_stream)  # a new store's, or the one it recorded
    model = SplitDenoiser(info.denoiser) if dist.world > 1 else info.denoiser
    writer = dist.rank == 0 and todo.path is not None
    run = _announce(job, todo, info, label, dist.rank == 0)
    run.observed = cases.summary() if isinstance(cases, ObservedCases) else None
    _sample_chunks(job, todo, info, model, run, stop, dist, writer, gen, cases)
    return _finish(job, todo, run, writer, out, dist.rank == 0)


def _kept(line: str, plan: Plan | None) -> str:
    """``line`` plus what the store still holds (read back; the store stays usable)."""
    if plan is None or plan.path is None:
        return line
    try:
        done = int(completed_members(plan.path, plan.shape).sum())
    except Exception:
        return line
    return f"{line}; {done}/{plan.total} members complete in {plan.path} are kept, rerun to resume"


def _setup(cfg: Any, job: _Job, dist: Ranks) -> tuple[ModelInfo, dict[str, Any], Callable[..., xr.Dataset], str,
                                                     Cases | None]:
    """Open the dataset, build the model; the store's identity and its template (given the meta and chunk), and
    the conditions of a conditional dataset (``None``: unconditional)."""
    from .. import __version__

    dataset = dataset_config(cfg["dataset"])
    layout = None
    if job.observe is not None and dist.world > 1:
        raise GenerateError(f"observe.{job.observe.form} under torchrun ({dist.world} ranks): guided sampling runs "
                            "in one process; split the work with generate.shard=i/n instead")
    if make_kinds(dataset.get("conditioning")) or job.observe is not None:
        prepared = _prepared(cfg, dataset, dist)
        layout = condition_layout(prepared.path)
        if (layout is not None and layout.inputs) or job.observe is not None:
            return _setup_conditional(cfg, job, dist, dataset, prepared)
        # static maps only: one law for every member, the unconditional layout, each member given the maps
    condition = cfg.get("condition") or {}
    if condition.get("path") or job.lead_times is not None:
        what = "condition.path" if condition.get("path") else "generate.lead_times"
        raise GenerateError(f"{what} is set, but dataset {dataset.get('name')} has no conditioning "
                            "(set dataset.conditioning, see docs/data.md)")
    ds, spec, label = make_source(dataset).open()
    field_shape = tuple(int(ds.sizes[d]) for d in spec.field_dims)
    if layout is None:
        info = resolve_denoiser(cfg["model"], dataset, spec, field_shape, job.device)
    else:
        info = resolve_denoiser(cfg["model"], dataset, spec, field_shape, job.device, layout_dict(layout))
        info.denoiser = StaticConditioned(info.denoiser, to_model(np.asarray(layout.static_values), info))
    identity = {"dataset": dataset_identity(dataset), "model": info.identity, "sampler": job.identity_sampler,
                "seed": job.seed, "members": job.members, "dtype": str(job.dtype).replace("torch.", ""),
                "variables": list(info.variables), "field_dims": list(info.field_dims)}
    coords = field_coords(ds, spec.field_dims)  # and the scalar ones (a level), without stale attributes
    var_attrs = {v: {k: a for k, a in ds[v].attrs.items() if isinstance(a, (str, int, float))}
                 for v in info.variables}

    def make_template(meta: dict[str, Any], chunk: int) -> xr.Dataset:
        attrs = store_attrs(identity, info, cfg, job.resolved, __version__)
        return template(meta, info.variables, info.field_dims, info.field_shape, job.members, chunk,
                        coords=coords, var_attrs=var_attrs, attrs=attrs, masks=ensemble_masks(info))

    return info, identity, make_template, label, None


def _setup_conditional(cfg: Any, job: _Job, dist: Ranks, dataset: dict[str, Any], prepared: Any
                       ) -> tuple[ModelInfo, dict[str, Any], Callable[..., xr.Dataset], str, Cases]:
    """:func:`_setup` for a dataset with per-sample inputs, or observed cases: the prepared store's layout, the
    model, the cases."""
    from .. import __version__

    layout = condition_layout(prepared.path)
    spec, field_shape = prepared.spec, tuple(prepared.field_shape)
    label = f"{dataset.get('name')} ({prepared.path})"
    info = resolve_denoiser(cfg["model"], dataset, spec, field_shape, job.device,
                            layout_dict(layout) if layout is not None else None)
    if layout is not None:
        check_rollout(layout, job.lead_times, f"dataset {dataset.get('name')}")
    cases = _cases(cfg, job, prepared, layout, info)
    identity = {"dataset": dataset_identity(dataset), "model": info.identity, "sampler": job.identity_sampler,
                "seed": job.seed, "members": job.members, "dtype": str(job.dtype).replace("torch.", ""),
                "variables": list(info.variables), "field_dims": list(info.field_dims),
                "conditioning": cases.identity()}
    ds = prepared.ds
    coords = field_coords(ds, spec.field_dims)  # and the scalar ones (a level), without stale attributes
    var_attrs = {v: {k: a for k, a in ds[v].attrs.items() if isinstance(a, (str, int, float))}
                 for v in info.variables}
    axis = cases.axis(lead_attrs(ds, cases.layout.state))

    def make_template(meta: dict[str, Any], chunk: int) -> xr.Dataset:
        attrs = store_attrs(identity, info, cfg, job.resolved, __version__)
        made = template(meta, info.variables, info.field_dims, info.field_shape, job.members, chunk,
                        coords=coords, var_attrs=var_attrs, attrs=attrs, conditions=axis,
                        masks=ensemble_masks(info))
        return cases.extend(made) if isinstance(cases, ObservedCases) else made

    return info, identity, make_template, label, cases


def _prepared(cfg: Any, dataset: dict[str, Any], dist: Ranks) -> Any:
    """The prepared store of a conditional dataset (written if missing; rank 0 first, the others reuse it)."""
    root = cfg.get("data_root") or os.environ.get("SCIENCEGEN_DATA_ROOT") or "data"
    prepared, failed = None, None
    if dist.rank == 0:
        try:
            prepared = prepare(dataset, data_root=root)
        except SciencegenError as exc:
            failed = exc
    why = dist.broadcast(None if failed is None else str(failed))
    if failed is not None:
        raise failed
    if why is not None:
        raise GenerateError(f"rank 0 could not prepare the dataset: {why}")
    return prepared if prepared is not None else prepare(dataset, data_root=root)


def _cases(cfg: Any, job: _Job, prepared: Any, layout: Any, info: ModelInfo) -> Cases:
    """The conditions: every case of ``condition.path`` (after ``condition.select``), else held-out samples."""
    condition = cfg.get("condition") or {}
    path, select = condition.get("path"), condition.get("select")
    if job.observe is not None:
        holdout = info.holdout if info.holdout is not None else default_holdout()
        cases = observed_cases(job.observe, prepared, layout, info, seed=job.seed, conditions=job.conditions,
                               holdout=float(holdout), condition=condition)
        log.info("%s", cases.summary())
        return cases
    if path:
        cases = file_cases(path, select, layout, prepared.spec, tuple(prepared.field_shape), job.lead_times)
        log.info("conditions: the %d case(s) of %s (generate.conditions is ignored with condition.path)",
                 cases.count, cases.source)
        return cases
    if select:
        raise GenerateError("condition.select is set without condition.path: it selects cases of a condition file")
    holdout = info.holdout if info.holdout is not None else default_holdout()
    return heldout_cases(prepared, layout, float(holdout), job.conditions, job.lead_times)


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
    observed: str | None = None


def _announce(job: _Job, plan: Plan, info: ModelInfo, label: str, talk: bool) -> _Run:
    """Choose the sampling batch (the store's, so that resumed members are bitwise) and say what will happen."""
    units = plan.units
    todo = sum(units[k][2] - units[k][1] for k in plan.todo)
    skipped = sum(units[k][2] - units[k][1] for k in plan.owned) - todo
    batch = int(plan.meta.get("batch_size") or job.batch)
    if talk and batch != job.batch and todo:
        log.warning("the store was sampled in batches of %d: generate.batch_size=%d is ignored so that every "
                    "member is bitwise what an uninterrupted run writes", batch, job.batch)
    index, count = job.shard
    if talk:
        shard_text = f"shard {index}/{count}, " if count > 1 else ""
        what = f"{job.members} members" if plan.conditions is None else \
            f"{plan.conditions} conditions × {job.members} members" + (f" × {job.lead_times} lead times"
                                                                      if job.lead_times else "")
        log.info("sciencegen-generate: %s of %s with %s (%d steps), %s, %s%d to do, %d already written%s",
                 what, label, job.name, job.steps, info.label, shard_text, todo, skipped,
                 f" -> {plan.path}" if plan.path else " (discarded)")
    return _Run(batch, todo, skipped)


def _sample_chunk(job: _Job, info: ModelInfo, model: Any, a: int, b: int, batch: int) -> tuple[dict, Any]:
    """Members ``a..b-1`` in physical units, float32 per variable, and the sampler's result."""
    shape = (len(info.variables), *info.field_shape)
    res = job.sampler(model, shape, b - a, seed=job.noise_seed, batch_size=batch, first_member=a, device=job.device,
                      dtype=job.dtype, progress=False)
    x = res.samples.detach().to("cpu", torch.float64).numpy()
    if info.std is not None:
        bshape = (1, -1) + (1,) * len(info.field_shape)
        x = x * info.std.reshape(bshape) + info.mean.reshape(bshape)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x).reshape(x.shape[0], -1).all(axis=1)).sum())
        raise GenerateError(f"members {a}..{b - 1}: {bad} sample(s) are not finite; the model or the "
                            "sampler diverged (nothing of this chunk was written)")
    x = mask_members(x, info)  # NaN at the invalid points of masked data
    return {v: np.ascontiguousarray(x[:, i], dtype=np.float32) for i, v in enumerate(info.variables)}, res


def _sample_unit(job: _Job, info: ModelInfo, model: Any, cases: Cases | None, unit: tuple[int | None, int, int],
                 batch: int, cache: dict[int, dict] | None) -> tuple[dict, np.ndarray, np.ndarray, int, tuple]:
    """One unit of work: its fields, rounds and NFE per member, rounds in all, and what else ``write_chunk`` takes
    (a conditional unit: its condition and that condition's ``input_*``/``truth_*``, read once per condition and
    only where ``cache`` is given: by the process that writes)."""
    c, a, b = unit
    if c is None:
        fields_, res = _sample_chunk(job, info, model, a, b, batch)
        return (fields_, res.stats["rounds_per_member"].numpy(), res.stats["nfe_per_member"].numpy(),
                int(res.stats["rounds"]), ())
    if isinstance(cases, ObservedCases):  # the case's guided denoiser; its NFE (float: VJPs) rounded to the store's
        model = cases.guide(model, c)
    fields_, rpm, npm, rounds = sample_condition(job.sampler, model, info, cases, c, a, b, seed=job.noise_seed,
                                                 batch=batch, device=job.device, dtype=job.dtype)
    if isinstance(cases, ObservedCases):
        npm = np.rint(npm)
    if cache is None:
        return fields_, rpm, npm, rounds, (c, None)
    if c not in cache:
        cache.clear()
        cache[c] = cases.case_arrays(c)
    return fields_, rpm, npm, rounds, (c, cache[c])


def _sample_chunks(job: _Job, plan: Plan, info: ModelInfo, model: Any, run: _Run, stop: Any, dist: Ranks,
                   writer: bool, gen: Any, cases: Cases | None = None) -> None:
    """Sample the chunks to do; a writer thread (or a Dask client) stores chunk k while k+1 samples.

    A stop request (SIGINT / SIGTERM) ends the loop after the chunk in flight has been written.
    """
    progress = None  # per sampler round: a bar (generate.progress) or log lines, and the estimate of the run
    if dist.rank == 0 and run.todo_members:
        progress = Progress(run.todo_members, job.members, job.device, bar=bool(gen["progress"]))
        job = dataclasses.replace(job, sampler=Tracked(job.sampler, progress))
    client = _client(gen.get("dask")) if writer and plan.todo else None
    pool = ThreadPoolExecutor(1, thread_name_prefix="zarr-writer") if writer and client is None else None
    pending: Future | Any | None = None
    store_id, units, cache = plan.meta.get("store_id"), plan.units, {} if writer else None
    try:
        for k in plan.todo:
            if dist.agree(int(bool(stop))):  # any rank stopped: all stop at the same chunk
                run.stopped = stop.signal or "a signal on another rank"
                break
            c, a, b = units[k]
            if progress is not None:
                progress.begin(b - a, draws=(job.lead_times or 1) if c is not None else 1)
            fields_, rpm, npm, rounds, extra = _sample_unit(job, info, model, cases, units[k], run.batch, cache)
            if writer:
                if pending is not None:
                    run.written += pending.result()
                    run.chunks_written += 1
                args = (str(plan.path), store_id, a, b, fields_, rpm, npm, *extra)
                pending = client.submit(write_chunk, *args, pure=False) if client else pool.submit(write_chunk, *args)
            run.rounds += rounds
            run.nfe_sum += float(npm.sum())
            run.done += b - a
            if progress is not None:
                progress.end(rounds, float(npm.mean()))
        if pending is not None:
            run.written += pending.result()
            run.chunks_written += 1
            pending = None
    finally:
        if progress is not None:
            progress.close()
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
                # consolidated metadata is a zarr v3 extension that xarray reads: silence that warning only
                warnings.filterwarnings("ignore", "Consolidated metadata is currently not part", UserWarning)
                zarr.consolidate_metadata(str(plan.path))
        complete = int(completed_members(plan.path, plan.shape).sum())
    if run.stopped:
        where = f", {complete}/{plan.total} complete in {plan.path}" if writer else ""
        raise Interrupted(f"interrupted ({run.stopped}); {run.done} members sampled by this run{where}; "
                          "rerun the same command to resume")
    if writer and out.get("netcdf") and complete == plan.total:
        export_netcdf(plan.path, out["netcdf"])
    summary = {"path": str(plan.path) if plan.path else None, "members": job.members, "done": run.done,
               "conditions": plan.conditions, "total": plan.total, "lead_times": job.lead_times,
               "skipped": run.skipped, "complete": complete, "seconds": seconds, "rounds": run.rounds,
               "nfe": run.nfe_sum / run.done if run.done else 0.0, "bytes": run.written,
               "store_bytes": store_bytes(plan.path) if writer else 0, "shard": f"{job.shard[0]}/{job.shard[1]}",
               "sampler": job.name, "steps": job.steps, "observations": run.observed, "noise_stream": job.noise_stream}
    if talk:
        log.info("%s", format_summary(summary))
    return summary


def format_summary(s: Mapping[str, Any]) -> str:
    """Human summary of :func:`run_generate`'s result."""
    lines = [f"generated {s['done']} members in {s['seconds']:.1f} s ({s['sampler']}, {s['steps']} steps; "
             f"{s['skipped']} already written; shard {s['shard']})"]
    if s["done"]:
        lines.append(f"  rounds {s['rounds']} (sequential denoiser calls, all batches), NFE {s['nfe']:.0f} per member, "
                     f"{s['done'] / max(s['seconds'], 1e-9):.2f} members/s ({s['seconds'] / s['done']:.3g} s/member)")
    if s["path"]:
        shape = f" ({s['conditions']} conditions × {s['members']} members)" if s.get("conditions") else ""
        lines.append(f"  store {s['path']}: {s['complete']}/{s.get('total', s['members'])} members complete{shape}, "
                     f"{human_bytes(s['bytes'])} of fields written now, {human_bytes(s['store_bytes'])} on disk")
        lines.append(f"  open with: xarray.open_zarr({s['path']!r})")
    if s.get("observations"):
        lines.append(f"  {s['observations']}")
    return "\n".join(lines)
