"""Counter-based noise: the normal draw for (seed, member, step) on demand.

Salmon et al. 2011 (counter-based RNGs); seeds mixed with SplitMix64 (Steele et al. 2014).

Nothing is stored for the whole trajectory: a sampler asks for the noise of
``(member, step)`` when that step enters its window, so memory is bounded by
the window, and every sampler (sequential or Picard) sees the same numbers.

Two streams draw from the same per-``(seed, member, step, tag)`` key (:func:`stream_key`):

* ``"cpu"`` (an ``int`` seed, :data:`DEFAULT_STREAM`): a CPU ``torch.Generator`` seeded with the key draws
  float64 normals, copied to the device;
* ``"counter"``: element ``i`` is the ``i``-th output of a SplittableRandom (SplitMix64) stream whose seed is the
  key, computed elementwise with exact integer tensor ops on the sampling device (:func:`counter_words`), then
  Box-Muller in float64 there: a GPU never waits for CPU draws.

A sampler is given either an ``int`` seed or a :class:`NoiseSeed`, which names its stream; it passes it to
:func:`normal` opaquely.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "CONDITION",
    "CORRECTOR",
    "DATA",
    "DEFAULT_STREAM",
    "INIT",
    "STEP",
    "STREAMS",
    "NoiseSeed",
    "condition_seed",
    "corrector_tag",
    "counter_words",
    "normal",
    "seed_stream",
    "stream_key",
    "with_stream",
]

_MASK = (1 << 64) - 1
_M32 = (1 << 32) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # Stafford's variant 13, SplitMix64's finaliser
_CPU = torch.device("cpu")

#: stream tags: the initial state, the step noise, Langevin corrector noise, dataset samples, condition seeds
INIT, STEP, CORRECTOR, DATA, CONDITION = 0, 1, 2, 3, 4

#: the noise streams: ``cpu`` (a CPU generator seeded per key) and ``counter`` (integer tensor ops on the device)
STREAMS = ("cpu", "counter")
#: the stream of an ``int`` seed (every number recorded before the counter stream existed)
DEFAULT_STREAM = "cpu"


@dataclass(frozen=True)
class NoiseSeed:
    """A run seed and the noise stream that draws from it: what :func:`normal` (and every sampler) accepts
    besides an ``int`` seed, which means ``NoiseSeed(seed, "cpu")``.

    Attributes
    ----------
    value
        The run's seed (an integer).
    stream
        One of :data:`STREAMS`.
    """

    value: int
    stream: str = DEFAULT_STREAM

    def __post_init__(self) -> None:
        try:
            value = operator.index(self.value)
        except TypeError:
            raise ValueError(f"a noise seed must be an integer, got {self.value!r}") from None
        if self.stream not in STREAMS:
            raise ValueError(f"noise stream must be one of {', '.join(STREAMS)}, got {self.stream!r}")
        object.__setattr__(self, "value", int(value))


def seed_stream(seed: int | NoiseSeed) -> str:
    """The stream a seed draws from (:data:`DEFAULT_STREAM` for an ``int``)."""
    return seed.stream if isinstance(seed, NoiseSeed) else DEFAULT_STREAM


def with_stream(seed: int | NoiseSeed, stream: str | None) -> int | NoiseSeed:
    """``seed`` drawing from ``stream`` (``None``: unchanged).

    Raises
    ------
    ValueError
        An unknown stream, or a :class:`NoiseSeed` of another stream.
    """
    if stream is None:
        return seed
    if stream not in STREAMS:
        raise ValueError(f"noise_stream must be one of {', '.join(STREAMS)}, got {stream!r}")
    if isinstance(seed, NoiseSeed):
        if seed.stream != stream:
            raise ValueError(f"noise_stream={stream!r} conflicts with the seed's stream {seed.stream!r}")
        return seed
    return NoiseSeed(seed, stream)


def corrector_tag(k: int) -> int:
    """Stream tag of the ``k``-th Langevin corrector step at a grid point."""
    return CORRECTOR + 16 * int(k)


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK
    return z ^ (z >> 31)


def _splitmix64(z: int) -> int:
    return _mix64((z + _GOLDEN) & _MASK)


def _mix_gamma(z: int) -> int:
    """SplittableRandom's ``mixGamma`` (Steele et al. 2014): an odd increment with enough bit transitions."""
    z = ((z ^ (z >> 33)) * 0xFF51AFD7ED558CCD) & _MASK
    z = ((z ^ (z >> 33)) * 0xC4CEB9FE1A85EC53) & _MASK
    z = (z ^ (z >> 33)) | 1
    return z ^ 0xAAAAAAAAAAAAAAAA if bin(z ^ (z >> 1)).count("1") < 24 else z


def stream_key(seed: int, member: int, step: int, tag: int = STEP) -> int:
    """A 63-bit generator seed that depends only on ``(seed, member, step, tag)``."""
    z = _splitmix64(int(seed) & _MASK)
    for v in (tag, member, step):
        z = _splitmix64(z ^ (int(v) & _MASK))
    return z >> 1


def condition_seed(seed: int | NoiseSeed, condition: int, lead: int = 0) -> int | NoiseSeed:
    """The run seed of condition ``condition`` (and forecast lead time ``lead``) of a conditional ensemble.

    Member ``i`` of condition ``c`` is drawn with ``sample(..., seed=condition_seed(seed, c, lead),
    first_member=i)``, so it depends only on ``(seed, c, i)`` (and the lead time): not on how many conditions
    or members the run has, its batch, shard or order.

    Parameters
    ----------
    seed
        The run's seed; a :class:`NoiseSeed` gives a :class:`NoiseSeed` of the same stream.
    condition
        Index of the condition (case) in the ensemble.
    lead
        Lead time of a forecast rollout (0 without rollouts).
    """
    if isinstance(seed, NoiseSeed):
        return NoiseSeed(stream_key(seed.value, condition, lead, tag=CONDITION), seed.stream)
    return stream_key(seed, condition, lead, tag=CONDITION)


def normal(
    seed: int | NoiseSeed,
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
        The run's seed: an ``int`` (the ``"cpu"`` stream) or a :class:`NoiseSeed` naming its stream.
    members, steps
        Equal-length sequences (``steps`` may be one int for all members).
    shape
        Shape of one field.
    tag
        Stream tag (:data:`INIT`, :data:`STEP`, :data:`CORRECTOR`).

    Returns
    -------
    torch.Tensor
        ``[len(members), *shape]``. The ``"cpu"`` stream draws in float64 on the CPU and casts, so it is the same
        on every device and in every working dtype. The ``"counter"`` stream computes on ``device``: its integers
        are the same on every device; its float64 Box-Muller transform (``log``, ``sqrt``, ``cos``, ``sin``) may
        differ in the last bits between devices (each device's libm rounds its own way) before the cast.
    """
    if isinstance(steps, int):
        steps = [steps] * len(members)
    if len(steps) != len(members):
        raise ValueError(f"members and steps must have equal lengths, got {len(members)} and {len(steps)}")
    if isinstance(seed, NoiseSeed) and seed.stream == "counter":
        return _counter_normal(seed.value, members, steps, tuple(shape), tag, dtype, torch.device(device))
    value = seed.value if isinstance(seed, NoiseSeed) else seed
    out = torch.empty((len(members), *shape), dtype=torch.float64)
    gen = torch.Generator(device="cpu")
    for i, (m, j) in enumerate(zip(members, steps, strict=True)):
        gen.manual_seed(stream_key(value, m, j, tag))
        torch.randn(tuple(shape), generator=gen, dtype=torch.float64, out=out[i])
    return out.to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------- the counter stream


def counter_words(seed: int, members: Sequence[int], steps: Sequence[int] | int, count: int, *, tag: int = STEP,
                  device: torch.device | str = "cpu", method: str = "auto") -> torch.Tensor:
    """The 64-bit words of the ``"counter"`` stream: ``count`` per ``(members[i], steps[i])``.

    Word ``i`` of key ``k = stream_key(seed, member, step, tag)`` is SplitMix64's finaliser of
    ``k + (i + 1) * g mod 2**64`` with ``g = mixGamma(k)``: the ``i``-th output of Java's SplittableRandom with
    seed ``k`` and gamma ``g`` (Steele et al. 2014).

    Parameters
    ----------
    seed, members, steps, tag
        As :func:`normal`.
    count
        Words per key (``< 2**31``).
    device
        Where to compute them.
    method
        ``"tensor"``: int64 tensor ops on ``device``, 32-bit words multiplied in limbs so that no product or sum
        leaves ``[0, 2**63)`` (exact on every device, no signed overflow); ``"numpy"``: uint64 NumPy arrays
        (the CPU's fast path; unsigned arithmetic wraps by definition); ``"auto"``: numpy on the CPU, else tensor.

    Returns
    -------
    torch.Tensor
        int64 ``[len(members), count, 2]``: the high and the low 32 bits of each word, on ``device``.
    """
    if isinstance(steps, int):
        steps = [steps] * len(members)
    device = torch.device(device)
    keys = [stream_key(seed, m, j, tag) for m, j in zip(members, steps, strict=True)]
    if _numpy_path(method, device):
        z = _words_numpy(keys, count)
        hi, lo = (z >> np.uint64(32)).astype(np.int64), (z & np.uint64(_M32)).astype(np.int64)
        return torch.stack([torch.from_numpy(hi), torch.from_numpy(lo)], -1).to(device)
    hi, lo = _words_torch(keys, count, device)
    return torch.stack([hi, lo], -1)


def _numpy_path(method: str, device: torch.device) -> bool:
    if method not in ("auto", "numpy", "tensor"):
        raise ValueError(f"method must be auto, numpy or tensor, got {method!r}")
    return method == "numpy" or (method == "auto" and device.type == "cpu")


def _check_count(count: int) -> None:
    if not 0 <= count < 2**31:
        raise ValueError(f"the counter stream draws fewer than 2**31 numbers per field, got {count}")


def _words_numpy(keys: list[int], count: int, start: int = 0) -> np.ndarray:
    """``[len(keys), count]`` uint64 words ``start, start + 1, ...`` (:func:`counter_words`) with NumPy's wrapping
    unsigned arithmetic."""
    _check_count(start + count)
    k = np.array(keys, dtype=np.uint64)[:, None]
    g = np.array([_mix_gamma(key) for key in keys], dtype=np.uint64)[:, None]
    z = g * np.arange(start + 1, start + count + 1, dtype=np.uint64)
    z += k
    t = np.empty_like(z)
    for shift, mult in ((30, _MIX1), (27, _MIX2)):
        np.right_shift(z, np.uint64(shift), out=t)
        z ^= t
        z *= np.uint64(mult)
    np.right_shift(z, np.uint64(31), out=t)
    z ^= t
    return z


def _mul_lo32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` for 32-bit ``x`` (int64, non-negative) and a 32-bit constant; no product reaches 2**63."""
    if c < 2**31:
        return (x * c) & _M32
    t = x * (c - 2**31)  # < 2**63 - 2**32 - 2**31 + 1
    t += (x & 1) << 31  # x * 2**31 mod 2**32
    return t & _M32


def _mul64(hi: torch.Tensor, lo: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hi, lo) * c mod 2**64`` in 32-bit words, for a constant whose low word is below ``2**31``."""
    cl, ch = c & _M32, c >> 32
    p = lo * cl  # < 2**63: exact
    top = _mul_lo32(lo, ch)
    top += p >> 32
    top += _mul_lo32(hi, cl)
    return top & _M32, p & _M32


def _xorshift(hi: torch.Tensor, lo: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``z ^ (z >> s)`` in 32-bit words, ``0 < s < 32`` (shifts of non-negative values only)."""
    t = hi << (32 - s)
    t |= lo >> s
    t &= _M32
    return hi ^ (hi >> s), lo ^ t


def _words_torch(keys: list[int], count: int, device: torch.device, start: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The high and low 32 bits of words ``start, start + 1, ...`` of :func:`counter_words`, as int64 tensor ops on
    ``device``."""
    _check_count(start + count)
    gammas = [_mix_gamma(k) for k in keys]

    def column(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=device)[:, None]

    i = torch.arange(start + 1, start + count + 1, dtype=torch.int64, device=device)  # < 2**31
    p = i * column([g & _M32 for g in gammas])  # < 2**63
    hi = (i * column([g >> 32 for g in gammas])) & _M32
    hi += p >> 32
    lo = p & _M32
    lo += column([k & _M32 for k in keys])
    hi += column([k >> 32 for k in keys])
    hi += lo >> 32
    hi &= _M32
    lo &= _M32
    hi, lo = _xorshift(hi, lo, 30)
    hi, lo = _mul64(hi, lo, _MIX1)
    hi, lo = _xorshift(hi, lo, 27)
    hi, lo = _mul64(hi, lo, _MIX2)
    return _xorshift(hi, lo, 31)


def _uniforms(keys: list[int], count: int, device: torch.device, start: int = 0, method: str = "auto"
              ) -> torch.Tensor:
    """float64 ``[len(keys), count]`` in (0, 1) from words ``start, ...``: the top 52 bits of each word ``w`` as
    ``(2 (w >> 12) + 1) / 2**53``, exact (symmetric about 1/2, never 0 or 1)."""
    if _numpy_path(method, device):
        z = _words_numpy(keys, count, start)
        z >>= np.uint64(11)
        z |= np.uint64(1)
        return torch.from_numpy(z.view(np.int64)).to(torch.float64).mul_(2.0**-53)
    hi, lo = _words_torch(keys, count, device, start)
    hi <<= 21
    hi |= lo >> 11
    hi |= 1
    return hi.to(torch.float64).mul_(2.0**-53)


def _box_muller(u: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Normals from uniforms ``[P, 2n]`` (Box & Muller 1958), in float64, written as ``dtype``: ``r cos t`` and
    ``r sin t`` at columns ``2k``, ``2k+1`` from ``r = sqrt(-2 log u[2k])`` and ``t = 2 pi u[2k+1]``."""
    r = torch.log(u[:, 0::2]).mul_(-2.0).sqrt_()
    t = u[:, 1::2] * (2.0 * math.pi)
    out = torch.empty(u.shape, dtype=dtype, device=u.device)
    torch.mul(r, torch.cos(t), out=out[:, 0::2])
    torch.mul(r, t.sin_(), out=out[:, 1::2])
    return out


#: words per block of the CPU's counter stream: a block's arrays stay in the core's cache
_CPU_BLOCK = 1 << 16


def _counter_normal(seed: int, members: Sequence[int], steps: Sequence[int], shape: tuple[int, ...], tag: int,
                    dtype: torch.dtype, device: torch.device, method: str = "auto") -> torch.Tensor:
    """:func:`normal` of the ``"counter"`` stream: every key of the call in one chain of tensor ops (NumPy's on the
    CPU, in cache-sized blocks of keys and counters; ``method`` as :func:`counter_words`)."""
    n = math.prod(shape)
    count = n + (n & 1)
    keys = [stream_key(seed, m, j, tag) for m, j in zip(members, steps, strict=True)]
    if not keys or n == 0:
        return torch.empty((len(keys), *shape), dtype=dtype, device=device)
    work = _CPU if device.type == "mps" else device  # MPS has no float64: its noise is drawn on the CPU
    rows, cols = max(1, _CPU_BLOCK // count), min(count, _CPU_BLOCK)
    if not _numpy_path(method, work) or (rows >= len(keys) and cols == count):
        z = _box_muller(_uniforms(keys, count, work, 0, method), dtype)
    else:
        z = torch.empty((len(keys), count), dtype=dtype)
        for a in range(0, len(keys), rows):
            for c in range(0, count, cols):
                width = min(cols, count - c)
                z[a:a + rows, c:c + width] = _box_muller(_uniforms(keys[a:a + rows], width, _CPU, c), dtype)
    return z[:, :n].reshape(len(keys), *shape).to(device)
