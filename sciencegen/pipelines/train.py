"""``run_train(cfg)``: train an EDM denoiser on a prepared dataset; resumable, DDP-ready (the ``sciencegen-train`` job).

One job = one run directory (Hydra's run dir, or ``cfg.run_dir`` when called without Hydra)::

    RUN/checkpoints/step_*.pt   # model, EMA, optimizer, schedule, counters, RNG states (atomic, keep-last-k)
    RUN/metrics.csv             # one row per log step; appended on resume (rows past the checkpoint dropped)
    RUN/figures/step_*.png      # EMA samples, training fields and radial spectra (vs the exact law for grf)
    RUN/tensorboard/            # the same scalars, with train.tensorboard=true (pip install 'sciencegen[tensorboard]')
    RUN/train.log               # the job's log (under Hydra)

The work is done in the training room :mod:`sciencegen.training` (options, LR/EMA schedule, the ranks, metrics,
validation, the loop :class:`~sciencegen.training.Trainer`); the model is built by
:mod:`sciencegen.models.build`, whose :func:`~sciencegen.models.build.load_model` returns the EMA weights
(what generation uses).

Stopping: SIGINT (Ctrl-C) or SIGTERM (a scheduler's time limit or preemption) is acted on after the optimiser
step in flight (and its metrics row / periodic checkpoint): a checkpoint of that step is written (rank 0; the
ranks vote every step so all stop at the same one) and :class:`~sciencegen.errors.Interrupted` ends the job
(exit 130); rerunning the same command resumes from it exactly. A second Ctrl-C stops at once (no partial file:
checkpoint writes are atomic). A write that fails (disk full, read-only, quota) stops training with one line
naming the file and the last complete checkpoint, which stays usable; a run directory that cannot be written
is refused before any work.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import plain
from ..data.prepare import make_source
from ..errors import TrainError
from ..models.build import builder, is_oracle, oracle_denoiser
from ..training import Distributed, Trainer, resolve_run_dir, train_options

__all__ = ["TrainError", "run_train"]

log = logging.getLogger(__name__)


def run_train(cfg: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The ``sciencegen-train`` job: train (or resume) a denoiser on ``cfg.dataset``.

    Parameters
    ----------
    cfg
        The composed ``train.yaml`` config: ``dataset``, ``model``, ``train`` groups, ``data_root`` and
        (without Hydra) ``run_dir``. See docs/training.md for every key.

    Returns
    -------
    dict
        Summary: ``run_dir``, ``trained`` (False for a model with nothing to train or a finished run),
        ``step`` (global step reached), ``start_step``, ``epoch``, ``samples``, ``minutes`` (cumulative),
        ``loss`` and ``val_loss`` (last values), ``checkpoint`` (path of the newest checkpoint), ``stopped``
        (``"max_steps"``, ``"max_minutes"``, ``"done"`` or ``"nothing to train"``), ``samples_per_s``,
        ``parameters``, ``world_size``, ``device``, ``metrics`` (CSV path), ``figure`` (last figure path).

    Raises
    ------
    TrainError
        Bad options, a model that does not fit the data, a checkpoint of another model or dataset in the
        run directory, a non-finite loss (training stops; the last good checkpoint is kept).
    DataError
        The dataset cannot be prepared.
    """
    opts = train_options(cfg)
    run_dir = resolve_run_dir(cfg)
    if opts["threads"]:
        torch.set_num_threads(int(opts["threads"]))
    model_cfg = plain(cfg["model"], TrainError)
    if is_oracle(model_cfg):
        return _oracle_summary(cfg, model_cfg, run_dir)
    builder(model_cfg)  # a _target_ that does not import fails here, before any work
    dist = Distributed(opts["device"])
    try:
        return Trainer(cfg, opts, run_dir, dist).run()
    finally:
        dist.close()


def _oracle_summary(cfg: Any, model_cfg: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """``model=oracle``: the exact denoiser needs no training; say so (after checking the dataset has a law)."""
    dataset = plain(cfg["dataset"], TrainError)
    oracle_denoiser(model_cfg.get("dataset") or dataset)  # raises for a dataset without a law
    name = make_source(dataset).name
    msg = (f"model=oracle is the exact denoiser of dataset {name}: nothing to train "
           "(use model=oracle directly for generation)")
    log.info("sciencegen-train: %s", msg)
    return {"run_dir": str(run_dir), "trained": False, "stopped": "nothing to train", "message": msg, "step": 0,
            "start_step": 0, "checkpoint": None}
