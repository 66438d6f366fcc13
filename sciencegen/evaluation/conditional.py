"""Scores of a conditional ensemble against the truth, per variable, lead time and method (generated, baselines).

For each variable and lead time the evaluated cases are the conditions whose members are all complete and
readable and whose truth is known there (a NaN truth is unknown: excluded and counted). Every method (the
generated members, the exact posterior where the dataset has one, the baselines of
:mod:`~sciencegen.evaluation.baselines`) is scored the same way, with :mod:`sciencegen.analysis`, lazily per
condition in one Dask pass:

* ``crps``: the fair CRPS (Ferro 2014) averaged over points and cases; for a one-member (deterministic) forecast
  the CRPS of a point forecast, the mean absolute error;
* ``rmse``: RMSE of the ensemble mean over points and cases; ``spread``: sqrt of the mean unbiased ensemble
  variance; ``spread_skill``: ``sqrt((M+1)/M) · spread / rmse`` (1 for a calibrated ensemble, Fortin et al. 2014);
* ``rank``: the rank histogram pooled over every point and case, and a chi-squared test of flatness
  (:func:`~sciencegen.analysis.scores.rank_chi2`) on points *thinned* to one every ``stride`` grid points along
  each field dim. Neighbouring points are not independent; the stride is the smallest power of two at which the
  two-point correlation of the generated members' deviations from their ensemble mean (averaged over cases
  and lead times) falls to :data:`DECORRELATION` or below, so the counts the test sees are nearly independent;
* ``spectrum``: the isotropic power spectrum of the members (mean over members and cases) and of the truths
  (mean over cases), their relative error ``P_f / P_t - 1`` per shell and the spectral error
  ``mean |log(P_f / P_t)|`` over the complete shells ``1..floor(min(n)/2)`` (as for unconditional stores).

On a latitude-longitude grid (:func:`~sciencegen.analysis.geometry.grid_geometry`) the means over points are
``cos(latitude)``-weighted and the spectrum is the zonal one (whole grid, complete latitude rows); a masked
variable (the store's ``valid_<v>``) is scored at its valid points only, its spectrum over complete rows (else
``None`` with the reason under ``not_computed``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..analysis import crps_ensemble, isotropic_spectrum, rank_histogram, spatial_correlation
from ..analysis.correlation import masked_correlation
from ..analysis.geometry import Geometry, grid_geometry
from ..analysis.scores import rank_chi2
from ..analysis.zonal import row_spectrum
from .baselines import Method
from .common import resolved_shells
from .cond_store import CondStore

__all__ = ["DECORRELATION", "candidate_strides", "finish_scores", "lazy_scores", "lead_scores", "rank_stride",
           "variable_scores"]

#: the correlation of neighbouring ensemble deviations below which thinned points count as independent
DECORRELATION = 0.1


def candidate_strides(shape: Sequence[int]) -> list[int]:
    """The thinning strides tried: powers of two up to half the smallest field side (at least ``[1]``)."""
    out, s = [1], 2
    while s <= min(shape) // 2:
        out.append(s)
        s *= 2
    return out


def _thin(fd: Sequence[str], s: int) -> dict[str, slice]:
    return {d: slice(0, None, s) for d in fd}


def _mean(x: xr.DataArray, fd: tuple[str, ...], weights: xr.DataArray | None) -> xr.DataArray:
    """Mean over the field dims: plain, or weighted (NaN at invalid points skipped with their weights)."""
    return x.mean(fd) if weights is None else x.weighted(weights).mean(fd)


def lazy_scores(fc: xr.DataArray, truth: xr.DataArray, fd: tuple[str, ...], strides: Sequence[int],
                correlation: bool = False, geo: Geometry | None = None,
                valid: np.ndarray | None = None) -> dict[str, Any]:
    """The lazy per-case scores of a forecast ``(condition, member, *field)`` against ``truth (condition, *field)``.

    Parameters
    ----------
    fc, truth
        Forecast and truth (lazy or in memory).
    fd
        The field dims.
    strides
        The thinning strides of the rank counts (:func:`candidate_strides`).
    correlation
        Also the two-point correlation of the deviations from the ensemble mean (to choose the stride).
    geo
        The grid's geometry: on a latitude-longitude grid the means over points are ``cos(latitude)``-weighted and
        the spectrum is zonal (:func:`~sciencegen.analysis.zonal.row_spectrum`). ``None`` or a plane: as always.
    valid
        The variable's valid points (a masked variable): NaN there are skipped, the spectrum uses complete rows.
    """
    m = int(fc.sizes["member"])
    err = fc.mean("member") - truth
    w = geo.area_weights() if geo is not None and geo.latlon else None
    masked = valid is not None and not valid.all()
    out: dict[str, Any] = {
        "m": m,
        "crps": crps_ensemble(fc, truth, fair=m >= 2, dims=fd, weights=w),
        "err2": _mean(err * err, fd, w),
    }
    if (w is not None or masked) and geo is not None:
        out |= _row_spectra(fc, truth, geo, valid)
    else:
        out |= {"spec_f": isotropic_spectrum(fc, dims=fd, average=False).mean("member"),
                "spec_t": isotropic_spectrum(truth, dims=fd, average=False)}
    if m >= 2:
        out["var"] = _mean(fc.var("member", ddof=1), fd, w)
        out["ranks"] = rank_histogram(fc, truth)
        out["thin"] = {s: rank_histogram(fc.isel(_thin(fd, s)), truth.isel(_thin(fd, s))) for s in strides}
        if correlation and masked:
            out["corr"] = masked_correlation(fc - fc.mean("member"), fd, xr.DataArray(valid, dims=fd))
        elif correlation:
            out["corr"] = spatial_correlation(fc - fc.mean("member"), dims=fd, center=None)
    return out


def _row_spectra(fc: xr.DataArray, truth: xr.DataArray, geo: Geometry, valid: np.ndarray | None) -> dict[str, Any]:
    """Zonal (latitude-longitude) or row (masked plane) spectra of the members and of the truths, whole grid."""
    fd = geo.field_dims
    ok = None if valid is None else xr.DataArray(valid, dims=fd)
    if geo.latlon and geo.lon_uniform:
        rows = geo.area_weights().isel({geo.lon_dim: 0}, drop=True)
        kw = {"row_weights": rows, "periodic": geo.lon_periodic, "spacing": geo.lon_spacing}
        return {"spec_f": row_spectrum(fc, geo.lon_dim, fd, valid=ok, **kw),
                "spec_t": row_spectrum(truth, geo.lon_dim, fd, valid=ok, **kw)}
    if geo.latlon:
        return {"spec_f": None, "spec_t": None, "spec_reason": f"the longitude {geo.lon_dim} is not uniformly spaced"}
    return {"spec_f": row_spectrum(fc, fd[-1], fd, valid=ok, periodic=False),
            "spec_t": row_spectrum(truth, fd[-1], fd, valid=ok, periodic=False)}


def rank_stride(curves: Sequence[xr.DataArray], strides: Sequence[int]) -> tuple[int, list[float] | None]:
    """The thinning stride: the smallest candidate at which the mean correlation curve is <= :data:`DECORRELATION`.

    Returns the stride and the mean curve (``None`` when there is none: stride 1).
    """
    if not curves:
        return 1, None
    c = np.nanmean(np.stack([np.asarray(x.values, dtype=np.float64) for x in curves]), axis=0)
    for s in strides:
        if s < c.size and c[s] <= DECORRELATION:
            return s, c.tolist()
    return strides[-1], c.tolist()


def _spectrum(got: dict[str, Any], shape: Sequence[int]) -> dict[str, Any]:
    if got["spec_f"] is None or ("band" in got["spec_f"].dims and int(got["spec_f"]["rows"][0]) == 0):
        reason = got.get("spec_reason") or "no complete row of valid points (every row holds a masked point)"
        return {"spectral_error": None, "spectral_shells": None, "not_computed": {"spectral_error": reason}}
    if "band" in got["spec_f"].dims:  # a zonal (row) spectrum: the whole grid's, averaged over members and cases
        pf = np.asarray(got["spec_f"].sel(band="whole").values, dtype=np.float64)
        pt = np.asarray(got["spec_t"].sel(band="whole").values, dtype=np.float64)
        shape = [2 * (pf.size - 1)]
    else:
        pf = np.asarray(got["spec_f"].mean("condition").values, dtype=np.float64)
        pt = np.asarray(got["spec_t"].mean("condition").values, dtype=np.float64)
    shells = resolved_shells(pt, min(shape) // 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = pf / pt - 1.0
        logs = np.log(pf[shells] / pt[shells])
    err = float(np.mean(np.abs(logs))) if logs.size and np.all(np.isfinite(logs)) else float("nan")
    k = got["spec_f"]["wavenumber"]
    spectrum = {"wavenumber": np.asarray(k.values), "forecast": pf, "truth": pt, "relative_error": rel}
    if "band" in got["spec_f"].dims:
        spectrum |= {"kind": "zonal" if k.attrs.get("long_name") == "zonal wavenumber" else "row",
                     "wavenumber_long_name": k.attrs.get("long_name"), "wavenumber_units": k.attrs.get("units")}
    return {"spectral_error": err, "spectral_shells": [1, int(shells[-1]) if shells.size else 0],
            "spectrum": spectrum}


def finish_scores(got: dict[str, Any], m: int, stride: int, shape: Sequence[int]) -> dict[str, Any]:
    """The numbers of one method at one lead time from its computed :func:`lazy_scores`."""
    crps = float(np.mean(got["crps"].values))
    rmse = float(np.sqrt(np.mean(got["err2"].values)))
    out: dict[str, Any] = {"members": m, "crps": crps, "crps_kind": "fair CRPS" if m >= 2 else "absolute error",
                           "rmse": rmse, "spread": None, "spread_skill": None, "rank": None}
    if m >= 2:
        spread = float(np.sqrt(np.mean(got["var"].values)))
        out["spread"] = spread
        out["spread_skill"] = math.sqrt((m + 1) / m) * spread / rmse if rmse > 0 else float("nan")
        thin = np.asarray(got["thin"][stride].values, dtype=np.float64)
        out["rank"] = {"counts": np.asarray(got["ranks"].values, dtype=np.float64), "thinned_counts": thin,
                       "stride": stride, "chi2": rank_chi2(thin)}
    return out | _spectrum(got, shape)


def lead_scores(store: CondStore, v: str, methods: Sequence[Method]) -> list[dict[str, Any]]:
    """The lazy scores of every method at every lead time of ``v``: ``[{lead_time, conditions, ..., lazy}]``.

    A lead time whose evaluated cases have no known truth holds no scores (``lazy`` empty).
    """
    strides = candidate_strides(store.field_shape)
    geo = grid_geometry(store.ds, store.field_dims)
    valid = store.valid.get(v)
    leads = []
    for li, lead in enumerate(store.leads):
        known = store.known(v, li)
        conds = np.flatnonzero(known)
        entry: dict[str, Any] = {"lead_time": lead, "index": li, "conditions": int(conds.size),
                                 "unknown_truth": int(store.evaluated.sum() - conds.size),
                                 "condition_indices": conds, "lazy": {}}
        if conds.size:
            truth = store.truth_at(v, li, conds)
            for meth in methods:
                if meth.name == "climatology" and conds.size < 2:
                    continue
                fc = meth.forecast(li, conds)
                entry["lazy"][meth.name] = lazy_scores(fc, truth, store.field_dims, strides,
                                                       correlation=meth.name == "model", geo=geo, valid=valid)
        leads.append(entry)
    return leads


def variable_scores(store: CondStore, v: str, leads: list[dict[str, Any]]) -> dict[str, Any]:
    """``metrics.json``'s entry of ``v`` from its computed lead entries (:func:`lead_scores` after ``dask.compute``)."""
    strides = candidate_strides(store.field_shape)
    curves = [e["lazy"]["model"]["corr"] for e in leads if "corr" in e["lazy"].get("model", {})]
    stride, curve = rank_stride(curves, strides)
    out_leads = []
    for e in leads:
        methods = {name: finish_scores(got, got["m"], stride, store.field_shape) for name, got in e["lazy"].items()}
        out_leads.append({"lead_time": e["lead_time"], "conditions": e["conditions"],
                          "unknown_truth": e["unknown_truth"], "methods": methods})
    units = str(store.ds[v].attrs.get("units", ""))
    return {"units": units, "rank_stride": stride, "decorrelation": {"threshold": DECORRELATION, "curve": curve,
                                                                      "strides": strides}, "leads": out_leads}

