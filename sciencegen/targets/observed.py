"""The exact law of a Gaussian random field given linear Gaussian observations ``y = H x + eps``.

Gaussian conditioning (Rasmussen & Williams 2006, eqs. 2.22-2.24); pathwise draws by Matheron's rule
("sample-then-optimise", Wilson et al., ICML 2020); the Wiener filter where ``H`` is diagonal in Fourier.

The prior ``x ~ N(0, C)`` is a :class:`~sciencegen.targets.GaussianRandomField`: ``C`` is diagonal in the
orthonormal DFT (per-mode variance ``v``, the same for every channel), so ``C`` applied to a field is one FFT
filter. The observations are ``y = H x + eps``, ``eps ~ N(0, diag(s²))``, with ``H`` any linear operator of
``m`` rows over the flattened field ``[C, *grid]`` (duck-typed: ``apply``, ``adjoint``, ``count``, ``shape``
as :class:`sciencegen.samplers.guidance.ObservationOperator`). With ``K = H C Hᵀ + diag(s²)``:

* mean ``C Hᵀ K⁻¹ y``; per-point variance ``diag(C) - diag(C Hᵀ K⁻¹ H C)``;
* draws ``x' + C Hᵀ K⁻¹ (y - H x' - s·eps')`` with ``x'`` a prior draw and ``eps'`` standard normal (exact);
* evidence ``log N(y; 0, K)``.

When every grid point of every channel is observed exactly once (a full mask, weight 1) with one noise level
per channel, ``H`` is a permutation and the posterior is the Wiener filter ``v / (v + s²)`` of the gridded
observations, per-mode variance ``v s² / (v + s²)``: no dense algebra, any grid size.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .fields import GaussianRandomField

__all__ = ["MAX_OBSERVATIONS", "ObservedGRF"]

#: the most observations the dense path factorises (``K`` is a dense ``m × m`` float64 matrix: 2 GiB here)
MAX_OBSERVATIONS = 16384
#: field values per chunk of filtered basis fields (float64: 32 MiB per chunk)
_CHUNK_VALUES = 1 << 22


class ObservedGRF:
    """The exact posterior of a :class:`GaussianRandomField` given observations ``y = H x + eps``.

    Parameters
    ----------
    field
        The prior (any ``ndim``, any channels).
    operator
        ``H``: an object with ``apply(x[B, *shape]) -> [B, m]``, ``adjoint(r[B, m]) -> [B, *shape]``,
        ``count`` (``m``) and ``shape`` (``field.shape``), e.g. an
        :class:`~sciencegen.samplers.guidance.ObservationOperator`. With ``index``/``weight`` attributes as
        that class has, a full mask is recognised and takes the closed form.
    value
        ``[m]`` observed values ``y`` (physical units, as the field).
    noise
        ``[m]`` noise standard deviations ``s > 0``.

    Attributes
    ----------
    closed_form
        Whether the Wiener filter is used (full mask, one noise level per channel) instead of the dense path.

    Raises
    ------
    ValueError
        A field that is not a GRF, an operator of another shape, ``value``/``noise`` not ``[m]``, non-finite
        values, non-positive noise, or more than :data:`MAX_OBSERVATIONS` observations on the dense path.

    Notes
    -----
    Cost of the dense path: ``K`` takes ``m`` filtered adjoint basis fields (one FFT pair each, in chunks of
    about 4 M values) and ``m³/3`` flops for its Cholesky factor (``m²`` memory), cached; the mean then costs one
    FFT pair, :meth:`posterior_variance` ``m`` more FFT pairs and ``m³/3`` flops (the triangular inverse; the
    fields ``C Hᵀ`` are never held at once, so memory stays ``m² + chunk``), and :meth:`posterior_sample` one
    FFT pair and ``2 m²`` flops per draw. All results are float64 on the device of ``value``.
    """

    def __init__(self, field: GaussianRandomField, operator: Any, value: torch.Tensor, noise: torch.Tensor):
        if not isinstance(field, GaussianRandomField):
            raise ValueError(f"ObservedGRF needs a GaussianRandomField prior, got {type(field).__name__}")
        if tuple(int(v) for v in operator.shape) != field.shape:
            raise ValueError(f"ObservedGRF: the operator observes a field of shape {tuple(operator.shape)}, the "
                             f"prior's is {field.shape}")
        m = int(operator.count)
        value = torch.as_tensor(value, dtype=torch.float64)
        noise = torch.as_tensor(noise, dtype=torch.float64).to(value.device)
        if tuple(value.shape) != (m,) or tuple(noise.shape) != (m,):
            raise ValueError(f"ObservedGRF: value and noise must be [{m}] (one per observation of the operator), "
                             f"got {tuple(value.shape)} and {tuple(noise.shape)}")
        if not bool(torch.isfinite(value).all()):
            raise ValueError("ObservedGRF: observed values must be finite (leave unobserved points out of H)")
        if not bool(torch.isfinite(noise).all()) or not bool((noise > 0).all()):
            raise ValueError("ObservedGRF: observation noise must be positive and finite at every observation")
        self.field, self.operator, self.value, self.noise = field, operator, value, noise
        self.shape, self.count, self.device = field.shape, m, value.device
        self._v = field.variance.to(self.device)
        self._wiener = self._full_mask_noise()
        self.closed_form = self._wiener is not None
        if not self.closed_form and m > MAX_OBSERVATIONS:
            raise ValueError(f"ObservedGRF: {m} observations > {MAX_OBSERVATIONS}: the exact posterior factorises a "
                             f"dense m x m matrix (m³/3 flops, m² memory); observe fewer points")
        self._chunk = max(1, _CHUNK_VALUES // math.prod(self.shape))
        self._cache: dict[str, torch.Tensor] = {}

    @classmethod
    def from_observations(cls, field: GaussianRandomField, obs: Any) -> ObservedGRF:
        """The posterior given an :class:`~sciencegen.samplers.guidance.Observations` (``operator``, ``value``,
        ``noise``)."""
        return cls(field, obs.operator, obs.value, obs.noise)

    # ------------------------------------------------------------ shared pieces

    def _full_mask_noise(self) -> torch.Tensor | None:
        """``s²`` per channel ``[C, 1, …]`` when ``H`` is a permutation with one noise level per channel, else None."""
        index, weight = getattr(self.operator, "index", None), getattr(self.operator, "weight", None)
        size = math.prod(self.shape)
        if index is None or weight is None or self.count != size:
            return None
        index, weight = torch.as_tensor(index).cpu(), torch.as_tensor(weight).cpu().double()
        if index.ndim != 2 or weight.shape != index.shape:
            return None
        used = weight != 0
        if not bool((used.sum(1) == 1).all()) or not bool((weight[used] == 1).all()):
            return None
        seen = index[used]  # one per row, in row order
        if not torch.equal(torch.sort(seen).values, torch.arange(size)):
            return None
        s = torch.empty(size, dtype=torch.float64)
        s[seen] = self.noise.cpu()
        s = s.reshape(self.shape[0], -1)
        if not bool((s == s[:, :1]).all()):
            return None
        return (s[:, 0] ** 2).reshape((-1,) + (1,) * self.field.ndim).to(self.device)

    def _filter(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, C, *grid]`` filtered by a real, even full-grid ``gain`` (``[*grid]`` or ``[C, *grid]``)."""
        f = self.field
        xf = torch.fft.rfftn(x, dim=f.dims, norm="ortho")
        return torch.fft.irfftn(xf * gain[..., : f.n // 2 + 1], s=(f.n,) * f.ndim, dim=f.dims, norm="ortho")

    def _cov_adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """``C Hᵀ r``: fields ``[B, C, *grid]`` from ``[B, m]``."""
        return self._filter(self.operator.adjoint(r), self._v)

    def _factor(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The Cholesky factor ``L`` of ``K = H C Hᵀ + diag(s²)`` and ``K⁻¹ y`` (dense path, cached)."""
        if "chol" not in self._cache:
            m, b = self.count, self._chunk
            eye = torch.eye(m, dtype=torch.float64, device=self.device)
            rows = [self.operator.apply(self._cov_adjoint(eye[i : i + b])) for i in range(0, m, b)]
            k = torch.cat(rows) if rows else eye
            k = 0.5 * (k + k.T) + torch.diag(self.noise ** 2)
            chol, info = torch.linalg.cholesky_ex(k)
            if int(info):
                raise ValueError("ObservedGRF: H C Hᵀ + diag(s²) is not positive definite in float64 (observation "
                                 "noise too small for these observations)")
            self._cache["chol"] = chol
            self._cache["alpha"] = torch.cholesky_solve(self.value[:, None], chol)[:, 0]
        return self._cache["chol"], self._cache["alpha"]

    def _gridded(self, r: torch.Tensor) -> torch.Tensor:
        """Closed form: ``Hᵀ r`` (``H`` a permutation, so the observations on the grid) ``[B, C, *grid]``."""
        return self.operator.adjoint(r)

    # ------------------------------------------------------------ the posterior

    def posterior_mean(self) -> torch.Tensor:
        """Exact ``E[x | y]`` ``[C, *grid]``: ``C Hᵀ K⁻¹ y``, or the Wiener filter ``v / (v + s²)`` of ``y``."""
        if self.closed_form:
            return self._filter(self._gridded(self.value[None]), self._v / (self._v + self._wiener))[0]
        return self._cov_adjoint(self._factor()[1][None])[0]

    def mode_variance(self) -> torch.Tensor:
        """Closed form only: the exact posterior variance of each Fourier mode ``v s² / (v + s²)``, ``[C, *grid]``.

        Raises
        ------
        ValueError
            On the dense path (the posterior covariance is not diagonal in Fourier there).
        """
        if not self.closed_form:
            raise ValueError("ObservedGRF: per-mode variances exist only for a full mask with one noise per channel")
        return (self._v * self._wiener / (self._v + self._wiener)).expand(self.shape).clone()

    def posterior_variance(self) -> torch.Tensor:
        """Exact per-point ``Var[x | y]`` ``[C, *grid]``: ``diag(C) - Σ_i (C Hᵀ L⁻ᵀ e_i)²`` (``K = L Lᵀ``).

        ``diag(C)`` is the prior per-point variance ``mean(v)``; the sum runs over the ``m`` columns in chunks.
        In closed form it is the mean of :meth:`mode_variance` over the modes of each channel. Cached.
        """
        if "variance" not in self._cache:
            if self.closed_form:
                var = self.mode_variance().mean(self.field.dims, keepdim=True).expand(self.shape).clone()
            else:
                chol, _ = self._factor()
                m, b = self.count, self._chunk
                inv = torch.linalg.solve_triangular(chol, torch.eye(m, dtype=torch.float64, device=self.device),
                                                    upper=False)  # L⁻¹: row i is (L⁻ᵀ e_i)ᵀ
                explained = torch.zeros(self.shape, dtype=torch.float64, device=self.device)
                for i in range(0, m, b):
                    explained += self._cov_adjoint(inv[i : i + b]).pow(2).sum(0)
                var = (float(self.field.variance.mean()) - explained).clamp_min(0)
            self._cache["variance"] = var
        return self._cache["variance"].clone()

    def posterior_sample(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``count`` exact posterior draws ``[count, C, *grid]`` (Matheron's rule).

        ``x' + C Hᵀ K⁻¹ (y - H x' - s·eps')`` with ``x' = field.sample(count, generator)`` drawn first, then
        ``eps' ~ N(0, I_m)`` ``[count, m]`` from the same generator (both paths draw alike).
        """
        prior = self.field.sample(count, generator).to(self.device)
        eps = torch.randn((count, self.count), generator=generator, dtype=torch.float64).to(self.device)
        r = self.value[None] - self.operator.apply(prior) - self.noise[None] * eps
        if self.closed_form:
            return prior + self._filter(self._gridded(r), self._v / (self._v + self._wiener))
        chol, _ = self._factor()
        coef = torch.cholesky_solve(r.T, chol).T
        b = self._chunk
        return prior + torch.cat([self._cov_adjoint(coef[i : i + b]) for i in range(0, count, b)])

    def log_evidence(self) -> float:
        """``log N(y; 0, K)``, the marginal likelihood of the observations under the prior."""
        two_pi = math.log(2 * math.pi)
        if self.closed_form:
            y = self._gridded(self.value[None])
            quad = float((y * self._filter(y, 1.0 / (self._v + self._wiener))).sum())
            logdet = float(torch.log(self._v + self._wiener).expand(self.shape).sum())
            return -0.5 * (quad + logdet + self.count * two_pi)
        chol, alpha = self._factor()
        logdet = 2.0 * float(chol.diagonal().log().sum())
        return -0.5 * (float(self.value @ alpha) + logdet + self.count * two_pi)
