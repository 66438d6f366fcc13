"""Which complete members of an ensemble store can actually be read: one scan of their chunks before the work.

A store can be damaged after it was written (a truncated or garbled chunk file, a deleted one): its members are
still flagged complete. :func:`unreadable_members` reads and decodes every member chunk that holds a member to
evaluate once, in Dask tasks of about :data:`~sciencegen.evaluation.common.TASK_BYTES`; :func:`readable_members`
turns that into the members to keep, what ``metrics.json`` records and the one-line warning (with the repair:
``generate.verify=true``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .common import TASK_BYTES, EvaluateError, first_line, runs
from .samples import Ensemble

__all__ = ["members_text", "readable_members", "unreadable_members", "valid_of"]

ScanTask = tuple[str, str, int, list[tuple[int, int]]]


def _nonfinite(arr: Any, axis: int, a: int, b: int, valid: np.ndarray | None = None) -> np.ndarray:
    """Per member of ``a..b-1``: whether its field holds a non-finite value (missing chunks read as NaN) at a
    valid point (``valid``: the store's mask over the trailing field dims; ``None``: every point)."""
    sel = [slice(None)] * arr.ndim
    sel[axis] = slice(a, b)
    x = np.moveaxis(np.asarray(arr[tuple(sel)]), axis, 0)
    ok = np.isfinite(x)
    if valid is not None:  # a masked variable holds NaN where it is invalid, by design
        ok |= ~np.broadcast_to(valid, x.shape[1:])
    return ~ok.reshape(b - a, -1).all(axis=1)


def valid_of(path: str, var: str) -> np.ndarray | None:
    """The store's ``valid_<var>`` mask (boolean over the field dims), or ``None`` when it has none."""
    import zarr

    try:
        return np.asarray(zarr.open_array(path, path=f"valid_{var}", mode="r")[...]) != 0
    except Exception:  # no mask array: every point is valid
        return None


def _scan_members(path: str, var: str, axis: int, ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int, str]]:
    """Unreadable members of ``var`` in consecutive member chunks ``ranges``: ``[(start, stop, why), ...]``.

    The chunks are read in one call (Zarr decodes them concurrently); only when that fails is each chunk read
    alone, so that a chunk that cannot be decoded marks exactly its own members.
    """
    import zarr

    arr = zarr.open_array(path, path=var, mode="r")
    valid = valid_of(path, var)
    start, stop = ranges[0][0], ranges[-1][1]
    bad: list[tuple[int, int, str]] = []
    try:
        masks = [(start, _nonfinite(arr, axis, start, stop, valid))]
    except Exception:  # a truncated or garbled chunk: any codec (or I/O) error
        masks = []
        for a, b in ranges:
            try:
                masks.append((a, _nonfinite(arr, axis, a, b, valid)))
            except Exception as exc:
                bad.append((a, b, f"chunk cannot be decoded: {first_line(exc)}"))
    for first, mask in masks:
        bad += [(first + a, first + b, "missing chunk or non-finite values") for a, b in runs(mask)]
    return bad


def _scan_tasks(ens: Ensemble, var: str, flags: np.ndarray) -> list[ScanTask]:
    """Read tasks of about :data:`TASK_BYTES` over the member chunks of ``var`` holding a member of ``flags``."""
    da = ens.ds[var]
    axis = da.dims.index("member")
    n = int(da.sizes["member"])
    stored = da.encoding.get("chunks")  # the store's chunks (Dask's may have been merged or split)
    if stored and len(stored) == da.ndim:
        step = int(stored[axis])
    else:
        step = int(da.chunksizes["member"][0]) if da.chunks is not None and n else max(n, 1)
    per = max(1, TASK_BYTES // max(1, step * int(np.prod([s for d, s in da.sizes.items() if d != "member"])) * 4))
    tasks: list[ScanTask] = []
    group: list[tuple[int, int]] = []
    for a in range(0, n, step):
        b = min(a + step, n)
        if not flags[a:b].any() or len(group) >= per:
            if group:
                tasks.append((str(ens.path), var, axis, group))
            group = []
        if flags[a:b].any():
            group.append((a, b))
    if group:
        tasks.append((str(ens.path), var, axis, group))
    return tasks


def unreadable_members(ens: Ensemble, variables: Sequence[str], flags: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """The members flagged in ``flags`` whose data cannot be read: ``{variable: {why: member mask}}``.

    Every member chunk of each variable that holds a flagged member is read and decoded once, in tasks of
    about :data:`TASK_BYTES` on the active Dask scheduler (about 2 % of the evaluation's time). A chunk that
    cannot be decoded (truncated, garbled, unreadable file) marks its members; so does a non-finite value in
    a member at a valid point (a chunk file missing while its members are flagged complete reads as the fill
    value NaN; a masked variable's NaN where its ``valid_<v>`` is 0 are expected).
    Variables with nothing unreadable are left out.

    Parameters
    ----------
    ens
        The store.
    variables
        The field variables to check.
    flags
        Members to check (the complete ones).
    """
    import dask

    tasks = [t for v in variables for t in _scan_tasks(ens, v, flags)]
    found = dask.compute(*[dask.delayed(_scan_members, pure=False)(*t) for t in tasks]) if tasks else ()
    out: dict[str, dict[str, np.ndarray]] = {}
    for (_, var, _, _), bad in zip(tasks, found, strict=True):
        for a, b, why in bad:
            mask = out.setdefault(var, {}).setdefault(why, np.zeros(flags.size, dtype=bool))
            mask[a:b] |= flags[a:b]
    return {v: {w: m for w, m in d.items() if m.any()} for v, d in out.items() if any(m.any() for m in d.values())}


def members_text(mask: np.ndarray) -> str:
    """``members 24..31, 40..47`` (inclusive ranges) or ``member 5``: the members set in ``mask``."""
    found = runs(mask)
    text = ", ".join(f"{a}..{b - 1}" if b - a > 1 else f"{a}" for a, b in found)
    return f"member {text}" if len(found) == 1 and found[0][1] - found[0][0] == 1 else f"members {text}"


def _unreadable_line(ens: Ensemble, what: str, bad: dict[str, dict[str, np.ndarray]], verdict: str) -> str:
    """One line: which complete members of which variables cannot be read and why, ``verdict``, and the repair."""
    masks = [m for d in bad.values() for m in d.values()]
    union = np.logical_or.reduce(masks)
    parts = [f"{members_text(m)} of {v} ({why})" for v, d in bad.items() for why, m in d.items()]
    line = (f"{what} {ens.path}: {int(union.sum())} of its {int(ens.complete.sum())} complete members cannot be "
            f"read: {', '.join(parts)}; {verdict}")
    if ens.meta is None:
        return line + " (the store was not written by sciencegen-generate: repair or rewrite it)"
    return (line + "; to repair the store, rerun the same sciencegen-generate command with generate.verify=true "
            f"to regenerate {members_text(union)}")


def readable_members(ens: Ensemble, variables: Sequence[str], what: str
                     ) -> tuple[np.ndarray, dict[str, Any], str | None]:
    """The complete members whose data can be read, what is unreadable (for metrics.json), and the warning line.

    Parameters
    ----------
    ens
        The store (its ``complete`` flags are the members to check).
    variables
        The field variables to evaluate.
    what
        The config key naming the store in messages (``samples.path``, ``reference.source``).

    Returns
    -------
    keep, info, line
        The member mask to evaluate; ``{"unreadable": count, "unreadable_members": {variable: [[first, last],
        ...]}}``; the warning line (``None`` when everything can be read).

    Raises
    ------
    EvaluateError
        Fewer than 2 readable complete members are left.
    """
    bad = unreadable_members(ens, variables, ens.complete)
    if not bad:
        return ens.complete, {"unreadable": 0, "unreadable_members": {}}, None
    per_var = {v: np.logical_or.reduce(list(d.values())) for v, d in bad.items()}
    union = np.logical_or.reduce(list(per_var.values()))
    keep = ens.complete & ~union
    info = {"unreadable": int(union.sum()),
            "unreadable_members": {v: [[a, b - 1] for a, b in runs(m)] for v, m in per_var.items()}}
    left = int(keep.sum())
    if left < 2:
        raise EvaluateError(_unreadable_line(ens, what, bad, f"only {left} readable complete member(s) are left, "
                                             "the ensemble statistics need at least 2"))
    return keep, info, _unreadable_line(ens, what, bad, "they are excluded")
