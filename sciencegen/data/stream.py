"""Streaming torch dataset over a prepared Zarr store: chunk-aligned reads, shuffled, normalised, sharded.

:class:`FieldStream` is a :class:`torch.utils.data.IterableDataset` that yields normalised batches
``(B, C, *field_shape)`` (``C`` = the variables, in the order given) straight from a store written by
``sciencegen-data``, without ever loading it whole:

* **I/O unit = one store chunk** over the sample dims (all variables of it), read through a lazily
  opened xarray dataset (Zarr backend, no Dask) with slices aligned to the chunk boundaries. With several
  sample dims (e.g. ``trajectory × time``) the chunk grid is the product of their chunk grids and a
  block ``(n_traj, n_time, *field)`` is flattened into samples.
* **Shuffle**: each epoch a permutation of the chunk list seeded by ``(seed, epoch)`` (the same on every
  rank and worker), then the samples of a group of ``buffer_chunks`` consecutive chunks of that order are
  shuffled together. Memory per reader (main process or DataLoader worker) is bounded by that group
  (``buffer_chunks`` chunks, as read) plus the batch being filled (batches handed out are the
  consumer's); the samples are gathered from the group straight into the batch and normalised there.
* **Normalisation** on the fly: ``(x - mean[c]) / std[c]``, then NaN (masked values) → ``nan_fill``; with
  ``keep_invalid`` the target channels keep their NaN (the invalid points, which the training loss ignores:
  :func:`~sciencegen.models.precond.denoising_loss` with ``valid``), the condition channels are filled.
* **Conditions** (``targets=N``): the first ``N`` variables are targets, the others condition inputs read from
  the same chunks; each batch is split into ``(target, cond)``, ``cond`` ending with the ``static`` channels
  broadcast over the batch. Without ``targets`` (the default) batches are tensors, as they always were.
* **Split**: chunk-aligned train/validation split; the last ``ceil(holdout * n_chunks)`` chunks in store
  order (the end of the leading sample dim: held out in time for a time series) are validation.
* **Sharding**: the epoch's chunk order is dealt to the ranks (``order[rank::world_size]``) and, within
  a rank, to the DataLoader workers (``rank_chunks[worker::num_workers]``): every chunk is read by exactly
  one (rank, worker) per epoch.

Equal batch counts under DDP (``world_size > 1``)
-------------------------------------------------
Collective ops hang if ranks yield different numbers of batches, so with ``world_size > 1`` every rank
yields the same number of batches, of the same sizes, in every epoch (the policy of
:class:`torch.utils.data.DistributedSampler`, at chunk granularity):

1. ``drop_last=False`` (pad): the epoch's chunk order is padded by wrapping around to a multiple of
   ``world_size`` (at most ``world_size - 1`` chunks are read twice, by different ranks); each rank gets
   ``m = ceil(n_chunks / world_size)`` chunks. ``drop_last=True`` (drop): the order is truncated to a
   multiple of ``world_size`` (at most ``world_size - 1`` chunks are skipped, other ones each epoch when
   shuffled);
   ``m = floor(n_chunks / world_size)``.
2. Chunks can hold different numbers of samples (partial chunks at the end of a sample dim), so worker
   ``k`` of every rank is given the same sample budget ``T_k``: with pad, the samples of the ``m_k``
   largest chunks of the split (``m_k`` = its chunk count); a reader whose chunks hold fewer samples wraps
   around its own chunks to fill the budget (those samples are seen twice). With drop, the samples of the
   ``m_k`` smallest chunks rounded down to whole batches; the rest of the reader's (shuffled) samples are
   skipped this epoch.

``len()`` is the same on every rank and in every epoch. With uniform chunks (sample-dim sizes divisible by
their chunk sizes) and ``n_chunks`` divisible by ``world_size`` nothing is padded or dropped.

With ``world_size == 1`` nothing is padded: every sample of the split is yielded exactly once per epoch;
each reader yields a last partial batch (or drops it with ``drop_last=True``), so with ``num_workers``
workers an epoch can hold up to ``num_workers`` partial batches (``len()`` counts them for the epoch set).

Epochs
------
Call :meth:`FieldStream.set_epoch` before each epoch (as with ``DistributedSampler``); otherwise every
epoch repeats the same order. The epoch lives in shared memory, so it reaches persistent DataLoader
workers too.
Building a stream from a prepared store (variables and statistics read from it) and wrapping it in a
:class:`~torch.utils.data.DataLoader` is :mod:`sciencegen.data.loader` (:func:`~sciencegen.data.loader.from_store`,
:func:`~sciencegen.data.loader.make_loader`), which also re-exports :class:`FieldStream`.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from functools import reduce
from multiprocessing.context import get_spawning_popen
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

__all__ = ["ATTR", "SPLITS", "FieldStream", "open_lazily"]

#: root attribute of a prepared store holding its metadata (JSON)
ATTR = "sciencegen_dataset"
#: the splits a stream can read
SPLITS = ("all", "train", "validation")


def open_lazily(path: str) -> Any:
    """The store at ``path`` as a lazily indexed :class:`xarray.Dataset` (Zarr backend, no Dask, nothing cached)."""
    import xarray as xr

    # chunks=None: lazily indexed backend arrays (no Dask); cache=False: never keep what was read
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*consolidated metadata", category=RuntimeWarning)
        return xr.open_dataset(path, engine="zarr", chunks=None, cache=False)


def _per_variable(values: Any, variables: Sequence[str], what: str) -> np.ndarray:
    """``values`` (sequence in channel order, or mapping variable → value) as a float64 array."""
    if isinstance(values, Mapping):
        missing = [v for v in variables if v not in values]
        if missing:
            raise ValueError(f"{what}: no value for variable(s) {missing}")
        out = np.array([float(values[v]) for v in variables], dtype=np.float64)
    else:
        out = np.asarray(values, dtype=np.float64).reshape(-1)
        if out.size == 1 and len(variables) > 1:
            out = np.repeat(out, len(variables))
        if out.size != len(variables):
            raise ValueError(f"{what}: {out.size} values for {len(variables)} variables {list(variables)}")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{what} must be finite, got {out.tolist()}")
    return out


def _check_options(variables: tuple[str, ...], sample_dims: tuple[str, ...], batch_size: int, buffer_chunks: int,
                   split: str, holdout: float, dtype: torch.dtype) -> None:
    """Raise ``ValueError`` for a bad :class:`FieldStream` argument that needs no store to check."""
    if not variables:
        raise ValueError("variables: need at least one variable")
    if len(set(variables)) != len(variables):
        raise ValueError(f"variables: duplicates in {list(variables)}")
    if not sample_dims:
        raise ValueError("sample_dims: need at least one sample dim")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if int(buffer_chunks) != buffer_chunks or buffer_chunks < 1:
        raise ValueError(f"buffer_chunks must be an integer >= 1, got {buffer_chunks!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {holdout!r}")
    if split == "validation" and holdout == 0:
        raise ValueError("split='validation' needs holdout > 0 (with holdout=0 there is no validation data)")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")


def _condition_options(targets: int | None, static: Any, channels: int, field_shape: tuple[int, ...],
                       dtype: np.dtype) -> tuple[int | None, np.ndarray]:
    """``(targets, static)`` checked: ``1 <= targets <= channels``, ``static`` ``(S, *field_shape)``."""
    if targets is None:
        if static is not None and len(static):
            raise ValueError("static channels need targets= (the number of target variables)")
        return None, np.zeros((0, *field_shape), dtype)
    if int(targets) != targets or not 1 <= targets <= channels:
        raise ValueError(f"targets must be an integer in [1, {channels}] (the variables), got {targets!r}")
    arr = np.zeros((0, *field_shape), dtype) if static is None else np.asarray(static, dtype=dtype)
    if arr.shape[1:] != tuple(field_shape):
        raise ValueError(f"static has shape {arr.shape}; need (S, {', '.join(map(str, field_shape))})")
    return int(targets), np.ascontiguousarray(arr)


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)`` as given, or from :mod:`torch.distributed` when both are ``None`` (else 0 and 1)."""
    if rank is None and world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        else:
            rank, world_size = 0, 1
    elif rank is None or world_size is None:
        raise ValueError(f"give both rank and world_size or neither (got rank={rank}, world_size={world_size})")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, "
                         f"world_size={world_size}")
    return int(rank), int(world_size)


class FieldStream(IterableDataset):
    """Shuffled, normalised, sharded batches streamed chunk by chunk from a prepared Zarr store.

    Parameters
    ----------
    path
        Zarr store (format 2 or 3) with the data variables on ``sample_dims + field dims``.
    variables
        Variables to read; they become the channels, in this order.
    sample_dims
        The leading dims of every variable that index samples (e.g. ``["sample"]`` or
        ``["trajectory", "time"]``); the remaining dims are the field dims (1 to 3 of them).
    mean, std
        Per-variable normalisation, in the order of ``variables`` (or mappings variable → value).
        ``std`` must be positive.
    batch_size
        Samples per batch (>= 1).
    shuffle
        Shuffle chunks and samples each epoch. Default (``None``): on, except for ``split="validation"``.
    seed
        Base seed of the shuffles; the order is deterministic given ``(seed, epoch, rank, world_size,
        num_workers)``.
    split
        ``"all"``, ``"train"`` or ``"validation"``.
    holdout
        Fraction of the chunks held out for validation (the last ``ceil(holdout * n_chunks)`` in store
        order), in ``[0, 1)``.
    drop_last
        Drop each reader's last partial batch; with ``world_size > 1`` also truncate rather than pad
        (see the module docstring).
    nan_fill
        Value replacing NaN after normalisation.
    keep_invalid
        Leave NaN in the target channels (all channels without ``targets``): the points a masked loss ignores.
    rank, world_size
        Shard of this process. Default: from :mod:`torch.distributed` when it is initialised (create the
        stream after ``init_process_group``), else 0 and 1.
    dtype
        Dtype of the batches.
    buffer_chunks
        Chunks shuffled together (>= 1): memory per reader is about this many chunks.
    targets
        ``None`` (default): batches are tensors ``(B, C, *field)``. An integer ``N``: the first ``N`` variables are
        the targets and the rest per-sample condition inputs; batches are ``(target, cond)`` tuples,
        ``target`` ``(B, N, *field)`` and ``cond`` ``(B, C - N + S, *field)``: the inputs, then ``static``.
    static
        ``(S, *field)`` static condition channels appended to every item's ``cond`` as given (normalise them
        first); only with ``targets``.

    Raises
    ------
    ValueError
        Unknown variable, sample dims that are not the leading dims of every variable, ``batch_size < 1``,
        ``std <= 0``, a bad split or holdout, a split with too few chunks for ``world_size``.
    """

    def __init__(self, path: str | os.PathLike, variables: Sequence[str], sample_dims: Sequence[str],
                 mean: Sequence[float] | Mapping[str, float] | np.ndarray,
                 std: Sequence[float] | Mapping[str, float] | np.ndarray, *, batch_size: int,
                 shuffle: bool | None = None, seed: int = 0, split: str = "all", holdout: float = 0.0,
                 drop_last: bool = False, nan_fill: float = 0.0, rank: int | None = None,
                 world_size: int | None = None, dtype: torch.dtype = torch.float32, buffer_chunks: int = 4,
                 targets: int | None = None, static: np.ndarray | None = None, keep_invalid: bool = False):
        super().__init__()
        self.path = os.fspath(path)
        self.variables = (variables,) if isinstance(variables, str) else tuple(variables)
        self.sample_dims = (sample_dims,) if isinstance(sample_dims, str) else tuple(sample_dims)
        _check_options(self.variables, self.sample_dims, batch_size, buffer_chunks, split, holdout, dtype)
        self.batch_size = int(batch_size)
        self.buffer_chunks = int(buffer_chunks)
        self.split, self.holdout = split, float(holdout)
        self.shuffle = (split != "validation") if shuffle is None else bool(shuffle)
        self.seed, self.drop_last, self.nan_fill, self.dtype = int(seed), bool(drop_last), float(nan_fill), dtype
        self._np_dtype = np.dtype(np.float64 if dtype == torch.float64 else np.float32)
        self.mean = _per_variable(mean, self.variables, "mean")
        self.std = _per_variable(std, self.variables, "std")
        if not np.all(self.std > 0):
            bad = [v for v, s in zip(self.variables, self.std, strict=True) if not s > 0]
            raise ValueError(f"std must be > 0 for every variable; got {self.std.tolist()} (zero for {bad}): "
                             "a constant variable cannot be normalised")
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self._inspect()
        self.chunk_ids = self._split_chunks()
        self.targets, self.static = _condition_options(targets, static, len(self.variables), self.field_shape,
                                                       self._np_dtype)
        self.keep_invalid = bool(keep_invalid)
        #: readers per rank assumed by ``len()`` (set by :func:`~sciencegen.data.loader.make_loader`)
        self.num_workers = 0
        self._epoch = multiprocessing.RawValue("q", 0)
        self._ds: Any = None
        self._ds_pid: int | None = None

    def _split_chunks(self) -> np.ndarray:
        """Store-order ids of the chunks of this split (the last ``ceil(holdout * n)`` are validation)."""
        n = len(self._sizes)
        n_val = max(1, math.ceil(self.holdout * n - 1e-9)) if self.holdout > 0 else 0
        lo, hi = {"all": (0, n), "train": (0, n - n_val), "validation": (n - n_val, n)}[self.split]
        chunk_ids = np.arange(lo, hi, dtype=np.int64)
        need = max(1, self.world_size)
        if len(chunk_ids) < need:
            raise ValueError(f"{self.path}: split {self.split!r} has {len(chunk_ids)} chunk(s) of {n} "
                             f"(holdout={self.holdout}), need at least {need}"
                             + (f" for world_size={self.world_size}" if self.world_size > 1 else "")
                             + "; lower holdout, use smaller chunks or fewer ranks")
        return chunk_ids

    # -- metadata -------------------------------------------------------------------------------------------------

    def _inspect(self) -> None:
        """Dims, shapes and the chunk grid of the store (metadata only)."""
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.path}: no such store")
        ds = open_lazily(self.path)
        try:
            unknown = [v for v in self.variables if v not in ds.data_vars]
            if unknown:
                raise ValueError(f"{self.path}: unknown variable(s) {unknown}; the store has {sorted(ds.data_vars)}")
            ref = ds[self.variables[0]]
            ns = len(self.sample_dims)
            for v in self.variables:
                dims = ds[v].dims
                if tuple(dims[:ns]) != self.sample_dims:
                    raise ValueError(f"{self.path}: variable {v!r} has dims {list(dims)}; the sample dims "
                                     f"{list(self.sample_dims)} must be its leading dims")
                if dims != ref.dims:
                    raise ValueError(f"{self.path}: variables {self.variables[0]!r} and {v!r} have different "
                                     f"dims {list(ref.dims)} and {list(dims)}")
                if not np.issubdtype(ds[v].dtype, np.number):
                    raise ValueError(f"{self.path}: variable {v!r} is not numeric ({ds[v].dtype})")
            try:
                meta = json.loads(ds.attrs.get(ATTR, "{}"))
            except (TypeError, ValueError):
                meta = {}
            # a store prepared with nonfinite=error or drop holds no NaN: skip the scan (one pass per chunk)
            self._scan_nan = not (isinstance(meta, dict) and meta.get("nonfinite") in ("error", "drop"))
            self.field_dims = tuple(ref.dims[ns:])
            if not 1 <= len(self.field_dims) <= 3:
                raise ValueError(f"{self.path}: need 1 to 3 field dims after the sample dims {list(self.sample_dims)},"
                                 f" got {list(self.field_dims)}")
            self.field_shape = tuple(int(ds.sizes[d]) for d in self.field_dims)
            self.sample_shape = tuple(int(ds.sizes[d]) for d in self.sample_dims)
            if min(self.sample_shape) == 0:
                empty = dict(zip(self.sample_dims, self.sample_shape, strict=True))
                raise ValueError(f"{self.path}: empty sample dim(s) {empty}")
            self.chunk_shape = self._chunking(ds[self.variables[0]])
            for v in self.variables[1:]:
                if self._chunking(ds[v]) != self.chunk_shape:
                    warnings.warn(f"{self.path}: variables {self.variables[0]!r} and {v!r} are chunked differently "
                                  f"along {list(self.sample_dims)}; reading along the chunks of the first",
                                  stacklevel=3)
        finally:
            ds.close()
        grid = [math.ceil(n / c) for n, c in zip(self.sample_shape, self.chunk_shape, strict=True)]
        self.chunk_grid = tuple(grid)
        lengths = [np.minimum(c, n - c * np.arange(g)) for n, c, g in zip(self.sample_shape, self.chunk_shape, grid,
                                                                            strict=True)]
        #: samples of every chunk of the store, in store (C) order
        self._sizes = reduce(np.multiply.outer, lengths).reshape(-1).astype(np.int64)

    def _chunking(self, var: Any) -> tuple[int, ...]:
        enc = var.encoding
        chunks = enc.get("shards") or enc.get("chunks")  # a zarr v3 shard is the unit of I/O when sharded
        if chunks is None and enc.get("preferred_chunks"):
            chunks = tuple(enc["preferred_chunks"].get(d, var.sizes[d]) for d in var.dims)
        if chunks is None:
            raise ValueError(f"{self.path}: variable {var.name!r} has no chunk encoding (not a Zarr store?)")
        return tuple(int(c) for c in chunks[: len(self.sample_dims)])

    # -- pickling (DataLoader workers, spawn) ---------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_ds"], state["_ds_pid"] = None, None  # each process opens the store itself
        if get_spawning_popen() is None:  # ordinary pickling: a snapshot; when spawning a worker: shared
            state["_epoch"] = int(self._epoch.value)
        return state

    def __copy__(self) -> FieldStream:
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)  # shares the epoch
        return new

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["_epoch"], int):
            value = multiprocessing.RawValue("q", state["_epoch"])
            state["_epoch"] = value
        self.__dict__.update(state)

    # -- epochs and sizes -----------------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """Current epoch (set with :meth:`set_epoch`)."""
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the next iteration's shuffle (call before each epoch).

        Shared with DataLoader workers started from this stream, persistent ones included.
        """
        self._epoch.value = int(epoch)

    @property
    def n_chunks(self) -> int:
        """Chunks in this split."""
        return len(self.chunk_ids)

    @property
    def n_samples(self) -> int:
        """Samples in this split (all ranks together, without padding)."""
        return int(self._sizes[self.chunk_ids].sum())

    @property
    def channels(self) -> int:
        """Channels per sample (= number of variables; with ``targets``: the target channels)."""
        return len(self.variables) if self.targets is None else self.targets

    @property
    def cond_channels(self) -> int:
        """Condition channels per sample (inputs, then statics; 0 without ``targets``)."""
        return 0 if self.targets is None else len(self.variables) - self.targets + len(self.static)

    def _order(self, epoch: int) -> np.ndarray:
        """The epoch's chunk order, padded or truncated to a multiple of ``world_size``."""
        order = self.chunk_ids
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        n, w = len(order), self.world_size
        if w > 1:
            if self.drop_last:
                order = order[: (n // w) * w]
            else:
                order = np.concatenate([order, order[: -n % w]])
        return order

    def _plan(self, epoch: int, rank: int, worker: int, num_workers: int) -> tuple[np.ndarray, int | None]:
        """Chunks of one reader and its sample budget (``None``: exactly its chunks' samples)."""
        mine = self._order(epoch)[rank :: self.world_size][worker::num_workers]
        if self.world_size == 1:
            return mine, None
        # same budget for this worker index on every rank: bound over all possible assignments
        per_rank = len(self._order(epoch)) // self.world_size
        m = len(range(worker, per_rank, num_workers))
        sizes = np.sort(self._sizes[self.chunk_ids])
        if self.drop_last:
            budget = int(sizes[:m].sum())
            return mine, budget - budget % self.batch_size
        return mine, int(sizes[::-1][:m].sum())

    def _batches_of(self, samples: int) -> int:
        return samples // self.batch_size if self.drop_last else -(-samples // self.batch_size)

    def __len__(self) -> int:
        """Batches this rank yields in the current epoch, with :attr:`num_workers` readers.

        Exact when iterated in the main process or through :func:`make_loader` (which records
        ``num_workers``); with ``world_size > 1`` the same on every rank and in every epoch.
        """
        k = max(1, self.num_workers)
        total = 0
        for w in range(k):
            chunks, budget = self._plan(self.epoch, self.rank, w, k)
            samples = int(self._sizes[chunks].sum()) if budget is None else budget
            total += self._batches_of(samples)
        return total

    # -- reading --------------------------------------------------------------------------------------------------

    def _dataset(self) -> Any:
        if self._ds is None or self._ds_pid != os.getpid():
            self._ds, self._ds_pid = open_lazily(self.path), os.getpid()
        return self._ds

    def _read_chunk(self, ds: Any, chunk: int) -> list[np.ndarray]:
        """Chunk ``chunk`` as read: one array ``(samples, *field)`` per variable (raw values)."""
        idx = np.unravel_index(int(chunk), self.chunk_grid)
        key = {d: slice(i * c, min((i + 1) * c, n))
               for d, i, c, n in zip(self.sample_dims, idx, self.chunk_shape, self.sample_shape, strict=True)}
        s = int(self._sizes[chunk])
        return [ds[v].isel(key).values.reshape((s, *self.field_shape)) for v in self.variables]

    def _fill(self, rows: np.ndarray, blocks: list[list[np.ndarray]], edges: np.ndarray, sel: np.ndarray) -> None:
        """Gather group samples ``sel`` into ``rows`` ``(len(sel), C, *field)`` and normalise them there.

        ``edges``: where each chunk of the group starts in the group's sample numbering, and its end. The
        samples are placed in ascending order (a batch is a random set; sorting makes the copies direct).
        """
        sel = np.sort(sel)
        bounds = np.searchsorted(sel, edges).tolist()
        for j, chunk in enumerate(blocks):
            lo, hi = bounds[j], bounds[j + 1]
            if lo == hi:
                continue
            local = sel[lo:hi] - edges[j]
            for c, block in enumerate(chunk):
                dst = rows[lo:hi, c]
                if block.dtype == dst.dtype:
                    np.take(block, local, axis=0, out=dst, mode="clip")  # indices are valid: no buffering
                else:
                    dst[...] = block[local]
        for c in range(len(self.variables)):  # on the batch, still in cache
            dst = rows[:, c]
            np.subtract(dst, self._np_dtype.type(self.mean[c]), out=dst)
            np.divide(dst, self._np_dtype.type(self.std[c]), out=dst)
        if self._scan_nan and np.isnan(rows.sum()):
            fill = rows[:, self.targets or len(self.variables):] if self.keep_invalid else rows
            np.copyto(fill, self._np_dtype.type(self.nan_fill), where=np.isnan(fill))

    def _chunk_sequence(self, chunks: np.ndarray, budget: int | None) -> Iterator[tuple[int, bool]]:
        """``(chunk, is_padding)``: the reader's chunks, then (pad policy) its chunks again, cyclically."""
        for c in chunks.tolist():
            yield c, False
        if budget is not None and budget > int(self._sizes[chunks].sum()) and len(chunks):
            while True:  # pad: wrap around this reader's own chunks (the caller stops at the budget)
                for c in chunks.tolist():
                    yield c, True

    def _stream(self, chunks: np.ndarray, budget: int | None, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """Batches (numpy) of one reader: groups of ``buffer_chunks`` chunks shuffled together.

        Holds at most one group of raw chunks and one batch being filled: the samples of a group are
        gathered (in shuffled order) straight into batches and normalised there.
        """
        bs, k = self.batch_size, self.buffer_chunks
        limit = math.inf if budget is None else budget
        ds = self._dataset()
        seq = self._chunk_sequence(chunks, budget)
        batch: np.ndarray | None = None  # batch being filled, ``filled`` rows so far
        filled = 0
        emitted = 0
        exhausted = False
        pending: tuple[int, bool] | None = None
        shape = (len(self.variables), *self.field_shape)
        while not exhausted:
            have = emitted + filled
            group: list[int] = []
            padding = False
            n = 0
            while len(group) < k and have + n < limit:
                nxt = pending if pending is not None else next(seq, None)
                pending = None
                if nxt is None:
                    exhausted = True
                    break
                if group and nxt[1] != padding:  # never mix padding with first reads: only padding is cut
                    pending = nxt
                    break
                group.append(nxt[0])
                padding = nxt[1]
                n += int(self._sizes[nxt[0]])
            if not group:
                break
            blocks = [self._read_chunk(ds, ch) for ch in group]
            edges = np.cumsum([0] + [int(self._sizes[ch]) for ch in group])
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            order = order[: int(min(n, limit - have))]
            pos = 0
            while pos < len(order):
                if batch is None:
                    batch, filled = np.empty((bs, *shape), dtype=self._np_dtype), 0
                take = order[pos : pos + bs - filled]
                self._fill(batch[filled : filled + len(take)], blocks, edges, take)
                pos += len(take)
                filled += len(take)
                if filled == bs:
                    emitted += bs
                    out, batch, filled = batch, None, 0
                    yield out
            del blocks
            if emitted + filled >= limit:
                break
        if batch is not None and filled and not self.drop_last:
            yield batch[:filled]

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Normalised batches ``(B, C, *field_shape)`` of this rank (and DataLoader worker) for the epoch."""
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch = self.epoch
        chunks, budget = self._plan(epoch, self.rank, worker, num_workers)
        rng = np.random.default_rng([self.seed, epoch, self.rank, self.world_size, worker, num_workers])
        for batch in self._stream(chunks, budget, rng):
            t = torch.from_numpy(batch)
            t = t if t.dtype == self.dtype else t.to(self.dtype)
            if self.targets is None:
                yield t
                continue
            static = torch.from_numpy(self.static).to(self.dtype).unsqueeze(0).expand(len(t), *self.static.shape)
            yield t[:, : self.targets].contiguous(), torch.cat([t[:, self.targets :], static], dim=1)

    def __repr__(self) -> str:
        return (f"FieldStream({self.path!r}, variables={list(self.variables)}, sample_dims={list(self.sample_dims)}, "
                f"field_shape={self.field_shape}, split={self.split!r}, chunks={self.n_chunks}, "
                f"samples={self.n_samples}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"rank={self.rank}/{self.world_size})")
