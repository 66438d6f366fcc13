"""Counter-based noise: the normal draw for (seed, member, step) on demand.

Salmon et al. 2011 (counter-based RNGs); seeds mixed with SplitMix64 (Steele et al. 2014).

Nothing is stored for the whole trajectory: a sampler asks for the noise of
``(member, step)`` when that step enters its window, so memory is bounded by
the window, and every sampler (sequential or Picard) sees the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["CONDITION", "CORRECTOR", "DATA", "INIT", "STEP", "condition_seed", "corrector_tag", "normal", "stream_key"]

_MASK = (1 << 64) - 1

#: stream tags: the initial state, the step noise, Langevin corrector noise, dataset samples, condition seeds
INIT, STEP, CORRECTOR, DATA, CONDITION = 0, 1, 2, 3, 4


def corrector_tag(k: int) -> int:
    """Stream tag of the ``k``-th Langevin corrector step at a grid point."""
    return CORRECTOR + 16 * int(k)


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def stream_key(seed: int, member: int, step: int, tag: int = STEP) -> int:
    """A 63-bit generator seed that depends only on ``(seed, member, step, tag)``."""
    z = _splitmix64(int(seed) & _MASK)
    for v in (tag, member, step):
        z = _splitmix64(z ^ (int(v) & _MASK))
    return z >> 1


def condition_seed(seed: int, condition: int, lead: int = 0) -> int:
    """The run seed of condition ``condition`` (and forecast lead time ``lead``) of a conditional ensemble.

    Member ``i`` of condition ``c`` is drawn with ``sample(..., seed=condition_seed(seed, c, lead),
    first_member=i)``, so it depends only on ``(seed, c, i)`` (and the lead time): not on how many conditions
    or members the run has, its batch, shard or order.

    Parameters
    ----------
    seed
        The run's seed.
    condition
        Index of the condition (case) in the ensemble.
    lead
        Lead time of a forecast rollout (0 without rollouts).
    """
    return stream_key(seed, condition, lead, tag=CONDITION)


def normal(
    seed: int,
    members: Sequence[int],
    steps: Sequence[int] | int,
    shape: Sequence[int],
    *,
    tag: int = STEP,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Standard normals of ``shape`` for each ``(members[i], steps[i])``.

    Parameters
    ----------
    seed
        The run's seed.
    members, steps
        Equal-length sequences (``steps`` may be one int for all members).
    shape
        Shape of one field.
    tag
        Stream tag (:data:`INIT`, :data:`STEP`, :data:`CORRECTOR`).

    Returns
    -------
    torch.Tensor
        ``[len(members), *shape]``; the draw is made in float64 on the CPU and
        cast, so it is the same on every device and in every working dtype.
    """
    if isinstance(steps, int):
        steps = [steps] * len(members)
    out = torch.empty((len(members), *shape), dtype=torch.float64)
    gen = torch.Generator(device="cpu")
    for i, (m, j) in enumerate(zip(members, steps, strict=True)):
        gen.manual_seed(stream_key(seed, m, j, tag))
        torch.randn(tuple(shape), generator=gen, dtype=torch.float64, out=out[i])
    return out.to(device=device, dtype=dtype)
