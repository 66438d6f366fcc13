"""Analytic targets behind the model interface ``denoiser(x, sigma, cond=None)``.

Tweedie/Wiener exact posterior means (see :mod:`sciencegen.targets`); Karras et al. 2022 conventions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["Oracle"]


class Oracle(nn.Module):
    """Exact denoiser of an analytic target, with the interface of a trained model.

    Parameters
    ----------
    target
        Object with ``denoiser(x, s)`` over ``[B, *target.shape]`` and ``[B]`` noise
        levels, e.g. :class:`sciencegen.targets.GaussianRandomField`.  When it has a
        ``shape`` attribute, inputs are checked against it.

    Notes
    -----
    Registers no parameters or buffers; the target is held as a plain attribute,
    so ``.to()``/``.eval()`` leave it unchanged (the target casts to the input's
    device and dtype itself).  Unconditional only.
    """

    def __init__(self, target: Any):
        super().__init__()
        if not callable(getattr(target, "denoiser", None)):
            raise ValueError(f"target must have a callable .denoiser(x, s), got {type(target).__name__}")
        self.target = target

    @property
    def shape(self) -> tuple[int, ...] | None:
        """Shape of one sample of the target (``None`` when the target does not say)."""
        shape = getattr(self.target, "shape", None)
        return None if shape is None else tuple(shape)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Exact ``E[x0 | x]`` for ``x = x0 + sigma·noise``.

        Parameters
        ----------
        x
            ``[B, *target.shape]``.
        sigma
            ``[B]`` noise levels (or a scalar for the whole batch).
        cond
            Must be ``None``.

        Returns
        -------
        torch.Tensor
            Shaped like ``x``.
        """
        if cond is not None:
            raise ValueError(f"Oracle of {type(self.target).__name__} is unconditional; got cond of shape "
                             f"{tuple(cond.shape)}")
        shape = self.shape
        if shape is not None and tuple(x.shape[1:]) != shape:
            raise ValueError(f"Oracle of {type(self.target).__name__} expects x of shape [B, *{list(shape)}], "
                             f"got {tuple(x.shape)}")
        s = torch.as_tensor(sigma, device=x.device)
        if s.ndim == 0:
            s = s.expand(x.shape[0])
        if s.shape != (x.shape[0],):
            raise ValueError(f"sigma must have shape [B] = [{x.shape[0]}] (or be a scalar), got {tuple(s.shape)}")
        return self.target.denoiser(x, s)

    def extra_repr(self) -> str:
        return f"target={type(self.target).__name__}, shape={self.shape}"
