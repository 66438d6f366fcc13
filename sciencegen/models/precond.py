"""EDM preconditioning, loss weighting and noise-level sampling.

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models", Table 1 and eq. (2), (8).

The denoiser is ``D(x, σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x, c_noise(σ))``
with ``x = x0 + σ·noise``; the loss ``λ(σ) ‖D(x0 + σ n, σ) − x0‖²`` with
``λ = 1 / c_out²`` makes the effective regression target of ``F`` unit-variance
at every noise level when ``sigma_data`` is the data standard deviation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "EDMPrecond",
    "denoising_loss",
    "edm_coefficients",
    "edm_loss_weight",
    "sample_sigma",
    "score_from_denoiser",
]

# noise labels use max(σ, _SIGMA_FLOOR): at σ = 0 the output is exactly x (c_out = 0) and stays finite
_SIGMA_FLOOR = 1e-20


def _per_item(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """``sigma`` as a ``[B]`` tensor on ``x``'s device (scalars are broadcast over the batch)."""
    s = torch.as_tensor(sigma, device=x.device)
    if not s.is_floating_point():
        s = s.to(x.dtype)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(f"sigma must have shape [B] = [{x.shape[0]}] (or be a scalar) for x of shape "
                         f"{tuple(x.shape)}, got {tuple(s.shape)}")
    return s


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``[B]`` → ``[B, 1, …, 1]`` broadcasting over ``x`` of any rank."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def edm_coefficients(sigma: torch.Tensor, sigma_data: float = 1.0
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM preconditioning coefficients (Karras et al. 2022, Table 1).

    Parameters
    ----------
    sigma
        Noise levels (any shape, ``>= 0``).
    sigma_data
        Standard deviation of the data.

    Returns
    -------
    c_skip, c_out, c_in, c_noise : torch.Tensor
        ``sd²/(σ²+sd²)``, ``σ sd/sqrt(σ²+sd²)``, ``1/sqrt(σ²+sd²)`` and ``ln(σ)/4``
        (the label uses ``max(σ, 1e-20)`` so that it stays finite at ``σ = 0``).
    """
    sigma = torch.as_tensor(sigma)
    sd2 = sigma_data ** 2
    tot = sigma * sigma + sd2
    c_skip = sd2 / tot
    c_out = sigma * sigma_data * tot.rsqrt()
    c_in = tot.rsqrt()
    c_noise = sigma.clamp_min(_SIGMA_FLOOR).log() / 4
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float = 1.0) -> torch.Tensor:
    """EDM loss weight ``λ(σ) = (σ² + sd²) / (σ sd)²`` (``= 1 / c_out²``; Karras et al. 2022, eq. (8)).

    Parameters
    ----------
    sigma
        Noise levels (any shape, ``> 0``).
    sigma_data
        Standard deviation of the data.

    Returns
    -------
    torch.Tensor
        The weights, shaped like ``sigma``.
    """
    sigma = torch.as_tensor(sigma)
    return (sigma * sigma + sigma_data ** 2) / (sigma * sigma_data) ** 2


def sample_sigma(batch: int, p_mean: float = -1.2, p_std: float = 1.2, generator: torch.Generator | None = None,
                 *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Training noise levels ``ln σ ~ N(p_mean, p_std²)`` (Karras et al. 2022, Sec. 5).

    Parameters
    ----------
    batch
        Number of noise levels.
    p_mean, p_std
        Mean and standard deviation of ``ln σ``.
    generator
        Random generator (on ``device``) for reproducible draws.
    dtype, device
        Of the result.

    Returns
    -------
    torch.Tensor
        ``[batch]`` positive noise levels.
    """
    z = torch.randn(batch, generator=generator, dtype=dtype, device=device)
    return (p_mean + p_std * z).exp()


def score_from_denoiser(denoised: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Score ``∇ log p_σ(x) = (D − x) / σ²`` from a denoiser output (Tweedie's formula).

    Parameters
    ----------
    denoised
        ``D(x, σ)``, shaped like ``x``.
    x
        Noisy input ``[B, …]``.
    sigma
        ``[B]`` (or scalar) noise levels, ``> 0``.

    Returns
    -------
    torch.Tensor
        The score, shaped like ``x``.
    """
    s = _bcast(_per_item(sigma, x), x).to(x.dtype)
    return (denoised - x) / (s * s)


class EDMPrecond(nn.Module):
    """EDM-preconditioned denoiser ``D(x, σ, cond) = c_skip x + c_out F(c_in x, c_noise, cond)``.

    Karras et al. 2022, Table 1 ("EDM" column).

    Parameters
    ----------
    net
        Raw network ``net(x_in, c_noise, cond=None)`` returning the shape of ``x``
        (e.g. :class:`~sciencegen.models.UNet`).
    sigma_data
        Standard deviation of the data (1.0 for normalised fields).

    Notes
    -----
    Works for fields of any rank ``[B, C, *field]``.  The coefficients are computed
    in the dtype of ``x``; the network runs in the dtype of its parameters and its
    output is cast back, so a float32 network serves a float64 sampler.  ``σ = 0``
    returns ``x`` exactly.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 1.0):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data!r}")
        self.net = net
        self.sigma_data = float(sigma_data)

    def _net_dtype(self, x: torch.Tensor) -> torch.dtype:
        for p in self.net.parameters():
            return p.dtype
        return x.dtype

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Denoised estimate ``D ≈ E[x0 | x]``.

        Parameters
        ----------
        x
            ``[B, C, *field]`` noisy fields (normalised units).
        sigma
            ``[B]`` noise levels (or a scalar for the whole batch).
        cond
            Optional conditioning passed to the network unchanged.

        Returns
        -------
        torch.Tensor
            Shaped and typed like ``x``.
        """
        s = _per_item(sigma, x).to(x.dtype)
        c_skip, c_out, c_in, c_noise = edm_coefficients(s, self.sigma_data)
        dt = self._net_dtype(x)
        x_in = (_bcast(c_in, x) * x).to(dt)
        cond = None if cond is None else cond.to(dt)
        f = self.net(x_in, c_noise.to(dt)) if cond is None else self.net(x_in, c_noise.to(dt), cond)
        if f.shape != x.shape:
            raise ValueError(f"raw network returned shape {tuple(f.shape)} for x of shape {tuple(x.shape)}")
        return _bcast(c_skip, x) * x + _bcast(c_out, x) * f.to(x.dtype)


def denoising_loss(model: Callable[..., torch.Tensor], x0: torch.Tensor, sigma: torch.Tensor,
                   noise: torch.Tensor, cond: torch.Tensor | None = None, sigma_data: float | None = None,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-item EDM loss ``λ(σ) · mean((D(x0 + σ n, σ) − x0)²)`` (Karras et al. 2022, eq. (2), (8)).

    Parameters
    ----------
    model
        Denoiser ``model(x, sigma[, cond])``.
    x0
        Clean fields ``[B, C, *field]``.
    sigma
        ``[B]`` noise levels (``> 0``).
    noise
        Standard normal noise shaped like ``x0``.
    cond
        Optional conditioning passed to the model.
    sigma_data
        For the weight; ``model.sigma_data`` when ``None`` (1.0 if the model has none).
    valid
        Boolean (or 0/1) tensor broadcastable to ``x0``: the points that hold data (a land-sea mask, missing
        values). ``None`` (default): every point, the plain mean. Otherwise ``x0`` is taken as 0 at the invalid
        points (whatever they hold, NaN included, never reaches the model) and the squared error is averaged over
        the valid points of each item only (0 for an item without any).

    Returns
    -------
    torch.Tensor
        ``[B]`` weighted losses, mean over the non-batch dimensions (the valid points); average them
        (``.mean()``) for the training objective.
    """
    if noise.shape != x0.shape:
        raise ValueError(f"noise must be shaped like x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
    sd = float(getattr(model, "sigma_data", 1.0)) if sigma_data is None else float(sigma_data)
    s = _per_item(sigma, x0).to(x0.dtype)
    keep = None if valid is None else torch.broadcast_to(valid.to(device=x0.device, dtype=torch.bool), x0.shape)
    if keep is not None:
        x0 = torch.where(keep, x0, torch.zeros((), dtype=x0.dtype, device=x0.device))
    x = x0 + _bcast(s, x0) * noise
    d = model(x, s) if cond is None else model(x, s, cond)
    if keep is None:
        err = (d - x0).pow(2).reshape(x0.shape[0], -1).mean(1)
    else:
        sq = torch.where(keep, (d - x0).pow(2), torch.zeros((), dtype=d.dtype, device=d.device))
        err = sq.reshape(x0.shape[0], -1).sum(1) / keep.reshape(x0.shape[0], -1).sum(1).clamp_min(1).to(sq.dtype)
    return edm_loss_weight(s, sd) * err
