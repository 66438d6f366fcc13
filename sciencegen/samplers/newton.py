"""Spectral Newton for the Picard walk: the denoiser's Jacobian approximated by a radial Fourier multiplier.

Quasi-Newton for parallel-in-time solves after Lim et al. 2024 (DEER) and Lu et al. 2025 (ParaSolver); the
Jacobian of a denoiser of stationary fields approximated by a Wiener filter (Wiener 1949).

A Picard round lags the denoiser: the new trajectory uses ``D(x_old)``.  Newton corrects it to first order,
``D(x_new) ~ D(x_old) + J (x_new - x_old) / alpha``, and then the window's recurrence stays linear in ``x_new``,
so the scan over the window solves it exactly at no cost in network evaluations.  A full Jacobian is out of
reach; for fields whose law is (nearly) invariant under shifts the Jacobian of ``E[x0 | y]`` is nearly a Fourier
multiplier that depends on the wavenumber's modulus -- exactly so for a Gaussian random field, whose denoiser is
the Wiener filter ``c_k / (c_k + s^2)``.  :class:`SpectralGain` estimates that multiplier at every source from
the round's own denoiser output by least squares over each shell of wavenumbers, per channel,
``J_shell = Re sum D_k conj(y_k) / sum |y_k|^2``, clipped to ``[0, 1]`` (a conditional mean never amplifies a
Gaussian field), after subtracting the law's mean where it is not 0 (given a condition: ``D`` at the start, the
posterior mean); :func:`newton_scan` runs the window's recurrence with it in the Fourier domain.  The samples
still converge to the sequential trajectory: the gain only preconditions the fixed-point iteration, and the
convergence test is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .engine import broadcast

__all__ = ["SpectralGain", "newton_scan"]


class SpectralGain:
    """Radial shells of the real FFT over a member's field dims, and the per-shell gain of a denoiser.

    Parameters
    ----------
    shape
        Shape of one member: ``(channels, *grid)`` (rank >= 2, the FFT runs over ``grid``) or ``(n,)`` (one
        1-D field without a channel dim).
    device
        Where the walk works.
    """

    def __init__(self, shape: Sequence[int], device: torch.device):
        shape = tuple(int(v) for v in shape)
        self.grid = shape[1:] if len(shape) >= 2 else shape
        self.dims = tuple(range(-len(self.grid), 0))  # the trailing dims of any batch layout
        axes = [torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64) for n in self.grid[:-1]]
        axes.append(torch.fft.rfftfreq(self.grid[-1], d=1.0 / self.grid[-1], dtype=torch.float64))
        k = torch.sqrt(sum(a**2 for a in torch.meshgrid(*axes, indexing="ij")))
        self.shell = torch.round(k).long().reshape(-1).to(device)
        self.shells = int(self.shell.max()) + 1
        # the half spectrum holds each mode of the interior of the last axis once for two of the full one
        n_last = self.grid[-1]
        w = torch.full((n_last // 2 + 1,), 2.0, dtype=torch.float64)
        w[0] = 1.0
        if n_last % 2 == 0:
            w[-1] = 1.0
        self.weight = w.expand(k.shape).reshape(-1).to(device)

    def fft(self, x: torch.Tensor) -> torch.Tensor:
        """Real FFT over the grid dims (the trailing ones) of ``[..., *shape]`` fields."""
        return torch.fft.rfftn(x, dim=self.dims)

    def ifft(self, xh: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`fft`.

        A lone transform takes another code path in the FFT library than a batch of them, with other round-off;
        so a member's numbers do not depend on its batch, a lone one is transformed beside a zero field.
        """
        lead, half = xh.shape[: xh.ndim - len(self.grid)], xh.shape[xh.ndim - len(self.grid):]
        flat = xh.reshape(-1, *half)
        if flat.shape[0] == 1:
            flat = torch.cat([flat, torch.zeros_like(flat)])
        out = torch.fft.irfftn(flat, s=self.grid, dim=self.dims)
        return out[: math.prod(lead)].reshape(*lead, *self.grid)

    def estimate(self, d: torch.Tensor, y: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
        """The per-shell gain ``Re sum D conj(y) / sum |y|^2`` of ``D = d`` at inputs ``y``, clipped to ``[0, 1]``.

        ``center``: the law's mean (given a condition, the posterior mean is not 0), subtracted from ``d`` and
        ``y`` first, so a mean the denoiser returns whatever ``y`` is does not pass for a gain.
        Returns a real tensor of the half spectrum's shape ``[P, (C,) *half]``, constant on each shell.
        """
        if center is not None:
            d, y = d - center, y - center
        dh, yh = self.fft(d), self.fft(y)
        lead = dh.shape[: dh.ndim - len(self.grid)]
        num = (dh * yh.conj()).real.reshape(*lead, -1).double() * self.weight
        den = torch.view_as_real(yh).square().sum(-1).reshape(*lead, -1).double() * self.weight
        sums = torch.zeros(*lead, self.shells, dtype=torch.float64, device=d.device)
        top = sums.index_add(-1, self.shell, num)
        bottom = sums.index_add(-1, self.shell, den)
        gain = torch.where(bottom > 0, top / bottom.clamp_min(1e-300), torch.zeros_like(top)).clamp(0.0, 1.0)
        return gain[..., self.shell].reshape(dh.shape).to(d.dtype)


def newton_scan(spec: SpectralGain, start: torch.Tensor, g: torch.Tensor, x_old: torch.Tensor,
                coef: torch.Tensor, a: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
    """The window's recurrence with the lagged denoiser corrected to first order, solved exactly.

    ``x_{k+1} = a_k x_k + g_k + coef_k (x_k - x_old_k) + c2_k (x_{k-1} - x_old_{k-1})`` along every window,
    where ``coef_k = E_k + B_k J_k / alpha_k`` and ``c2_k = B2_k J_{k-1} / alpha_{k-1}`` are Fourier multipliers
    (the Newton terms; the lagged ``g_k`` holds ``E_k x_old_k + B_k D_k + ...``).

    Parameters
    ----------
    spec
        The shells (FFT dims).
    start
        ``[R, *shape]`` the accepted point each window starts from (exact: its change is 0).
    g, x_old
        ``[R, W, *shape]`` lagged terms and the points the denoiser saw (zeros outside a window).
    coef, c2
        ``[R, W, *half]`` real multipliers (zeros outside a window and at the first column for ``c2``).
    a
        ``[R, W]`` the exactly scanned coefficient (1 outside a window).

    Returns
    -------
    torch.Tensor
        ``[R, W, *shape]`` the new points ``x_{k+1}``.
    """
    gh, oh = spec.fft(g), spec.fft(x_old)
    cur = spec.fft(start)
    prev_delta = torch.zeros_like(cur)
    out = torch.empty_like(gh)
    for k in range(g.shape[1]):
        delta = cur - oh[:, k]
        nxt = broadcast(a[:, k], cur) * cur + gh[:, k] + coef[:, k] * delta + c2[:, k] * prev_delta
        prev_delta, cur = delta, nxt
        out[:, k] = cur
    return spec.ifft(out)
