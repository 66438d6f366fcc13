"""``run_data(cfg)``: the ``sciencegen-data`` job, a thin wrapper over :func:`sciencegen.data.prepare.prepare`.

It generates a built-in dataset or prepares a user dataset as a Zarr store with statistics, and logs the
summary (:func:`sciencegen.data.prepare.summary`) that the console shows at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from ..data.prepare import prepare, summary
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
    return prepared
