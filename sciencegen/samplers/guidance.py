"""Observation guidance: any denoiser turned into the posterior denoiser given linear Gaussian observations.

Rozet & Louppe, NeurIPS 2023 (score-based data assimilation); Rozet et al., 2024 (MMPS: Tweedie covariance
by conjugate gradients); Chung et al., ICLR 2023 (DPS).

Observations ``y = H x + eps``, ``eps ~ N(0, diag(s²))``, of one case enter at sampling time: the wrapper
:class:`Guided` returns ``D(x, sigma | y) = D(x, sigma) + sigma² grad_x log p(y | x)`` with the likelihood
approximated by

* ``gaussian``: ``N(y; H D, H Gamma Hᵀ + diag(s²))`` with the Tweedie covariance ``Gamma = sigma² dD/dx``
  (exact for a Gaussian prior), solved by conjugate gradients whose products ``Gamma Hᵀ v`` are
  vector-Jacobian products of the network (the Jacobian of an exact denoiser is symmetric);
* ``dps``: ``Gamma = 0``: ``N(y; H D, diag(s²))``, its gradient scaled by a step size (cheap and biased).

``H`` is a sparse row operator (:class:`ObservationOperator`) over the flattened field ``[C, *grid]``: each
observation is a weighted sum of a few field values — one (a mask of observed points), the ``2^ndim`` corners
of a multilinear interpolation (points at any coordinates), or a block (block means). Every sampler uses the
wrapper unchanged (it is a denoiser); its extra network work is counted in :attr:`Guided.evaluations`
(a vector-Jacobian product counted as 2 evaluations) and reported by :func:`sciencegen.sample` in ``nfe``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "LIKELIHOODS",
    "VJP_COST",
    "Guided",
    "ObservationOperator",
    "Observations",
    "block_operator",
    "draw_observations",
    "gridded_observations",
    "mask_operator",
    "point_operator",
    "random_mask",
]

#: the likelihood approximations :class:`Guided` knows
LIKELIHOODS = ("gaussian", "dps")
#: network evaluations one vector-Jacobian product is counted as (a backward pass costs about two forwards)
VJP_COST = 2


@dataclass(frozen=True)
class ObservationOperator:
    """A linear observation operator ``H`` as sparse rows over the flattened field.

    Attributes
    ----------
    index
        ``[m, J]`` positions in the C-order flattening of a field of :attr:`shape` (long).
    weight
        ``[m, J]`` weights (float64); observation ``i`` is ``sum_j weight[i, j] x.flat[index[i, j]]``. Unused
        slots have weight 0. The weights of a row sum to 1 (a mean), so normalising a field channel-wise
        commutes with ``H``.
    shape
        The field shape ``(C, *grid)``.
    """

    index: torch.Tensor
    weight: torch.Tensor
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        size = math.prod(self.shape)
        if self.index.ndim != 2 or self.weight.shape != self.index.shape:
            raise ValueError(f"index and weight must both be [m, J], got {tuple(self.index.shape)} and "
                             f"{tuple(self.weight.shape)}")
        if self.index.numel() and (int(self.index.min()) < 0 or int(self.index.max()) >= size):
            raise ValueError(f"observation indices outside a field of shape {self.shape}")

    @property
    def count(self) -> int:
        """Number of observations ``m``."""
        return int(self.index.shape[0])

    def channel(self) -> torch.Tensor:
        """``[m]``: the channel (variable) each observation reads (that of its first support point)."""
        return self.index[:, 0] // math.prod(self.shape[1:])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``H x``: ``[B, m]`` from fields ``[B, *shape]``."""
        flat = x.reshape(x.shape[0], -1)
        w = self.weight.to(device=x.device, dtype=x.dtype)
        return (flat[:, self.index.to(x.device)] * w).sum(-1)

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """``Hᵀ r``: fields ``[B, *shape]`` from ``[B, m]``."""
        w = self.weight.to(device=r.device, dtype=r.dtype)
        vals = (r[:, :, None] * w).reshape(r.shape[0], -1)
        out = torch.zeros(r.shape[0], math.prod(self.shape), device=r.device, dtype=r.dtype)
        out.index_add_(1, self.index.to(r.device).reshape(-1), vals)
        return out.reshape(r.shape[0], *self.shape)

    def support(self) -> torch.Tensor:
        """Bool ``shape``: the field points some observation reads (weight > 0)."""
        out = torch.zeros(math.prod(self.shape), dtype=torch.bool)
        out[self.index[self.weight > 0].cpu()] = True
        return out.reshape(self.shape)

    def is_mask(self) -> bool:
        """Whether every observation is one field point (weight 1): the observations have a gridded form."""
        return self.index.shape[1] == 1 and bool((self.weight == 1).all())

    def dense(self) -> torch.Tensor:
        """``H`` as a dense ``[m, prod(shape)]`` float64 matrix (for small fields and exact checks)."""
        h = torch.zeros(self.count, math.prod(self.shape), dtype=torch.float64)
        rows = torch.arange(self.count)[:, None].expand_as(self.index)
        h.index_put_((rows.reshape(-1), self.index.cpu().reshape(-1)), self.weight.cpu().double().reshape(-1),
                     accumulate=True)
        return h


@dataclass(frozen=True)
class Observations:
    """Observations ``y = H x + eps`` of one case, ``eps ~ N(0, diag(noise²))``.

    Attributes
    ----------
    operator
        ``H``.
    value
        ``[m]`` observed values ``y``.
    noise
        ``[m]`` noise standard deviations ``s > 0``.
    """

    operator: ObservationOperator
    value: torch.Tensor
    noise: torch.Tensor

    def __post_init__(self) -> None:
        m = self.operator.count
        if tuple(self.value.shape) != (m,) or tuple(self.noise.shape) != (m,):
            raise ValueError(f"value and noise must be [{m}] (one per observation), got {tuple(self.value.shape)} "
                             f"and {tuple(self.noise.shape)}")
        if not bool(torch.isfinite(self.value).all()):
            raise ValueError("observed values must be finite (leave unobserved points out of H)")
        if not bool((self.noise > 0).all()) or not bool(torch.isfinite(self.noise).all()):
            raise ValueError("observation noise must be positive and finite at every observation")

    def normalised(self, mean: Sequence[float], std: Sequence[float]) -> Observations:
        """The observations in normalised units ``(y - mean_c) / std_c``, ``s / std_c`` (``c``: each row's channel).

        Exact because every row of ``H`` is a weighted mean of one channel's values.
        """
        c = self.operator.channel()
        mu = torch.as_tensor(list(mean), dtype=torch.float64)[c]
        sd = torch.as_tensor(list(std), dtype=torch.float64)[c]
        return Observations(self.operator, (self.value.double() - mu) / sd, self.noise.double() / sd)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``(y - H x) / s`` per member: ``[B, m]`` (its mean square is the chi² per observation)."""
        hx = self.operator.apply(x.double())
        return (self.value.to(hx) - hx) / self.noise.to(hx)

    def gridded(self) -> torch.Tensor:
        """The observations on the grid, NaN where unobserved (mask operators only)."""
        if not self.operator.is_mask():
            raise ValueError("only mask observations (one field point each) have a gridded form")
        out = torch.full((math.prod(self.operator.shape),), float("nan"), dtype=torch.float64)
        out[self.operator.index[:, 0].cpu()] = self.value.double().cpu()
        return out.reshape(self.operator.shape)


def mask_operator(mask: torch.Tensor) -> ObservationOperator:
    """``H`` observing the points where the bool ``mask`` (``[C, *grid]``) is true, in C order."""
    idx = mask.reshape(-1).nonzero()[:, 0]
    return ObservationOperator(idx[:, None], torch.ones(idx.shape[0], 1, dtype=torch.float64), tuple(mask.shape))


def random_mask(shape: Sequence[int], fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A bool mask of ``shape`` (``(C, *grid)``) with ``round(fraction · grid points)`` points per channel.

    Raises
    ------
    ValueError
        ``fraction`` outside ``(0, 1]`` or observing no point.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"observe.fraction must be in (0, 1], got {fraction!r}")
    n = math.prod(shape[1:])
    k = int(round(fraction * n))
    if k < 1:
        raise ValueError(f"observe.fraction={fraction} observes no point of a {n}-point grid")
    mask = torch.zeros(shape[0], n, dtype=torch.bool)
    for c in range(shape[0]):
        mask[c, torch.randperm(n, generator=generator)[:k]] = True
    return mask.reshape(tuple(shape))


def point_operator(points: torch.Tensor, shape: Sequence[int], channel: torch.Tensor | None = None,
                   periodic: Sequence[bool] | bool = True) -> ObservationOperator:
    """``H`` observing fields at arbitrary points by multilinear interpolation (bilinear in 2-D).

    Parameters
    ----------
    points
        ``[m, ndim]`` positions in grid-index units along each field dim (``1.5`` lies halfway between
        points 1 and 2).
    shape
        The field shape ``(C, *grid)``.
    channel
        ``[m]`` the channel each point observes (default 0).
    periodic
        Per field dim (or one for all): wrap around (periodic) or clamp to the edge.
    """
    shape = tuple(int(v) for v in shape)
    grid = shape[1:]
    pts = torch.as_tensor(points, dtype=torch.float64).reshape(-1, len(grid))
    wrap = [bool(periodic)] * len(grid) if isinstance(periodic, bool) else [bool(p) for p in periodic]
    ch = torch.zeros(pts.shape[0], dtype=torch.long) if channel is None else torch.as_tensor(channel).long()
    lo, frac = [], []
    for d, n in enumerate(grid):
        p = pts[:, d] % n if wrap[d] else pts[:, d].clamp(0, n - 1)
        f = p.floor()
        lo.append(f.long())
        frac.append(p - f)
    index, weight = [], []
    for corner in range(2 ** len(grid)):
        flat, w = ch.clone(), torch.ones(pts.shape[0], dtype=torch.float64)
        for d, n in enumerate(grid):
            up = (corner >> d) & 1
            i = lo[d] + up
            i = i % n if wrap[d] else i.clamp(max=n - 1)
            flat = flat * n + i
            w = w * (frac[d] if up else 1 - frac[d])
        index.append(flat)
        weight.append(w)
    return ObservationOperator(torch.stack(index, 1), torch.stack(weight, 1), shape)


def block_operator(shape: Sequence[int], factor: int, channels: Sequence[int] | None = None) -> ObservationOperator:
    """``H`` observing the means over blocks of ``factor`` points per field dim (coarse observations).

    Raises
    ------
    ValueError
        A field dim not divisible by ``factor``.
    """
    shape = tuple(int(v) for v in shape)
    grid = shape[1:]
    if factor < 1 or any(n % factor for n in grid):
        raise ValueError(f"block factor {factor} does not divide the grid {list(grid)}")
    ids = torch.arange(math.prod(shape)).reshape(shape)
    rows = []
    for c in (range(shape[0]) if channels is None else channels):
        blk = ids[c]
        for d in range(len(grid)):  # split every field dim into (blocks, factor), factors last
            blk = blk.unflatten(2 * d, (grid[d] // factor, factor))
        order = [2 * d for d in range(len(grid))] + [2 * d + 1 for d in range(len(grid))]
        rows.append(blk.permute(order).reshape(-1, factor ** len(grid)))
    index = torch.cat(rows)
    return ObservationOperator(index, torch.full(index.shape, 1.0 / index.shape[1], dtype=torch.float64), shape)


def draw_observations(truth: torch.Tensor, operator: ObservationOperator, noise: float | torch.Tensor,
                      generator: torch.Generator | None = None) -> Observations:
    """Observations ``y = H truth + s·eps`` of a field ``truth`` (``operator.shape``), eps drawn from ``generator``.

    ``noise`` is one standard deviation, one per channel (``[C]``) or one per observation (``[m]``).
    """
    hx = operator.apply(truth.double()[None])[0]
    s = torch.as_tensor(noise, dtype=torch.float64).reshape(-1)
    if s.numel() == operator.shape[0] and s.numel() != operator.count:
        s = s[operator.channel()]
    s = s.expand(operator.count).clone()
    eps = torch.randn(operator.count, generator=generator, dtype=torch.float64)
    return Observations(operator, hx + s * eps, s)


def gridded_observations(values: torch.Tensor, noise: float | torch.Tensor) -> Observations:
    """Observations from a gridded field ``[C, *grid]`` with NaN where unobserved; ``noise`` as in
    :func:`draw_observations`, or a field of the same shape (per point)."""
    values = torch.as_tensor(values, dtype=torch.float64)
    seen = torch.isfinite(values)
    op = mask_operator(seen)
    s = torch.as_tensor(noise, dtype=torch.float64)
    if s.shape == values.shape:
        s = s.reshape(-1)[op.index[:, 0]]
    else:
        s = s.reshape(-1)
        s = (s[op.channel()] if s.numel() == values.shape[0] else s).expand(op.count).clone()
    return Observations(op, values.reshape(-1)[op.index[:, 0]], s)


def _cg(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int, tol: float,
        floor: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Conjugate gradients for ``A u = b`` per item (``b`` ``[B, m]``, ``A`` SPD per item), from ``u = 0``.

    Each item stops alone once ``|r| <= tol |b|`` (so its answer does not depend on the batch) or, truncated
    CG (Steihaug 1983), at a direction ``p`` whose curvature ``pᵀ A p`` is not above ``pᵀ diag(floor) p`` (the
    part of ``A`` known to be positive: a learned covariance that is not positive there is not trusted).
    Returns the solutions and the products made (the batch's cost).
    """
    u = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = (r * r).sum(1)
    stop = tol * tol * rr
    active = rr > stop
    done = 0
    tiny = torch.finfo(b.dtype).tiny
    for _ in range(iters):
        if not bool(active.any()):
            break
        ap = matvec(p)
        done += 1
        pap = (p * ap).sum(1)
        least = (p * p * floor).sum(1) if floor is not None else torch.zeros_like(pap)
        active = active & (pap > least)
        alpha = torch.where(active, rr / pap.clamp_min(tiny), torch.zeros_like(rr))
        u = u + alpha[:, None] * p
        r = r - alpha[:, None] * ap
        rr_new = (r * r).sum(1)
        beta = torch.where(active, rr_new / rr.clamp_min(tiny), torch.zeros_like(rr))
        p = torch.where(active[:, None], r + beta[:, None] * p, p)
        rr = torch.where(active, rr_new, rr)
        active = active & (rr > stop)
    return u, done


class Guided:
    """A denoiser guided by observations: ``D(x, sigma | y) = D + sigma² grad_x log p(y | x)``.

    Rozet & Louppe 2023 / Rozet et al. 2024 (``gaussian``, Tweedie covariance by CG); Chung et al. 2023 (``dps``);
    Song et al. 2023 (PiGDM: the isotropic covariance where the network's Jacobian is not trusted).

    Parameters
    ----------
    denoiser
        ``denoiser(x, sigma[, cond]) -> E[x0 | x]`` (EDM units), differentiable in ``x``.
    observations
        The case's observations in the denoiser's units (:meth:`Observations.normalised`).
    likelihood
        ``gaussian`` (default) or ``dps``.
    cg_iters, cg_tol
        Conjugate-gradient iterations at most, and the relative residual at which an item stops.
    step_size
        ``dps`` only: the factor on its gradient (``zeta``).
    jacobian_max_sigma
        ``gaussian`` only: above this noise level the network's Jacobian is not used (``None``: everywhere).
        A learned denoiser's Tweedie covariance ``sigma² dD/dx`` multiplies the error of its Jacobian by
        ``sigma²``: where the model saw few training noise levels it is not even positive (measured:
        ``docs/assimilation.md``). There the covariance is the isotropic ``sigma² v / (sigma² + v)`` of data
        with per-point variance ``v`` (PiGDM), which needs no derivative (one evaluation per call).
    prior_variance
        ``v``: the per-point variance of the data in the denoiser's units (1 for normalised fields).

    Attributes
    ----------
    items, evaluations
        Items denoised so far and the network evaluations spent on them (a forward counts 1, a
        vector-Jacobian product :data:`VJP_COST`): ``evaluations / items`` is the cost of one guided call.
    spectral_jacobian
        ``False``: the observations make the Jacobian far from a Fourier multiplier, so a Picard walk with
        ``newton="auto"`` does not use the spectral Newton terms (measured: they cost guided runs rounds).
    """

    spectral_jacobian = False

    def __init__(self, denoiser: Callable[..., torch.Tensor], observations: Observations,
                 likelihood: str = "gaussian", cg_iters: int = 8, cg_tol: float = 1e-3, step_size: float = 10.0,
                 jacobian_max_sigma: float | None = None, prior_variance: float = 1.0):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown guidance likelihood {likelihood!r}; choose one of {list(LIKELIHOODS)}")
        if int(cg_iters) != cg_iters or cg_iters < 0:
            raise ValueError(f"cg_iters must be an integer >= 0, got {cg_iters!r}")
        if not cg_tol >= 0 or not step_size > 0 or not prior_variance > 0:
            raise ValueError(f"cg_tol must be >= 0, step_size and prior_variance > 0, got {cg_tol!r}, "
                             f"{step_size!r} and {prior_variance!r}")
        if jacobian_max_sigma is not None and not jacobian_max_sigma > 0:
            raise ValueError(f"jacobian_max_sigma must be positive (or None), got {jacobian_max_sigma!r}")
        self.denoiser, self.obs, self.likelihood = denoiser, observations, likelihood
        self.cg_iters, self.cg_tol, self.step_size = int(cg_iters), float(cg_tol), float(step_size)
        self.jacobian_max_sigma = None if jacobian_max_sigma is None else float(jacobian_max_sigma)
        self.prior_variance = float(prior_variance)
        self.items, self.evaluations = 0, 0
        self._placed: tuple[torch.device, Observations] | None = None

    def _on(self, device: torch.device) -> Observations:
        """The observations on ``device``, copied once (not in every CG product of a round)."""
        if self._placed is None or self._placed[0] != device:
            o = self.obs
            op = ObservationOperator(o.operator.index.to(device), o.operator.weight.to(device), o.operator.shape)
            self._placed = (device, Observations(op, o.value.to(device), o.noise.to(device)))
        return self._placed[1]

    def cost(self) -> float:
        """Network evaluations per guided item so far (1 before any call)."""
        return self.evaluations / self.items if self.items else 1.0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, *cond: Any) -> torch.Tensor:
        """The guided denoiser at ``x`` ``[B, *shape]``, noise levels ``sigma`` ``[B]``."""
        if tuple(x.shape[1:]) != self.obs.operator.shape:
            raise ValueError(f"observations are of a field {self.obs.operator.shape}, the denoiser is called on "
                             f"{tuple(x.shape[1:])}")
        far = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if self.likelihood == "gaussian" and self.jacobian_max_sigma is not None:
            far = sigma > self.jacobian_max_sigma
        if not bool(far.any()):
            return self._jacobian(x, sigma, cond)
        out = torch.empty_like(x)
        for part, run in ((far, self._isotropic), (~far, self._jacobian)):
            if bool(part.any()):
                out[part] = run(x[part], sigma[part], tuple(c[part] for c in cond))
        return out

    def _isotropic(self, x: torch.Tensor, sigma: torch.Tensor, cond: tuple) -> torch.Tensor:
        """``D + g Hᵀ (g H Hᵀ + S)⁻¹ (y - H D)`` with ``g = sigma² v / (sigma² + v)``: no derivative."""
        with torch.no_grad():
            d = self.denoiser(x, sigma, *cond)
            obs = self._on(d.device)
            op = obs.operator
            y, noise2 = obs.value.to(d), obs.noise.to(d) ** 2
            gam = (sigma.to(d.dtype) ** 2 * self.prior_variance / (sigma.to(d.dtype) ** 2 + self.prior_variance))
            gam = gam.reshape(-1, 1)
            r = y[None] - op.apply(d)
            u, _ = _cg(lambda v: gam * op.apply(op.adjoint(v)) + noise2 * v, r, max(self.cg_iters, 1) * 4,
                       self.cg_tol)
            shift = gam.reshape((-1,) + (1,) * (x.ndim - 1)) * op.adjoint(u)
        self.items += x.shape[0]
        self.evaluations += x.shape[0]
        return (d + shift).to(x.dtype)

    def _jacobian(self, x: torch.Tensor, sigma: torch.Tensor, cond: tuple) -> torch.Tensor:
        """The guided denoiser with the network's Jacobian (``gaussian``: Tweedie covariance; ``dps``)."""
        with torch.enable_grad():
            xi = x.detach().clone().requires_grad_(True)
            d = self.denoiser(xi, sigma, *cond)
            s2 = sigma.to(d.dtype).reshape(-1, 1) ** 2  # [B, 1]

            def vjp(w: torch.Tensor) -> torch.Tensor:  # (dD/dx)ᵀ w
                return torch.autograd.grad(d, xi, w, retain_graph=True)[0]

            obs = self._on(d.device)
            op = obs.operator
            y, noise2 = obs.value.to(d), obs.noise.to(d) ** 2
            r = y[None] - op.apply(d.detach())  # innovation y - H D
            if self.likelihood == "gaussian":
                # (H Gamma Hᵀ + S) u = r with Gamma = sigma² dD/dx: one VJP per CG product
                u, products = _cg(lambda v: s2 * op.apply(vjp(op.adjoint(v))) + noise2 * v, r, self.cg_iters,
                                  self.cg_tol, floor=noise2)
            else:
                # Chung et al.: the step zeta / |y - H D| on the gradient of |y - H D|²/2 (Gamma = 0, S ignored)
                u, products = self.step_size * r / r.norm(dim=1, keepdim=True).clamp_min(1e-30), 0
            g = vjp(op.adjoint(u))
        self.items += x.shape[0]
        self.evaluations += x.shape[0] * (1 + VJP_COST * (products + 1))
        shift = s2.reshape((-1,) + (1,) * (x.ndim - 1)) * g
        return (d.detach() + shift.detach()).to(x.dtype)
