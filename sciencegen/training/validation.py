"""Watching a training run: the validation loss on held-out data and the figure of EMA samples.

Both run on rank 0 at log steps (``train.val_every``, ``train.figure_every``) and at the end of a run. The
validation draws fixed noise levels and noise (step 0 of the validation stream), so its losses are
comparable across steps and runs. A figure that fails for any reason but a full disk only warns: a figure
must never stop training. The figure's panels are drawn by the prepared store's coordinates
(:func:`figure_axes`): north up, axes labelled with the coordinate names and units.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..analysis.figures import plot_samples
from ..analysis.panels import PanelAxis, panel_axes
from ..models import denoising_loss
from .schedule import VALID_TAG, train_noise

__all__ = ["FigureSpec", "figure_axes", "sample_figure", "validation_losses"]

log = logging.getLogger(__name__)


@torch.no_grad()
def validation_losses(models: Mapping[str, nn.Module], stream: Iterable[torch.Tensor], *, batches: int, seed: int,
                      p_mean: float, p_std: float, device: torch.device, sigma_data: float = 1.0,
                      autocast: Any = contextlib.nullcontext) -> dict[str, float] | None:
    """Mean denoising loss per sample of each model over the first ``batches`` batches of ``stream``.

    Parameters
    ----------
    models
        ``{label: denoiser}`` (e.g. the EMA and the raw weights); each is evaluated in eval mode and left in
        the mode it was in.
    stream
        Batches of normalised fields ``[B, C, *field]``, or ``(fields, conditions)`` pairs.
    batches
        Batches read.
    seed, p_mean, p_std
        Noise levels ``ln σ ~ N(p_mean, p_std²)`` and noise drawn per sample position (validation tag).
    device
        Where to evaluate.
    sigma_data
        EDM ``sigma_data`` of the loss weight.
    autocast
        A callable returning the autocast context of the forward passes.

    Returns
    -------
    dict or None
        ``{label: loss}``; ``None`` when the stream is empty.
    """
    totals = dict.fromkeys(models, 0.0)
    n = 0
    for b, batch in enumerate(stream):
        if b >= batches:
            break
        x0, cond = batch if isinstance(batch, (tuple, list)) else (batch, None)
        x0 = x0.to(device)
        cond = None if cond is None else cond.to(device)
        valid = None if bool(torch.isfinite(x0).all()) else torch.isfinite(x0)  # masked data: NaN points ignored
        sigma, noise = train_noise(seed, 0, range(n, n + x0.shape[0]), x0.shape[1:], p_mean=p_mean, p_std=p_std,
                                   tag=VALID_TAG, device=device)
        for key, model in models.items():
            was = model.training
            model.eval()
            with autocast():
                loss = denoising_loss(model, x0, sigma, noise, cond=cond, sigma_data=sigma_data, valid=valid)
                totals[key] += float(loss.sum())
            model.train(was)
        n += x0.shape[0]
    if n == 0:
        return None
    return {k: v / n for k, v in totals.items()}


@dataclass
class FigureSpec:
    """What a sample figure shows: how to sample, the units, and the data row.

    Attributes
    ----------
    shape
        ``(channels, *field)`` of one sample.
    mean, std
        Per-channel normalisation: samples and data are shown in physical units.
    members, sampler, steps, seed
        Samples drawn, with which sampler (a name of :data:`sciencegen.samplers.SAMPLERS`) and steps.
    data
        Normalised fields of the data row (``None``: none).
    data_label
        Its label (``"training data"`` or ``"held-out data"``).
    target
        The analytic law of the dataset, if any: its spectrum is drawn and the spectral error returned.
    cond
        Normalised conditions of the data row (conditional models): member ``i`` is drawn given the
        condition of data field ``i``.
    axes
        The field dims' coordinates (:func:`figure_axes`): panels drawn by coordinate value, north up
        (``None``: index axes, row 0 at the bottom).
    """

    shape: tuple[int, ...]
    mean: np.ndarray
    std: np.ndarray
    members: int
    sampler: str
    steps: int
    seed: int
    data: torch.Tensor | None = None
    data_label: str = "training data"
    target: Any = None
    cond: torch.Tensor | None = None
    axes: Sequence[PanelAxis] | None = None


def figure_axes(prepared: Any) -> tuple[PanelAxis, ...] | None:
    """The field dims' coordinates of a prepared dataset (values, names, units) for the sample figures.

    Parameters
    ----------
    prepared
        A :class:`~sciencegen.data.store.PreparedData` (its ``ds`` and ``spec.field_dims``).

    Returns
    -------
    tuple of PanelAxis or None
        One per field dim (an index axis where a dim has no coordinate); ``None`` when they cannot be read
        (the figure then uses index axes: a figure must never stop training).
    """
    try:
        return panel_axes(prepared.ds, list(prepared.spec.field_dims))
    except Exception as exc:
        log.debug("sample figures without coordinates: %s: %s", type(exc).__name__, exc)
        return None


def sample_figure(model: nn.Module, spec: FigureSpec, path: Path, *, title: str, device: torch.device,
                  step: int) -> tuple[Path | None, float | None]:
    """Draw EMA samples and write ``path`` (:func:`~sciencegen.analysis.figures.plot_samples`).

    Returns
    -------
    path : Path or None
        ``path``, or ``None`` when the figure failed (a warning says why).
    spectral_error : float or None
        The spectral error against the dataset's exact law (``None`` without one, or on failure).

    Raises
    ------
    OSError
        A write that failed with an errno (disk full): it stops training like a failed checkpoint.
    """
    import sciencegen

    try:
        members = spec.members if spec.cond is None else min(spec.members, spec.cond.shape[0])
        res = sciencegen.sample(model, spec.shape, members, spec.sampler, spec.steps, seed=spec.seed,
                                device=device, dtype=torch.float32,
                                cond=None if spec.cond is None else spec.cond[:members])
        scale = torch.as_tensor(spec.std, dtype=torch.float64).reshape(1, -1, 1, 1)
        shift = torch.as_tensor(spec.mean, dtype=torch.float64).reshape(1, -1, 1, 1)
        samples = res.samples.double().cpu() * scale + shift
        data = spec.data * scale + shift if spec.data is not None else None
        if data is not None and data.shape[0] > 1:   # masked data: samples blank where every data field is (land)
            samples = samples.masked_fill(torch.isnan(data).all(0, keepdim=True), float("nan"))
        err = plot_samples(samples, path, data=data, target=spec.target, title=title, data_label=spec.data_label,
                           axes=spec.axes)
        return path, err
    except OSError as exc:
        if exc.errno is not None:  # disk full: stops training like a failed checkpoint or metrics row
            raise
        warnings.warn(f"figure at step {step} failed: {type(exc).__name__}: {exc}", stacklevel=2)
        return None, None
    except Exception as exc:  # a figure must never stop training
        warnings.warn(f"figure at step {step} failed: {type(exc).__name__}: {exc}", stacklevel=2)
        return None, None
