"""The training room: what ``sciencegen-train`` (:func:`sciencegen.pipelines.train.run_train`) is made of.

One concern per module:

* :mod:`~sciencegen.training.options` -- the checked ``train`` options, the run directory, the data root;
* :mod:`~sciencegen.training.schedule` -- run progress, learning rate, EMA decay, per-rank batch, seeded noise, EMA;
* :mod:`~sciencegen.training.distributed` -- the ranks (DDP under ``torchrun``) and their collectives;
* :mod:`~sciencegen.training.setup` -- prepared data, data streams, the checkpoint meta;
* :mod:`~sciencegen.training.metrics` -- ``RUN/metrics.csv`` and TensorBoard scalars;
* :mod:`~sciencegen.training.validation` -- validation loss and sample figures;
* :mod:`~sciencegen.training.state` -- RNG states, the ranks' stop vote, disk faults;
* :mod:`~sciencegen.training.loop` -- :class:`Trainer`, the loop that ties them together.

Model construction (``build_model``, ``load_model``) lives in :mod:`sciencegen.models.build`.
"""

from .distributed import Distributed
from .loop import Trainer
from .metrics import CSV_COLUMNS, MetricsWriter
from .options import resolve_run_dir, train_options
from .schedule import EMA, ema_beta, lr_factor, per_rank_batch, schedule_progress, train_noise

__all__ = [
    "CSV_COLUMNS",
    "EMA",
    "Distributed",
    "MetricsWriter",
    "Trainer",
    "ema_beta",
    "lr_factor",
    "per_rank_batch",
    "resolve_run_dir",
    "schedule_progress",
    "train_noise",
    "train_options",
]
