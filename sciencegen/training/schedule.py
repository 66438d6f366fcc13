"""The numbers of a training step: run progress, learning rate, EMA decay, per-rank batch, seeded noise, the EMA.

All pure functions of their arguments (no state but :class:`EMA`'s copy of the weights), so a resumed or a
multi-rank run computes exactly what one uninterrupted process would.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import TrainError
from ..samplers.noise import stream_key

__all__ = ["EMA", "TRAIN_TAG", "VALID_TAG", "ema_beta", "lr_factor", "per_rank_batch", "schedule_progress",
           "train_noise"]

#: noise-stream tags of the training and validation draws (see :func:`sciencegen.samplers.noise.stream_key`)
TRAIN_TAG, VALID_TAG = 5, 6


def schedule_progress(step: int, minutes: float, *, max_steps: int | None, max_minutes: float | None,
                      horizon_steps: int | None = None) -> float:
    """Fraction of the run done, in ``[0, 1]``: drives the cosine learning-rate decay.

    ``step / horizon_steps`` when a horizon is given, else the larger of ``step / max_steps`` and
    ``minutes / max_minutes`` (the bound that ends the run first ends the decay).
    """
    if horizon_steps:
        return min(1.0, step / horizon_steps)
    p = 0.0
    if max_steps:
        p = max(p, step / max_steps)
    if max_minutes:
        p = max(p, minutes / max_minutes)
    return min(1.0, p)


def lr_factor(step: int, progress: float, *, warmup_steps: int = 0, schedule: str = "cosine",
              final_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup_steps``, times a cosine decay (or 1).

    Loshchilov & Hutter 2017 (SGDR, cosine annealing); Goyal et al. 2017 (linear warm-up).

    Parameters
    ----------
    step
        Optimizer step about to be taken (1-based).
    progress
        Fraction of the run done (:func:`schedule_progress`).
    warmup_steps
        Steps of the linear ramp ``step / warmup_steps``.
    schedule
        ``"cosine"`` (from 1 to ``final_ratio`` as progress goes 0 → 1) or ``"constant"``.
    final_ratio
        Multiplier at the end of the cosine.
    """
    w = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "constant":
        return w
    p = min(max(progress, 0.0), 1.0)
    return w * (final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * p)))


def ema_beta(batch: int, samples_seen: int, *, halflife_samples: float | None = None, rampup: float | None = 0.05,
             decay: float | None = None) -> float:
    """EMA decay per step: ``0.5 ** (batch / half-life)`` with ramp-up, or a fixed ``decay``.

    Karras et al. 2022 (EDM training code): the half-life is ``min(halflife_samples, rampup · samples seen)``
    so short runs average over their recent past only.

    Parameters
    ----------
    batch
        Global samples per step.
    samples_seen
        Samples seen before this step.
    halflife_samples
        Half-life of the average, in samples.
    rampup
        Ramp-up ratio (``None`` or 0: none).
    decay
        Fixed decay; overrides the half-life when given.
    """
    if decay is not None:
        return float(decay)
    if not halflife_samples:
        return 0.0
    hl = float(halflife_samples)
    if rampup:
        hl = min(hl, samples_seen * float(rampup))
    return 0.5 ** (batch / max(hl, 1e-8))


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """Per-rank batch of a global ``batch_size`` split over ``world_size`` ranks (must divide evenly).

    Raises
    ------
    TrainError
        ``batch_size`` is not a positive integer, or not divisible by ``world_size``.
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise TrainError(f"train.batch_size must be an integer >= 1, got {batch_size!r}")
    if batch_size % world_size:
        raise TrainError(f"train.batch_size={batch_size} is the global batch and must be divisible by the "
                         f"{world_size} ranks (e.g. {max(1, batch_size // world_size) * world_size})")
    return batch_size // world_size


def train_noise(seed: int, step: int, indices: Sequence[int], shape: Sequence[int], *, p_mean: float = -1.2,
                p_std: float = 1.2, tag: int = TRAIN_TAG, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Noise levels and noise of training samples, seeded by ``(seed, step, global sample position)``.

    Karras et al. 2022, Sec. 5: ``ln σ ~ N(p_mean, p_std²)``. Sample ``indices[i]`` of step ``step`` gets
    the same ``σ`` and noise whichever rank draws it, so a DDP run and a single-process run of the same
    global batch see the same numbers (on the same device type).

    Returns
    -------
    sigma : torch.Tensor
        ``[len(indices)]``.
    noise : torch.Tensor
        ``[len(indices), *shape]`` standard normals.
    """
    device = torch.device(device)
    gen = torch.Generator(device=device)
    b = len(indices)
    z = torch.empty(b, dtype=torch.float32, device=device)
    noise = torch.empty((b, *shape), dtype=torch.float32, device=device)
    for i, idx in enumerate(indices):
        gen.manual_seed(stream_key(seed, int(idx), int(step), tag))
        torch.randn((1,), generator=gen, dtype=torch.float32, device=device, out=z[i : i + 1])
        torch.randn(tuple(shape), generator=gen, dtype=torch.float32, device=device, out=noise[i])
    sigma = (p_mean + p_std * z).exp()
    return sigma.to(dtype), noise.to(dtype)


class EMA:
    """Exponential moving average of a model's weights (Polyak & Juditsky 1992; EDM's half-life form).

    Parameters
    ----------
    model
        The model being trained; a frozen deep copy is kept.
    """

    def __init__(self, model: nn.Module):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, beta: float) -> None:
        """``ema ← beta · ema + (1 − beta) · model`` for the parameters; buffers are copied."""
        ema_p = list(self.module.parameters())
        cur = [p.detach() for p in model.parameters()]
        if beta <= 0.0:
            torch._foreach_copy_(ema_p, cur)
        else:
            torch._foreach_lerp_(ema_p, cur, 1.0 - beta)
        for e, b in zip(self.module.buffers(), model.buffers(), strict=True):
            e.copy_(b)
