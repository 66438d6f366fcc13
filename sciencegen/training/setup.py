"""Setting up a training job: the prepared data (rank 0 writes the store once), the data streams, the meta.

The meta is what every checkpoint records beside the weights: the resolved model config, the dataset config,
the data layout and normalisation, the training options and the code version. :func:`sciencegen.models.load_model`
rebuilds the model from it, and a resumed run must agree with it (model and dataset).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.prepare import make_source, prepare
from ..data.store import open_prepared
from ..errors import TrainError
from ..models.build import resolve_model_config
from ..models.checkpoint import code_version
from .distributed import Distributed
from .options import data_root
from .state import ignore_stop_signals

__all__ = ["DataInfo", "Streams", "data_info", "first_batch", "open_streams", "prepare_data", "split_batch",
           "training_meta"]


def prepare_data(cfg: Any, dist: Distributed, progress: bool) -> Any:
    """The job's dataset as a prepared store (:func:`sciencegen.data.prepare.prepare`) on every rank.

    Rank 0 writes the store (once); the other ranks wait and reuse it. A failure of rank 0 reaches every
    rank (the others would hang otherwise).
    """
    kw = {"data_root": data_root(cfg)}
    err = None
    prepared = None
    if dist.main:
        try:
            prepared = prepare(cfg["dataset"], progress=progress, **kw)
        except Exception as exc:  # tell the waiting ranks before raising, or they would hang
            err = exc
    failed = dist.broadcast(None if err is None else str(err))
    if err is not None:
        raise err
    if failed is not None:
        raise TrainError(f"rank 0 could not prepare the data: {failed}")
    if not dist.main:
        prepared = prepare(cfg["dataset"], progress=False, **kw)
    return prepared


@dataclass
class Streams:
    """This rank's training stream and loader, and rank 0's validation stream (``None``: no held-out data)."""

    train: Any
    loader: Any
    validation: Any


def open_streams(store: Path, opts: dict[str, Any], dist: Distributed, local_batch: int,
                 masked: bool | None = None) -> Streams:
    """The training split of ``store`` sharded over the ranks, and the held-out split on rank 0.

    ``masked``: the target channels keep their NaN, the invalid points the loss ignores (:attr:`DataInfo.masked`;
    ``None``: as the store says).

    Raises
    ------
    TrainError
        The store cannot be read, or its training split holds less than one batch per rank.
    """
    from ..data.loader import from_store, make_loader
    from ..data.masks import holds_nan

    o = opts
    try:
        if masked is None:
            prepared = open_prepared(store)
            masked = bool(prepared.meta.get("masks")) or holds_nan(prepared)
        stream = from_store(store, batch_size=local_batch, split="train", holdout=float(o["holdout"]),
                            seed=o["seed"], shuffle=bool(o["shuffle"]), drop_last=True, rank=dist.rank,
                            world_size=dist.world, keep_invalid=masked)
        val_stream = None
        if o["holdout"] > 0 and o["val_batches"] > 0 and dist.main:
            val_stream = from_store(store, batch_size=o["batch_size"], split="validation",
                                    holdout=float(o["holdout"]), shuffle=False, rank=0, world_size=1,
                                    keep_invalid=masked)
    except (ValueError, FileNotFoundError) as exc:
        raise TrainError(f"data: {exc}") from None
    if len(stream) == 0:
        raise TrainError(f"data: the training split of {store} has {stream.n_samples} samples per "
                         f"epoch, fewer than one batch of {local_batch} per rank: lower train.batch_size "
                         "or train.holdout")
    loader = make_loader(stream, num_workers=o["num_workers"], pin_memory=dist.device.type == "cuda",
                         worker_init_fn=ignore_stop_signals)
    return Streams(stream, loader, val_stream)


@dataclass
class DataInfo:
    """The layout of the prepared data a model trains on."""

    path: Path
    field_shape: tuple[int, ...]
    channels: int
    mean: np.ndarray
    std: np.ndarray
    target: Any
    cond_channels: int = 0
    conditioning: dict[str, Any] | None = None  # the store's conditioning layout + per-channel mean/std (C4)
    masks: dict[str, Any] | None = None  # the store's masks, each with its valid points (data.masks.store_masks)
    masked: bool = False  # the targets hold NaN (masked or missing points): the loss ignores them


def data_info(prepared: Any, dataset_cfg: Any) -> DataInfo:
    """Shape, channels, conditioning, normalisation and (if the dataset has one) the exact law of the data."""
    from ..data.conditioning import condition_layout
    from ..data.masks import holds_nan, store_masks

    target = None
    with contextlib.suppress(Exception):
        target = make_source(dataset_cfg).target()
    layout = condition_layout(prepared.path)
    conditioning = None
    if layout is not None:
        conditioning = {"kinds": layout.kinds, "inputs": layout.inputs, "static": layout.static,
                        "state": layout.state, "mean": np.asarray(layout.mean, dtype=float).tolist(),
                        "std": np.asarray(layout.std, dtype=float).tolist()}
    masks = store_masks(prepared)
    return DataInfo(Path(prepared.path), tuple(prepared.field_shape), len(prepared.spec.variables),
                    np.asarray(prepared.mean, dtype=float), np.asarray(prepared.std, dtype=float), target,
                    0 if layout is None else int(layout.channels), conditioning, masks,
                    bool(masks) or holds_nan(prepared))


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(target, cond)`` of a loader batch: a conditional store yields pairs, an unconditional one tensors."""
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1]
    return batch, None


def training_meta(cfg: Any, prepared: Any, info: DataInfo, dataset_cfg: dict[str, Any],
                  opts: dict[str, Any]) -> dict[str, Any]:
    """The meta of every checkpoint: resolved model config, dataset config, data layout, options, code."""
    spec = prepared.spec
    model_meta = resolve_model_config(cfg["model"], channels=info.channels, field_dims=spec.field_dims,
                                      field_shape=info.field_shape, periodic=spec.periodic,
                                      cond_channels=info.cond_channels)
    return {
        "model": model_meta,
        "dataset": dataset_cfg,
        "data": {**spec.as_dict(), "field_shape": list(info.field_shape), "mean": info.mean.tolist(),
                 "std": info.std.tolist(), "store": str(Path(prepared.path).resolve()),
                 "conditioning": info.conditioning, **({"masks": info.masks} if info.masks else {})},
        "train": dict(opts),
        "code": code_version(),
    }


def first_batch(streams: Streams, members: int) -> tuple[torch.Tensor | None, str, torch.Tensor | None]:
    """The data row of the sample figures: the first held-out (else training) fields, its label, and their
    conditions (``None`` for unconditional data; each figure member is drawn given one data field's condition)."""
    src = streams.validation if streams.validation is not None else streams.train
    label = "held-out data" if streams.validation is not None else "training data"
    try:
        x, cond = split_batch(next(iter(src)))
        return x[:members].double().cpu(), label, None if cond is None else cond[:members].cpu()
    except Exception:
        return None, label, None
