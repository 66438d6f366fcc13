"""How many samples a training split holds, and what a small one means for training (few samples).

Monthly or annual climate data give 12-65 samples where the defaults expect thousands. The data stage
(``sciencegen-data``) says so with :func:`few_samples_line`; training adapts its batch
(:func:`sciencegen.training.options.fit_batch`) and reports the validation/training loss gap.
"""

from __future__ import annotations

import math
import os

from .conditioning import split_samples

__all__ = ["FEW_SAMPLES", "few_samples_line", "train_split_size"]

#: a training split smaller than this is "few samples": expect over-fitting
FEW_SAMPLES = 300


def train_split_size(path: str | os.PathLike, holdout: float) -> int:
    """Samples in the training split of a prepared store (the chunks left after ``holdout``, as training reads them).

    Parameters
    ----------
    path
        A prepared store (``sciencegen-data``).
    holdout
        ``train.holdout``: the fraction of the chunks held out (the last ones).
    """
    return int(len(split_samples(path, "train", holdout)))


def few_samples_line(name: str, samples: int, train: int, holdout: float, batch: int) -> str | None:
    """The data stage's warning for a small training split, saying what to expect and what to set; else ``None``.

    Parameters
    ----------
    name
        The dataset's name.
    samples, train
        Samples in the store, and in its training split.
    holdout, batch
        ``train.holdout`` and ``train.batch_size`` the split was computed for (the shipped defaults, or the job's).
    """
    if train >= FEW_SAMPLES and 2 * batch <= train:
        return None
    held = f"{samples - train} held out by train.holdout={holdout:g}"
    parts = [f"dataset {name}: {train} training samples ({samples} in all, {held})"]
    if train < FEW_SAMPLES:
        parts.append("fewer than a few hundred: expect over-fitting (sciencegen-train reports the validation loss "
                     "against the training loss; keep runs short with train.max_steps and check the memorisation "
                     "of the ensemble with sciencegen-evaluate)")
    if 2 * batch > train:
        fit = 2 ** int(math.log2(max(1, train // 2)))
        parts.append(f"train.batch_size={batch} is more than half of them: sciencegen-train will use "
                     f"train.batch_size={fit} (set it to choose; train.adapt_batch=false keeps {batch})")
    return "; ".join(parts)
