"""Validity masks: the points of a target variable that hold no data in any sample (land in an ocean field).

A point of a target variable is *invalid* when it holds no value in any sample (NaN or a fill value at the same
points in every sample: found with ``dataset.nonfinite=mask``) or where a static mask variable of the files says
so (``dataset.mask``: the name of a variable whose nonzero points are invalid, or ``{variable: NAME, invalid:
nonzero | zero}``). :func:`find_masks` finds them in one lazy pass over the data (the data stage,
:func:`sciencegen.data.prepare.prepare`); :func:`add_mask_channels` adds what a prepared store holds for them:

* ``valid_<v>`` (field dims, uint8, 1 = valid) beside the data, which hold NaN at the invalid points (so the
  statistics skip them);
* a static condition channel ``static_valid_<v>`` (0/1, layout ``static``, ``source: mask``), so the model sees
  the mask;
* the metadata ``meta["masks"] = {v: {"source": "nonfinite" | "variable:<name>", "valid": n, "points": n}}``.

:func:`encode_valid` / :func:`decode_valid` carry a mask without a path (a checkpoint's meta), so generation
needs no prepared store. Per-sample NaN elsewhere keep the ``dataset.nonfinite`` policy; training ignores them
as it ignores the masked points.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from .fields import DataError, FieldSpec, progress_bar

__all__ = ["ENSEMBLE_ATTR", "MASK_CHANNEL", "VALID_PREFIX", "Masks", "add_mask_channels", "decode_valid",
           "encode_valid", "ensemble_layout", "find_masks", "finite_where_valid", "holds_nan", "mask_option",
           "mask_variables", "store_masks", "store_valid", "valid_arrays"]

log = logging.getLogger(__name__)

#: the prepared (and ensemble) store's variable ``valid_<v>`` of a masked variable ``v``
VALID_PREFIX = "valid_"
#: the static condition channel of a masked variable: ``static_valid_<v>``
MASK_CHANNEL = "static_valid_"
#: root attribute of an ensemble store of masked data: JSON ``{variable: {"source", "valid", "points"}}``
ENSEMBLE_ATTR = "sciencegen_masks"
_INVALID = ("nonzero", "zero")


@dataclass
class Masks:
    """The static validity of the target variables of a dataset.

    Attributes
    ----------
    valid
        ``{variable: bool array on the field dims}`` (True: valid), only for variables with invalid points.
    meta
        ``{variable: {"source", "valid", "points"}}``: what the store's metadata records.
    """

    valid: dict[str, np.ndarray]
    meta: dict[str, dict[str, Any]]


def mask_option(mask: Any) -> tuple[str, str] | None:
    """``dataset.mask`` as ``(variable, invalid)`` (``invalid``: ``"nonzero"`` or ``"zero"``); ``None``: no mask.

    Raises
    ------
    DataError
        Neither a name nor ``{variable: NAME, invalid: nonzero|zero}``.
    """
    if mask is None or mask == "":
        return None
    if isinstance(mask, str):
        return mask, "nonzero"
    if isinstance(mask, Mapping):
        unknown = sorted(set(mask) - {"variable", "invalid"})
        name, invalid = mask.get("variable"), str(mask.get("invalid", "nonzero"))
        if not unknown and isinstance(name, str) and name and invalid in _INVALID:
            return name, invalid
    raise DataError(f"dataset.mask must be the name of a static mask variable (its nonzero points are invalid) or "
                    f"{{variable: NAME, invalid: nonzero|zero}}, got {mask!r}")


def mask_variables(mask: Any) -> tuple[str, ...]:
    """The variable ``dataset.mask`` names (to keep when the source is opened), or none."""
    opt = mask_option(mask)
    return () if opt is None else (opt[0],)


def _given(ds: xr.Dataset, opt: tuple[str, str], spec: FieldSpec, label: str) -> np.ndarray:
    """The invalid points the mask variable marks, on the field dims (bool)."""
    name, invalid = opt
    if name not in ds.data_vars and name not in ds.coords:
        raise DataError(f"{label}: dataset.mask names {name!r}, which is not a variable of the data "
                        f"(has {', '.join(map(str, ds.data_vars)) or 'none'})")
    x = ds[name]
    extra = [d for d in x.dims if d not in spec.field_dims]
    if extra:
        raise DataError(f"{label}: dataset.mask variable {name!r} has dims {list(x.dims)}; a static mask has the "
                        f"field dims {list(spec.field_dims)} only (not {extra})")
    shape = [int(ds.sizes[d]) for d in spec.field_dims]
    template = xr.DataArray(np.zeros(shape, bool), dims=spec.field_dims)
    values = np.asarray(x.broadcast_like(template).transpose(*spec.field_dims).values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise DataError(f"{label}: dataset.mask variable {name!r} holds NaN/Inf values; a mask is 0 or nonzero "
                        "everywhere")
    return values != 0 if invalid == "nonzero" else values == 0


def _count(ds: xr.Dataset, spec: FieldSpec, given: np.ndarray | None, progress: bool
           ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per variable, in one lazy pass: NaN/Inf per point over the samples (field dims) and, with a mask variable,
    NaN/Inf outside it per sample (sample dims)."""
    import dask

    per_point, outside = {}, {}
    inside = None if given is None else xr.DataArray(given, dims=spec.field_dims)
    for v in spec.variables:
        bad = ~np.isfinite(ds[v])
        per_point[v] = bad.sum(spec.sample_dims).transpose(*spec.field_dims)
        if inside is not None:
            outside[v] = (bad & ~inside).sum(spec.field_dims).transpose(*spec.sample_dims)
    with progress_bar(progress, "finding masks"):
        per_point, outside = dask.compute(per_point, outside)
    return ({v: np.asarray(a.values) for v, a in per_point.items()},
            {v: np.asarray(a.values) for v, a in outside.items()})


def _outside_policy(ds: xr.Dataset, spec: FieldSpec, outside: dict[str, np.ndarray], opt: tuple[str, str],
                    nonfinite: str, label: str) -> xr.Dataset:
    """``dataset.nonfinite`` applied to the NaN/Inf outside the mask variable: refuse, or drop those samples."""
    total = sum(int(a.sum()) for a in outside.values())
    if not total or nonfinite == "mask":
        return ds
    where = "; ".join(f"{v}: {int(a.sum())}" for v, a in outside.items() if a.sum())
    if nonfinite == "error":
        raise DataError(f"{label}: {total} NaN/Inf values outside the mask {opt[0]!r} ({where}); set "
                        "dataset.nonfinite=mask to keep them masked or dataset.nonfinite=drop to drop those samples")
    if len(spec.sample_dims) != 1:
        raise DataError(f"{label}: nonfinite=drop needs one sample dim, got {list(spec.sample_dims)}; "
                        "use nonfinite=mask")
    good = ~np.any([a > 0 for a in outside.values()], axis=0)
    if not good.any():
        raise DataError(f"{label}: every sample holds NaN/Inf values outside the mask {opt[0]!r} ({where}); "
                        "nothing left to keep")
    return ds.isel({spec.sample_dims[0]: np.flatnonzero(good)})


def find_masks(ds: xr.Dataset, spec: FieldSpec, mask: Any, nonfinite: str, label: str,
               targets: Sequence[str] | None = None, progress: bool = False
               ) -> tuple[xr.Dataset, Masks | None, str]:
    """Find the static invalid points of the target variables and set them to NaN.

    Parameters
    ----------
    ds, spec
        The source's lazy data and spec (:meth:`~sciencegen.data.sources.FieldSource.open`).
    mask
        ``dataset.mask`` (:func:`mask_option`).
    nonfinite
        ``dataset.nonfinite``: with ``mask``, points that are NaN/Inf in every sample are invalid; with a mask
        variable, NaN/Inf at its invalid points are never an error, those elsewhere follow the policy.
    label
        Names the data in messages.
    targets
        The variables that get masks (default: every variable of ``spec``); the others are condition inputs.
    progress
        A progress bar over the pass.

    Returns
    -------
    ds, masks, nonfinite
        The data (targets NaN at their invalid points; samples dropped by ``nonfinite=drop``), the masks
        (``None``: no static invalid point) and the policy the store is written with (``mask`` where it holds NaN).

    Raises
    ------
    DataError
        A bad ``dataset.mask``, NaN/Inf outside the mask with ``nonfinite=error``, a variable without a valid point.
    """
    opt = mask_option(mask)
    if opt is None and nonfinite != "mask":
        return ds, None, nonfinite
    given = None if opt is None else _given(ds, opt, spec, label)
    per_point, outside = _count(ds, spec, given, progress)
    if opt is not None:
        ds = _outside_policy(ds, spec, outside, opt, nonfinite, label)
    samples = math.prod(int(ds.sizes[d]) for d in spec.sample_dims)
    total = math.prod(int(v) for v in per_point[spec.variables[0]].shape) if per_point else 0
    valid: dict[str, np.ndarray] = {}
    meta: dict[str, dict[str, Any]] = {}
    for v in targets if targets is not None else spec.variables:
        static = per_point[v] >= samples if nonfinite == "mask" else np.zeros(per_point[v].shape, bool)
        invalid = static if given is None else static | given
        if not invalid.any():
            continue
        if invalid.all():
            raise DataError(f"{label}: variable {v!r} has no valid point (every point is masked or NaN in every "
                            "sample)")
        valid[v] = ~invalid
        meta[v] = {"source": "nonfinite" if given is None else f"variable:{opt[0]}", "valid": int((~invalid).sum()),
                   "points": int(invalid.size)}
        why = f"invalid (where {opt[0]} is {opt[1]})" if given is not None else "NaN in every sample"
        log.info("%s: %d of %d points %s: masked, the model sees the mask as a static channel", v,
                 int(invalid.sum()), total, why)
        if given is not None and (static & ~given).any():
            log.info("%s: %d further points are NaN in every sample outside the mask %s: masked too", v,
                     int((static & ~given).sum()), opt[0])
        keep = xr.DataArray(valid[v], dims=spec.field_dims)
        ds = ds.assign({v: ds[v].where(keep)})
    for v in targets if targets is not None else spec.variables:
        rest = int(per_point[v][valid[v]].sum()) if v in valid else int(per_point[v].sum())
        if rest > 0 and nonfinite == "mask":
            log.info("%s: %d further NaN/Inf values (not at the same points in every sample): skipped by the "
                     "statistics and ignored by the training loss", v, rest)
    if not valid:
        return ds, None, nonfinite
    return ds, Masks(valid, meta), "mask"


def valid_arrays(masks: Masks, ds: xr.Dataset, spec: FieldSpec) -> dict[str, xr.DataArray]:
    """``valid_<v>`` (uint8 on the field dims, 1 = valid, the field dims' coordinates) of each masked variable."""
    coords = {d: ds[d] for d in spec.field_dims if d in ds.coords}
    return {f"{VALID_PREFIX}{v}": xr.DataArray(
        a.astype(np.uint8), dims=spec.field_dims, coords=coords,
        attrs={"long_name": f"1 where {v} holds data, 0 where it is masked", "flag_values": [0, 1],
               "flag_meanings": "invalid valid"}) for v, a in masks.valid.items()}


def add_mask_channels(ds: xr.Dataset, spec: FieldSpec, masks: Masks, conditioning: Mapping[str, Any] | None
                      ) -> tuple[xr.Dataset, dict[str, Any]]:
    """``ds`` with ``valid_<v>`` and the static channels ``static_valid_<v>``, and the conditioning metadata that
    lists those channels (a new static-only one when the dataset has no conditioning)."""
    cond = dict(conditioning) if conditioning else {"kinds": {}, "inputs": {}, "static": {}, "state": None}
    static = dict(cond.get("static") or {})
    arrays = valid_arrays(masks, ds, spec)
    for v in masks.valid:
        name = f"{MASK_CHANNEL}{v}"
        if name in static or name in ds.data_vars:
            raise DataError(f"the mask channel {name!r} of variable {v!r} clashes with a variable of that name")
        arrays[name] = arrays[f"{VALID_PREFIX}{v}"].astype(np.float32).assign_attrs(
            long_name=f"validity of {v} (1: data, 0: masked)")
        static[name] = {"kind": "static", "source": "mask", "variable": v}
    cond["static"] = static
    return ds.assign(arrays), cond


def encode_valid(valid: np.ndarray) -> dict[str, Any]:
    """A boolean mask as JSON without a path: ``{"shape": [...], "bits": base64 of the packed bits}``."""
    arr = np.asarray(valid, dtype=bool)
    return {"shape": list(arr.shape), "bits": base64.b64encode(np.packbits(arr.reshape(-1))).decode("ascii")}


def decode_valid(encoded: Mapping[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_valid`."""
    shape = tuple(int(n) for n in encoded["shape"])
    bits = np.unpackbits(np.frombuffer(base64.b64decode(encoded["bits"]), dtype=np.uint8))
    return bits[: math.prod(shape)].astype(bool).reshape(shape)


def store_masks(prepared: Any) -> dict[str, dict[str, Any]] | None:
    """A prepared store's ``meta["masks"]``, each with its valid points (:func:`encode_valid`: ``shape``, ``bits``),
    as a checkpoint's meta records them; ``None`` without masks.

    Parameters
    ----------
    prepared
        The :class:`~sciencegen.data.store.PreparedData`.
    """
    out = {}
    for v, m in (prepared.meta.get("masks") or {}).items():
        valid = np.asarray(prepared.ds[f"{VALID_PREFIX}{v}"].transpose(*prepared.spec.field_dims).values) != 0
        out[str(v)] = {**m, **encode_valid(valid)}
    return out or None


def holds_nan(prepared: Any) -> bool:
    """Whether the target variables of a prepared store hold NaN (masked points or missing values: fewer finite
    values in the statistics than values), i.e. whether training must ignore points."""
    if prepared.meta.get("nonfinite") != "mask":
        return False
    size = prepared.samples * math.prod(prepared.field_shape)
    counts = np.asarray(prepared.stats["count"].sel(variable=list(prepared.spec.variables)).values)
    return bool((counts < size).any())


def ensemble_layout(masks: Mapping[str, tuple[np.ndarray, Mapping[str, Any]]] | None, field_dims: Sequence[str]
                    ) -> tuple[dict[str, Any], dict[str, str]]:
    """The ``valid_<v>`` arrays (field dims, uint8, 1 = valid) and the root attribute :data:`ENSEMBLE_ATTR` of an
    ensemble store, given ``{variable: (valid points, metadata)}`` (``None``: nothing)."""
    if not masks:
        return {}, {}
    data = {f"{VALID_PREFIX}{v}": (tuple(field_dims), np.asarray(valid, dtype=np.uint8),
                                   {"long_name": f"1 where {v} holds data, 0 where it is masked (NaN in every member)",
                                    "flag_values": [0, 1], "flag_meanings": "invalid valid"})
            for v, (valid, _) in masks.items()}
    return data, {ENSEMBLE_ATTR: json.dumps({v: dict(m) for v, (_, m) in masks.items()}, sort_keys=True)}


def store_valid(group: Any) -> dict[str, np.ndarray]:
    """``{variable: valid points}`` of the ``valid_<v>`` arrays of an open Zarr group (an ensemble store)."""
    return {k[len(VALID_PREFIX):]: np.asarray(group[k]) != 0 for k in group.array_keys()
            if k.startswith(VALID_PREFIX)}


def finite_where_valid(values: np.ndarray, name: str, valid: Mapping[str, np.ndarray]) -> bool:
    """Whether an ensemble array ``name`` (a field, an input; trailing dims the field) is finite wherever it holds
    data: a field where its variable is valid, anything else where every variable is."""
    values = np.asarray(values)
    keep = valid.get(name)
    if keep is None and valid:
        keep = np.logical_and.reduce(list(valid.values()))
    return bool(np.isfinite(values).all() if keep is None else np.isfinite(values[..., keep]).all())
