"""``run_data(cfg)``: the ``sciencegen-data`` job, a thin wrapper over :func:`sciencegen.data.prepare.prepare`.

It generates a built-in dataset or prepares a user dataset as a Zarr store with statistics, and logs the
summary (:func:`sciencegen.data.prepare.summary`) that the console shows at the end, and a warning when the
training split is small (few samples, :func:`sciencegen.data.split_size.few_samples_line`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from ..config import config_dir
from ..data.fields import DataError
from ..data.prepare import prepare, summary
from ..data.split_size import few_samples_line, train_split_size
from ..data.store import PreparedData

__all__ = ["run_data"]

log = logging.getLogger(__name__)


def run_data(cfg: Mapping[str, Any] | Any) -> PreparedData:
    """The ``sciencegen-data`` job: prepare ``cfg.dataset`` into ``cfg.output.path`` and log a summary.

    Parameters
    ----------
    cfg
        The composed ``conf/data.yaml`` config (``dataset``, ``output``, ``data_root``, ``progress``,
        ``threads``).

    Returns
    -------
    PreparedData
        The prepared (written or reused) dataset.
    """
    threads = cfg.get("threads") if hasattr(cfg, "get") else None
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    out = cfg["output"]
    t0 = time.perf_counter()
    prepared = prepare(cfg["dataset"], out.get("path"), data_root=cfg["data_root"],
                       overwrite=bool(out["overwrite"]), dtype=str(out["dtype"]),
                       chunk_mb=float(out["chunk_mb"]), progress=bool(cfg["progress"]))
    log.info("%s", summary(prepared, time.perf_counter() - t0))
    holdout, batch = _train_defaults(cfg)
    name = str(prepared.meta.get("name"))
    try:
        line = few_samples_line(name, prepared.samples, train_split_size(prepared.path, holdout), holdout, batch)
    except DataError as exc:  # too few chunks to hold any out: training says so too, with what to set
        line = f"dataset {name}: no training split with train.holdout={holdout:g}: {exc}"
    if line:
        log.warning("%s", line)
    return prepared


def _train_defaults(cfg: Any) -> tuple[float, int]:
    """``train.holdout`` and ``train.batch_size`` of the job's config when it has them, else the shipped defaults."""
    from omegaconf import OmegaConf

    train = cfg.get("train") if hasattr(cfg, "get") else None
    if train is None:
        try:
            train = OmegaConf.load(config_dir() / "train" / "default.yaml")
        except OSError as exc:
            raise DataError(f"cannot read the shipped training defaults: {exc}") from None
    return float(train.get("holdout", 0.1)), int(train.get("batch_size", 32))
