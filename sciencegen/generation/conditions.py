"""The conditions of a conditional ensemble: its cases, from the held-out data or a user's file, and what each holds.

A conditional ensemble (``sciencegen-generate`` on a dataset with ``conditioning``, docs/generate.md,
"Conditional ensembles") draws ``generate.members`` members for each of its conditions. :func:`heldout_cases`
takes the cases from the held-out split of the prepared dataset (the truth is known); :func:`file_cases` from a
user's netCDF file or Zarr store (``condition.path``, ``condition.select``; every case in it, truth unknown), its
inputs built by :func:`sciencegen.data.conditioning.build_inputs` with the dataset's kinds. A :class:`Cases`
gives each condition's inputs as the model sees them (:meth:`Cases.condition`) and the arrays the store records
for it (:meth:`Cases.case_arrays`: ``input_*``, ``truth_*``), and describes the store's condition axis
(:meth:`Cases.axis`) and its identity (:meth:`Cases.identity`).

Held-out cases are taken in a fixed low-discrepancy order of the held-out samples (van der Corput, base 2): the
first ``C`` are spread evenly over them and condition ``c`` is the same case whatever ``C`` is, so member ``i``
of condition ``c`` depends only on ``(seed, c, i)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..data.conditioning import ConditionLayout, build_inputs, needed_variables, split_samples
from ..data.ensemble import ConditionAxis, is_zarr
from ..data.fields import DataError, FieldSpec, apply_selection, open_user_data
from .plan import GenerateError

__all__ = ["Cases", "check_rollout", "default_holdout", "evenly_spread", "file_cases", "heldout_cases", "layout_dict",
           "lead_attrs", "plain_select"]


def layout_dict(layout: ConditionLayout) -> dict[str, Any]:
    """The conditioning of a prepared store as plain JSON (``kinds``, ``inputs``, ``static``, ``state``)."""
    return {"kinds": layout.kinds, "inputs": layout.inputs, "static": layout.static, "state": layout.state}


def check_rollout(layout: ConditionLayout, lead_times: int | None, label: str) -> None:
    """Refuse (one line) rollouts the conditioning cannot feed: no ``state`` pairing, or inputs no target feeds.

    Raises
    ------
    GenerateError
        ``lead_times`` is set and not every per-sample input is fed by a generated variable.
    """
    if lead_times is None:
        return
    state = layout.state or {}
    feeds = state.get("feeds") or {}
    unfed = [n for n in layout.inputs if n not in feeds]
    if not state or unfed or not feeds:
        why = ("it has no state conditioning (no time pairing)" if not state else
               f"its inputs {unfed or list(layout.inputs)} are not fed by a generated variable")
        raise GenerateError(f"generate.lead_times={lead_times}: {label} cannot be rolled out, {why}; a rollout "
                            "needs dataset.conditioning with only state inputs (static fields may stay)")


def evenly_spread(n: int, count: int) -> np.ndarray:
    """``count`` distinct positions in ``0..n-1`` in van der Corput order: every prefix is spread evenly.

    Position ``k`` is the ``k``-th new value of ``floor(vdc(j) n)``, ``j = 0, 1, ...`` (``vdc``: the base-2
    radical inverse), so the positions of ``count`` are the first ``count`` of those of any larger count.
    """
    if count > n:
        raise ValueError(f"{count} positions out of {n}")
    bits = max(1, (n - 1).bit_length())  # 2^bits >= n: floor(j n / 2^bits), j < 2^bits, hits every position
    seen: dict[int, None] = {}
    for j in range(1 << bits):
        if len(seen) == count:
            break
        seen.setdefault((int(format(j, f"0{bits}b")[::-1], 2) * n) >> bits, None)
    return np.asarray(list(seen), dtype=np.int64)


@dataclass
class Cases:
    """The conditions of an ensemble: where they come from and what each holds.

    Attributes
    ----------
    layout
        The prepared dataset's condition channels (:func:`sciencegen.data.conditioning.condition_layout`).
    source
        ``"heldout"`` or the condition file (resolved path).
    select, holdout
        ``condition.select`` (a file) and the held-out fraction (held-out cases).
    lead_times
        Rollout lead times (``None``: one step).
    inputs
        ``input_*`` over the source's sample dims and the field dims, physical units (lazy).
    rows
        Per condition, its index over the sample dims of :attr:`inputs` (``isel``).
    coords
        The source's sample coordinates along ``condition``: ``{name: (values, attrs)}``.
    truth
        The target variables over the prepared store's sample and field dims (``None``: truth unknown).
    truth_rows
        Per condition, per lead time (one without rollouts), the ``isel`` of its truth (``None``: past the end).
    field_dims
        The field dims.
    """

    layout: ConditionLayout
    source: str
    select: Any
    holdout: float | None
    lead_times: int | None
    inputs: xr.Dataset
    rows: list[dict[str, int]]
    coords: dict[str, tuple[np.ndarray, dict]]
    field_dims: tuple[str, ...]
    truth: xr.Dataset | None = None
    truth_rows: list[list[dict[str, int] | None]] = field(default_factory=list)
    var_attrs: dict[str, dict] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """Number of conditions."""
        return len(self.rows)

    def physical_inputs(self, c: int) -> dict[str, np.ndarray]:
        """Condition ``c``'s per-sample inputs, physical units (float64 on the field dims), in channel order."""
        sel = self.inputs[list(self.layout.inputs)].isel(self.rows[c]).load()
        return {n: np.asarray(sel[n].transpose(*self.field_dims).values, dtype=np.float64) for n in self.layout.inputs}

    def condition(self, c: int) -> np.ndarray:
        """``[C_cond, *field]`` physical: condition ``c``'s inputs, then the static fields."""
        static = np.asarray(self.layout.static_values, dtype=np.float64)
        parts = list(self.physical_inputs(c).values())
        return np.concatenate([np.stack(parts) if parts else np.zeros((0, *static.shape[1:])), static])

    def case_arrays(self, c: int) -> dict[str, np.ndarray]:
        """What the store records for condition ``c``: ``input_*`` and ``truth_*`` (float32, NaN past the end)."""
        out = {n: v.astype(np.float32) for n, v in self.physical_inputs(c).items()}
        if self.truth is None:
            return out
        leads = self.truth_rows[c]
        for v in self.layout.variables:
            shape = tuple(int(self.truth.sizes[d]) for d in self.field_dims)
            arr = np.full((len(leads), *shape), np.nan, dtype=np.float32)
            for k, row in enumerate(leads):
                if row is not None:
                    arr[k] = np.asarray(self.truth[v].isel(row).transpose(*self.field_dims).values, dtype=np.float32)
            out[f"truth_{v}"] = arr if self.lead_times else arr[0]
        return out

    def description(self) -> dict[str, Any]:
        """The store's ``sciencegen_conditioning`` attribute: the conditioning plus lead times, source, holdout."""
        return {**layout_dict(self.layout), "lead_times": self.lead_times, "source": self.source,
                "select": self.select, "holdout": self.holdout}

    def identity(self) -> dict[str, Any]:
        """What of the conditions decides the members (part of the store's identity)."""
        return {"layout": layout_dict(self.layout), "source": self.source, "select": self.select,
                "holdout": self.holdout, "conditions": self.count, "lead_times": self.lead_times}

    def axis(self, lead_attrs: Mapping[str, Any] | None = None) -> ConditionAxis:
        """The store's condition axis (:class:`sciencegen.data.ensemble.ConditionAxis`)."""
        inputs = {n: {**self.var_attrs.get(n, {}), "long_name": f"condition input {n} as the model saw it",
                      "conditioning": _json(info)} for n, info in self.layout.inputs.items()}
        statics = {f"input_{n}": (self.layout.static_values[k], {"long_name": f"static condition input {n}",
                                                                 "conditioning": _json(info)})
                   for k, (n, info) in enumerate(self.layout.static.items())}
        truth = ({f"truth_{v}": {**self.var_attrs.get(v, {}), "long_name": f"the true {v} of the condition"}
                  for v in self.layout.variables} if self.truth is not None else {})
        return ConditionAxis(self.count, dict(self.coords), inputs, statics, truth, self.lead_times,
                             dict(lead_attrs or {}), self.description())


def _json(info: Mapping[str, Any]) -> str:
    import json

    return json.dumps(dict(info), sort_keys=True, default=str)


def _sample_coords(ds: xr.Dataset, dims: tuple[str, ...], rows: list[dict[str, int]]) -> dict[str, tuple]:
    """The sample coordinates of each row: ``{dim: (values along condition, attrs)}``."""
    out: dict[str, tuple] = {}
    for d in dims:
        values = np.asarray(ds[d].values) if d in ds.coords else np.arange(int(ds.sizes[d]))
        out[d] = (values[[r[d] for r in rows]], dict(ds[d].attrs) if d in ds.coords else {})
    return out


def heldout_cases(prepared: Any, layout: ConditionLayout, holdout: float, conditions: int,
                  lead_times: int | None) -> Cases:
    """The first ``conditions`` held-out samples of the prepared dataset (:func:`evenly_spread` order), with truth.

    Parameters
    ----------
    prepared
        The prepared dataset (:class:`~sciencegen.data.store.PreparedData`).
    layout
        Its condition channels.
    holdout
        The held-out fraction of its chunks (the training run's ``train.holdout``).
    conditions
        How many cases.
    lead_times
        Rollout lead times: truth at lead ``l`` is the target ``(l - 1) * lag`` steps later along the state dim
        in the same trajectory (``None`` past its end).

    Raises
    ------
    GenerateError
        No held-out samples, or fewer than ``conditions``.
    """
    path, spec, ds = Path(prepared.path), prepared.spec, prepared.ds
    try:
        held = split_samples(path, "validation", holdout)
    except DataError as exc:
        raise GenerateError(f"held-out conditions of {path} (holdout {holdout}): {exc}") from None
    if conditions > len(held):
        raise GenerateError(f"generate.conditions={conditions}, but the held-out split of {path} (holdout "
                            f"{holdout}) has {len(held)} samples: lower generate.conditions")
    sizes = tuple(int(ds.sizes[d]) for d in spec.sample_dims)
    picked = held[evenly_spread(len(held), conditions)]
    rows = [dict(zip(spec.sample_dims, map(int, np.unravel_index(s, sizes)), strict=True)) for s in picked]
    lag, dim = ((layout.state or {}).get("lag", 1), (layout.state or {}).get("dim"))
    truth_rows = []
    for r in rows:
        leads = []
        for k in range(lead_times or 1):
            later = {**r, dim: r[dim] + k * lag} if dim else r
            leads.append(later if not dim or later[dim] < int(ds.sizes[dim]) else None)
        truth_rows.append(leads)
    attrs = {v: _plain_attrs(ds[v].attrs) for v in [*layout.variables, *layout.inputs]}
    return Cases(layout, "heldout", None, float(holdout), lead_times, ds, rows,
                 _sample_coords(ds, tuple(spec.sample_dims), rows), tuple(spec.field_dims),
                 ds[list(layout.variables)], truth_rows, attrs)


def _plain_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: a for k, a in attrs.items() if isinstance(a, (str, int, float))}


def file_cases(path: Any, select: Mapping[str, Any] | None, layout: ConditionLayout, spec: FieldSpec,
               field_shape: tuple[int, ...], lead_times: int | None) -> Cases:
    """Every case of a user's condition file (netCDF or Zarr, after ``select``); its inputs built with the kinds.

    Parameters
    ----------
    path, select
        ``condition.path`` and ``condition.select`` (a label selection as ``dataset.select``; a single value
        keeps its dim, so the case keeps its coordinate).
    layout
        The prepared dataset's condition channels (its kinds build the inputs).
    spec, field_shape
        The model's targets (variables, field dims, periodicity) and field sizes.
    lead_times
        Rollout lead times.

    Raises
    ------
    GenerateError
        The file cannot be read, lacks a variable or a field dim, or has another grid (one line naming the file,
        what it has and what the model needs).
    """
    p = Path(str(path)).expanduser()
    label = f"condition.path {p}"
    try:
        ds, _ = open_user_data(str(p), "zarr" if is_zarr(p) else "netcdf")
        ds = apply_selection(ds, dict(select) if select else None, label)
    except DataError as exc:
        raise GenerateError(str(exc)) from None
    for d in (select or {}):  # a single value selected: keep its dim (one case with its coordinate)
        if d not in ds.dims and d in ds.coords:
            ds = ds.expand_dims(d)
    grid = dict(zip(spec.field_dims, field_shape, strict=True))
    missing = [d for d in spec.field_dims if d not in ds.dims]
    if missing:
        raise GenerateError(f"{label} has dims {dict(ds.sizes)}, but the model needs the field dims {grid}")
    read = [v for v in (*layout.variables, *needed_variables(layout.kinds)) if v in ds.data_vars]
    sample_dims = tuple(dict.fromkeys(d for v in read for d in ds[v].dims if d not in spec.field_dims)) or ("case",)
    if sample_dims == ("case",):
        ds = ds.expand_dims("case")
    fspec = FieldSpec(tuple(layout.variables), sample_dims, tuple(spec.field_dims), dict(spec.periodic))
    try:
        made = build_inputs(layout.kinds, ds, fspec, label=label, condition=True, grid=grid)
    except DataError as exc:
        raise GenerateError(str(exc)) from None
    inputs = xr.Dataset(made.inputs)
    _check_file_inputs(inputs, layout, grid, label)
    dims = tuple(d for d in sample_dims if d in inputs.dims)
    shape = [int(inputs.sizes[d]) for d in dims]
    rows = [dict(zip(dims, map(int, idx), strict=True)) for idx in np.ndindex(*shape)]
    attrs = {n: _plain_attrs(inputs[n].attrs) for n in inputs.data_vars}
    return Cases(layout, str(p.resolve()), plain_select(select), None, lead_times, inputs, rows,
                 _sample_coords(ds, dims, rows), tuple(spec.field_dims), None, [], attrs)


def plain_select(select: Any) -> Any:
    """``condition.select`` as JSON-able plain values (for the identity)."""
    import json

    return json.loads(json.dumps(dict(select), default=str)) if select else None


def _check_file_inputs(inputs: xr.Dataset, layout: ConditionLayout, grid: Mapping[str, int], label: str) -> None:
    """The file's inputs are the model's (names) on the model's grid."""
    have, need = list(inputs.data_vars), list(layout.inputs)
    if sorted(map(str, have)) != sorted(need):
        raise GenerateError(f"{label} gives the inputs {have}, but the model needs {need}")
    for n in need:
        sizes = {d: int(inputs[n].sizes[d]) for d in grid}
        if sizes != dict(grid):
            raise GenerateError(f"{label}: {n} has the grid {sizes}, but the model needs {dict(grid)}")


def lead_attrs(ds: xr.Dataset, state: Mapping[str, Any] | None) -> dict[str, Any]:
    """Attributes of the ``lead_time`` coordinate: ``units`` (``steps of DIM``), ``lag``, and ``step`` (one lead
    time in the state dim's own coordinate units, where the coordinate is evenly spaced)."""
    state = state or {}
    dim, lag = state.get("dim"), int(state.get("lag", 1))
    out: dict[str, Any] = {"long_name": "forecast lead time (rollout step)", "units": f"steps of {dim}", "lag": lag}
    if dim and dim in ds.coords and int(ds.sizes[dim]) > 1:
        values = np.asarray(ds[dim].values)
        steps = np.diff(values)
        if (steps == steps[0]).all():
            units = ds[dim].attrs.get("units")
            step = steps[0] * lag
            out["step"] = (str(pd.Timedelta(step)) if np.issubdtype(steps.dtype, np.timedelta64)
                           else f"{step}" + (f" {units}" if units else ""))
    return out


def default_holdout() -> float:
    """``train.holdout`` of the shipped training config (the held-out fraction when no training run says)."""
    from omegaconf import OmegaConf

    from ..config import config_dir

    return float(OmegaConf.load(config_dir() / "train" / "default.yaml").get("holdout", 0.1))
