"""Training loader over a prepared Zarr dataset: a :class:`FieldStream` configured from the store, in a DataLoader.

:func:`from_store` builds a :class:`~sciencegen.data.stream.FieldStream` (shuffled, normalised, sharded batches
streamed chunk by chunk; see :mod:`sciencegen.data.stream` for the reading, shuffling, splitting and DDP sharding
rules) from the metadata and statistics a store written by ``sciencegen-data`` carries; :func:`make_loader`
wraps it in a :class:`~torch.utils.data.DataLoader` with worker processes. :class:`FieldStream` is re-exported here.

Examples
--------
>>> stream = from_store("data/grf.zarr", batch_size=32, split="train", holdout=0.1)  # doctest: +SKIP
>>> loader = make_loader(stream, num_workers=2)  # doctest: +SKIP
>>> for epoch in range(10):  # doctest: +SKIP
...     stream.set_epoch(epoch)
...     for x in loader:  # (32, C, *field_shape), normalised
...         ...
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from .stream import ATTR, FieldStream, open_lazily

__all__ = ["FieldStream", "from_store", "make_loader"]


def _statistics(path: str, variables: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    import xarray as xr

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*consolidated metadata", category=RuntimeWarning)
            stats = xr.open_zarr(path, group="statistics").load()
    except Exception as exc:
        raise ValueError(f"{path}: cannot read the statistics group ({type(exc).__name__}: {exc})") from exc
    for name in ("mean", "std"):
        if name not in stats:
            raise ValueError(f"{path}: statistics group has no {name!r}")
    if "variable" in stats.coords:
        names = [str(v) for v in stats["variable"].values]
    elif "variables" in stats.attrs:
        names = [str(v) for v in stats.attrs["variables"]]
    else:
        raise ValueError(f"{path}: statistics group names no variables (no 'variable' coordinate)")
    missing = [v for v in variables if v not in names]
    if missing:
        raise ValueError(f"{path}: no statistics for variable(s) {missing} (has {names})")
    pos = [names.index(v) for v in variables]
    mean = np.asarray(stats["mean"].values, dtype=np.float64).reshape(-1)[pos]
    std = np.asarray(stats["std"].values, dtype=np.float64).reshape(-1)[pos]
    return mean, std


def _static(path: str, names: list[str], field_dims: Sequence[str]) -> np.ndarray | None:
    """The static fields ``names`` of a store, normalised by their statistics: ``(S, *field)`` float64."""
    if not names:
        return None
    mean, std = _statistics(path, names)
    with open_lazily(path) as ds:
        values = [np.asarray(ds[n].transpose(*field_dims).values, dtype=np.float64) for n in names]
    return np.stack([(v - m) / s for v, m, s in zip(values, mean, std, strict=True)])


def from_store(path: str | os.PathLike, *, batch_size: int, split: str = "train", holdout: float = 0.1,
               **kw: Any) -> FieldStream:
    """A :class:`FieldStream` over a prepared store, configured from the store itself.

    Variables and sample dims come from the root attribute ``sciencegen_dataset``, mean and std from the
    ``statistics`` group. On a conditional store (metadata key ``conditioning``) the stream yields
    ``(target, cond)`` tuples: ``target`` the target variables, ``cond`` the ``input_*`` variables then the
    ``static_*`` fields broadcast over the batch, each normalised by its own statistics.

    Parameters
    ----------
    path
        Store written by ``sciencegen-data``.
    batch_size, split, holdout
        See :class:`FieldStream`.
    **kw
        Further :class:`FieldStream` arguments; ``variables`` selects a subset (or another order) of the
        dataset's variables, ``mean``/``std`` override the statistics.

    Raises
    ------
    FileNotFoundError
        No store at ``path``.
    ValueError
        Not a prepared dataset, an incomplete one, or missing statistics.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such store (run sciencegen-data first)")
    try:
        with open_lazily(path) as ds:
            raw = ds.attrs.get(ATTR)
    except Exception as exc:
        raise ValueError(f"{path}: not a Zarr store ({type(exc).__name__}: {exc})") from exc
    if raw is None:
        raise ValueError(f"{path}: not a prepared sciencegen dataset (no {ATTR!r} attribute)")
    meta = json.loads(raw) if isinstance(raw, str) else dict(raw)
    if not meta.get("complete", True):
        raise ValueError(f"{path}: dataset is incomplete (interrupted write); prepare it again")
    for key in ("variables", "sample_dims"):
        if not meta.get(key):
            raise ValueError(f"{path}: {ATTR} attribute has no {key!r}")
    sample_dims = list(kw.pop("sample_dims", None) or meta["sample_dims"])
    variables = list(kw.pop("variables", None) or meta["variables"])
    unknown = [v for v in variables if v not in meta["variables"]]
    if unknown:
        raise ValueError(f"{path}: unknown variable(s) {unknown}; the dataset has {meta['variables']}")
    cond = meta.get("conditioning") or {}
    if cond and "targets" not in kw:
        kw["targets"] = len(variables)
        variables += list(cond.get("inputs") or {})
        kw.setdefault("static", _static(path, list(cond.get("static") or {}), meta["field_dims"]))
    if "mean" in kw and "std" in kw:
        mean, std = kw.pop("mean"), kw.pop("std")
    else:
        mean, std = _statistics(path, variables)
        mean, std = kw.pop("mean", mean), kw.pop("std", std)
    return FieldStream(path, variables, sample_dims, mean, std, batch_size=batch_size, split=split,
                       holdout=holdout, **kw)


def make_loader(stream: FieldStream, *, num_workers: int = 0, prefetch_factor: int | None = None,
                pin_memory: bool = False, persistent_workers: bool | None = None,
                multiprocessing_context: Any = None,
                worker_init_fn: Callable[[int], None] | None = None) -> DataLoader:
    """A :class:`~torch.utils.data.DataLoader` over ``stream`` (which batches itself: ``batch_size=None``).

    Parameters
    ----------
    stream
        The stream. The loader holds a shallow copy that records ``num_workers`` so that ``len(loader)``
        is exact; the epoch is shared, so ``stream.set_epoch(e)`` still drives it.
    num_workers
        DataLoader worker processes; each reads its own share of the chunks (opening the store itself).
    prefetch_factor
        Batches prefetched per worker (torch default 2); only with workers.
    pin_memory
        Page-locked batches for faster host-to-GPU copies.
    persistent_workers
        Keep workers (and their open stores) between epochs. Default: on when there are workers.
    multiprocessing_context
        Start method of the workers (torch default: the platform's).
    worker_init_fn
        Called in each worker with its id.
    """
    if not isinstance(stream, FieldStream):
        raise TypeError(f"make_loader needs a FieldStream, got {type(stream).__name__}")
    if int(num_workers) != num_workers or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    view = copy.copy(stream)  # shares the epoch (shared memory)
    view.num_workers = int(num_workers)
    kw: dict[str, Any] = {}
    if num_workers > 0:
        kw["persistent_workers"] = True if persistent_workers is None else bool(persistent_workers)
        if prefetch_factor is not None:
            kw["prefetch_factor"] = int(prefetch_factor)
        if multiprocessing_context is not None:
            kw["multiprocessing_context"] = multiprocessing_context
        if worker_init_fn is not None:
            kw["worker_init_fn"] = worker_init_fn
    elif persistent_workers or prefetch_factor is not None:
        raise ValueError("persistent_workers and prefetch_factor need num_workers > 0")
    return DataLoader(view, batch_size=None, shuffle=False, num_workers=int(num_workers), pin_memory=pin_memory,
                      **kw)
