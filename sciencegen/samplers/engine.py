"""The step-table engine: what the sequential and the Picard walk share.

Chen, Ren, Ying & Rotskoff, NeurIPS 2024 (PIADM); Shih et al., NeurIPS 2023 (ParaDiGMS).

Both walks solve ``x_{j+1} = A_j x_j + B_j D(x_j) + E_j x_j + C_j xi_j`` on a
:class:`~sciencegen.diffusion.StepTable`: :func:`~sciencegen.samplers.sequential.sequential_walk`
one step per round, :func:`~sciencegen.samplers.picard.picard_walk` many steps per round.  This
module holds their common parts: the table in the working dtype (:class:`WorkingTable`), the one
place the network is called (:func:`call_denoiser`), the finiteness check, the Langevin corrector
step, the residual norms and the cost record (:class:`WalkStats`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..diffusion import StepTable

__all__ = [
    "NORMS",
    "Conditions",
    "Denoiser",
    "WalkStats",
    "WorkingTable",
    "broadcast",
    "call_denoiser",
    "check_finite",
    "flat_position",
    "langevin_step",
    "residual_norm",
]

Denoiser = Callable[..., torch.Tensor]


class Conditions:
    """The conditions of a walk's members, gathered by member index for each denoiser call.

    Parameters
    ----------
    values
        ``[K, C_cond, *grid]``: one condition per member (``K`` = members) or one shared by all (``K = 1``).
    rows
        Per walk member, its row of ``values`` (``None``: member ``m`` has row ``m``; with ``K = 1`` every
        member has row 0).
    """

    def __init__(self, values: torch.Tensor, rows: torch.Tensor | None = None):
        self.values = values
        if rows is None and values.shape[0] == 1:
            rows = torch.zeros(0, dtype=torch.long, device=values.device)
            self._shared = True
        else:
            self._shared = False
        self.rows = rows

    def gather(self, members: torch.Tensor) -> torch.Tensor:
        """``[len(members), C_cond, *grid]``: the condition of each item's member."""
        if self._shared:
            return self.values.expand(members.shape[0], *self.values.shape[1:])
        idx = members if self.rows is None else self.rows[members]
        return self.values.index_select(0, idx.to(self.values.device))


@dataclass
class WalkStats:
    """Cost and convergence record of one walk over a batch of members.

    Attributes
    ----------
    rounds
        Batched denoiser calls made in sequence (the latency-relevant cost).
    rounds_per_member, nfe_per_member, fallbacks_per_member
        Per member: rounds it took part in, denoiser evaluations spent on it,
        and how often its Picard iteration was abandoned for a sequential
        finish of the block (divergence).
    residuals
        Per round, the largest normalised residual among unaccepted points.
    """

    rounds: int = 0
    rounds_per_member: torch.Tensor | None = None
    nfe_per_member: torch.Tensor | None = None
    fallbacks_per_member: torch.Tensor | None = None
    residuals: list[float] = field(default_factory=list)


def broadcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Append singleton dims to ``v`` so a per-item vector broadcasts over ``like``'s fields of any rank."""
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


class WorkingTable:
    """A step table cast to the working dtype/device, with the denoiser inputs of a step.

    Parameters
    ----------
    table
        The float64 step table.
    dtype, device
        Where the walk works.

    Attributes
    ----------
    n
        Number of steps ``N``.
    A, B, E, C, B2, B3, PA, PB, eta
        Step coefficients (absent second-order ones as zeros).
    alpha, sigma
        VP scale and noise at the ``N + 1`` points.
    level, eval_level
        EDM noise level at the points, and where each step evaluates the denoiser (churned for Heun).
    multistep, pred, has_pred, churn
        Whether steps use ``D_{j-1}``; per step whether it has a predictor stage (CPU bool), and whether
        any does; whether any step is churned.
    sig_norm
        The noise level residuals are measured against: ``sigma_j`` floored at ``sigma_{N-1}``.
    """

    def __init__(self, table: StepTable, dtype: torch.dtype, device: torch.device):
        kw = {"dtype": dtype, "device": device}
        self.n = table.steps
        zero = torch.zeros_like(table.A)
        self.A, self.B, self.E, self.C = (v.to(**kw) for v in (table.A, table.B, table.E, table.C))
        self.B2, self.B3, self.PA, self.PB, self.eta = (
            (v if v is not None else zero).to(**kw) for v in (table.B2, table.B3, table.PA, table.PB, table.eta))
        self.alpha, self.sigma, self.level = (v.to(**kw) for v in (table.alpha, table.sigma, table.s))
        self.eval_level = (table.s_eval if table.s_eval is not None else table.s[:-1]).to(**kw)
        self.multistep = bool((self.B2 != 0).any())
        self.pred = (self.B3 != 0).cpu()
        self.has_pred = bool(self.pred.any())
        self.churn = bool((self.eta != 0).any())
        self.sig_norm = torch.clamp(self.sigma, min=float(table.sigma[max(self.n - 1, 0)]))

    def source(self, x: torch.Tensor, j: torch.Tensor, z: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """EDM inputs ``(y, level)`` of the denoiser at the sources ``x_j`` (churned by ``eta_j z`` where set)."""
        y = x / broadcast(self.alpha[j], x)
        if self.churn and z is not None:
            y = y + broadcast(self.eta[j], x) * z
        return y, self.eval_level[j]

    def predictor(self, x: torch.Tensor, d: torch.Tensor, z: torch.Tensor, j: torch.Tensor) -> tuple[
            torch.Tensor, torch.Tensor]:
        """EDM inputs at Heun's predictor ``x'_{j+1} = PA x + PB D + C z`` (noise level ``s_{j+1}``)."""
        xp = broadcast(self.PA[j], x) * x + broadcast(self.PB[j], x) * d + broadcast(self.C[j], x) * z
        return xp / broadcast(self.alpha[j + 1], x), self.level[j + 1]

    def at_point(self, x: torch.Tensor, j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """EDM inputs ``(x_j / alpha_j, s_j)`` at grid points ``j`` (where the corrector evaluates)."""
        return x / broadcast(self.alpha[j], x), self.level[j]


def call_denoiser(
    denoiser: Denoiser,
    y: torch.Tensor,
    level: torch.Tensor,
    max_batch: int | None = None,
    cond: Conditions | None = None,
    members: torch.Tensor | None = None,
) -> torch.Tensor:
    """Denoiser output at EDM inputs ``y`` (``[P, *shape]``) and noise levels ``level`` (``[P]``).

    The one place every walk calls the network: splits the batch into
    micro-batches of at most ``max_batch`` items, gives each item its member's
    condition, and checks the shape of every answer (a distributed split of a
    round goes here too).

    Parameters
    ----------
    denoiser
        ``denoiser(y, level) -> E[x0 | y]`` in the EDM convention, or ``denoiser(y, level, cond)`` when
        ``cond`` is given.
    y, level
        Inputs and their noise levels.
    max_batch
        Largest micro-batch (``None``: the whole batch at once).
    cond, members
        The walk's conditions and, per item, the (walk-local) member it belongs to: each micro-batch gathers
        its items' conditions by index (nothing is copied per window point beyond the micro-batch).

    Returns
    -------
    torch.Tensor
        ``[P, *shape]`` in ``y``'s dtype.

    Raises
    ------
    ValueError
        The denoiser answered with another shape.
    """
    if y.shape[0] == 0:
        return torch.empty_like(y)
    step = y.shape[0] if not max_batch else int(max_batch)
    out = []
    for lo in range(0, y.shape[0], step):
        yi = y[lo : lo + step]
        if cond is None:
            d = denoiser(yi, level[lo : lo + step])
        else:
            d = denoiser(yi, level[lo : lo + step], cond.gather(members[lo : lo + step]))
        if not isinstance(d, torch.Tensor) or d.shape != yi.shape:
            got = tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__
            raise ValueError(f"denoiser returned shape {got} for input of shape {tuple(yi.shape)}")
        out.append(d.to(y.dtype))
    return out[0] if len(out) == 1 else torch.cat(out)


def check_finite(d: torch.Tensor, j: torch.Tensor, level: torch.Tensor) -> None:
    """Raise if any item of the denoiser output ``d`` (at steps ``j``, noise levels ``level``) is not finite.

    Raises
    ------
    ValueError
        Naming the first bad step and its noise level.
    """
    if d.shape[0] == 0:
        return
    bad = ~torch.isfinite(d.reshape(d.shape[0], -1)).all(1)
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"denoiser returned non-finite values at step {int(j[k])} (sigma={float(level[k]):.4g})"
        )


def langevin_step(
    x: torch.Tensor, d: torch.Tensor, j: torch.Tensor, z: torch.Tensor, tab: WorkingTable, size: float
) -> torch.Tensor:
    """One Langevin corrector step ``x + eps score + sqrt(2 eps) z`` at points ``j``, ``eps = size sigma_j²``.

    Parameters
    ----------
    x, d
        VP states at points ``j`` and the denoiser there.
    j
        Grid indices (one per item).
    z
        Standard normals (the corrector stream).
    tab
        The working table.
    size
        Step size relative to ``sigma_j²``.
    """
    a, sg = broadcast(tab.alpha[j], x), broadcast(tab.sigma[j], x)
    return x + size * (a * d - x) + math.sqrt(2 * size) * sg * z


def _rms(diff: torch.Tensor) -> torch.Tensor:
    return diff.reshape(diff.shape[0], -1).double().pow(2).mean(1).sqrt()


def _fourier_max(diff: torch.Tensor) -> torch.Tensor:
    # largest coefficient of the change in the orthonormal DFT over all field dims; the
    # real-input half spectrum holds every modulus (|X_k| = |X_-k|), at half the cost
    dims = tuple(range(1, diff.ndim))
    c = torch.view_as_real(torch.fft.rfftn(diff, dim=dims, norm="ortho"))
    return c.pow(2).sum(-1).reshape(diff.shape[0], -1).amax(1).sqrt().double()


#: how a point's change is measured (float64 per item): ``rms`` over all values, or ``fourier``, the largest
#: orthonormal-DFT coefficient over the field dims
NORMS = {"rms": _rms, "fourier": _fourier_max}


def residual_norm(diff: torch.Tensor, norm: str, chunk_elems: int = 1 << 24) -> torch.Tensor:
    """Per-item norm (:data:`NORMS`) of ``diff``, in chunks so float64/complex temporaries stay small.

    Parameters
    ----------
    diff
        ``[P, *shape]`` changes.
    norm
        A key of :data:`NORMS`.
    chunk_elems
        Largest number of values one chunk holds.
    """
    per = max(1, chunk_elems // max(1, diff[0].numel()))
    return torch.cat([NORMS[norm](diff[i : i + per]) for i in range(0, diff.shape[0], per)])


def flat_position(valid: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Positions in the row-major flattening of ``valid.nonzero()`` of the entries ``(rows, cols)``."""
    before = valid.long().cumsum(1) - 1  # index within the row
    row_start = torch.cat([valid.new_zeros(1, dtype=torch.long), valid.long().sum(1).cumsum(0)[:-1]])
    return row_start[rows] + before[rows, cols]
