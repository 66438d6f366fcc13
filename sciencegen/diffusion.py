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
    "SIGMA_MAX",
    "SIGMA_MIN",
    "StepTable",
    "alpha_sigma",
    "block_ends",
    "edm_sigma_to_t",
    "make_grid",
    "step_table",
]

#: the default noise range of every grid (EDM noise levels of ``t_{N-1}`` and ``t_0``; Karras et al. 2022);
#: ``conf/sde/vp.yaml`` states the same values for the commands
SIGMA_MIN, SIGMA_MAX = 2e-3, 80.0


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
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
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
    """Coefficients of one step of the reverse recurrence (first or second order).

    ``x_{j+1} = A_j x_j + B_j D_j + B2_j D_{j-1} + B3_j D'_j + E_j x_j + C_j xi_j`` with

    * ``D_j = D(x_j / alpha_j + eta_j xi_j, s_eval_j)``: the denoiser at the (churned) state;
    * ``D_{j-1}``: the previous step's ``D`` (multistep methods, DPM-Solver++(2M));
    * ``D'_j = D(x'_{j+1} / alpha_{j+1}, s_{j+1})`` at the predictor
      ``x'_{j+1} = PA_j x_j + PB_j D_j + C_j xi_j`` (Heun; only where ``B3_j != 0``).

    ``A`` is the part integrated exactly by the (parallel) scan; ``B``, ``B2``,
    ``B3`` and ``E`` multiply the *lagged* quantities of a Picard iteration.
    Sequentially the split does not matter: the step is ``(A + E) x + ...``.

    Attributes
    ----------
    t, alpha, sigma, s
        OU times, VP scale, VP noise and EDM noise level at the ``N + 1`` points.
    A, B, E, C
        Step coefficients, ``N`` each (float64).
    B2, B3, PA, PB, eta, s_eval
        Second-order and churn coefficients (zeros, and ``s_eval = s``, for first-order tables).
    form, method, lag, order
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
    B2: torch.Tensor | None = None
    B3: torch.Tensor | None = None
    PA: torch.Tensor | None = None
    PB: torch.Tensor | None = None
    eta: torch.Tensor | None = None
    s_eval: torch.Tensor | None = None
    order: int = 1

    @property
    def steps(self) -> int:
        """Number of steps ``N``."""
        return int(self.A.numel())

    @property
    def logsnr(self) -> torch.Tensor:
        """Log-SNR ``lambda = -log s`` at the points (``+inf`` at s = 0)."""
        return -torch.log(self.s)


FORMS = ("data", "score")
METHODS = ("sde", "ode", "heun")
LAGS = ("F", "step")


def step_table(t: torch.Tensor, method: str = "sde", form: str = "data", lag: str = "F", order: int = 1,
               churn: float = 0.0, churn_min: float = 0.0, churn_max: float = math.inf,
               churn_noise: float = 1.0) -> StepTable:
    """Build the step table of an exponential integrator (or EDM's Heun) on grid ``t``.

    Parameters
    ----------
    t
        Decreasing OU times ending at 0 (from :func:`make_grid`).
    method
        ``"sde"`` (reverse SDE, ancestral / SDE-DPM-Solver++), ``"ode"``
        (probability flow, DDIM / DPM-Solver++) or ``"heun"`` (EDM Algorithm 1/2:
        Heun's method on the probability-flow ODE in the noise level, two
        denoiser calls per step except the last; data form only).
    form
        ``"data"``: the frozen quantity is the denoiser output ``D``, linear
        part exact in log-SNR (DPM-Solver++).  ``"score"``: the frozen quantity
        is the score ``(alpha D - x) / sigma²``, OU drift exact in time (Chen et
        al. 2024); its last step (to sigma = 0) is the Tweedie denoise.
    lag
        What a Picard iteration lags: ``"F"`` lags only the frozen quantity (the
        linear part is scanned exactly), ``"step"`` lags the whole increment
        ``x_{j+1} - x_j`` (ParaDiGMS, Shih et al. 2023).
    order
        ``1`` or ``2`` for ``sde``/``ode`` in data form: ``2`` is the multistep
        DPM-Solver++(2M) (ODE) / SDE-DPM-Solver++(2M) (SDE), midpoint variant,
        first order at the first and the last step.  Heun is always order 2.
    churn, churn_min, churn_max, churn_noise
        EDM's stochastic Heun (``S_churn``, ``S_tmin``, ``S_tmax``, ``S_noise``):
        at steps with ``churn_min <= s_j <= churn_max`` the state is lifted to
        ``s_hat = s_j (1 + gamma)``, ``gamma = min(churn / N, sqrt(2) - 1)``, by
        fresh noise before the step.  ``churn = 0``: deterministic.

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
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    if (order == 2 or method == "heun") and form != "data":
        raise ValueError(f"second-order methods use form='data', got form={form!r}")
    if churn < 0 or churn_noise < 0:
        raise ValueError(f"churn and churn_noise must be >= 0, got {churn!r}, {churn_noise!r}")
    if churn and method != "heun":
        raise ValueError("churn applies to method='heun' only (the sde method is stochastic already)")
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.ndim != 1 or t.numel() < 2 or not bool((t[1:] < t[:-1]).all()) or float(t[-1]) < 0:
        raise ValueError("t must be a strictly decreasing 1-D grid of >= 2 non-negative times")
    alpha, sigma = alpha_sigma(t)
    s = sigma / alpha
    zero = torch.zeros(t.numel() - 1, dtype=torch.float64)
    extra = {"B2": zero, "B3": zero, "PA": zero, "PB": zero, "eta": zero, "s_eval": s[:-1].clone()}
    if method == "heun":
        return _heun_table(t, alpha, sigma, s, lag, churn, churn_min, churn_max, churn_noise)
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
    if order == 2:
        # multistep midpoint correction D + (D_j - D_{j-1}) / (2 r_j), r_j = h_{j-1} / h_j (Lu et al. 2022b);
        # first order at the first step and at the last (h = inf there)
        lam = -torch.log(s)
        h = lam[1:] - lam[:-1]
        ratio = torch.full_like(h, math.inf)
        ratio[1:] = h[:-1] / h[1:]
        ok = torch.isfinite(h) & torch.isfinite(ratio) & (ratio > 0)
        corr = torch.where(ok, 0.5 / torch.where(ok, ratio, 1.0), 0.0)
        B, extra["B2"] = B * (1 + corr), -B * corr
    A, E = _split_lag(a, E, lag)
    return StepTable(t=t, alpha=alpha, sigma=sigma, s=s, A=A, B=B, E=E, C=c, form=form, method=method, lag=lag,
                     order=order, **extra)


def _split_lag(a: torch.Tensor, e: torch.Tensor, lag: str) -> tuple[torch.Tensor, torch.Tensor]:
    # lag="step": the scan carries x unchanged and the whole increment is lagged
    return (torch.ones_like(a), a - 1 + e) if lag == "step" else (a, e)


def _heun_table(t, alpha, sigma, s, lag, churn, churn_min, churn_max, churn_noise) -> StepTable:
    # Karras et al. 2022, Algorithms 1-2, in the EDM variable y = x / alpha with noise level s:
    #   y_hat = y + eta xi,  y' = rho y_hat + (1 - rho) D,  rho = s_{j+1} / s_hat
    #   y_{j+1} = rho y_hat + (1 - rho) [(2 rho - 1) / (2 rho) D + 1 / (2 rho) D'],  D' = D(y', s_{j+1})
    # (the last step, to s = 0, is Euler: y_N = D).  Written back in VP units x = alpha y.
    n = t.numel() - 1
    s0, s1, a0, a1 = s[:-1], s[1:], alpha[:-1], alpha[1:]
    gamma = torch.where((s0 >= churn_min) & (s0 <= churn_max),
                        torch.full_like(s0, min(churn / n, math.sqrt(2) - 1)), torch.zeros_like(s0))
    s_hat = s0 * (1 + gamma)
    eta = churn_noise * (s_hat**2 - s0**2).clamp_min(0).sqrt()
    rho = s1 / s_hat
    a = (a1 / a0) * rho
    c = a1 * rho * eta
    pb = a1 * (1 - rho)
    last = s1 == 0
    safe = torch.where(last, 1.0, rho)
    B = torch.where(last, a1, a1 * (1 - rho) * (2 * safe - 1) / (2 * safe))
    B3 = torch.where(last, 0.0, a1 * (1 - rho) / (2 * safe))
    A, E = _split_lag(a, torch.zeros_like(a), lag)
    return StepTable(t=t, alpha=alpha, sigma=sigma, s=s, A=A, B=B, E=E, C=c, form="data", method="heun", lag=lag,
                     B2=torch.zeros_like(a), B3=B3, PA=a, PB=pb, eta=eta, s_eval=s_hat, order=2)


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
