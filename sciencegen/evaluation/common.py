"""What every room of the evaluation shares: its error, one side of a comparison, and the Dask task size.

A :class:`Side` is one side of a comparison (the generated members, or a reference): lazy fields per variable
over ``(dim, *field_dims)``, chunked in tasks of about :data:`TASK_BYTES` of float32 fields
(:func:`rechunk`, :func:`task_members`), so memory is bounded by a few tasks whatever the store size.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import SciencegenError

__all__ = [
    "RESOLVED_POWER",
    "histogram_edges",
    "TASK_BYTES",
    "EvaluateError",
    "Side",
    "command_line",
    "dims_text",
    "first_line",
    "fmt",
    "rechunk",
    "resolved_shells",
    "runs",
    "task_members",
]

#: target size of one Dask task's float32 fields (the store's chunks are split or merged to about this)
TASK_BYTES = 16 << 20


class EvaluateError(SciencegenError):
    """Evaluation cannot run; the message is one line meant for the user."""


@dataclass
class Side:
    """One side of the comparison: lazy fields per variable over ``(dim, *field_dims)``.

    Attributes
    ----------
    kind
        ``samples`` for the generated side; the reference's kind otherwise (``exact``, ``heldout``, ``store``
        or the name a user registered, :mod:`sciencegen.evaluation.references`).
    label
        Legend label (``generated``, ``exact law``, ``held-out data``, ...).
    dim
        The sample dim of ``data`` (``member`` for the generated side, ``sample`` for a reference).
    data
        ``{variable: DataArray over (dim, *field_dims)}``, lazy.
    field_dims
        The field dims, in the order of ``data``.
    count
        Number of samples along ``dim``.
    info
        What ``metrics.json`` records about this side (``source``, ``description``, ``samples``, an optional
        ``warning``, ...).
    law_spectrum
        Exact isotropic spectrum per variable where the reference is an analytic law (else ``None``).
    law_moments
        Exact one-point moments (``mean``, ``std``, ``skewness``, ``kurtosis``) of an analytic law, if known.
    request
        The :class:`~sciencegen.evaluation.references.ReferenceRequest` a reference was built from (its dataset,
        data root and hold-out fraction: where the training data are); ``None`` for the generated side.
    extras
        Results of the whole run computed with the metrics (the memorisation check), recorded by the report.
    """

    kind: str
    label: str
    dim: str
    data: dict[str, xr.DataArray]
    field_dims: tuple[str, ...]
    count: int
    info: dict[str, Any] = field(default_factory=dict)
    law_spectrum: dict[str, np.ndarray] | None = None
    law_moments: dict[str, float] | None = None
    request: Any = None
    extras: dict[str, Any] = field(default_factory=dict)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def dims_text(dims: Sequence[Hashable], sizes: Mapping[Hashable, int]) -> str:
    """``y=16, x=16``: the dims with their sizes, for messages."""
    return ", ".join(f"{d}={sizes[d]}" for d in dims)


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the runs of ``True`` in a 1-D mask."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > 1)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    stops = np.concatenate([idx[breaks] + 1, [idx[-1] + 1]])
    return [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


def task_members(field_shape: Sequence[int], itemsize: int = 4) -> int:
    """Samples per Dask task so that a task holds about :data:`TASK_BYTES` of fields of ``field_shape``."""
    per = max(1, int(np.prod(field_shape)) * itemsize)
    return max(1, TASK_BYTES // per)


def rechunk(da: xr.DataArray, dim: str, members: int) -> xr.DataArray:
    """Chunk ``dim`` by about ``members`` (merging or splitting the store's chunks), field dims whole."""
    chunks = da.chunks
    if chunks is None:
        return da
    first = int(da.chunksizes[dim][0]) if da.sizes[dim] else 1
    size = (members // first) * first if first <= members else members
    return da.chunk({dim: max(1, min(size, max(1, da.sizes[dim])))} | {d: -1 for d in da.dims if d != dim})


def fmt(x: Any, spec: str = ".4g") -> str:
    """A number for a report table: ``spec``-formatted, ``—`` for a missing or non-finite one."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return format(x, spec)


def command_line(argv: Sequence[str] | None = None) -> str | None:
    """The command that ran, as typed (``sciencegen-evaluate samples.path=...``); ``None`` outside a command.

    Inside a Hydra job (a console script, ``python -m sciencegen``, or the whole job ``sciencegen`` whose
    evaluation step this is) it is the process's own command line, quoted for a shell: the program's name
    (``python -m sciencegen`` for the package's ``__main__``) and every argument as given. Outside one (a
    ``run_evaluate(cfg)`` call from Python) there is no command: ``None``.

    Parameters
    ----------
    argv
        The command line (``sys.argv`` when omitted).
    """
    import shlex
    import sys

    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
    except Exception:
        return None
    args = list(sys.argv if argv is None else argv)
    if not args:
        return None
    prog = Path(args[0]).name
    if prog == "__main__.py":
        prog = f"python -m {Path(args[0]).parent.name}"
    elif prog.endswith(".py"):
        prog = f"python {shlex.quote(args[0])}"
    return " ".join([prog, *(shlex.quote(a) for a in args[1:])])


#: a shell counts for the spectral error if its reference power is at least this fraction of the peak: a
#: pseudo-spectral solver's dealiasing leaves round-off (1e-14 of the peak) beyond 2/3 of the Nyquist wavenumber,
#: and the log ratio of a model's small-scale noise to round-off (25 there) would swamp every resolved shell
RESOLVED_POWER = 1e-10


def resolved_shells(reference: np.ndarray, kmax: int) -> np.ndarray:
    """Shells ``1..kmax`` where the reference power per mode holds at least :data:`RESOLVED_POWER` of its peak."""
    shells = np.arange(1, kmax + 1)
    ref = np.asarray(reference, dtype=np.float64)
    if not shells.size or not np.isfinite(ref[shells]).all():
        return shells
    return shells[ref[shells] >= RESOLVED_POWER * np.nanmax(ref[shells])]


def histogram_edges(lo_hi: Sequence[Any], bins: int, variable: str, where: str = "") -> tuple[np.ndarray, float, float]:
    """Shared histogram edges of both sides from their ``[lo_s, lo_r, hi_s, hi_r]`` (first pass).

    Returns ``(edges, lo, hi)``; a constant field gets a unit-wide range. Raises :class:`EvaluateError` when
    neither side holds a finite value (``where``: e.g. " at its valid points").
    """
    vals = [float(x) for x in lo_hi]
    lo, hi = float(np.nanmin(vals[:2])), float(np.nanmax(vals[2:]))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise EvaluateError(f"variable {variable}: no finite values to compare{where}")
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, int(bins) + 1), lo, hi
