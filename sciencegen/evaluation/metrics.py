"""The metrics: two streaming Dask passes over both sides, then the small per-variable results.

Everything is computed with :mod:`sciencegen.analysis` on Dask arrays in two streaming passes (spectra,
moments, ensemble-mean maps and value range; then histograms, Wasserstein distance and the two-point
correlation centred on the ensemble-mean maps of the first pass), with tasks of about
:data:`~sciencegen.evaluation.common.TASK_BYTES` of float32 fields, so memory is bounded by a few tasks
whatever the store size.

Adding a metric: compute it lazily in :func:`compute` (first pass if it needs nothing of the other, second
if it needs the value range or the mean maps), then turn the computed result into numbers in
:func:`variable_metrics`; ``metrics.json`` records whatever that returns, and :mod:`~sciencegen.evaluation.report`
decides what the report and the summary show.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..analysis.geometry import Geometry
from ..analysis.panels import panel_axis
from .common import EvaluateError, Side, first_line, histogram_edges, resolved_shells

__all__ = ["W1_BINS", "compute", "field_units", "grid_of", "panel_arrays", "panels", "scheduler", "variable_metrics"]

#: common bins of the streaming Wasserstein distance (its discretisation error is at most one bin width)
W1_BINS = 4096


@contextlib.contextmanager
def scheduler(address: Any, threads: Any) -> Iterator[str]:
    """Dask scheduler for the computation: a client at ``address``, a running client, or local threads.

    Yields
    ------
    str
        What the computation runs on, for the report (``local Dask threads (2)``, ``Dask distributed client ...``).
    """
    import dask

    client, owned = None, False
    if address:
        try:
            from distributed import Client

            client = Client(str(address), timeout="20s")
        except Exception as exc:
            raise EvaluateError(f"evaluate.dask={address}: cannot connect to the Dask scheduler: "
                                f"{first_line(exc)}") from None
        owned = True
    else:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):
            client = None
    try:
        if client is not None:
            with dask.config.set(scheduler=client):
                yield f"Dask distributed client {client.scheduler.address}"
        else:
            n = int(threads) if threads else (os.cpu_count() or 1)
            with dask.config.set(scheduler="threads", num_workers=n):
                yield f"local Dask threads ({n})"
    finally:
        if owned:
            with contextlib.suppress(Exception):
                client.close()


def _spectral_error(p: np.ndarray, q: np.ndarray, shells: np.ndarray) -> float:
    """``mean_k |log(p_k / q_k)|`` over the shells ``shells`` (NaN when a ratio is not positive and finite)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.log(p[shells] / q[shells])
    return float(np.mean(np.abs(r))) if np.all(np.isfinite(r)) else float("nan")


def _moment_dict(ds: xr.Dataset) -> dict[str, float]:
    return {k: float(ds[k]) for k in ("mean", "std", "skewness", "kurtosis")} | {"count": int(ds["count"])}


def _first_pass(samples: Side, ref: Side) -> dict[str, dict[str, Any]]:
    """Spectra, moments, ensemble-mean maps and value range of both sides, computed in one Dask pass."""
    import dask

    from ..analysis import isotropic_spectrum, moment_scalars

    fd = ref.field_dims
    lazy: dict[str, dict[str, Any]] = {}
    for v in samples.data:
        s, r = samples.data[v], ref.data[v]
        lazy[v] = {
            "spec_s": isotropic_spectrum(s, dims=fd), "spec_r": isotropic_spectrum(r, dims=fd),
            "mom_s": moment_scalars(s), "mom_r": moment_scalars(r),
            "mean_s": s.mean(samples.dim), "mean_r": r.mean(ref.dim),
            "lo": [s.where(np.isfinite(s)).min(), r.where(np.isfinite(r)).min()],
            "hi": [s.where(np.isfinite(s)).max(), r.where(np.isfinite(r)).max()],
        }
    (got,) = dask.compute(lazy)
    return got


def grid_of(samples: Side, ref: Side) -> Geometry:
    """The geometry of the compared grid, from the reference's coordinates (else the samples')."""
    from ..analysis.geometry import grid_geometry

    v0 = next(iter(ref.data))
    geo = grid_geometry(ref.data[v0], ref.field_dims)
    return geo if geo.latlon else grid_geometry(samples.data[v0], ref.field_dims)


def compute(samples: Side, ref: Side, bins: int, max_lag: int | None) -> dict[str, dict[str, Any]]:
    """The two streaming passes; returns small numpy/xarray results per variable.

    A plane grid without masks gets the plane metrics; a latitude-longitude grid or a masked variable the
    metrics of :mod:`~sciencegen.evaluation.geo_metrics` on the valid points (found first by
    :func:`~sciencegen.evaluation.validity.resolve_validity`). The memorisation check
    (:mod:`~sciencegen.evaluation.memorisation`) runs last; its result goes to ``samples.extras``.

    Parameters
    ----------
    samples, ref
        The two sides (same field dims, :func:`~sciencegen.evaluation.references.check_grid`).
    bins
        Histogram bins over the joint value range.
    max_lag
        Largest separation shell of the two-point correlation (``None``: half the smallest side).

    Raises
    ------
    EvaluateError
        NaN values in the evaluated members (at valid points), or no finite value to compare.
    """
    from .geo_metrics import geo_compute
    from .memorisation import memorisation_check
    from .validity import resolve_validity

    request = ref.request
    dataset = request.dataset if request is not None else {}
    geo = grid_of(samples, ref)
    validity = resolve_validity(dataset, samples, ref)
    if geo.latlon or validity:
        out = geo_compute(samples, ref, bins, max_lag, geo, validity)
        for v in out:
            out[v] |= {"geometry": geo, "validity": validity.get(v)}
    else:
        out = _plane_compute(samples, ref, bins, max_lag)
    samples.extras["geometry"] = geo
    samples.extras["memorisation"] = memorisation_check(samples, ref, geo, validity)
    return out


def _plane_compute(samples: Side, ref: Side, bins: int, max_lag: int | None) -> dict[str, dict[str, Any]]:
    """The two streaming passes of a plane grid without masks (the metrics as they always were)."""
    import dask

    from ..analysis import histogram, spatial_correlation, wasserstein1

    fd = ref.field_dims
    out: dict[str, dict[str, Any]] = {}
    lazy2: dict[str, dict[str, Any]] = {}
    for v, r1 in _first_pass(samples, ref).items():
        s, r = samples.data[v], ref.data[v]
        ms, mr = _moment_dict(r1["mom_s"]), _moment_dict(r1["mom_r"])
        expected_s = int(np.prod([s.sizes[d] for d in s.dims]))
        if ms["count"] != expected_s:
            raise EvaluateError(f"samples {samples.info['path']}: {expected_s - ms['count']} NaN values in the "
                                f"complete members of {v} (a corrupt or foreign store)")
        edges, lo, hi = histogram_edges(r1["lo"] + r1["hi"], bins, v)
        out[v] = {"spec_s": r1["spec_s"], "spec_r": r1["spec_r"], "mom_s": ms, "mom_r": mr, "edges": edges,
                  "range": (lo, hi)}
        lazy2[v] = {
            "hist_s": histogram(s, bins=edges, density=True), "hist_r": histogram(r, bins=edges, density=True),
            "w1": wasserstein1(s, r, bins=W1_BINS, range=(lo, hi), exact=False),
            "corr_s": spatial_correlation(s - r1["mean_s"], dims=fd, max_lag=max_lag, center=None),
            "corr_r": spatial_correlation(r - r1["mean_r"], dims=fd, max_lag=max_lag, center=None),
        }
    (res2,) = dask.compute(lazy2)
    for v, r2 in res2.items():
        out[v].update(r2)
    return out


def _spectrum_metrics(c: dict[str, Any], shape: Sequence[int], exact: np.ndarray | None) -> dict[str, Any]:
    """Spectral errors (against the exact spectrum where there is one) and the spectra themselves."""
    spec_s, spec_r = c["spec_s"], c["spec_r"]
    modes = np.asarray(spec_s["modes"].values)
    kmax = min(shape) // 2
    ps, pr = np.asarray(spec_s.values, dtype=np.float64), np.asarray(spec_r.values, dtype=np.float64)
    shells = resolved_shells(exact if exact is not None else pr, kmax)
    m: dict[str, Any] = {}
    spectrum = {"wavenumber": np.asarray(spec_s["wavenumber"].values), "modes": modes,
                "complete": np.asarray(spec_s["complete"].values, dtype=bool), "sample": ps}
    if exact is not None:
        m["spectral_error"] = _spectral_error(ps, exact, shells)
        m["spectral_error_floor"] = _spectral_error(pr, exact, shells)
        if len(set(shape)) == 1:
            m["spectral_error_all_shells"] = _spectral_error(ps, exact, np.flatnonzero(modes > 0))
        spectrum |= {"reference": exact, "reference_samples": pr}
    else:
        m["spectral_error"] = _spectral_error(ps, pr, shells)
        spectrum |= {"reference": pr}
    m["spectral_shells"] = [int(shells[0]), int(shells[-1])] if shells.size else [1, kmax]
    if shells.size and int(shells[-1]) < kmax:
        m["spectral_shells_note"] = (f"shells {int(shells[-1]) + 1}..{kmax} left out: the reference holds less than "
                                     "1e-10 of its peak power there (e.g. a solver's dealiasing)")
    return m | {"spectrum": spectrum}


def _correlation_metrics(c: dict[str, Any]) -> dict[str, Any]:
    """Both two-point correlation curves, their separations (and distances) and their largest difference."""
    cs, cr = c["corr_s"], c["corr_r"]
    corr = {"separation": np.asarray(cs["separation"].values), "sample": np.asarray(cs.values),
            "reference": np.asarray(cr.values), "center": "ensemble-mean map (computed in the first pass)"}
    if "distance" in cs.coords:
        corr["distance"] = np.asarray(cs["distance"].values)
        corr["distance_units"] = str(cs["distance"].attrs.get("units", ""))
    corr["max_abs_diff"] = float(np.nanmax(np.abs(corr["sample"] - corr["reference"])))
    return corr


def variable_metrics(v: str, c: dict[str, Any], samples: Side, ref: Side, units: str) -> dict[str, Any]:
    """The metrics of variable ``v`` from its computed results ``c`` (:func:`compute`), as ``metrics.json`` has them.

    The exact law's spectrum and moments (``ref.law_spectrum``, ``ref.law_moments``) are the reference where the
    reference side carries them.
    """
    if c.get("geo"):
        from .geo_metrics import geo_variable_metrics

        return geo_variable_metrics(v, c, samples, ref, units, c["geometry"], c["validity"])
    shape = [int(samples.data[v].sizes[d]) for d in ref.field_dims]
    exact = None if ref.law_spectrum is None else ref.law_spectrum[v]
    exact_mom = ref.law_moments
    spec = _spectrum_metrics(c, shape, exact)
    m: dict[str, Any] = {"units": units, **{k: x for k, x in spec.items() if k != "spectrum"}}
    mom = {"sample": c["mom_s"], "reference": c["mom_r"]}
    if exact_mom is not None:
        mom["exact"] = exact_mom
    m["moments"] = mom
    w1 = c["w1"]
    m["w1"] = float(w1)
    sd = exact_mom["std"] if exact_mom is not None else c["mom_r"]["std"]
    m["w1_normalised"] = float(w1) / sd if sd > 0 else float("nan")
    m["w1_max_discretisation_error"] = float(w1.attrs.get("max_discretisation_error", float("nan")))
    hs, hr = c["hist_s"], c["hist_r"]
    m["histogram"] = {"edges": c["edges"], "sample": np.asarray(hs.values), "reference": np.asarray(hr.values),
                      "density": True}
    m["correlation"] = _correlation_metrics(c)
    m["spectrum"] = spec["spectrum"]
    return m


def field_units(ds: xr.Dataset, ref: Side, variables: Sequence[str]) -> dict[str, str]:
    """Units per variable: the samples store's ``units`` attribute, else the reference's."""
    return {v: str(ds[v].attrs.get("units", "") or ref.data[v].attrs.get("units", "")) for v in variables}


def panels(samples: Side, ref: Side, variables: Sequence[str], panel: int) -> dict[str, tuple[Any, Any]]:
    """The first ``panel`` fields of each side per variable, computed (for ``samples.png``)."""
    import dask

    npanel = min(panel, samples.count, ref.count)
    lazy = {v: (samples.data[v].isel(member=slice(0, npanel)), ref.data[v].isel(sample=slice(0, npanel)))
            for v in variables}
    (got,) = dask.compute(lazy)
    return got


def panel_arrays(panels: dict[str, Any], field_dims: tuple[str, ...],
                 ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], dict[str, tuple[np.ndarray, ...]]]:
    """The panel fields as float64 arrays with member numbers, and the field coordinates, per variable."""
    fields, coords = {}, {}
    for v, (g, r) in panels.items():
        ids = np.asarray(g["member"].values) if "member" in g.coords else np.arange(g.shape[0])
        fields[v] = (np.asarray(g.values, dtype=np.float64), np.asarray(r.values, dtype=np.float64), ids)
        coords[v] = tuple(panel_axis(g[d]) if d in g.coords else panel_axis(None, d, g.sizes[d])  # names, units
                          for d in field_dims)
    return fields, coords
