"""Spectral calculus on the periodic square ``[0, 2π)²`` in torch: wavenumbers, 2/3-rule de-aliasing, velocity
from vorticity, curl and divergence, energy and enstrophy (totals and shell spectra), and the exact Taylor–Green
vortex.

Conventions (shared with :mod:`sciencegen.physics.kolmogorov`): fields are ``(..., n, n)`` with ``y`` along the
second-to-last axis and ``x`` along the last, on the points ``2π j / n``; spectra are the ``rfft2`` half spectrum
``(n, n // 2 + 1)``; ``∇²ψ = −ω``, ``u = ∂ψ/∂y``, ``v = −∂ψ/∂x``.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "COMPLEX_DTYPES",
    "check_dtype",
    "check_size",
    "curl",
    "dealias_mask",
    "derivative_wavenumbers",
    "divergence",
    "energy",
    "energy_spectrum",
    "enstrophy",
    "enstrophy_spectrum",
    "grid_points",
    "max_dealiased_wavenumber",
    "taylor_green",
    "velocity_from_vorticity",
    "wavenumbers",
]

#: complex dtype of the spectra of each supported real dtype
COMPLEX_DTYPES = {torch.float64: torch.complex128, torch.float32: torch.complex64}


def check_size(n: int) -> int:
    """``n`` as an int if it is a valid grid size (an even integer ``>= 8``); raise ``ValueError`` otherwise."""
    if int(n) != n or n < 8 or n % 2:
        raise ValueError(f"grid size must be an even integer >= 8, got {n!r}")
    return int(n)


def check_dtype(dtype: torch.dtype) -> torch.dtype:
    """``dtype`` if it is a supported real dtype (float32 or float64); raise ``ValueError`` otherwise."""
    if dtype not in COMPLEX_DTYPES:
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    return dtype


def max_dealiased_wavenumber(n: int) -> int:
    """Largest wavenumber kept per axis by the 2/3 rule on an ``n``-point grid: ``(n − 1) // 3``."""
    return (int(n) - 1) // 3


def wavenumbers(
    n: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer wavenumbers of the ``rfft2`` layout on the ``[0, 2π)²`` square.

    Parameters
    ----------
    n
        Grid points per side (even).
    device, dtype
        Where and in which real dtype to build them.

    Returns
    -------
    kx, ky
        ``kx`` of shape ``(1, n // 2 + 1)`` (``0 … n/2``) and ``ky`` of shape ``(n, 1)`` (``0 … n/2 − 1, −n/2 … −1``),
        broadcasting to the ``(n, n // 2 + 1)`` half spectrum of ``torch.fft.rfft2`` over ``(y, x)``.
    """
    n = check_size(n)
    kx = torch.fft.rfftfreq(n, d=1.0 / n, dtype=dtype, device=device).reshape(1, -1)
    ky = torch.fft.fftfreq(n, d=1.0 / n, dtype=dtype, device=device).reshape(-1, 1)
    return kx, ky


def derivative_wavenumbers(
    n: int, device: torch.device | str | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Wavenumbers for first derivatives: the Nyquist mode ``±n/2`` is set to zero (its derivative is not real)."""
    kx, ky = wavenumbers(n, device=device, dtype=dtype)
    kx = torch.where(kx.abs() == n // 2, torch.zeros_like(kx), kx)
    ky = torch.where(ky.abs() == n // 2, torch.zeros_like(ky), ky)
    return kx, ky


def dealias_mask(n: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``(n, n // 2 + 1)`` mask of the modes kept by the 2/3 rule (``|k_x|, |k_y| ≤ (n − 1) // 3``)."""
    kx, ky = wavenumbers(n, device=device)
    kmax = max_dealiased_wavenumber(n)
    return (kx.abs() <= kmax) & (ky.abs() <= kmax)


def grid_points(n: int, device: torch.device | str | None, dtype: torch.dtype) -> torch.Tensor:
    """The ``n`` grid coordinates ``2π j / n`` of one axis, shape ``(n,)``."""
    return 2 * math.pi * torch.arange(n, device=device, dtype=dtype) / n


def velocity_from_vorticity(omega: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Velocity ``(u, v) = (∂ψ/∂y, −∂ψ/∂x)`` with ``∇²ψ = −ω`` (spectral; the mean of ω is ignored).

    Parameters
    ----------
    omega
        Vorticity, shape ``(..., n, n)`` with ``y`` then ``x`` last.

    Returns
    -------
    u, v
        Velocity components with the shape and dtype of ``omega``.
    """
    n = check_size(omega.shape[-1])
    w_hat = torch.fft.rfft2(omega)
    kx, ky = wavenumbers(n, device=omega.device, dtype=omega.dtype)
    k2 = kx**2 + ky**2
    inv_k2 = torch.where(k2 > 0, 1.0 / torch.where(k2 > 0, k2, torch.ones_like(k2)), torch.zeros_like(k2))
    dkx, dky = derivative_wavenumbers(n, omega.device, omega.dtype)
    psi_hat = w_hat * inv_k2
    u = torch.fft.irfft2(1j * dky * psi_hat, s=(n, n))
    v = torch.fft.irfft2(-1j * dkx * psi_hat, s=(n, n))
    return u, v


def curl(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Spectral vorticity ``∂v/∂x − ∂u/∂y`` of a periodic velocity field of shape ``(..., n, n)``."""
    n = check_size(u.shape[-1])
    dkx, dky = derivative_wavenumbers(n, u.device, u.dtype)
    return torch.fft.irfft2(1j * dkx * torch.fft.rfft2(v) - 1j * dky * torch.fft.rfft2(u), s=(n, n))


def divergence(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Spectral divergence ``∂u/∂x + ∂v/∂y`` of a periodic velocity field of shape ``(..., n, n)``."""
    n = check_size(u.shape[-1])
    dkx, dky = derivative_wavenumbers(n, u.device, u.dtype)
    return torch.fft.irfft2(1j * dkx * torch.fft.rfft2(u) + 1j * dky * torch.fft.rfft2(v), s=(n, n))


def energy(omega: torch.Tensor) -> torch.Tensor:
    """Domain-mean kinetic energy ``½⟨u² + v²⟩`` of vorticity fields ``(..., n, n)``; returns shape ``(...)``."""
    u, v = velocity_from_vorticity(omega)
    return 0.5 * (u**2 + v**2).mean(dim=(-2, -1))


def enstrophy(omega: torch.Tensor) -> torch.Tensor:
    """Domain-mean enstrophy ``½⟨ω²⟩`` of vorticity fields ``(..., n, n)``; returns shape ``(...)``."""
    return 0.5 * (omega**2).mean(dim=(-2, -1))


def _shell_spectrum(omega: torch.Tensor, weight_by_inverse_k2: bool) -> tuple[torch.Tensor, torch.Tensor]:
    n = check_size(omega.shape[-1])
    w_hat = torch.fft.rfft2(omega)
    kx, ky = wavenumbers(n, device=omega.device, dtype=omega.dtype)
    k2 = kx**2 + ky**2
    # rfft half spectrum: columns 0 < kx < n/2 stand for themselves and their conjugates
    multiplicity = torch.full_like(kx, 2.0)
    multiplicity[..., 0] = 1.0
    multiplicity[..., -1] = 1.0
    density = 0.5 * multiplicity * w_hat.abs() ** 2 / float(n) ** 4
    if weight_by_inverse_k2:
        density = density * torch.where(k2 > 0, 1.0 / torch.where(k2 > 0, k2, torch.ones_like(k2)), 0.0)
    shell = torch.round(torch.sqrt(k2)).to(torch.long).expand(n, n // 2 + 1).reshape(-1)
    shells = int(shell.max()) + 1
    flat = density.reshape(*density.shape[:-2], -1)
    spectrum = torch.zeros(*flat.shape[:-1], shells, dtype=omega.dtype, device=omega.device)
    spectrum.index_add_(-1, shell, flat)
    return torch.arange(shells, dtype=omega.dtype, device=omega.device), spectrum


def energy_spectrum(omega: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shell-summed kinetic energy spectrum of vorticity fields ``(..., n, n)``.

    Shells are ``round(|k|) = 0, 1, …`` (shells above ``n/2`` are the incomplete corners of the square), and
    ``E(k).sum(-1)`` equals :func:`energy` (Parseval).

    Returns
    -------
    k, E
        ``k`` of shape ``(K,)`` and ``E`` of shape ``(..., K)``.
    """
    return _shell_spectrum(omega, weight_by_inverse_k2=True)


def enstrophy_spectrum(omega: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shell-summed enstrophy spectrum of vorticity fields ``(..., n, n)``; ``Z.sum(-1)`` equals :func:`enstrophy`.

    Returns
    -------
    k, Z
        ``k`` of shape ``(K,)`` and ``Z`` of shape ``(..., K)``; away from ``k = 0``, ``Z(k) = k² E(k)``.
    """
    return _shell_spectrum(omega, weight_by_inverse_k2=False)


def taylor_green(
    n: int,
    t: float = 0.0,
    *,
    viscosity: float = 0.0,
    drag: float = 0.0,
    k: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact Taylor–Green vortex of the unforced equations at time ``t``.

    ``ω = 2k cos(kx) cos(ky) e^{−λt}``, ``u = −cos(kx) sin(ky) e^{−λt}``, ``v = sin(kx) cos(ky) e^{−λt}`` with
    ``λ = 2νk² + α``: the advection term vanishes identically, so the decay is purely linear.

    Returns
    -------
    omega, u, v
        Each of shape ``(n, n)`` (``y`` then ``x``).
    """
    n = check_size(n)
    decay = math.exp(-(2.0 * viscosity * k * k + drag) * t)
    grid = grid_points(n, device, dtype)
    y, x = grid.reshape(-1, 1), grid.reshape(1, -1)
    omega = 2.0 * k * torch.cos(k * x) * torch.cos(k * y) * decay
    u = -torch.cos(k * x) * torch.sin(k * y) * decay
    v = torch.sin(k * x) * torch.cos(k * y) * decay
    return omega, u, v

