"""CF metadata kept from the input: scalar coordinates, attributes minus the stale ones, units never invented.

What a prepared store (:func:`~sciencegen.data.store.write_prepared`) and an ensemble store
(:func:`~sciencegen.data.ensemble.template`) keep of the user's file:

* **scalar coordinates** (a ``level = 500 hPa`` or ``air_pressure = 200 hPa`` of the file, or one left by
  ``dataset.select``) with their attributes: :func:`scalar_coords`, :func:`field_coords`;
* **CF attributes** of the variables and coordinates, minus those that would be false after us
  (:func:`clean_attrs`): the input's value ranges (:data:`RANGE_ATTRS`: stale once values are generated),
  packing and fill attributes (:data:`PACKING_ATTRS`: the store has its own encoding), and references to
  variables that are not kept (:data:`REFERENCE_ATTRS`, e.g. ``bounds = "lat_bnds"`` once ``lat_bnds`` is
  dropped);
* **units**: kept as they are; a variable without a ``units`` attribute keeps none (never ``"1"``), and
  displays say so (:func:`units_label`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["PACKING_ATTRS", "RANGE_ATTRS", "REFERENCE_ATTRS", "UNKNOWN_UNITS", "clean_attrs", "clean_dataset",
           "clean_template", "field_coords", "scalar_coords", "units_label", "variable_attrs"]

#: value ranges of the input: stale after normalisation, float32 conversion and generation
RANGE_ATTRS = ("actual_range", "valid_range", "valid_min", "valid_max")
#: packing and fill attributes of the input file (the stores have their own encoding)
PACKING_ATTRS = ("_FillValue", "missing_value", "scale_factor", "add_offset", "_Unsigned", "least_significant_digit")
#: attributes naming other variables of the file (CF 1.10): dropped when a named variable is not kept
REFERENCE_ATTRS = ("bounds", "climatology", "ancillary_variables", "grid_mapping", "cell_measures",
                   "formula_terms", "coordinates")
#: what a display says for a variable without a ``units`` attribute
UNKNOWN_UNITS = "units unknown"


def _named(attr: str, value: Any) -> list[str]:
    """The variable names an attribute of :data:`REFERENCE_ATTRS` refers to.

    ``cell_measures = "area: areacella"`` and ``formula_terms = "a: var_a b: var_b"`` name the words after the
    colons; ``grid_mapping`` may be ``"crs: lat lon"`` (names both); the others are blank-separated names.
    """
    words = str(value).split()
    if attr in ("cell_measures", "formula_terms"):
        return [w for w in words if not w.endswith(":")]
    if attr == "grid_mapping":
        return [w.rstrip(":") for w in words]
    return words


def clean_attrs(attrs: Mapping[str, Any], kept: Collection[str]) -> dict[str, Any]:
    """``attrs`` without the stale ones: value ranges, packing/fill, and references to variables not ``kept``.

    Parameters
    ----------
    attrs
        The attributes of one variable or coordinate.
    kept
        The names of the variables and coordinates that are kept beside it.

    Returns
    -------
    dict
        The attributes that stay true; the others' order is kept. ``units`` is never added.
    """
    out = {}
    for k, v in attrs.items():
        if k in RANGE_ATTRS or k in PACKING_ATTRS:
            continue
        if k in REFERENCE_ATTRS and not all(n in kept for n in _named(k, v)):
            continue
        out[k] = v
    return out


def clean_dataset(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with :func:`clean_attrs` applied to every variable and coordinate (kept: the names in ``ds``).

    A dataset without stale attributes is returned as it is (the same object).
    """
    kept = {str(n) for n in ds.variables}
    stale = [n for n in ds.variables if clean_attrs(ds[n].attrs, kept) != dict(ds[n].attrs)]
    if not stale:
        return ds
    out = ds.copy()
    for n in stale:
        out[n].attrs = clean_attrs(ds[n].attrs, kept)
    return out


def clean_template(coords: Mapping[str, Any] | None, var_attrs: Mapping[str, Mapping[str, Any]] | None,
                   kept: Collection[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The coordinates and variable attributes of an ensemble store's template, without stale attributes.

    Parameters
    ----------
    coords
        ``{name: (dims, values, attrs)}`` (other forms pass unchanged).
    var_attrs
        ``{variable: attrs}``.
    kept
        The names the store holds besides ``coords`` (its variables and field dims).
    """
    names = {*map(str, kept), *(coords or {})}
    out = {k: (*c[:-1], clean_attrs(c[-1], names)) if isinstance(c, tuple) and len(c) == 3
           and isinstance(c[-1], Mapping) else c for k, c in (coords or {}).items()}
    return out, {v: clean_attrs(a, names) for v, a in (var_attrs or {}).items()}


def scalar_coords(ds: xr.Dataset | xr.DataArray) -> dict[str, tuple[tuple[()], Any, dict[str, Any]]]:
    """The 0-d coordinates of ``ds`` (``level = 500 hPa``), as ``{name: ((), value, attrs)}`` for a template.

    Parameters
    ----------
    ds
        A dataset (e.g. the source's, after ``dataset.select``) or a variable of one.
    """
    out = {}
    for name, c in ds.coords.items():
        if c.ndim == 0:
            value = np.asarray(c.values)
            out[str(name)] = ((), value[()], dict(c.attrs))
    return out


def field_coords(ds: xr.Dataset, field_dims: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """Coordinates an ensemble store keeps: those of the field dims and the scalar ones, attributes cleaned.

    Parameters
    ----------
    ds
        The dataset the model was trained on (the source or its prepared store).
    field_dims
        The dims of one field.

    Returns
    -------
    dict
        ``{dim: (dim, values, attrs)}`` for each field dim with a coordinate, ``{name: ((), value, attrs)}`` for
        each scalar coordinate (:func:`scalar_coords`); attributes without stale ones (:func:`clean_attrs`,
        kept: these coordinates).
    """
    out: dict[str, tuple[Any, ...]] = {d: (d, np.asarray(ds[d].values), dict(ds[d].attrs))
                                       for d in field_dims if d in ds.coords}
    out.update(scalar_coords(ds))
    kept = set(out) | set(field_dims)
    return {k: (*v[:-1], clean_attrs(v[-1], kept)) for k, v in out.items()}


def variable_attrs(ds: xr.Dataset, variables: Sequence[str], kept: Collection[str] = ()) -> dict[str, dict]:
    """Attributes per variable as an ensemble store writes them: scalars and strings, stale ones dropped.

    Parameters
    ----------
    ds
        The dataset holding the variables.
    variables
        The variables.
    kept
        Further names that are kept beside the variables (coordinates of the store).
    """
    names = {*map(str, variables), *kept, *map(str, ds.coords)}
    return {v: clean_attrs({k: a for k, a in ds[v].attrs.items() if isinstance(a, (str, int, float))}, names)
            for v in variables}


def units_label(units: Any, brackets: bool = True) -> str:
    """How a display shows ``units``: ``"[m s-1]"`` (or ``"m s-1"``), or ``"units unknown"`` when there are none.

    Parameters
    ----------
    units
        The ``units`` attribute (``None`` or ``""``: unknown).
    brackets
        Wrap known units in brackets.
    """
    if units is None or not str(units).strip():
        return UNKNOWN_UNITS
    u = re.sub(r"\s+", " ", str(units).strip())
    return f"[{u}]" if brackets else u
