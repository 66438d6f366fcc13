"""What the Picard walk carries from round to round: the per-member state, and the window of one round.

Every per-member quantity of :func:`~sciencegen.samplers.picard.picard_walk` lives in one
:class:`MemberState`; a round gathers the sources it evaluates into a :class:`Window`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["MemberState", "Window"]


@dataclass
class MemberState:
    """Per-member state of the Picard walk (``M`` members, window ``W``, fields of ``shape``).

    Grid points live in rings: point ``j`` of member ``i`` is ``points[i, j % (W + 1)]`` (the ring holds
    the points ``p .. p + W`` past the last accepted point ``p``), the noise of step ``j`` is
    ``noise[i, j % W]`` and the latest denoiser output at point ``j`` is ``d_points[i, j % (W + 1)]``.

    Attributes
    ----------
    accepted
        ``[M]`` the last accepted grid point ``p`` (the walk ends when every member reaches ``N``).
    guessed
        ``[M]`` the last grid point holding a guess.
    noise_upto
        ``[M]`` steps below this have their noise in the ``noise`` ring.
    evaluated
        ``[M]`` sources below this have been evaluated at least once.
    iters
        ``[M]`` Picard iterations spent in the current block.
    sequential_until
        ``[M]`` after a fallback, the member walks with window 1 up to this point.
    corrector_left
        ``[M]`` Langevin corrector steps still to take at the current block end.
    grow_rounds
        ``[M]`` consecutive rounds of growing residual without progress.
    last_residual
        ``[M]`` float64, the largest judged residual of the member's previous round.
    d_last
        ``[M, *shape]`` the freshest denoiser output (at the furthest source): it seeds new guesses.
    points, noise, d_points
        The rings above (``d_points`` is ``None`` unless the table is multistep or has a predictor stage).
    rounds, nfe, fallbacks
        ``[M]`` CPU counters: rounds taken part in, denoiser evaluations, sequential fallbacks.
    """

    accepted: torch.Tensor
    guessed: torch.Tensor
    noise_upto: torch.Tensor
    evaluated: torch.Tensor
    iters: torch.Tensor
    sequential_until: torch.Tensor
    corrector_left: torch.Tensor
    grow_rounds: torch.Tensor
    last_residual: torch.Tensor
    d_last: torch.Tensor
    points: torch.Tensor
    noise: torch.Tensor
    d_points: torch.Tensor | None
    rounds: torch.Tensor
    nfe: torch.Tensor
    fallbacks: torch.Tensor

    @classmethod
    def start(cls, x: torch.Tensor, window: int, keep_d: bool) -> MemberState:
        """The state at the first grid point ``x`` (``[M, *shape]``) with window ``window``.

        Parameters
        ----------
        x
            VP states at ``t_0``.
        window
            Most steps in flight per member.
        keep_d
            Keep the ring of denoiser outputs (multistep tables, predictor stages).
        """
        m, shape, dev = x.shape[0], tuple(x.shape[1:]), x.device
        points = x.new_zeros((m, window + 1, *shape))
        points[:, 0] = x

        def index() -> torch.Tensor:
            return torch.zeros(m, dtype=torch.long, device=dev)

        def counter() -> torch.Tensor:
            return torch.zeros(m, dtype=torch.long)

        return cls(
            accepted=index(), guessed=index(), noise_upto=index(), evaluated=index(), iters=index(),
            sequential_until=index(), corrector_left=index(), grow_rounds=index(),
            last_residual=torch.full((m,), math.inf, dtype=torch.float64, device=dev),
            d_last=x.new_zeros((m, *shape)), points=points, noise=x.new_zeros((m, window, *shape)),
            d_points=x.new_zeros((m, window + 1, *shape)) if keep_d else None,
            rounds=counter(), nfe=counter(), fallbacks=counter(),
        )


@dataclass
class Window:
    """The sources one round evaluates: for each iterating member ``rows[r]``, points ``p .. p + length - 1``.

    Attributes
    ----------
    rows
        ``[R]`` the iterating members.
    length
        ``[R]`` sources per member (``>= 1``).
    width
        The longest window (``max(length)``).
    offsets
        ``[width]`` the offsets ``0 .. width - 1`` past the accepted point.
    valid
        ``[R, width]`` whether an offset is inside the member's window.
    grid
        ``[R, width]`` grid index of every (member, offset).
    row, col
        The valid entries, flattened row by row (``valid.nonzero()``).
    member, step
        Member and grid index of every flattened source.
    x, z
        ``[P, *shape]`` the state and the step noise at every flattened source.
    pred
        Positions in the flattened sources of those whose step has a predictor stage (Heun).
    """

    rows: torch.Tensor
    length: torch.Tensor
    width: int
    offsets: torch.Tensor
    valid: torch.Tensor
    grid: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    member: torch.Tensor
    step: torch.Tensor
    x: torch.Tensor
    z: torch.Tensor
    pred: torch.Tensor
