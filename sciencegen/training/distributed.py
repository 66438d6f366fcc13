"""The ranks of a training job: :class:`sciencegen.ranks.Ranks` on the device ``train.device`` names."""

from __future__ import annotations

import os

from ..errors import TrainError
from ..ranks import Ranks, pick_device

__all__ = ["Distributed"]


class Distributed(Ranks):
    """Rank, world size, device and the collectives of the trainer (no-ops in one process).

    Parameters
    ----------
    device_opt
        ``train.device``: ``auto`` (CUDA if available) | ``cpu`` | ``cuda`` | ``cuda:N``.

    Raises
    ------
    TrainError
        CUDA asked for but not available, or ``WORLD_SIZE > 1`` without ``torch.distributed``.
    """

    def __init__(self, device_opt: str):
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        super().__init__(pick_device(device_opt, local_rank, "train.device", TrainError), error=TrainError)
