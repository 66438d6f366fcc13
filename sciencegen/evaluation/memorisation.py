"""Does the model copy its training data? Nearest-training-sample distances of members and of held-out samples.

For each generated member, the distance to its nearest *training* sample (the prepared store's training split,
:func:`sciencegen.data.conditioning.split_samples`) is compared with the same distance for the *held-out*
samples, which the model never saw: a model that generalises puts its members about as far from the training
set as new data are; a model that memorised puts them much nearer. The distance is the root mean square
difference over the valid points, area-weighted (``cos(latitude)``) on a latitude-longitude grid, of the fields
in units of each variable's standard deviation (several variables together).

A member is *flagged* when it is nearer to a training sample than the 1st percentile (lower) of the held-out
distances, and a *copy* when that distance is below :data:`COPY_RELATIVE` of its own root mean square. At most
:data:`MAX_TRAINING` training samples (evenly spread over the split) and :data:`MAX_COMPARED` members and
held-out samples are compared, in chunks of :data:`CHUNK` training samples, so the check stays cheap; the
result says what was compared. Where the training data are not on disk the check is skipped with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..analysis.geometry import Geometry
from .common import Side, first_line
from .validity import Validity

__all__ = ["CHUNK", "COPY_RELATIVE", "FLAG_QUANTILE", "MAX_COMPARED", "MAX_TRAINING", "memorisation_check",
           "nearest_distances"]

log = logging.getLogger(__name__)

#: most training samples compared (evenly spread over the training split)
MAX_TRAINING = 5000
#: most members, and most held-out samples, compared
MAX_COMPARED = 1000
#: training samples per block of the distance computation
CHUNK = 256
#: a member nearer than this fraction of its own rms to a training sample is a copy
COPY_RELATIVE = 1e-3
#: a member nearer to the training set than this quantile of the held-out distances is flagged
FLAG_QUANTILE = 0.01


def _spread(n: int, cap: int) -> np.ndarray:
    """``min(n, cap)`` indices evenly spread over ``0..n-1``."""
    return np.arange(n) if n <= cap else np.unique(np.linspace(0, n - 1, cap).round().astype(np.int64))


def nearest_distances(queries: np.ndarray, train_blocks: Any, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted rms distance of each query to its nearest training sample, and that sample's position.

    Parameters
    ----------
    queries
        ``(q, P)`` flattened fields (no NaN).
    train_blocks
        Iterable of ``(t_i, P)`` blocks of training fields (no NaN), in order.
    weights
        ``(P,)`` non-negative point weights (0: not compared).

    Returns
    -------
    distance, index
        ``(q,)`` distances ``sqrt(sum w (x - y)² / sum w)`` and the positions of the nearest training samples.
    """
    w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    q = np.asarray(queries, dtype=np.float64)
    qw = q * w
    q2 = (qw * q).sum(axis=1)
    best = np.full(q.shape[0], np.inf)
    arg = np.zeros(q.shape[0], dtype=np.int64)
    start = 0
    for block in train_blocks:
        t = np.asarray(block, dtype=np.float64)
        d2 = q2[:, None] + (t * t * w).sum(axis=1)[None, :] - 2.0 * qw @ t.T
        j = np.argmin(d2, axis=1)
        dj = d2[np.arange(q.shape[0]), j]
        better = dj < best
        best[better], arg[better] = dj[better], start + j[better]
        start += t.shape[0]
    return np.sqrt(np.clip(best, 0.0, None)), arg


def _training_store(ref: Side) -> tuple[Path | None, str | None]:
    """The prepared store holding the training data, or the reason there is none on disk."""
    from ..data.prepare import default_store_path
    from ..data.store import read_metadata

    request = ref.request
    if request is None:
        return None, "the reference was built without a dataset config: the training data are unknown"
    path = Path(ref.info["store"]) if ref.kind == "heldout" and ref.info.get("store") else \
        default_store_path(request.dataset, request.data_root)
    meta = read_metadata(path) if path.exists() else None
    if meta is None or not meta.get("complete"):
        return None, (f"the training data are not prepared at {path} (the dataset config the store records, "
                      f"under data_root={request.data_root}): run sciencegen-data for it to check memorisation")
    return path, None


def _flat(da: xr.DataArray, sample_dims: Sequence[str], field_dims: Sequence[str]) -> xr.DataArray:
    """``da`` over ``(sample, *field_dims)`` with its sample dims flattened in C order."""
    da = da.transpose(*sample_dims, *field_dims)
    if len(sample_dims) == 1:
        return da.rename({sample_dims[0]: "__s"}).drop_vars("__s", errors="ignore")
    return da.stack(__s=list(sample_dims)).transpose("__s", *field_dims).reset_index("__s", drop=True)


def _rows(arrays: Sequence[xr.DataArray], mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Loaded fields ``(n, P)`` in std units, variables side by side, NaN as 0 (the mean)."""
    parts = [((np.asarray(a.values, dtype=np.float64) - mu) / sd).reshape(a.shape[0], -1)
             for a, mu, sd in zip(arrays, mean, std, strict=True)]
    return np.nan_to_num(np.concatenate(parts, axis=1), nan=0.0)


def _weights(samples: Side, geo: Geometry, validity: dict[str, Validity]) -> np.ndarray:
    """Point weights over every variable's field: area weights at valid points."""
    area = np.asarray(geo.area_weights().transpose(*samples.field_dims).values, dtype=np.float64)
    return np.concatenate([(area * (validity[v].valid if v in validity else 1.0)).ravel() for v in samples.data])


def _quantiles(d: np.ndarray) -> dict[str, float]:
    qs = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
    return {f"q{int(round(q * 100)):02d}": float(np.quantile(d, q, method="lower")) for q in qs}


def _check(samples: Side, ref: Side, geo: Geometry, validity: dict[str, Validity], path: Path) -> dict[str, Any]:
    """The check proper, once the training store is known."""
    from ..data.conditioning import split_samples
    from ..data.store import open_prepared

    prepared = open_prepared(path)
    spec = prepared.spec
    variables = list(samples.data)
    missing = [v for v in variables if v not in spec.variables]
    if missing:
        return _skip(f"the training store {path} has no variable(s) {missing}")
    holdout = ref.request.holdout
    train, held = split_samples(path, "train", holdout), split_samples(path, "validation", holdout)
    if train.size == 0 or held.size == 0:
        return _skip(f"the split of {path} (holdout {holdout}) has {train.size} training and {held.size} "
                     "held-out samples: both are needed")
    order = [list(spec.variables).index(v) for v in variables]
    mean, std = prepared.mean[order], prepared.std[order]
    fd = list(samples.field_dims)
    flat = {v: _flat(prepared.ds[v], spec.sample_dims, fd) for v in variables}
    t_idx, h_idx = train[_spread(train.size, MAX_TRAINING)], held[_spread(held.size, MAX_COMPARED)]
    m_idx = _spread(samples.count, MAX_COMPARED)
    members = _rows([samples.data[v].isel({samples.dim: m_idx}) for v in variables], mean, std)
    heldout = _rows([flat[v].isel(__s=h_idx) for v in variables], mean, std)
    w = _weights(samples, geo, validity)
    blocks = (_rows([flat[v].isel(__s=t_idx[i:i + CHUNK]) for v in variables], mean, std)
              for i in range(0, t_idx.size, CHUNK))
    d, nearest = nearest_distances(np.concatenate([members, heldout]), blocks, w)
    dm, dh = d[: members.shape[0]], d[members.shape[0]:]
    rms = np.sqrt((members * members * (w / w.sum())).sum(axis=1))
    threshold = float(np.quantile(dh, FLAG_QUANTILE, method="lower"))
    flagged = dm < threshold
    copies = dm < COPY_RELATIVE * np.maximum(rms, np.finfo(float).tiny)
    ratio = float(np.median(dm) / np.median(dh)) if np.median(dh) > 0 else None
    return {"computed": True, "store": str(path), "holdout": holdout,
            "training_samples": int(train.size), "training_compared": int(t_idx.size),
            "members_compared": int(m_idx.size), "heldout_compared": int(h_idx.size),
            "distance": "rms difference in std units over the valid points"
                        + (", cos(latitude) weighted" if geo.latlon else ""),
            "members": _quantiles(dm), "heldout": _quantiles(dh), "median_ratio": ratio,
            "flag_threshold": threshold, "flagged": int(flagged.sum()), "copies": int(copies.sum()),
            "flagged_members": [int(samples.data[variables[0]][samples.dim].values[i]) if samples.dim in
                                samples.data[variables[0]].coords else int(i) for i in m_idx[flagged][:20]],
            "nearest_training": [int(t_idx[j]) for j in nearest[: members.shape[0]][flagged][:20]],
            "verdict": _verdict(int(flagged.sum()), int(copies.sum()), int(m_idx.size), ratio)}


def _verdict(flagged: int, copies: int, compared: int, ratio: float | None) -> str:
    if copies:
        return f"{copies} of {compared} members are copies of training samples"
    if flagged > max(2, 0.05 * compared):
        return (f"{flagged} of {compared} members sit nearer to a training sample than 99% of held-out samples "
                "do: the model may be memorising")
    if ratio is not None and ratio < 0.5:
        return "members sit much nearer to the training samples than held-out samples do: the model may be memorising"
    return "no sign of memorisation"


def _skip(reason: str) -> dict[str, Any]:
    log.info("memorisation check skipped: %s", reason)
    return {"computed": False, "reason": reason}


def memorisation_check(samples: Side, ref: Side, geo: Geometry, validity: dict[str, Validity]) -> dict[str, Any]:
    """``metrics.json["memorisation"]``: the nearest-training distances of members and held-out samples, flags.

    Parameters
    ----------
    samples, ref
        The two sides (``ref.request`` says where the dataset is prepared).
    geo
        The grid's geometry (area weights).
    validity
        The valid points per variable (may be empty).

    Returns
    -------
    dict
        ``computed`` and, when computed, the quantiles of both distance sets, ``flagged``, ``copies`` and a
        ``verdict``; else ``reason``.
    """
    path, reason = _training_store(ref)
    if path is None:
        return _skip(reason)
    try:
        return _check(samples, ref, geo, validity, path)
    except Exception as exc:  # the check is advisory: a failure is reported, never fatal
        return _skip(f"the training data of {path} could not be compared: {first_line(exc)}")
