"""The generated side of a conditional ensemble store: conditions, members, lead times, truths and inputs.

A conditional store (written by ``sciencegen-generate`` on a conditional dataset, docs/generate.md) has the dims
``condition``, ``member``, optionally ``lead_time``, then the field dims; the generated variables over
``(condition, member, [lead_time,] *field)``; ``truth_<var>`` over ``(condition, [lead_time,] *field)`` (NaN
where the truth is unknown); ``input_<name>`` over ``(condition, *field)`` (each per-sample conditioning field as
the model saw it, physical units) and ``input_static_<name>`` over the field dims; ``complete`` (and ``rounds``,
``nfe``) over ``(condition, member)``; and the root attribute ``sciencegen_conditioning`` (JSON: ``kinds``,
``inputs``, ``static``, ``state``, ``lead_times``, ``source``, ``holdout``).

:func:`open_conditional` reads what the scores need: which conditions can be evaluated (every member complete
and readable), the truths and inputs (small: one field per condition), and keeps the members lazy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..data.ensemble import completed_members
from .common import EvaluateError, first_line
from .samples import Ensemble

__all__ = ["CONDITIONING_ATTR", "CondStore", "is_conditional", "open_conditional"]

#: root attribute of a conditional ensemble store (JSON)
CONDITIONING_ATTR = "sciencegen_conditioning"


def is_conditional(ds: xr.Dataset) -> bool:
    """Whether an opened ensemble store is conditional (it has a ``condition`` dim)."""
    return "condition" in ds.dims


@dataclass
class CondStore:
    """A conditional ensemble store, ready to score.

    Attributes
    ----------
    path
        The store.
    ds
        The store opened lazily.
    conditioning
        The ``sciencegen_conditioning`` attribute (``{}`` when absent).
    variables
        The generated variables evaluated.
    field_dims
        The field dims.
    members
        Members per condition.
    leads
        The ``lead_time`` coordinate values (``[None]`` for a store without rollouts).
    complete
        ``(condition, member)`` completion flags.
    evaluated
        Per condition: every member complete and readable.
    unreadable
        Per condition: some complete member cannot be read (excluded).
    truth
        ``{variable: array (condition, lead, *field)}`` in physical units, NaN where unknown.
    inputs
        ``{input name: array (condition, *field)}`` (per-sample conditioning fields, physical units).
    statics
        ``{static name: array (*field)}``.
    periodic
        Per field dim: periodic or not.
    valid
        ``{variable: boolean over the field dims}`` of a masked variable (the store's ``valid_<v>``): its
        members and truths hold NaN where it is False, and the scores use the valid points only.
    """

    path: Path
    ds: xr.Dataset
    conditioning: dict[str, Any]
    variables: tuple[str, ...]
    field_dims: tuple[str, ...]
    members: int
    leads: list[int | None]
    complete: np.ndarray
    evaluated: np.ndarray
    unreadable: np.ndarray
    truth: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]
    statics: dict[str, np.ndarray]
    periodic: dict[str, bool] = field(default_factory=dict)
    valid: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def conditions(self) -> int:
        """Number of conditions in the store."""
        return int(self.ds.sizes["condition"])

    @property
    def field_shape(self) -> tuple[int, ...]:
        """Sizes of the field dims."""
        return tuple(int(self.ds.sizes[d]) for d in self.field_dims)

    def known(self, v: str, lead: int) -> np.ndarray:
        """Per condition: evaluated and with a finite truth of ``v`` at lead index ``lead``."""
        t = self.truth[v][:, lead]
        ok = np.isfinite(t)
        if v in self.valid:  # a masked variable's truth is NaN where it is invalid
            ok |= ~self.valid[v]
        return self.evaluated & ok.reshape(self.conditions, -1).all(axis=1)

    def forecast(self, v: str, lead: int, conds: np.ndarray) -> xr.DataArray:
        """The members of ``v`` at lead index ``lead`` for ``conds``: lazy ``(condition, member, *field)``."""
        da = self.ds[v]
        if "lead_time" in da.dims:
            da = da.isel(lead_time=lead)
        return da.isel(condition=conds).transpose("condition", "member", *self.field_dims).astype(np.float64)

    def truth_at(self, v: str, lead: int, conds: np.ndarray) -> xr.DataArray:
        """The truth of ``v`` at lead index ``lead`` for ``conds``: ``(condition, *field)`` in memory."""
        return xr.DataArray(self.truth[v][conds, lead], dims=("condition", *self.field_dims))


def _conditioning(ds: xr.Dataset, path: Path) -> dict[str, Any]:
    text = ds.attrs.get(CONDITIONING_ATTR)
    if not text:
        return {}
    try:
        meta = json.loads(text) if isinstance(text, str) else dict(text)
    except (TypeError, ValueError):
        raise EvaluateError(f"samples.path {path} is corrupt: its {CONDITIONING_ATTR} attribute is not valid JSON; "
                            "rerun the sciencegen-generate command that wrote it") from None
    return meta if isinstance(meta, dict) else {}


def _read_condition(path: str, var: str, c: int) -> str | None:
    """Why condition ``c`` of ``var`` cannot be used (a chunk that cannot be decoded, non-finite values), or None."""
    import zarr

    from .readable import valid_of

    try:
        x = np.asarray(zarr.open_array(path, path=var, mode="r")[c])
    except Exception as exc:  # a truncated or garbled chunk: any codec (or I/O) error
        return f"chunk cannot be decoded: {first_line(exc)}"
    ok = np.isfinite(x)
    valid = valid_of(path, var)
    if valid is not None:  # NaN where the variable is invalid, by design
        ok |= ~np.broadcast_to(valid, x.shape)
    return None if ok.all() else "missing chunk or non-finite values"


def _readable(path: Path, variables: Sequence[str], full: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Per condition: whether every member of every variable can be read (one Dask task per condition and variable)."""
    import dask

    todo = [(v, int(c)) for v in variables for c in np.flatnonzero(full)]
    found = dask.compute(*[dask.delayed(_read_condition, pure=False)(str(path), v, c) for v, c in todo])
    bad = np.zeros(full.size, dtype=bool)
    why: list[str] = []
    for (v, c), w in zip(todo, found, strict=True):
        if w is not None:
            bad[c] = True
            why.append(f"condition {c} of {v} ({w})")
    return bad, why


def _field_dims(ds: xr.Dataset, v: str) -> tuple[str, ...]:
    return tuple(str(d) for d in ds[v].dims if d not in ("condition", "member", "lead_time"))


def _truth(ds: xr.Dataset, v: str, field_dims: tuple[str, ...], nlead: int) -> np.ndarray:
    """``truth_<v>`` as ``(condition, lead, *field)`` float64 (all NaN when the store has none)."""
    shape = (int(ds.sizes["condition"]), nlead, *(int(ds.sizes[d]) for d in field_dims))
    name = f"truth_{v}"
    if name not in ds.data_vars:
        return np.full(shape, np.nan)
    da = ds[name]
    if "lead_time" not in da.dims:
        da = da.expand_dims(lead_time=nlead, axis=1)
    return np.asarray(da.transpose("condition", "lead_time", *field_dims).values, dtype=np.float64).reshape(shape)


def _inputs(ds: xr.Dataset, cond: Mapping[str, Any], field_dims: tuple[str, ...]
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The per-sample inputs (named as in ``conditioning["inputs"]``) and static fields, physical units."""
    names = list(cond.get("inputs") or {}) or [str(v) for v in ds.data_vars if str(v).startswith("input_")
                                               and "condition" in ds[v].dims]
    inputs = {n: np.asarray(ds[n].transpose("condition", *field_dims).values, dtype=np.float64)
              for n in names if n in ds.data_vars}
    statics = {}
    for n in cond.get("static") or {}:
        name = f"input_{n}"
        if name in ds.data_vars:
            statics[n] = np.asarray(ds[name].transpose(*field_dims).values, dtype=np.float64)
    return inputs, statics


def open_conditional(ens: Ensemble, want: Any, periodic: Mapping[str, bool]) -> tuple[CondStore, list[str]]:
    """The conditional store of ``ens`` ready to score, and the notes for the report.

    Parameters
    ----------
    ens
        The opened store (:func:`~sciencegen.evaluation.samples.open_ensemble`).
    want
        ``samples.variables`` (``None``: every generated variable).
    periodic
        Known periodicity of the field dims (missing dims: not periodic).

    Raises
    ------
    EvaluateError
        A variable the store lacks, no condition with all members complete and readable.
    """
    ds, path = ens.ds, ens.path
    variables = list(ens.variables) if want is None else ([want] if isinstance(want, str) else [str(v) for v in want])
    missing = [v for v in variables if v not in ens.variables]
    if missing or not variables:
        raise EvaluateError(f"samples.path {path} has no variable {', '.join(map(repr, missing)) or '(none given)'} "
                            f"(it has {', '.join(ens.variables)}); choose samples.variables")
    fd = _field_dims(ds, variables[0])
    nc, m = int(ds.sizes["condition"]), int(ds.sizes["member"])
    complete = ens.complete if ens.complete.shape == (nc, m) else completed_members(path, (nc, m))
    full = complete.all(axis=1) if m else np.zeros(nc, dtype=bool)
    notes = []
    if not full.any():
        raise EvaluateError(f"samples.path {path}: none of its {nc} conditions has all its {m} members complete "
                            "(still being written? rerun its sciencegen-generate command to finish it)")
    if m < 2:
        raise EvaluateError(f"samples.path {path}: {m} member per condition; the ensemble scores need at least 2")
    if not full.all():
        notes.append(f"{int((~full).sum())} of {nc} conditions have incomplete members: excluded")
    bad, why = _readable(path, variables, full)
    if bad.any():
        notes.append(f"{int(bad.sum())} complete conditions cannot be read: {', '.join(why[:4])}"
                     + (" ..." if len(why) > 4 else "") + "; they are excluded (rerun the sciencegen-generate "
                     "command with generate.verify=true to repair them)")
    evaluated = full & ~bad
    if not evaluated.any():
        raise EvaluateError(f"samples.path {path}: no condition can be read ({'; '.join(why[:2])})")
    leads = [int(x) for x in ds["lead_time"].values] if "lead_time" in ds.dims else [None]
    cond = _conditioning(ds, path)
    inputs, statics = _inputs(ds, cond, fd)
    truth = {v: _truth(ds, v, fd, len(leads)) for v in variables}
    per = {d: bool(periodic.get(d, False)) for d in fd}
    valid = {v: np.asarray(ds[f"valid_{v}"].transpose(*fd).values) != 0 for v in variables if f"valid_{v}" in ds}
    return CondStore(path, ds, cond, tuple(variables), fd, m, leads, complete, evaluated, bad, truth, inputs,
                     statics, per, valid), notes
