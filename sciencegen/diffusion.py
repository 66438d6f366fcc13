"""VP / Ornstein–Uhlenbeck diffusion: schedule, time grids, step tables.

Song et al. 2021 (score SDEs); Lu et al. 2022 (DPM-Solver++ exponential integrators).

The forward process is the OU process ``x_t = alpha_t x_0 + sigma_t eps`` with
``alpha_t = exp(-t)`` and ``sigma_t = sqrt(1 - exp(-2 t))``.  Denoisers follow the
EDM convention ``D(x / alpha_t, s_t) ≈ E[x_0 | x_t]`` with the EDM noise level
``s_t = sigma_t / alpha_t = sqrt(exp(2 t) - 1)``.  All coefficients here are
float64 CPU tensors; samplers cast them to the working dtype/device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "GRIDS",
    "StepTable",
    "alpha_sigma",
    "block_ends",
    "edm_sigma_to_t",
    "make_grid",
    "step_table",
]


def alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(alpha_t, sigma_t)`` of the VP/OU process at OU times ``t``."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.exp(-t), (-torch.expm1(-2.0 * t)).clamp_min(0.0).sqrt()


def edm_sigma_to_t(s: float | torch.Tensor) -> torch.Tensor:
    """OU time at which the EDM noise level is ``s`` (``t = log1p(s²) / 2``)."""
    s = torch.as_tensor(s, dtype=torch.float64)
    return 0.5 * torch.log1p(s * s)


def _geometric(n: int, t_min: float, t_max: float) -> torch.Tensor:
    # dense near the data: geometric in OU time
    u = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    return t_max * (t_min / t_max) ** u


def _uniform(n: int, t_min: float, t_max: float) -> torch.Tensor:
    return torch.linspace(t_max, t_min, n, dtype=torch.float64)


def _karras(n: int, t_min: float, t_max: float, rho: float = 7.0) -> torch.Tensor:
    # Karras et al. 2022, eq. (5): uniform in s^(1/rho)
    s_max = math.sqrt(math.expm1(2 * t_max))
    s_min = math.sqrt(math.expm1(2 * t_min))
    u = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    s = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return edm_sigma_to_t(s)


def _logsnr(n: int, t_min: float, t_max: float) -> torch.Tensor:
    # uniform in log-SNR lambda = -log(s)
    s_max = math.sqrt(math.expm1(2 * t_max))
    s_min = math.sqrt(math.expm1(2 * t_min))
    s = torch.logspace(math.log10(s_max), math.log10(s_min), n, dtype=torch.float64)
    return edm_sigma_to_t(s)


GRIDS = {"geometric": _geometric, "uniform": _uniform, "karras": _karras, "logsnr": _logsnr}


def make_grid(
    steps: int,
    grid: str = "geometric",
    sigma_min: float = 2e-3,
    sigma_max: float = 80.0,
) -> torch.Tensor:
    """Reverse-time OU grid ``t_0 > t_1 > … > t_{N-1} > t_N = 0`` with ``N = steps``.

    Parameters
    ----------
    steps
        Number of steps ``N >= 1``; the last step always goes to noise level 0.
    grid
        ``"geometric"`` (geometric in OU time, dense near the data; the default),
        ``"karras"`` (EDM, rho = 7), ``"logsnr"`` (uniform in log-SNR) or
        ``"uniform"`` (uniform in t).
    sigma_min, sigma_max
        EDM noise levels of ``t_{N-1}`` and ``t_0``.

    Returns
    -------
    torch.Tensor
        float64 tensor of ``steps + 1`` OU times.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; choose one of {sorted(GRIDS)}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    t_min = float(edm_sigma_to_t(sigma_min))
    t_max = float(edm_sigma_to_t(sigma_max))
    if steps == 1:
        inner = torch.tensor([t_max], dtype=torch.float64)
    else:
        inner = GRIDS[grid](steps, t_min, t_max)
    return torch.cat([inner, torch.zeros(1, dtype=torch.float64)])


@dataclass(frozen=True)
class StepTable:
    """Coefficients of ``x_{j+1} = A_j x_j + B_j D(x_j) + E_j x_j + C_j xi_j``.

    ``A`` is the part integrated exactly by the (parallel) scan; ``B`` and ``E``
    multiply the *lagged* quantities (the denoiser output and the state at the
    previous Picard iterate).  Sequentially the split does not matter: the step
    is ``(A + E) x + B D + C xi``.

    Attributes
    ----------
    t, alpha, sigma, s
        OU times, VP scale, VP noise and EDM noise level at the ``N + 1`` points.
    A, B, E, C
        Step coefficients, ``N`` each (float64).
    form, method, lag
        How the table was built (see :func:`step_table`).
    """

    t: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor
    s: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    E: torch.Tensor
    C: torch.Tensor
    form: str
    method: str
    lag: str

    @property
    def steps(self) -> int:
        """Number of steps ``N``."""
        return int(self.A.numel())

    @property
    def logsnr(self) -> torch.Tensor:
        """Log-SNR ``lambda = -log s`` at the points (``+inf`` at s = 0)."""
        return -torch.log(self.s)


FORMS = ("data", "score")
METHODS = ("sde", "ode")
LAGS = ("F", "step")


def step_table(t: torch.Tensor, method: str = "sde", form: str = "data", lag: str = "F") -> StepTable:
    """Build the first-order exponential-integrator step table on grid ``t``.

    Parameters
    ----------
    t
        Decreasing OU times ending at 0 (from :func:`make_grid`).
    method
        ``"sde"`` (reverse SDE, ancestral / SDE-DPM-Solver++(1)) or ``"ode"``
        (probability flow, DDIM / DPM-Solver++(1)).
    form
        ``"data"``: the frozen quantity is the denoiser output ``D``, linear
        part exact in log-SNR (DPM-Solver++).  ``"score"``: the frozen quantity
        is the score ``(alpha D - x) / sigma²``, OU drift exact in time (Chen et
        al. 2024); its last step (to sigma = 0) is the Tweedie denoise.
    lag
        What a Picard iteration lags: ``"F"`` lags only the frozen quantity (the
        linear part is scanned exactly), ``"step"`` lags the whole increment
        ``x_{j+1} - x_j`` (ParaDiGMS, Shih et al. 2023).

    Returns
    -------
    StepTable
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if lag not in LAGS:
        raise ValueError(f"lag must be one of {LAGS}, got {lag!r}")
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.ndim != 1 or t.numel() < 2 or not bool((t[1:] < t[:-1]).all()) or float(t[-1]) < 0:
        raise ValueError("t must be a strictly decreasing 1-D grid of >= 2 non-negative times")
    alpha, sigma = alpha_sigma(t)
    s = sigma / alpha
    a0, a1, sg0, sg1 = alpha[:-1], alpha[1:], sigma[:-1], sigma[1:]
    r = s[1:] / s[:-1]  # e^{-h}, h = lambda_{j+1} - lambda_j; exactly 0 at s = 0
    if form == "data":
        # F = D; x_{j+1} = a x + b D + c xi
        if method == "ode":
            a, b, c = sg1 / sg0, a1 * (1 - r), torch.zeros_like(r)
        else:
            a, b, c = (sg1 / sg0) * r, a1 * (1 - r * r), sg1 * (1 - r * r).clamp_min(0).sqrt()
        p, q = torch.ones_like(r), torch.zeros_like(r)
    else:
        # F = score = (alpha D - x) / sigma²; OU reverse drift x + k·score exact over dt
        dt = t[:-1] - t[1:]
        if method == "ode":
            a, b, c = torch.exp(dt), torch.expm1(dt), torch.zeros_like(dt)
        else:
            a, b, c = torch.exp(dt), 2 * torch.expm1(dt), torch.expm1(2 * dt).sqrt()
        p, q = a0 / sg0**2, -1.0 / sg0**2
        # last step to sigma = 0: Tweedie denoise (the score form is singular there)
        last = sg1 == 0
        a, b, c = torch.where(last, 0.0, a), torch.where(last, 1.0, b), torch.where(last, 0.0, c)
        p, q = torch.where(last, 1.0, p), torch.where(last, 0.0, q)
    B, E = b * p, b * q
    if lag == "step":
        A = torch.ones_like(a)
        E = a - 1 + E
    else:
        A = a
    return StepTable(t=t, alpha=alpha, sigma=sigma, s=s, A=A, B=B, E=E, C=c, form=form, method=method, lag=lag)


def block_ends(table: StepTable, blocks: int) -> list[int]:
    """Cut the ``N`` steps into ``blocks`` pieces of equal log-SNR length.

    Returns the sorted end indices (the last is ``N``).  Every block holds at
    least one step; the final step (to noise level 0, infinite log-SNR) belongs
    to the last block.
    """
    n = table.steps
    if int(blocks) != blocks or blocks < 1:
        raise ValueError(f"blocks must be an integer >= 1, got {blocks!r}")
    blocks = min(int(blocks), n)
    if blocks == 1:
        return [n]
    lam = table.logsnr[: n].clone()  # points 0..N-1, all finite
    targets = lam[0] + (lam[-1] - lam[0]) * torch.arange(1, blocks, dtype=torch.float64) / blocks
    ends: list[int] = []
    prev = 0
    for k, tgt in enumerate(targets.tolist()):
        e = int(torch.searchsorted(lam, torch.tensor(tgt, dtype=torch.float64)).item())
        e = max(e, prev + 1)
        e = min(e, n - (blocks - 1 - k))  # leave room for the remaining blocks
        ends.append(e)
        prev = e
    ends.append(n)
    return ends
