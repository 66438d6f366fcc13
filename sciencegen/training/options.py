"""Reading a training job's config: the checked ``train`` options, the run directory and the data root.

The values come from the composed config only (``conf/train/*.yaml``; the schema
:class:`sciencegen.config.TrainConfig` names every key): there are no defaults in the code. A config that
lacks a key (not composed from the shipped configs) is refused with one line naming it.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..config import EMAConfig, TrainConfig, plain
from ..errors import TrainError

__all__ = ["PRECISIONS", "SCHEDULES", "TRAIN_KEYS", "data_root", "fit_batch", "resolve_run_dir", "store_batch",
           "train_options"]

log = logging.getLogger(__name__)

#: values of ``train.precision`` and ``train.schedule``
PRECISIONS = ("auto", "fp32", "bf16")
SCHEDULES = ("cosine", "constant")
#: keys of the ``train`` config (:class:`sciencegen.config.TrainConfig`) and of ``train.ema``
TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig))
EMA_KEYS = tuple(f.name for f in fields(EMAConfig))
#: integer keys that may be 0 (0: off / only at the end)
_COUNTS = ("val_every", "val_batches", "ckpt_every_steps", "figure_every", "figure_members", "figure_steps")


def train_options(cfg: Any) -> dict[str, Any]:
    """The ``train`` config of a job as a checked plain dict.

    Parameters
    ----------
    cfg
        The job's config (``conf/train.yaml`` composed): its ``train`` entry is read.

    Returns
    -------
    dict
        Every key of :class:`~sciencegen.config.TrainConfig`, integers as ``int``.

    Raises
    ------
    TrainError
        An unknown or missing key, no bound (``max_steps`` / ``max_minutes``), a value out of range.
    """
    o = plain(cfg.get("train") or {}, TrainError) if hasattr(cfg, "get") else {}
    unknown = sorted(set(o) - set(TRAIN_KEYS))
    if unknown:
        raise TrainError(f"train: unknown key(s) {unknown} (see docs/training.md)")
    missing = [k for k in TRAIN_KEYS if k not in o]
    if missing:
        raise TrainError(f"train: missing key(s) {missing}: compose the shipped config (conf/train.yaml, e.g. "
                         "hydra.compose('train', overrides=[...])) instead of writing a partial one")
    if o["max_steps"] is None and o["max_minutes"] is None:
        raise TrainError("set train.max_steps or train.max_minutes (a run needs a bound)")
    _check_numbers(o)
    _check_choices(o)
    return o


def _positive(o: dict[str, Any], key: str, integer: bool = False, allow_zero: bool = False,
              allow_none: bool = False) -> None:
    """``o[key]`` is a finite number > 0 (or >= 0, or ``None``); integers are made ``int``."""
    v = o[key]
    if v is None and allow_none:
        return
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (v >= 0 if allow_zero else v > 0) and (not integer or int(v) == v)
    if not ok:
        kind = "an integer" if integer else "a number"
        raise TrainError(f"train.{key} must be {kind} {'>= 0' if allow_zero else '> 0'}, got {v!r}")
    if integer:
        o[key] = int(v)


def _check_numbers(o: dict[str, Any]) -> None:
    """The numeric options, in the order a user reads them."""
    _positive(o, "max_steps", True, allow_none=True)
    _positive(o, "max_minutes", allow_none=True)
    _positive(o, "batch_size", True)
    _positive(o, "lr")
    _positive(o, "weight_decay", allow_zero=True)
    _positive(o, "eps")
    _positive(o, "warmup_steps", True, allow_zero=True)
    _positive(o, "final_lr_ratio", allow_zero=True)
    _positive(o, "horizon_steps", True, allow_none=True)
    _positive(o, "grad_clip", allow_zero=True)
    _positive(o, "p_std")
    _positive(o, "seed", True, allow_zero=True)
    _positive(o, "threads", True, allow_none=True)
    _positive(o, "num_workers", True, allow_zero=True)
    _positive(o, "log_every", True)
    for key in _COUNTS:
        _positive(o, key, True, allow_zero=True)
    _positive(o, "ckpt_every_minutes", allow_zero=True)
    _positive(o, "keep", True)
    if not isinstance(o["p_mean"], (int, float)) or not math.isfinite(o["p_mean"]):
        raise TrainError(f"train.p_mean must be a finite number, got {o['p_mean']!r}")
    if not 0.0 <= float(o["holdout"]) < 1.0:
        raise TrainError(f"train.holdout must be in [0, 1), got {o['holdout']!r}")
    if not isinstance(o["adapt_batch"], bool):
        raise TrainError(f"train.adapt_batch must be true or false, got {o['adapt_batch']!r}")


def _check_choices(o: dict[str, Any]) -> None:
    """Schedule, precision, AdamW betas and the EMA options."""
    if o["schedule"] not in SCHEDULES:
        raise TrainError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {o['schedule']!r}")
    if o["precision"] not in PRECISIONS:
        raise TrainError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {o['precision']!r}")
    betas = o["betas"]
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(0 <= float(b) < 1 for b in betas)):
        raise TrainError(f"train.betas must be two numbers in [0, 1), got {betas!r}")
    ema = o["ema"] = dict(o["ema"] or {})
    unknown = sorted(set(ema) - set(EMA_KEYS))
    if unknown:
        raise TrainError(f"train.ema: unknown key(s) {unknown}; use halflife_samples, rampup or decay")
    missing = [k for k in EMA_KEYS if k not in ema]
    if missing:
        raise TrainError(f"train.ema: missing key(s) {missing}: compose the shipped config (conf/train.yaml)")
    if ema["decay"] is not None and not 0.0 <= float(ema["decay"]) < 1.0:
        raise TrainError(f"train.ema.decay must be in [0, 1) (or null to use the half-life), got {ema['decay']!r}")


def fit_batch(opts: dict[str, Any], train_samples: int, world_size: int, dataset: str, log_it: bool = True) -> int:
    """The global batch for a training split of ``train_samples``: ``train.batch_size``, or a smaller one.

    A batch is kept when every rank gets at least two batches per epoch. Otherwise, with ``train.adapt_batch``
    (the default), the batch becomes the largest power of two per rank that gives two (times the ranks), and one
    line says so; without, a batch larger than the split is an error naming what to set (one that fits once
    trains one step per epoch, with a warning).

    Parameters
    ----------
    opts
        The checked ``train`` options (:func:`train_options`): ``batch_size``, ``adapt_batch``, ``holdout``.
    train_samples
        Samples of the training split (:func:`sciencegen.data.conditioning.split_samples`).
    world_size
        The ranks the batch is split over.
    dataset
        The dataset's name, for the messages.
    log_it
        Log the line (rank 0).

    Raises
    ------
    TrainError
        The split holds fewer samples than the ranks, or (``train.adapt_batch=false``) fewer than one batch.
    """
    batch, world = int(opts["batch_size"]), max(1, int(world_size))
    per_rank, local = train_samples // world, batch // world
    split = (f"{train_samples} training samples of dataset {dataset} (train.holdout={opts['holdout']:g} held out"
             + (f", over {world} ranks)" if world > 1 else ")"))
    if per_rank < 1:
        raise TrainError(f"the {split} are fewer than the ranks: use fewer ranks or lower train.holdout")
    if 2 * local <= per_rank:
        return batch
    fit = world * 2 ** int(math.log2(max(1, per_rank // 2)))
    if not opts["adapt_batch"]:
        if local > per_rank:
            raise TrainError(f"train.batch_size={batch} > the {split}: set train.batch_size={fit} (or lower "
                             "train.holdout, or train.adapt_batch=true to let training choose)")
        if log_it:
            log.warning("train.batch_size=%d: one step per epoch on the %s; train.batch_size=%d gives two or more",
                        batch, split, fit)
        return batch
    if log_it:
        log.warning("train.batch_size=%d is more than half of the %s: using train.batch_size=%d (%d steps per "
                    "epoch); train.adapt_batch=false keeps %d", batch, split, fit, per_rank // (fit // world), batch)
    return fit


def store_batch(opts: dict[str, Any], prepared: Any, world_size: int, log_it: bool = True) -> tuple[int, int | None]:
    """:func:`fit_batch` for a prepared store: ``(global batch, training samples)``.

    A store without a training split (too few chunks for ``train.holdout``) keeps the batch and gives ``None``:
    the data streams refuse it with what to set.

    Parameters
    ----------
    opts
        The checked ``train`` options.
    prepared
        The prepared dataset (:class:`~sciencegen.data.store.PreparedData`).
    world_size, log_it
        See :func:`fit_batch`.
    """
    from ..data.fields import DataError
    from ..data.split_size import train_split_size

    try:
        n = train_split_size(prepared.path, float(opts["holdout"]))
    except DataError:
        return int(opts["batch_size"]), None
    return fit_batch(opts, n, world_size, str(prepared.meta.get("name")), log_it), n


def resolve_run_dir(cfg: Any) -> Path:
    """The run directory: ``cfg.run_dir`` when set, else Hydra's output dir inside a Hydra job.

    Raises
    ------
    TrainError
        Neither is available.
    """
    from hydra.core.hydra_config import HydraConfig

    rd = cfg.get("run_dir") if hasattr(cfg, "get") else None
    if rd:
        return Path(str(rd))
    if HydraConfig.initialized():
        try:
            out = HydraConfig.get().runtime.output_dir
        except Exception:
            out = None
        if out:
            return Path(out)
    raise TrainError("no run directory: run sciencegen-train (Hydra's run dir) or set run_dir=PATH")


def data_root(cfg: Any) -> str:
    """Where prepared dataset stores live: ``cfg.data_root``, else ``$SCIENCEGEN_DATA_ROOT``, else ``data``."""
    root = cfg.get("data_root") if hasattr(cfg, "get") else None
    return str(root or os.environ.get("SCIENCEGEN_DATA_ROOT", "data"))
