"""Which grid points are compared: the valid points of each variable (masks and NaN), found before the metrics.

A variable's valid points are those that every source calls valid:

* the ensemble store's ``valid_<v>`` (``sciencegen-generate`` writes it for a masked dataset; its members hold
  NaN where it is 0) and the reference store's (a prepared dataset's ``valid_<v>``);
* where the dataset declares missing values (``dataset.nonfinite=mask`` or ``dataset.mask``) or a store has a
  mask, the points where the reference is NaN in *every* sample (land in an SST file), found by one streaming
  pass that counts the finite values per point on both sides.

Nothing declared and no mask anywhere: :func:`resolve_validity` returns ``{}`` without reading any data, and the
evaluation computes exactly what it did before masks existed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from .common import EvaluateError, Side, first_line

__all__ = ["Validity", "declared", "resolve_validity", "store_mask"]

log = logging.getLogger(__name__)


@dataclass
class Validity:
    """The valid points of one variable.

    Attributes
    ----------
    valid
        Boolean over the field dims (True: compared).
    field_dims
        Its dims.
    sources
        What made points invalid (``mask valid_sst``, ``NaN in every reference sample``).
    missing
        Values missing at valid points on the reference side (per-sample NaN; skipped by every metric).
    """

    valid: np.ndarray
    field_dims: tuple[str, ...]
    sources: list[str] = field(default_factory=list)
    missing: int = 0

    @property
    def points(self) -> int:
        """Grid points."""
        return int(self.valid.size)

    @property
    def n_valid(self) -> int:
        """Valid points."""
        return int(self.valid.sum())

    @property
    def masked(self) -> bool:
        """Some point is invalid."""
        return self.n_valid < self.points

    def data_array(self) -> xr.DataArray:
        """The validity as a boolean DataArray over the field dims."""
        return xr.DataArray(self.valid, dims=self.field_dims, name="valid")

    def text(self) -> str:
        """``valid points: 2700 of 3240 (mask valid_sst)``, as the report says it."""
        why = "; ".join(self.sources) if self.sources else "no mask"
        return f"valid points: {self.n_valid} of {self.points} ({why})"

    def record(self) -> dict[str, Any]:
        """What ``metrics.json`` records."""
        out: dict[str, Any] = {"valid": self.n_valid, "points": self.points, "sources": list(self.sources),
                               "text": self.text()}
        if self.missing:
            out["missing_reference_values"] = self.missing
        return out


def store_mask(path: Any, variable: str, field_dims: tuple[str, ...]) -> np.ndarray | None:
    """The ``valid_<variable>`` array (boolean over ``field_dims``) of a Zarr store, or ``None`` when it has none.

    Parameters
    ----------
    path
        An ensemble store or a prepared dataset store.
    variable
        The variable.
    field_dims
        The field dims, in the order wanted.
    """
    if path is None:
        return None
    name = f"valid_{variable}"
    ds = None
    for consolidated in (True, False):  # ensemble stores are consolidated, prepared ones may not be
        try:
            ds = xr.open_zarr(str(path), chunks=None, consolidated=consolidated)
            break
        except Exception as exc:  # not a Zarr store (an analytic reference): no mask
            log.debug("no mask in %s: %s", path, first_line(exc))
    if ds is None:
        return None
    if name not in ds.variables:
        return None
    da = ds[name]
    if set(da.dims) != set(field_dims):
        raise EvaluateError(f"{path}: {name} is over {tuple(da.dims)}, the fields over {field_dims}")
    return np.asarray(da.transpose(*field_dims).values) != 0


def declared(dataset: Mapping[str, Any], samples: Side, ref: Side) -> bool:
    """Whether the data may have invalid points: the dataset masks NaN or names a mask, or a store has a mask."""
    if dataset.get("nonfinite") == "mask" or dataset.get("mask"):
        return True
    paths = [samples.info.get("path"), ref.info.get("store")]
    return any(store_mask(p, v, samples.field_dims) is not None for p in paths if p for v in samples.data)


def _finite_counts(samples: Side, ref: Side) -> dict[str, tuple[Any, Any]]:
    """Per variable: finite values per point of the samples and of the reference (one streaming pass)."""
    import dask

    lazy = {v: (samples.data[v].notnull().sum(samples.dim), ref.data[v].notnull().sum(ref.dim))
            for v in samples.data}
    (got,) = dask.compute(lazy)
    return {v: (np.asarray(a.transpose(*ref.field_dims).values), np.asarray(b.transpose(*ref.field_dims).values))
            for v, (a, b) in got.items()}


def resolve_validity(dataset: Mapping[str, Any], samples: Side, ref: Side) -> dict[str, Validity]:
    """The valid points of every variable, or ``{}`` when nothing is masked (no data read then).

    Parameters
    ----------
    dataset
        The plain dataset config (``nonfinite``, ``mask``).
    samples, ref
        The two sides (same field dims).

    Raises
    ------
    EvaluateError
        NaN in the evaluated members at points their store calls valid (a corrupt or foreign store).
    """
    if not declared(dataset, samples, ref):
        return {}
    fd = tuple(ref.field_dims)
    counts = _finite_counts(samples, ref)
    out: dict[str, Validity] = {}
    for v, (cs, cr) in counts.items():
        valid = np.ones(cs.shape, dtype=bool)
        sources = []
        for label, path in (("mask", samples.info.get("path")), ("reference mask", ref.info.get("store"))):
            m = store_mask(path, v, fd)
            if m is not None and not m.all():
                valid &= m
                sources.append(f"{label} valid_{v}" if label == "mask" else f"mask valid_{v} of the reference")
        never = cr == 0
        if (never & valid).any():
            sources.append(f"NaN in every reference sample at {int((never & valid).sum())} points")
            valid &= ~never
        bad = int(((cs < samples.count) & valid).sum())
        if bad:
            raise EvaluateError(f"samples {samples.info['path']}: NaN values at {bad} valid points of {v} in the "
                                "complete members (a corrupt or foreign store)")
        missing = int((ref.count - cr)[valid].sum())
        out[v] = Validity(valid, fd, sources, missing)
    if not any(x.masked or x.missing for x in out.values()):
        return {}
    return out
