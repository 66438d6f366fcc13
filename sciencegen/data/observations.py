"""A user's observations (``observe.path`` of ``sciencegen-generate``) read into plain arrays, and the store's record.

Two forms of file (docs/generate.md, "Observations (data assimilation)"):

* **gridded**: a netCDF file or Zarr store on the dataset's field dims (same sizes and coordinates), one variable
  per observed variable named like it, NaN where unobserved; every combination of its other dims is one case
  (C order, those dims' coordinates kept); an optional variable ``noise`` (broadcast against the values) gives
  the noise standard deviation per point;
* **points**: a CSV table, or a netCDF file / Zarr store with an ``observation`` dim, with one column per field dim
  (the position in the dataset's coordinate units; grid-index units for a dim without a coordinate), one column
  per observed variable (its value; NaN or empty: that variable is not observed there), optionally ``noise`` (the
  standard deviation of every value of the row) and ``case`` (which case the row belongs to; default one case).

Positions become fractional grid indices here (a periodic dim with even spacing wraps; another must lie within
its coordinate's range); the observation operators (multilinear interpolation, masks) are built by
:mod:`sciencegen.generation.observe`. Every problem is one :class:`~sciencegen.data.fields.DataError` line naming
the file. :data:`OBSERVATION_ATTR` is the root attribute that marks an observation-conditioned ensemble store
(:func:`read_observation_attr`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .fields import DataError, open_user_data

__all__ = ["OBSERVATION_ATTR", "ObservationFile", "PointCase", "grid_position", "read_observation_attr",
           "read_observation_file"]

#: root attribute of an observation-conditioned ensemble store: JSON describing its observations
OBSERVATION_ATTR = "sciencegen_observations"


def read_observation_attr(path: str | os.PathLike) -> dict[str, Any] | None:
    """The :data:`OBSERVATION_ATTR` description of an ensemble store (``None``: no observations, or not a store)."""
    import zarr

    try:
        text = zarr.open_group(str(path), mode="r").attrs.get(OBSERVATION_ATTR)
        return json.loads(text) if text else None
    except Exception:
        return None


@dataclass
class PointCase:
    """The point observations of one case.

    Attributes
    ----------
    position
        ``[m, ndim]`` fractional grid indices along the field dims.
    channel
        ``[m]`` the generated variable each observes (index into the variables asked for).
    value
        ``[m]`` observed values (physical units).
    noise
        ``[m]`` noise standard deviations from the file (NaN where the file gives none).
    """

    position: np.ndarray
    channel: np.ndarray
    value: np.ndarray
    noise: np.ndarray


@dataclass
class ObservationFile:
    """A user's observations as arrays.

    Attributes
    ----------
    path
        The file (resolved).
    form
        ``"gridded"`` or ``"points"``.
    variables
        The observed variables (generated variables present in the file, or those asked for).
    coords
        The cases' coordinates ``{name: (values along the cases, attrs)}`` (empty: one case without one).
    values, noise
        Gridded: ``[cases, V, *field]`` float64 over all generated variables, NaN where unobserved; the file's
        noise std of the same shape (NaN where it gives none), or ``None``.
    points
        Points: one :class:`PointCase` per case.
    digest
        SHA-256 (16 hex) of the observations read: part of the store's identity.
    """

    path: str
    form: str
    variables: tuple[str, ...]
    coords: dict[str, tuple[np.ndarray, dict]]
    values: np.ndarray | None = None
    noise: np.ndarray | None = None
    points: list[PointCase] = field(default_factory=list)
    digest: str = ""

    @property
    def cases(self) -> int:
        """Number of cases."""
        return len(self.points) if self.form == "points" else int(self.values.shape[0])

    @property
    def has_noise(self) -> bool:
        """Whether the file gives noise levels."""
        if self.form == "points":
            return any(np.isfinite(p.noise).any() for p in self.points)
        return self.noise is not None

    def counts(self) -> list[int]:
        """Observations per case."""
        if self.form == "points":
            return [int(p.value.shape[0]) for p in self.points]
        return [int(np.isfinite(v).sum()) for v in self.values]


def grid_position(values: np.ndarray, coord: np.ndarray | None, n: int, periodic: bool, label: str) -> np.ndarray:
    """Coordinate values along one field dim as fractional grid indices.

    Parameters
    ----------
    values
        Positions in the coordinate's units (grid-index units when ``coord`` is ``None``).
    coord
        The dataset's coordinate along the dim (``None``: none).
    n
        Grid points along the dim.
    periodic
        Whether the dim wraps around: with evenly spaced coordinates any position is allowed (taken modulo the
        period); otherwise positions must lie within the coordinate's range.
    label
        Names the file and dim in errors.

    Raises
    ------
    DataError
        A position outside the grid of a non-periodic dim.
    """
    v = np.asarray(values, dtype=np.float64)
    if coord is None:
        c = np.arange(n, dtype=np.float64)
    else:
        c = np.asarray(coord, dtype=np.float64)
    if n == 1:
        return np.zeros_like(v)
    step = np.diff(c)
    if periodic and np.allclose(step, step[0], rtol=1e-6, atol=0):
        return (v - c[0]) / step[0]
    asc = c if step[0] > 0 else c[::-1]
    bad = (v < asc[0]) | (v > asc[-1])
    if bad.any():
        raise DataError(f"{label}: position {v[bad][0]:g} lies outside the grid [{asc[0]:g}, {asc[-1]:g}] "
                        "(a non-periodic dim)")
    idx = np.interp(v, asc, np.arange(n, dtype=np.float64))
    return idx if step[0] > 0 else (n - 1) - idx


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
        h.update(str(a.shape).encode())
    return h.hexdigest()[:16]


def _observed(have: Sequence[str], asked: Sequence[str] | None, generated: Sequence[str], label: str
              ) -> tuple[str, ...]:
    """The observed variables: ``asked`` (each must be in the file) or the generated ones the file has."""
    if asked:
        missing = [v for v in asked if v not in have]
        if missing:
            raise DataError(f"{label} has no variable {missing[0]!r} (observe.variables); it has {list(have)}")
        return tuple(v for v in generated if v in asked)
    found = tuple(v for v in generated if v in have)
    if not found:
        raise DataError(f"{label} holds none of the generated variables {list(generated)}; it has {list(have)}")
    return found


def read_observation_file(path: str | os.PathLike, *, generated: Sequence[str], field_dims: Sequence[str],
                          field_shape: Sequence[int], coords: Mapping[str, np.ndarray | None],
                          periodic: Mapping[str, bool], variables: Sequence[str] | None = None) -> ObservationFile:
    """Read ``observe.path``: a gridded field (NaN = unobserved) or a table of points.

    Parameters
    ----------
    path
        A CSV table, a netCDF file or a Zarr store.
    generated
        The model's variables, in channel order.
    field_dims, field_shape
        The dataset's field dims and sizes.
    coords
        The dataset's coordinate along each field dim (``None``: none).
    periodic
        Whether each field dim is periodic.
    variables
        ``observe.variables`` (default: every generated variable the file holds).

    Raises
    ------
    DataError
        A missing or unreadable file, no observed variable, another grid, a bad position or noise (one line).
    """
    p = Path(str(path)).expanduser()
    label = f"observe.path {p}"
    if not p.exists():
        raise DataError(f"{label}: no such file or directory")
    grid = dict(zip(field_dims, (int(n) for n in field_shape), strict=True))
    if p.suffix.lower() == ".csv":
        import pandas as pd

        try:
            table = pd.read_csv(p)
        except Exception as exc:
            raise DataError(f"{label}: cannot read as CSV: {str(exc).splitlines()[0]}") from None
        return _points(table, p, label, generated, grid, coords, periodic, variables)
    ds, _ = open_user_data(str(p), "zarr" if p.is_dir() else "netcdf")
    ds = ds.load()
    if "observation" in ds.dims:
        cols = [str(v) for v in (*ds.data_vars, *ds.coords) if ds[v].dims == ("observation",)]
        return _points(ds[cols].to_dataframe().reset_index(drop=True), p, label, generated, grid, coords, periodic,
                       variables)
    return _gridded(ds, p, label, generated, grid, coords, variables)


def _gridded(ds: xr.Dataset, p: Path, label: str, generated: Sequence[str], grid: Mapping[str, int],
             coords: Mapping[str, np.ndarray | None], asked: Sequence[str] | None) -> ObservationFile:
    """A gridded observation file: checked against the grid, one case per point of its other dims."""
    sizes = {d: int(ds.sizes[d]) for d in grid if d in ds.dims}
    if sizes != dict(grid):
        raise DataError(f"{label} has dims {dict(ds.sizes)}, but the dataset's field grid is {dict(grid)} "
                        "(a table of points needs an 'observation' dim or a .csv name)")
    for d, ref in coords.items():
        if ref is not None and d in ds.coords and not _same_coord(np.asarray(ds[d].values), np.asarray(ref)):
            raise DataError(f"{label}: its coordinate {d} differs from the dataset's "
                            f"({_span(np.asarray(ds[d].values))} vs {_span(np.asarray(ref))})")
    observed = _observed([str(v) for v in ds.data_vars if v != "noise"], asked, generated, label)
    names = [*observed, *(["noise"] if "noise" in ds.data_vars else [])]
    parts = xr.broadcast(*[ds[v] for v in names])
    sample = tuple(d for d in parts[0].dims if d not in grid)
    arrays = [np.asarray(a.transpose(*sample, *grid).values, dtype=np.float64) for a in parts]
    count = int(np.prod([parts[0].sizes[d] for d in sample])) if sample else 1
    arrays = [a.reshape(count, *grid.values()) for a in arrays]
    values = np.full((count, len(generated), *grid.values()), np.nan)
    for v, a in zip(observed, arrays, strict=False):
        if np.isinf(a).any():
            raise DataError(f"{label}: {v} holds infinite values (NaN marks unobserved points)")
        values[:, list(generated).index(v)] = a
    noise = None
    if "noise" in names:
        noise = np.where(np.isfinite(values), arrays[-1][:, None], np.nan)
        if (noise <= 0).any():
            raise DataError(f"{label}: noise must be > 0 at every observed point")
    counts = np.isfinite(values).reshape(count, -1).sum(1)
    if (counts == 0).any():
        raise DataError(f"{label}: case {int(np.argmin(counts))} has no observation (every value NaN)")
    idx = np.indices([parts[0].sizes[d] for d in sample]).reshape(len(sample), -1) if sample else np.zeros((0, 1))
    case_coords = {d: ((np.asarray(ds[d].values) if d in ds.coords else np.arange(parts[0].sizes[d]))[idx[k]],
                       dict(ds[d].attrs) if d in ds.coords else {}) for k, d in enumerate(sample)}
    return ObservationFile(str(p.resolve()), "gridded", observed, case_coords, values, noise,
                           digest=_digest(values, noise if noise is not None else np.zeros(0)))


def _same_coord(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    if np.issubdtype(a.dtype, np.number) and np.issubdtype(b.dtype, np.number):
        return bool(np.allclose(a, b, rtol=1e-6, atol=1e-9))
    return bool((a == b).all())


def _span(a: np.ndarray) -> str:
    return f"{a[0]}..{a[-1]}" if a.size else "empty"


def _points(table: Any, p: Path, label: str, generated: Sequence[str], grid: Mapping[str, int],
            coords: Mapping[str, np.ndarray | None], periodic: Mapping[str, bool],
            asked: Sequence[str] | None) -> ObservationFile:
    """A table of point observations: positions to grid indices, one :class:`PointCase` per ``case``."""
    columns = [str(c) for c in table.columns]
    missing = [d for d in grid if d not in columns]
    if missing:
        raise DataError(f"{label}: a table of points needs a column per field dim {list(grid)}; missing "
                        f"{missing} (it has {columns})")
    observed = _observed([c for c in columns if c not in (*grid, "noise", "case")], asked, generated, label)
    if not len(table):
        raise DataError(f"{label}: the table has no rows")
    pos = []
    for d, n in grid.items():
        v = np.asarray(table[d], dtype=np.float64)
        if not np.isfinite(v).all():
            raise DataError(f"{label}: column {d} has missing or non-finite positions")
        pos.append(grid_position(v, coords.get(d), n, bool(periodic.get(d, False)), f"{label}, column {d}"))
    position = np.stack(pos, axis=1)
    noise = np.asarray(table["noise"], dtype=np.float64) if "noise" in columns else np.full(len(table), np.nan)
    if (noise[np.isfinite(noise)] <= 0).any():
        raise DataError(f"{label}: column noise must be > 0 where given")
    case = np.asarray(table["case"]) if "case" in columns else np.zeros(len(table), dtype=np.int64)
    ids = np.unique(case)
    points = []
    for cid in ids:
        rows = case == cid
        parts = []
        for v in observed:
            val = np.asarray(table[v], dtype=np.float64)
            if np.isinf(val).any():
                raise DataError(f"{label}: column {v} holds infinite values (NaN or empty: not observed)")
            keep = rows & np.isfinite(val)
            parts.append((position[keep], np.full(int(keep.sum()), list(generated).index(v)), val[keep], noise[keep]))
        made = PointCase(*(np.concatenate([q[k] for q in parts]) for k in range(4)))
        if not made.value.size:
            raise DataError(f"{label}: case {cid} has no observed value")
        points.append(made)
    flat = [np.concatenate([getattr(q, k).reshape(-1) for q in points]) for k in ("position", "channel", "value",
                                                                                    "noise")]
    return ObservationFile(str(p.resolve()), "points", observed, {"case": (ids, {})}, points=points,
                           digest=_digest(*flat, np.asarray([len(q.value) for q in points])))
