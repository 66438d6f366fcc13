"""``RUN/metrics.csv`` (and TensorBoard scalars): one row per log step, appended on resume; the loss gap.

Column ``val_ratio`` is the raw model's validation loss over its training loss of the same row
(:func:`loss_ratio`): about 1 while the model generalises, well above 1 when it over-fits (few samples);
:func:`gap_line` is what the end of a run says about it.

Rows written after the checkpoint a run resumes from are dropped first (atomically), so a resumed run
continues one curve. TensorBoard is an optional extra (``pip install sciencegen[tensorboard]``): with
``train.tensorboard=true`` and the package missing, one warning says so and training goes on with the CSV.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..data.split_size import FEW_SAMPLES

__all__ = ["CSV_COLUMNS", "OVERFIT_RATIO", "LossWindow", "MetricsWriter", "gap_line", "loss_ratio",
           "tensorboard_writer"]

log = logging.getLogger(__name__)

#: columns of ``RUN/metrics.csv``
CSV_COLUMNS = ("step", "epoch", "samples", "minutes", "lr", "loss", "grad_norm", "samples_per_s", "val_loss",
               "val_loss_raw", "spec_err", "val_ratio")
#: a validation loss this many times the training loss (raw weights, same row) is reported as over-fitting
OVERFIT_RATIO = 1.5


def loss_ratio(val_loss_raw: float | None, loss: float | None) -> float | None:
    """``val_loss_raw / loss`` (the raw weights on held-out over training data), or ``None`` without both."""
    if val_loss_raw is None or loss is None or not loss > 0 or not math.isfinite(val_loss_raw):
        return None
    return float(val_loss_raw) / float(loss)


def gap_line(val_loss_raw: float | None, loss: float | None, train_samples: int | None = None,
             few: int = FEW_SAMPLES) -> str | None:
    """``"validation loss 0.76 vs training 0.15: over-fitting (few samples: 36)"``; ``None`` without validation.

    Parameters
    ----------
    val_loss_raw, loss
        The raw model's last validation loss and the training loss of the same metrics row.
    train_samples
        Samples of the training split (named when fewer than ``few``).
    few
        What counts as few samples.
    """
    ratio = loss_ratio(val_loss_raw, loss)
    if ratio is None:
        return None
    verdict = "over-fitting" if ratio >= OVERFIT_RATIO else "no sign of over-fitting"
    small = f" (few samples: {train_samples})" if train_samples is not None and train_samples < few else ""
    return f"validation loss {val_loss_raw:.3g} vs training {loss:.3g} (x{ratio:.2f}): {verdict}{small}"


def tensorboard_writer(log_dir: Path, purge_step: int) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` in ``log_dir``, or ``None`` (one warning) without the package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("train.tensorboard=true but the tensorboard package is not installed: writing metrics.csv "
                    "only (install it with: pip install 'sciencegen[tensorboard]')")
        return None
    except Exception as exc:  # an installed but broken tensorboard must not stop training
        log.warning("train.tensorboard=true but torch.utils.tensorboard does not import (%s: %s): writing "
                    "metrics.csv only", type(exc).__name__, exc)
        return None
    return SummaryWriter(str(log_dir), purge_step=purge_step)


class MetricsWriter:
    """``RUN/metrics.csv`` (and TensorBoard): rank 0 only.

    Parameters
    ----------
    run_dir
        The run directory.
    start_step
        The step the run resumes from: rows past it are dropped.
    tensorboard
        Also write the scalars under ``RUN/tensorboard/`` (when the package is installed).
    """

    def __init__(self, run_dir: Path, start_step: int, tensorboard: bool):
        self.path = run_dir / "metrics.csv"
        self.failed = False
        self._truncate(start_step)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.file = open(self.path, "a", newline="")  # closed in close()
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(CSV_COLUMNS)
            self.file.flush()
        self.tb = tensorboard_writer(run_dir / "tensorboard", start_step + 1) if tensorboard else None

    def _truncate(self, step: int) -> None:
        """Drop rows written after the checkpoint we resume from (atomically), or a foreign header."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        header, body = rows[0], rows[1:]
        older = len(header) < len(CSV_COLUMNS) and tuple(header) == CSV_COLUMNS[: len(header)]
        if older:  # written before the last columns were added: the same curve, padded
            header, body = list(CSV_COLUMNS), [r + [""] * (len(CSV_COLUMNS) - len(r)) for r in body]
        if tuple(header) != CSV_COLUMNS:
            backup = self.path.with_name(f"metrics.{int(time.time())}.csv")
            os.replace(self.path, backup)
            warnings.warn(f"{self.path} had other columns; moved to {backup}", stacklevel=3)
            return
        keep = [r for r in body if len(r) == len(CSV_COLUMNS) and _int(r[0]) is not None and _int(r[0]) <= step]
        if len(keep) == len(body) and not older:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(header)
                w.writerows(keep)
            os.replace(tmp, self.path)
        except OSError as exc:  # disk full: the old file stays as it was, no temp file is left
            with contextlib.suppress(OSError):
                tmp.unlink()
            if exc.errno is None:
                raise
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(self.path)) from exc

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one row (flushed); an :class:`OSError` (disk full) names the CSV file."""
        try:
            self.writer.writerow([_fmt(row.get(c)) for c in CSV_COLUMNS])
            self.file.flush()
        except OSError as exc:
            self.failed = True
            if exc.errno is None:
                raise
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(self.path)) from exc
        if self.tb is not None:
            step = int(row["step"])
            for c in CSV_COLUMNS[4:]:
                v = row.get(c)
                if v is not None and math.isfinite(float(v)):
                    self.tb.add_scalar(c, float(v), step)

    def close(self) -> None:
        """Close the CSV file (and the TensorBoard writer)."""
        try:
            self.file.close()
        except OSError:
            if not self.failed:  # after a failed write the error was reported already
                raise
        if self.tb is not None:
            self.tb.close()


class LossWindow:
    """Sums over the training steps since the last metrics row (on the training device: no sync per step)."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.gn = torch.zeros((), dtype=torch.float64, device=device)
        self.reset()

    def add(self, loss: torch.Tensor, gn: torch.Tensor | None, seconds: float) -> None:
        """Add one step's loss, gradient norm (``None``: not clipped) and seconds."""
        self.loss += loss
        self.n += 1
        if gn is not None:
            self.gn += gn
            self.gn_n += 1
        self.time += seconds
        self.steps += 1

    def reset(self) -> None:
        """Start a new window."""
        self.loss.zero_()
        self.gn.zero_()
        self.n = self.gn_n = self.steps = 0
        self.time = 0.0


def _int(s: str) -> int | None:
    try:
        return int(s)
    except ValueError:
        return None


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
