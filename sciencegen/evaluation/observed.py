"""Scores of an observation-conditioned ensemble store: observed and unobserved points, χ², the exact posterior.

Gaussian conditioning (e.g. Rasmussen & Williams 2006, eq. 2.19-2.24) for the exact posterior and its χ²; fair CRPS
(Ferro 2014); closed-form Gaussian CRPS (Gneiting et al. 2005); spread/skill corrected (Fortin et al. 2014).

An observation store (written by ``sciencegen-generate ... observe.*``, docs/generate.md) has the conditional
layout (:mod:`~sciencegen.evaluation.cond_store`) plus the observations of each case: ``obs_value`` and
``obs_noise`` over ``(condition, observation)`` (NaN in padding), ``obs_index`` / ``obs_weight`` over
``(condition, observation, support)`` (flat C-order positions in a field ``(V, *field)`` over the variables of the
root attribute ``sciencegen_variables``, -1 / 0 in padding), and the root attribute ``sciencegen_observations``.
Observation ``i`` reads ``sum_j weight[i, j] x.flat[index[i, j]]`` (``H x``); the *observed* points of a variable
are its support (weight > 0 in some observation of the case), the others are *unobserved*.

Per variable, over the evaluated cases with a known truth, each method is scored at observed and at unobserved
points (means over every such point of every case): the generated members, the exact Gaussian posterior where the
dataset's law is a :class:`~sciencegen.targets.GaussianRandomField` (``ObservedGRF`` per case, closed-form CRPS),
the leave-one-out climatology ``N(mean, std)`` of the other cases' truths per point, and for observations on a
regular sparse grid (kind ``stride``, 2-D) bicubic interpolation of the observations. χ² (no truth needed): per
member, the mean over observations of ``((y - H x) / s)²``; the truth's (mean 1); and where the exact posterior is
known, the exact expectation of a posterior sample's, ``mean_i [((y - H m) / s)² + (H P Hᵀ)_ii / s²]``.
Everything is computed lazily, one Dask task per case and variable (its members), one per case for the exact
posterior.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr

from ..analysis import crps_ensemble, crps_gaussian
from ..analysis.observed_figures import observation_display
from .common import first_line
from .cond_store import CondStore

__all__ = ["DENSE_ENTRIES", "DENSE_OBSERVATIONS", "OBSERVATIONS_ATTR", "CaseObs", "ObservedPlan", "StoredOperator",
           "case_scores", "exact_field", "is_observed", "lattice", "lattice_bicubic", "observation_order",
           "plan_observed"]

#: root attribute of an observation-conditioned store (JSON)
OBSERVATIONS_ATTR = "sciencegen_observations"
#: the exact expected χ² of non-mask observations needs a dense ``m x m`` solve: at most this many observations
DENSE_OBSERVATIONS = 4096
#: ... and at most this many entries of ``Σ Hᵀ`` (``m · field size``)
DENSE_ENTRIES = 1 << 24
#: the cases drawn in ``observed_<var>.png``
SHOWN = 3
#: the subsets of points scored
SUBSETS = ("observed", "unobserved")


def is_observed(ds: xr.Dataset) -> bool:
    """Whether an opened store holds observation-conditioned ensembles (its ``sciencegen_observations`` attr)."""
    return bool(ds.attrs.get(OBSERVATIONS_ATTR))


def _json(text: Any) -> Any:
    if isinstance(text, str):
        try:
            return json.loads(text)
        except ValueError:
            return None
    return text


def observation_order(ds: xr.Dataset, fallback: Sequence[str]) -> tuple[str, ...]:
    """The variables of the ``V`` axis of ``obs_index``: the root attribute ``sciencegen_variables``, else
    ``fallback`` (the store's generated variables)."""
    got = _json(ds.attrs.get("sciencegen_variables"))
    if isinstance(got, Sequence) and not isinstance(got, str) and got:
        return tuple(str(v) for v in got)
    return tuple(fallback)


@dataclass(frozen=True)
class StoredOperator:
    """``H`` of one case rebuilt from the stored ``obs_index`` / ``obs_weight`` (the operator ``ObservedGRF``
    takes: ``apply``, ``adjoint``, ``count``, ``shape``, ``dense()``).

    Attributes
    ----------
    index
        ``[m, J]`` flat C-order positions in a field of :attr:`shape` (long; padding slots 0 with weight 0).
    weight
        ``[m, J]`` weights (float64).
    shape
        ``(V, *field)``.
    """

    index: torch.Tensor
    weight: torch.Tensor
    shape: tuple[int, ...]

    @property
    def count(self) -> int:
        """Number of observations ``m``."""
        return int(self.index.shape[0])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``H x``: ``[B, m]`` from fields ``[B, *shape]``."""
        flat = x.reshape(x.shape[0], -1)
        return (flat[:, self.index] * self.weight.to(x.dtype)).sum(-1)

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """``Hᵀ r``: fields ``[B, *shape]`` from ``[B, m]``."""
        vals = (r[:, :, None] * self.weight.to(r.dtype)).reshape(r.shape[0], -1)
        out = torch.zeros(r.shape[0], math.prod(self.shape), dtype=r.dtype)
        out.index_add_(1, self.index.reshape(-1), vals)
        return out.reshape(r.shape[0], *self.shape)

    def dense(self) -> torch.Tensor:
        """``H`` as a dense ``[m, prod(shape)]`` float64 matrix."""
        return self.adjoint(torch.eye(self.count, dtype=torch.float64)).reshape(self.count, -1)

    def is_mask(self) -> bool:
        """Whether every observation is one field point with weight 1."""
        return bool(((self.weight != 0).sum(1) == 1).all()) and bool(((self.weight == 1).sum(1) == 1).all())

    def channel(self) -> torch.Tensor:
        """``[m]``: the variable each observation reads."""
        return self.index[:, 0] // math.prod(self.shape[1:])


@dataclass
class CaseObs:
    """The observations of one case: ``H``, ``y`` and ``s`` (physical units)."""

    operator: StoredOperator
    value: np.ndarray
    noise: np.ndarray


def _read_cases(ds: xr.Dataset, shape: tuple[int, ...], cases: np.ndarray) -> dict[int, CaseObs]:
    """The observations of ``cases`` from the stored arrays (padding rows dropped)."""
    value = np.asarray(ds["obs_value"].values, dtype=np.float64)
    noise = np.asarray(ds["obs_noise"].values, dtype=np.float64)
    index = np.asarray(ds["obs_index"].values, dtype=np.int64)
    weight = np.asarray(ds["obs_weight"].values, dtype=np.float64)
    if index.ndim == 2:  # no support dim: one point per observation
        index, weight = index[..., None], weight[..., None]
    out = {}
    for c in cases:
        rows = np.isfinite(value[c]) & (index[c, :, 0] >= 0)
        w = np.where(index[c][rows] >= 0, weight[c][rows], 0.0)
        idx = np.where(index[c][rows] >= 0, index[c][rows], 0)
        if idx.size and (idx.max() >= math.prod(shape)):
            raise ValueError(f"obs_index of condition {int(c)} points outside a field of shape {shape}")
        op = StoredOperator(torch.as_tensor(idx), torch.as_tensor(w), shape)
        out[int(c)] = CaseObs(op, value[c][rows], noise[c][rows])
    return out


# --------------------------------------------------------------------------------------------- the exact posterior


def _hph(op: StoredOperator, noise: np.ndarray, var: np.ndarray, field: Any) -> np.ndarray | None:
    """``diag(H P Hᵀ)`` of the exact posterior: the posterior variance at the points of a mask, else from the
    dense ``K = H Σ Hᵀ + S`` (``H P Hᵀ = S - S K⁻¹ S``) when small enough, else ``None``."""
    if op.is_mask():
        return var.reshape(-1)[op.index[:, 0].numpy()]
    m, size = op.count, math.prod(op.shape)
    if m > DENSE_OBSERVATIONS or m * size > DENSE_ENTRIES:
        return None
    ht = op.adjoint(torch.eye(m, dtype=torch.float64))  # [m, *shape]
    sig_ht = field.colour(field.colour(ht))  # Σ Hᵀ (Σ = C C, C the symmetric colouring filter)
    s2 = torch.as_tensor(noise, dtype=torch.float64) ** 2
    k = op.apply(sig_ht) + torch.diag(s2)
    k = 0.5 * (k + k.T)
    kinv = torch.cholesky_inverse(torch.linalg.cholesky(k))
    return (s2 - s2 * s2 * kinv.diagonal()).numpy()


def _exact_case(field: Any, obs: CaseObs) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The exact posterior of one case: mean and variance ``(V, *field)`` and ``diag(H P Hᵀ)`` (or ``None``)."""
    from ..targets import ObservedGRF

    value = torch.as_tensor(obs.value, dtype=torch.float64)
    noise = torch.as_tensor(obs.noise, dtype=torch.float64)
    post = ObservedGRF(field, obs.operator, value, noise)
    mean = post.posterior_mean().double().numpy()
    var = post.posterior_variance().double().numpy()
    return mean, var, _hph(obs.operator, obs.noise, var, field)


def exact_field(dataset: Mapping[str, Any], shape: tuple[int, ...]) -> tuple[Any, str | None]:
    """The dataset's law when it is a :class:`~sciencegen.targets.GaussianRandomField` of ``shape`` (``(V,
    *field)``), else ``None`` and why (``None`` when the dataset simply has no exact law)."""
    from ..models.oracle import exact_law
    from ..targets import GaussianRandomField

    try:
        law = exact_law(dict(dataset))
    except Exception as exc:  # a law that cannot be built must not stop the evaluation
        return None, f"the exact posterior is not scored: exact_law failed ({first_line(exc)})"
    if law is None:
        return None, None
    if not isinstance(law, GaussianRandomField):
        return None, (f"the exact posterior is not scored: the dataset's law is a {type(law).__name__}, known under "
                      "observations only for an unconditional Gaussian random field")
    if tuple(law.shape) != tuple(shape):
        return None, f"the exact posterior is not scored: the law's fields are {tuple(law.shape)}, the store's {shape}"
    return law, None


# --------------------------------------------------------------------------------------------- bicubic baseline


def lattice(positions: np.ndarray, shape: Sequence[int]) -> tuple[list[int], list[int]] | None:
    """The offset and stride per dim of points (flat C-order ``positions`` in a field of ``shape``) that form a
    full regular lattice, else ``None``."""
    if positions.size == 0:
        return None
    coords = np.unravel_index(np.asarray(positions), tuple(shape))
    offset, stride, counts = [], [], []
    for c in coords:
        u = np.unique(c)
        step = int(u[1] - u[0]) if u.size > 1 else 0
        if u.size < 2 or not np.all(np.diff(u) == step):
            return None
        offset.append(int(u[0]))
        stride.append(step)
        counts.append(u.size)
    if len(np.unique(positions)) != math.prod(counts):
        return None
    return offset, stride


# Bicubic convolution interpolation (Keys 1981, a = -0.75 as in PyTorch) of a regular sparse grid of observations.
def lattice_bicubic(values: np.ndarray, offset: Sequence[int], stride: Sequence[int], shape: Sequence[int],
                    periodic: Sequence[bool]) -> np.ndarray:
    """Interpolate lattice values ``(L0, L1)`` at grid points ``offset + stride · k`` to the grid ``shape`` (2-D).

    Each dim is padded by two lattice points (wrapping around a periodic dim, repeating the edge value otherwise),
    then ``torch.nn.functional.interpolate(mode="bicubic", align_corners=True)`` places one output point per grid
    point, so lattice points keep their values.
    """
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(values, dtype=np.float64))[None, None]
    for d in range(2):
        pad = (0, 0, 2, 2) if d == 0 else (2, 2, 0, 0)
        t = F.pad(t, pad, mode="circular" if periodic[d] else "replicate")
    size = tuple((int(values.shape[d]) + 3) * int(stride[d]) + 1 for d in range(2))
    up = F.interpolate(t, size=size, mode="bicubic", align_corners=True)[0, 0]
    start = [2 * int(stride[d]) - int(offset[d]) for d in range(2)]
    return up[start[0]:start[0] + shape[0], start[1]:start[1] + shape[1]].numpy()


def _bicubic(idx: np.ndarray, weight: np.ndarray, value: np.ndarray, shape: tuple[int, ...], periodic: Sequence[bool]
             ) -> tuple[np.ndarray | None, str | None]:
    """The bicubic baseline of one case's mask observations of a variable (local flat ``idx``), or why not."""
    if len(shape) != 2:
        return None, f"no bicubic baseline on a {len(shape)}-D grid (2-D only)"
    if idx.ndim != 2 or idx.size == 0 or not bool((weight == 1).all()) or idx.shape[1] != 1:
        return None, "the observations are not single grid points: no bicubic baseline"
    idx = idx[:, 0]
    got = lattice(idx, shape)
    if got is None:
        return None, "the observed points do not form a regular lattice: no bicubic baseline"
    offset, stride = got
    counts = [len(range(o, n, s)) for o, n, s in zip(offset, shape, stride, strict=True)]
    if any(p and n % s for p, n, s in zip(periodic, shape, stride, strict=True)) or min(counts) < 2:
        return None, "the lattice does not tile the periodic grid: no bicubic baseline"
    grid = np.full(counts, np.nan)
    pos = np.unravel_index(idx, shape)
    grid[tuple((p - o) // s for p, o, s in zip(pos, offset, stride, strict=True))] = value
    return lattice_bicubic(grid, offset, stride, shape, periodic), None


# --------------------------------------------------------------------------------------------- one case


def _sums(crps: np.ndarray, err2: np.ndarray, var: np.ndarray | None, masks: dict[str, np.ndarray]
          ) -> dict[str, list[float]]:
    """``{subset: [crps sum, err² sum, variance sum, points]}``."""
    return {k: [float(crps[m].sum()), float(err2[m].sum()), float(var[m].sum()) if var is not None else float("nan"),
                float(m.sum())] for k, m in masks.items()}


def case_scores(x: np.ndarray, truth: np.ndarray | None, obs: Mapping[str, np.ndarray], exact: Any,
                climate: tuple[np.ndarray, np.ndarray] | None, bicubic: np.ndarray | None, keep: bool
                ) -> dict[str, Any]:
    """The scores of one case and variable.

    Parameters
    ----------
    x
        Members ``(M, *field)``.
    truth
        ``(*field)``, ``None`` where unknown.
    obs
        ``index``, ``weight`` (``[m, J]``, flat positions in the variable's field), ``value``, ``noise`` (``[m]``),
        ``support`` (bool ``(*field)``).
    exact
        ``(mean, var, hph)`` of the variable (``hph`` ``[m]`` or ``None``), or ``None``.
    climate
        The leave-one-out climatology's mean and std per point, or ``None``.
    bicubic
        The bicubic baseline field, or ``None``.
    keep
        Also return the member mean and std (figure).
    """
    x = np.asarray(x, dtype=np.float64)
    hx = (x.reshape(x.shape[0], -1)[:, obs["index"]] * obs["weight"]).sum(-1)
    seen = hx.shape[1] > 0  # the variable is observed in this case
    out: dict[str, Any] = {"chi2": (((obs["value"] - hx) / obs["noise"]) ** 2).mean(1) if seen
                           else np.full(x.shape[0], np.nan), "scores": {}}
    if exact is not None and seen:
        mean, var, hph = exact
        r = (obs["value"] - (mean.reshape(-1)[obs["index"]] * obs["weight"]).sum(-1)) / obs["noise"]
        out["exact_chi2"] = None if hph is None else float((r * r + hph / obs["noise"] ** 2).mean())
    if keep:
        out["panel"] = {"mean": x.mean(0), "std": x.std(0, ddof=1)}
    if truth is None:
        return out
    t = np.asarray(truth, dtype=np.float64)
    th = (t.reshape(-1)[obs["index"]] * obs["weight"]).sum(-1)
    out["truth_chi2"] = float((((obs["value"] - th) / obs["noise"]) ** 2).mean()) if seen else float("nan")
    masks = {"observed": obs["support"], "unobserved": ~obs["support"]}
    fc = xr.DataArray(x, dims=("member", *[f"d{i}" for i in range(t.ndim)]))
    crps = np.asarray(crps_ensemble(fc, xr.DataArray(t, dims=fc.dims[1:]), fair=True, dims=()).values)
    out["scores"]["model"] = _sums(crps, (x.mean(0) - t) ** 2, x.var(0, ddof=1), masks)
    gauss = {"exact": None if exact is None else (exact[0], np.sqrt(np.maximum(exact[1], 0.0))),
             "climatology": climate}
    for name, law in gauss.items():
        if law is not None:
            mu, sd = law
            c = np.asarray(crps_gaussian(xr.DataArray(mu), xr.DataArray(np.where(sd > 0, sd, 1.0)), xr.DataArray(t),
                                         dims=()).values)
            c = np.where(sd > 0, c, np.abs(mu - t))  # a point mass: the absolute error
            out["scores"][name] = _sums(c, (mu - t) ** 2, sd * sd, masks)
    if bicubic is not None:
        out["scores"]["bicubic"] = _sums(np.abs(bicubic - t), (bicubic - t) ** 2, None, masks)
    return out


def _case_task(x: np.ndarray, exact_all: Any, sums: np.ndarray | None, spec: Mapping[str, Any]) -> dict[str, Any]:
    """One case and variable: the exact posterior of the variable sliced out, the climatology and the bicubic
    baseline built, then :func:`case_scores`."""
    obs, truth, j = spec["obs"], spec["truth"], spec["j"]
    exact = None
    if exact_all is not None:
        mean, var, hph = exact_all
        exact = (mean[j], var[j], None if hph is None else hph[spec["rows"]])
    climate = None
    if sums is not None and truth is not None:
        k = spec["known"]
        mu = (sums[0] - truth) / (k - 1)
        var = (sums[1] - truth * truth - (k - 1) * mu * mu) / (k - 2)
        climate = (mu, np.sqrt(np.maximum(var, 0.0)))
    bicubic, why = None, spec.get("no_bicubic")
    if why is None and truth is not None:
        bicubic, why = _bicubic(obs["index"], obs["weight"], obs["value"], truth.shape, spec["periodic"])
    out = case_scores(x, truth, obs, exact, climate, bicubic, spec["keep"])
    out["bicubic_note"] = why
    if spec["keep"] and exact is not None:
        out["panel"] |= {"exact_mean": exact[0], "exact_std": np.sqrt(np.maximum(exact[1], 0.0))}
    return out


def _variable_obs(case: CaseObs, j: int, field_shape: tuple[int, ...]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The observations of variable ``j`` in one case (positions local to its field) and their rows."""
    size = math.prod(field_shape)
    idx, w = case.operator.index.numpy(), case.operator.weight.numpy()
    rows = np.flatnonzero(idx[:, 0] // size == j) if idx.size else np.zeros(0, dtype=np.int64)
    local = idx[rows] - j * size
    support = np.zeros(size, dtype=bool)
    support[local[w[rows] > 0]] = True
    return {"index": local, "weight": w[rows], "value": case.value[rows], "noise": case.noise[rows],
            "support": support.reshape(field_shape)}, rows


def _subset(s: Sequence[float], members: int | None) -> dict[str, Any]:
    """The numbers of one method on one subset from its pooled sums (``members`` ``None``: exact Gaussian law,
    ``0``: a deterministic field)."""
    crps, err2, var, n = s
    if not n:
        return {"points": 0, "crps": None, "rmse": None, "spread": None, "spread_skill": None}
    rmse = math.sqrt(err2 / n)
    spread = math.sqrt(var / n) if members != 0 else None
    ratio = None
    if spread is not None and rmse > 0:
        ratio = spread / rmse * (math.sqrt((members + 1) / members) if members else 1.0)
    return {"points": int(n), "crps": crps / n, "rmse": rmse, "spread": spread, "spread_skill": ratio}


#: the methods scored at observed and unobserved points: (CRPS kind, description)
METHODS = {"model": ("fair CRPS", "the generated members"),
           "exact": ("Gaussian CRPS", "the exact Gaussian posterior (ObservedGRF) of each case: its mean and variance"),
           "climatology": ("Gaussian CRPS", "N(mean, std) per point of the other cases' truths (leave-one-out)"),
           "bicubic": ("absolute error", "bicubic interpolation of the observations on their regular grid "
                                         "(torch interpolate, align_corners=True, wrapped on periodic dims)")}


@dataclass
class ObservedPlan:
    """The observation scores of a store: what to compute (:attr:`lazy`, one Dask pass with the conditional
    scores), then :meth:`finish`.

    Attributes
    ----------
    store
        The conditional store.
    attrs
        The ``sciencegen_observations`` attribute.
    order
        The variables along the ``V`` axis of ``obs_index``.
    cases
        The observations of each evaluated case.
    notes
        Notes for the report.
    lazy
        ``{variable: {case: delayed scores}}``.
    exact
        Whether the exact posterior is scored.
    """

    store: CondStore
    attrs: dict[str, Any]
    order: tuple[str, ...]
    cases: dict[int, CaseObs]
    notes: list[str] = field(default_factory=list)
    lazy: dict[str, dict[int, Any]] = field(default_factory=dict)
    exact: bool = False

    def finish(self, got: Mapping[str, Mapping[int, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The ``observed`` section of ``metrics.json`` and the panels of the figures from the computed scores."""
        variables, panels = {}, {}
        for v, per in got.items():
            variables[v] = self._variable(v, per)
            shown = [c for c, g in per.items() if "panel" in g]
            if shown:
                panels[v] = self._panels(v, shown, per)
        used = {"model"} | {k for m in variables.values() for k in m["scores"]}
        section = {"kind": self.attrs.get("kind"), "settings": self.attrs, "cases": len(self.cases),
                   "exact": self.exact, "notes": self.notes, "variables": variables,
                   "methods": {k: d for k, (_, d) in METHODS.items() if k in used}}
        return section, panels

    def _variable(self, v: str, per: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
        store = self.store
        known = [c for c, g in per.items() if "truth_chi2" in g]
        counts = [self._count(v, c) for c in per]
        chi = np.stack([g["chi2"] for g in per.values()])  # (cases, members)
        out: dict[str, Any] = {
            "units": str(store.ds[v].attrs.get("units", "")), "cases": len(per), "cases_with_truth": len(known),
            "observations_per_case": float(np.mean(counts)) if counts else 0.0,
            "observed_fraction": float(np.mean([self._support(v, c) for c in per])) if per else 0.0,
            "chi2": _chi2(chi, [per[c]["truth_chi2"] for c in known],
                          [g.get("exact_chi2") for g in per.values()], self.exact) | {"observations": int(sum(counts))},
            "skipped": None, "scores": {}, "crps_ratio_unobserved": None, "baseline_notes": []}
        if not known:
            out["skipped"] = (f"no evaluated case has a known truth (truth_{v} absent or NaN): CRPS, RMSE and "
                              "spread/skill are not scored; χ² of the members is")
            return out
        for name in METHODS:
            have = [per[c]["scores"][name] for c in known if name in per[c]["scores"]]
            if not have:
                continue
            members = {"model": store.members, "bicubic": 0}.get(name)
            out["scores"][name] = {k: _subset(np.sum([h[k] for h in have], axis=0), members) | {
                "crps_kind": METHODS[name][0]} for k in SUBSETS}
        model, exact = out["scores"]["model"]["unobserved"], (out["scores"].get("exact") or {}).get("unobserved")
        if exact and exact["crps"] and model["crps"] is not None:
            out["crps_ratio_unobserved"] = model["crps"] / exact["crps"]
        out["baseline_notes"] = sorted({g["bicubic_note"] for g in per.values() if g.get("bicubic_note")})
        if len(known) < 3:
            out["baseline_notes"].append(f"no climatology: {len(known)} cases with a truth (it needs 3)")
        return out

    def _rows(self, v: str, c: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        return _variable_obs(self.cases[c], self.order.index(v), self.store.field_shape)

    def _count(self, v: str, c: int) -> int:
        return int(self._rows(v, c)[1].size)

    def _support(self, v: str, c: int) -> float:
        return float(self._rows(v, c)[0]["support"].mean())

    def _panels(self, v: str, shown: list[int], per: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
        """The arrays of ``observed_<v>.png`` for the ``shown`` cases."""
        store = self.store
        out: dict[str, Any] = {"cases": shown, "truth": [], "observations": [], "mean": [], "std": [],
                               "exact_mean": [], "exact_std": []}
        for c in shown:
            t = store.truth[v][c, 0]
            out["truth"].append(t if np.isfinite(t).all() else None)
            out["observations"].append(observation_display(self._rows(v, c)[0], store.field_shape,
                                                           [store.periodic.get(d, False) for d in store.field_dims]))
            p = per[c]["panel"]
            for k in ("mean", "std", "exact_mean", "exact_std"):
                out[k].append(p.get(k))
        out["coords"] = {d: store.ds[d] if d in store.ds.coords else
                         np.arange(n) for d, n in zip(store.field_dims, store.field_shape, strict=True)}
        return out


def _chi2(chi: np.ndarray, truth: list[float], exact: list[float | None], have_law: bool) -> dict[str, Any]:
    """χ² of the members (mean over members and cases, its standard error), of the truth, and the exact
    expectation for a posterior sample (mean over cases) where known."""
    k, m = chi.shape
    se = math.sqrt(chi.var(axis=1, ddof=1).sum() / m) / k if m > 1 and k else None
    exp = [e for e in exact if e is not None]
    note = None
    if have_law and len(exp) < len(exact):
        note = (f"the exact expected χ² needs diag(H P Hᵀ): dense only up to {DENSE_OBSERVATIONS} observations "
                f"and {DENSE_ENTRIES} entries of Σ Hᵀ; not computed")
    return {"members": float(chi.mean()) if chi.size else None, "members_se": se,
            "truth": float(np.mean(truth)) if truth else None,
            "truth_se": float(np.std(truth, ddof=1) / math.sqrt(len(truth))) if len(truth) > 1 else None,
            "exact_expected": float(np.mean(exp)) if exp and len(exp) == len(exact) else None, "note": note}


def _climatology_sums(store: CondStore, v: str, known: np.ndarray) -> tuple[Any, int]:
    """The sums of the known truths and of their squares (delayed, shared by every case), and their count."""
    import dask

    k = int(known.size)
    if k < 3:
        return None, k
    t = store.truth[v][known, 0]
    return dask.delayed(np.stack, pure=True)([t.sum(0), (t * t).sum(0)]), k


def _exact_tasks(plan: ObservedPlan, dataset: Mapping[str, Any]) -> dict[int, Any]:
    """One delayed exact posterior per case (``{}`` when the dataset's law is not a GRF of the store's shape)."""
    import dask

    shape = (len(plan.order), *plan.store.field_shape)
    law, note = exact_field(dataset, shape)
    if note:
        plan.notes.append(note)
    if law is None:
        return {}
    plan.exact = True
    return {c: dask.delayed(_exact_case, pure=False)(law, obs) for c, obs in plan.cases.items()}


def plan_observed(store: CondStore, generated: Sequence[str], dataset: Mapping[str, Any]) -> ObservedPlan:
    """The observation scores of an observation store, lazily (see the module docstring).

    Parameters
    ----------
    store
        The opened conditional store (:func:`~sciencegen.evaluation.cond_store.open_conditional`).
    generated
        Every generated variable of the store (the ``V`` axis when ``sciencegen_variables`` is not recorded).
    dataset
        The store's dataset config (for the exact law).
    """
    import dask

    ds = store.ds
    attrs = _json(ds.attrs.get(OBSERVATIONS_ATTR)) or {}
    order = observation_order(ds, generated)
    plan = ObservedPlan(store, attrs if isinstance(attrs, dict) else {}, order, {})
    missing = [a for a in ("obs_value", "obs_noise", "obs_index", "obs_weight") if a not in ds.data_vars]
    if missing:
        plan.notes.append(f"the store has no {', '.join(missing)}: the observations cannot be scored")
        return plan
    cases = np.flatnonzero(store.evaluated)
    try:
        plan.cases = _read_cases(ds, (len(order), *store.field_shape), cases)
    except ValueError as exc:
        plan.notes.append(f"the observations cannot be scored: {exc}")
        return plan
    exact = _exact_tasks(plan, dataset)
    kind = plan.attrs.get("kind")
    periodic = [store.periodic.get(d, False) for d in store.field_dims]
    for v in store.variables:
        if v not in order:
            plan.notes.append(f"{v} is not among the observed store's variables {list(order)}: not scored")
            continue
        known = np.flatnonzero(store.known(v, 0))
        sums, k = _climatology_sums(store, v, known)
        members = store.forecast(v, 0, cases).data
        shown = list(known[:SHOWN]) if known.size else list(cases[:SHOWN])
        plan.lazy[v] = {}
        for i, c in enumerate(cases):
            obs, rows = _variable_obs(plan.cases[int(c)], order.index(v), store.field_shape)
            truth = store.truth[v][c, 0] if c in known else None
            no_bicubic = None if kind == "stride" else f"no interpolation baseline for {kind or 'unknown'} observations"
            spec = {"obs": obs, "truth": truth, "j": order.index(v), "rows": rows, "known": k, "periodic": periodic,
                    "keep": c in shown, "no_bicubic": no_bicubic}
            plan.lazy[v][int(c)] = dask.delayed(_case_task, pure=False)(members[i], exact.get(int(c)),
                                                                         sums if c in known else None, spec)
    return plan
