"""The metrics of fields on the sphere or with masks: valid points only, area weights, zonal spectra, km.

Used by :func:`~sciencegen.evaluation.metrics.compute` when the grid is a latitude-longitude grid
(:func:`~sciencegen.analysis.geometry.grid_geometry`) or a variable has invalid points
(:mod:`~sciencegen.evaluation.validity`); a plane grid without masks never comes here (its metrics are those of
:mod:`~sciencegen.evaluation.metrics`, unchanged). Both sides are restricted to the same valid points (NaN
elsewhere), and in two streaming Dask passes:

* moments, histograms and W1 weight every value by ``cos(latitude)`` (latitude-longitude) or equally (plane);
* the spectrum is a *zonal* spectrum on a latitude-longitude grid (FFT along longitude per complete latitude
  row, area-weighted by latitude band; a regional longitude box is Hann-windowed), and on a masked plane the
  spectrum along the last field dim over its complete rows; the spectral error is that of the whole band;
* the two-point correlation is binned by great-circle distance in km (latitude-longitude) or in grid points
  with the masked estimator (plane).

A metric that cannot be computed is ``None`` with its reason under ``not_computed``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from ..analysis.geometry import Geometry
from .common import Side, histogram_edges, resolved_shells
from .validity import Validity

__all__ = ["geo_compute", "geo_variable_metrics"]


def _restrict(side: Side, v: str, val: Validity | None) -> xr.DataArray:
    """``side.data[v]`` with NaN at the invalid points."""
    da = side.data[v]
    return da if val is None or not val.masked else da.where(val.data_array())


def _weights(geo: Geometry) -> xr.DataArray | None:
    return geo.area_weights() if geo.latlon else None


def _spectrum(da: xr.DataArray, geo: Geometry, val: Validity | None) -> tuple[xr.DataArray | None, str | None]:
    """The lazy row (zonal) spectrum of ``da`` by band, or the reason there is none."""
    from ..analysis.zonal import latitude_bands, row_spectrum

    valid = None if val is None else val.data_array()
    fd = geo.field_dims
    if geo.latlon:
        if not geo.lon_uniform:
            return None, f"the longitude {geo.lon_dim} is not uniformly spaced (no zonal FFT)"
        rows = geo.area_weights().isel({geo.lon_dim: 0}, drop=True)
        lat = xr.DataArray(geo.lat, dims=(geo.lat_dim,))
        spec = row_spectrum(da, geo.lon_dim, fd, row_weights=rows, valid=valid, periodic=geo.lon_periodic,
                            bands=latitude_bands(lat), spacing=geo.lon_spacing)
        return spec, None
    return row_spectrum(da, fd[-1], fd, valid=valid, periodic=False), None


def _no_rows_reason(v: str, val: Validity | None, geo: Geometry) -> str:
    bad = 0 if val is None else val.points - val.n_valid
    where = "zonal band (latitude row)" if geo.latlon else f"row along {geo.field_dims[-1]}"
    return f"{v} has {bad} invalid points and no complete {where}"


def _first_pass(samples: Side, ref: Side, geo: Geometry, validity: dict[str, Validity]) -> dict[str, Any]:
    """Spectra, weighted moments, ensemble-mean maps and value range of both sides (one Dask pass)."""
    import dask

    from ..analysis import moment_scalars

    w = _weights(geo)
    lazy: dict[str, dict[str, Any]] = {}
    notes: dict[str, dict[str, str]] = {}
    for v in samples.data:
        val = validity.get(v)
        s, r = _restrict(samples, v, val), _restrict(ref, v, val)
        (spec_s, why), (spec_r, _) = _spectrum(s, geo, val), _spectrum(r, geo, val)
        notes[v] = {"spectral_error": why} if why else {}
        lazy[v] = {"spec_s": spec_s, "spec_r": spec_r,
                   "mom_s": moment_scalars(s, weights=w), "mom_r": moment_scalars(r, weights=w),
                   "mean_s": s.mean(samples.dim), "mean_r": r.mean(ref.dim),
                   "lo": [s.min(), r.min()], "hi": [s.max(), r.max()]}
    (got,) = dask.compute(lazy)
    for v in got:
        got[v]["not_computed"] = notes[v]
    return got


def _correlation(x: xr.DataArray, geo: Geometry, val: Validity | None, max_lag: int | None
                 ) -> tuple[xr.DataArray | None, str | None]:
    from ..analysis.correlation import masked_correlation
    from ..analysis.sphere import great_circle_correlation

    valid = None if val is None else val.data_array()
    if geo.latlon:
        if not geo.lon_uniform:
            return None, f"the longitude {geo.lon_dim} is not uniformly spaced"
        return great_circle_correlation(x, geo, valid=valid, max_lag=max_lag), None
    if valid is None:
        valid = xr.DataArray(np.ones(geo.shape, bool), dims=geo.field_dims)
    return masked_correlation(x, geo.field_dims, valid, max_lag=max_lag), None


def geo_compute(samples: Side, ref: Side, bins: int, max_lag: int | None, geo: Geometry,
                validity: dict[str, Validity]) -> dict[str, dict[str, Any]]:
    """The two streaming passes over the valid points; small results per variable.

    Parameters
    ----------
    samples, ref
        The two sides (same field dims).
    bins
        Histogram bins over the joint value range.
    max_lag
        Last correlation bin (``None``: half the largest separation).
    geo
        The grid's geometry.
    validity
        The valid points per variable (:func:`~sciencegen.evaluation.validity.resolve_validity`; may be empty).

    Raises
    ------
    EvaluateError
        No finite value to compare.
    """
    import dask

    from ..analysis import histogram, wasserstein1
    from .metrics import W1_BINS

    w = _weights(geo)
    out: dict[str, dict[str, Any]] = {}
    lazy2: dict[str, dict[str, Any]] = {}
    for v, r1 in _first_pass(samples, ref, geo, validity).items():
        val = validity.get(v)
        s, r = _restrict(samples, v, val), _restrict(ref, v, val)
        edges, lo, hi = histogram_edges(r1["lo"] + r1["hi"], bins, v, " at its valid points")
        out[v] = {k: r1[k] for k in ("spec_s", "spec_r", "not_computed")} | {
            "mom_s": _moment_dict(r1["mom_s"]), "mom_r": _moment_dict(r1["mom_r"]), "edges": edges,
            "range": (lo, hi), "geo": True}
        corr_s, why = _correlation(s - r1["mean_s"], geo, val, max_lag)
        corr_r, _ = _correlation(r - r1["mean_r"], geo, val, max_lag)
        if why:
            out[v]["not_computed"]["correlation"] = why
        lazy2[v] = {"hist_s": histogram(s, bins=edges, density=True, weights=w),
                    "hist_r": histogram(r, bins=edges, density=True, weights=w),
                    "w1": wasserstein1(s, r, bins=W1_BINS, range=(lo, hi), exact=False, weights_a=w, weights_b=w),
                    "corr_s": corr_s, "corr_r": corr_r}
    (res2,) = dask.compute(lazy2)
    for v, r2 in res2.items():
        out[v].update(r2)
    return out


def _moment_dict(ds: xr.Dataset) -> dict[str, float]:
    return {k: float(ds[k]) for k in ("mean", "std", "skewness", "kurtosis")} | {"count": int(ds["count"])}


def _spectrum_metrics(v: str, c: dict[str, Any], geo: Geometry, val: Validity | None) -> dict[str, Any]:
    """The spectral error of the whole band and the band spectra, or the reason there are none."""
    spec_s, spec_r = c["spec_s"], c["spec_r"]
    kind = "zonal" if geo.latlon else "row"
    if spec_s is None or int(spec_s["rows"].sel(band="whole")) == 0:
        reason = c["not_computed"].get("spectral_error") or _no_rows_reason(v, val, geo)
        return {"spectral_error": None, "spectral_shells": None, "not_computed": {"spectral_error": reason}}
    ps = np.asarray(spec_s.sel(band="whole").values, dtype=np.float64)
    pr = np.asarray(spec_r.sel(band="whole").values, dtype=np.float64)
    kmax = ps.size - 1
    shells = resolved_shells(pr, kmax)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(ps[shells] / pr[shells])
    err = float(np.mean(np.abs(logs))) if logs.size and np.all(np.isfinite(logs)) else float("nan")
    k = spec_s["wavenumber"]
    bands = {str(b): {"rows": int(spec_s["rows"].sel(band=b)), "sample": spec_s.sel(band=b).values,
                      "reference": spec_r.sel(band=b).values}
             for b in spec_s["band"].values if int(spec_s["rows"].sel(band=b)) > 0}
    spectrum = {"kind": kind, "wavenumber": np.asarray(k.values), "wavenumber_long_name": k.attrs.get("long_name"),
                "wavenumber_units": k.attrs.get("units"), "sample": ps, "reference": pr, "bands": bands,
                "window": spec_s.attrs.get("window"), "rows": int(spec_s.attrs.get("rows_used", 0)),
                "rows_total": int(spec_s.attrs.get("rows_total", 0))}
    out = {"spectral_error": err, "spectral_shells": [int(shells[0]), int(shells[-1])] if shells.size else [1, kmax],
           "spectral_error_kind": f"{kind} spectrum, whole {'grid' if geo.latlon else 'field'} (complete rows)",
           "spectrum": spectrum, "not_computed": {}}
    if not math.isfinite(err):
        out["not_computed"]["spectral_error"] = "a spectrum has a zero or non-finite power at a resolved wavenumber"
    return out


def _correlation_metrics(c: dict[str, Any]) -> dict[str, Any]:
    cs, cr = c["corr_s"], c["corr_r"]
    d = cs["distance"] if "distance" in cs.coords else cs["separation"]
    corr = {"separation": np.asarray(cs["separation"].values), "sample": np.asarray(cs.values),
            "reference": np.asarray(cr.values), "center": "ensemble-mean map (computed in the first pass)",
            "distance": np.asarray(d.values), "distance_units": str(d.attrs.get("units", "")),
            "distance_long_name": str(d.attrs.get("long_name", "separation")),
            "estimator": cs.attrs.get("estimator")}
    diff = np.abs(corr["sample"] - corr["reference"])
    corr["max_abs_diff"] = float(np.nanmax(diff)) if np.isfinite(diff).any() else None
    return corr


def geo_variable_metrics(v: str, c: dict[str, Any], samples: Side, ref: Side, units: str, geo: Geometry,
                         val: Validity | None) -> dict[str, Any]:
    """The metrics of ``v`` from :func:`geo_compute`'s results, as ``metrics.json`` has them.

    Beside the keys of the plane metrics: ``valid_points`` (how many, from which masks), ``weighting``,
    ``spectrum["bands"]`` and ``not_computed`` (metric -> reason).
    """
    spec = _spectrum_metrics(v, c, geo, val)
    not_computed = {**c["not_computed"], **spec.pop("not_computed")}
    m: dict[str, Any] = {"units": units, **{k: x for k, x in spec.items() if k != "spectrum"}}
    if val is not None:
        m["valid_points"] = val.record()
    m["weighting"] = "cos(latitude) area weights" if geo.latlon else "equal weights"
    m["moments"] = {"sample": c["mom_s"], "reference": c["mom_r"], "weighted": geo.latlon}
    w1 = c["w1"]
    m["w1"] = float(w1)
    sd = c["mom_r"]["std"]
    m["w1_normalised"] = float(w1) / sd if sd > 0 else float("nan")
    m["w1_max_discretisation_error"] = float(w1.attrs.get("max_discretisation_error", float("nan")))
    hs, hr = c["hist_s"], c["hist_r"]
    m["histogram"] = {"edges": c["edges"], "sample": np.asarray(hs.values), "reference": np.asarray(hr.values),
                      "density": True, "weighted": geo.latlon}
    if c.get("corr_s") is not None:
        m["correlation"] = _correlation_metrics(c)
        if m["correlation"]["max_abs_diff"] is None:
            not_computed["correlation"] = "no valid pair of points at any separation"
    else:
        m["correlation"] = {"max_abs_diff": None}
    if "spectrum" in spec:
        m["spectrum"] = spec["spectrum"]
    m["not_computed"] = not_computed
    return m
