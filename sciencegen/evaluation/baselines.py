"""What a conditional ensemble is compared with: baselines built from the store, and exact posterior draws.

Every method gives, for a lead time and a set of conditions, a forecast over ``(condition, member, *field)`` in
physical units, scored exactly like the generated members (:mod:`sciencegen.evaluation.conditional`):

* ``climatology``: for case ``c``, the truths of all *other* evaluated conditions at the same lead time as an
  ensemble (leave-one-out over held-out data; ``K - 1`` members for ``K`` cases);
* ``persistence`` (forecasts): the ``state`` input repeated at every lead time (which input feeds which variable:
  ``sciencegen_conditioning["state"]["feeds"]``; one member);
* ``nearest`` (downscaling): the ``coarse`` input as stored, the block means repeated on the fine grid (one member);
* ``bicubic`` (downscaling): the coarse field (the block means of the stored input, one value per block)
  interpolated back to the fine grid by separable cubic convolution (:func:`bicubic_upsample`; periodic wrap
  along periodic dims, clamped edges otherwise; one member);
* ``exact``: draws from the exact posterior of the dataset's conditional law (``exact_law(dataset)``, where
  the dataset has one), as many per case as the ensemble has members; rollouts feed each draw its own
  previous draw, as generation feeds each member its own output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from .cond_store import CondStore

__all__ = ["KEYS_A", "Method", "baseline_methods", "bicubic_upsample", "block_mean", "cubic_weights",
           "exact_law_of", "exact_method", "law_fits", "model_method"]

#: the cubic convolution parameter of the bicubic baseline (Keys 1981: -0.5 reproduces quadratics exactly)
KEYS_A = -0.5

Forecast = Callable[[int, np.ndarray], xr.DataArray]


@dataclass
class Method:
    """One forecast scored against the truth.

    Attributes
    ----------
    name
        Key in ``metrics.json`` (``model``, ``exact``, ``climatology``, ``persistence``, ``nearest``, ``bicubic``).
    label
        Legend and report label.
    ensemble
        Whether it is an ensemble (else deterministic: one member, CRPS = mean absolute error, no spread).
    forecast
        ``forecast(lead index, condition indices) -> DataArray (condition, member, *field)`` (lazy or in memory).
    description
        One line for the report.
    """

    name: str
    label: str
    ensemble: bool
    forecast: Forecast
    description: str


def model_method(store: CondStore, v: str) -> Method:
    """The generated members of ``v``."""
    return Method("model", "generated", True, lambda lead, conds: store.forecast(v, lead, conds),
                  f"the {store.members} generated members")


# --------------------------------------------------------------------------------------------- bicubic


# Cubic convolution kernel: Keys 1981 (IEEE Trans. ASSP 29, 1153); a = -0.75 is PyTorch's/OpenCV's bicubic.
def cubic_weights(t: np.ndarray, a: float = KEYS_A) -> np.ndarray:
    """The four cubic-convolution weights of taps ``-1, 0, 1, 2`` at fractional offsets ``t`` in ``[0, 1)``.

    Parameters
    ----------
    t
        Offsets from the left neighbour, any shape.
    a
        Kernel parameter (``-0.5``: Keys' third-order kernel; ``-0.75``: PyTorch's ``interpolate(mode="bicubic")``).

    Returns
    -------
    numpy.ndarray
        Shape ``t.shape + (4,)``; each row sums to 1.
    """
    t = np.asarray(t, dtype=np.float64)

    def near(x: np.ndarray) -> np.ndarray:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(1 + t), near(t), near(1 - t), far(2 - t)], axis=-1)


def _upsample_matrix(n: int, factor: int, periodic: bool, a: float) -> np.ndarray:
    """``(n * factor, n)`` cubic-convolution weights from cell centres of a coarse axis to the fine cell centres."""
    fine = np.arange(n * factor)
    u = (fine + 0.5) / factor - 0.5  # fine cell centre in coarse index units (align_corners=False)
    j0 = np.floor(u).astype(int)
    w = cubic_weights(u - j0, a)
    mat = np.zeros((n * factor, n))
    for k in range(4):
        j = j0 - 1 + k
        j = np.mod(j, n) if periodic else np.clip(j, 0, n - 1)
        np.add.at(mat, (fine, j), w[:, k])
    return mat


def block_mean(x: np.ndarray, factor: int, axes: Sequence[int]) -> np.ndarray:
    """Means over non-overlapping blocks of ``factor`` points along each of ``axes`` (sizes divisible by it)."""
    for ax in sorted(a % x.ndim for a in axes):
        n = x.shape[ax]
        if n % factor:
            raise ValueError(f"block_mean: axis {ax} of size {n} is not divisible by the factor {factor}")
        x = x.reshape(*x.shape[:ax], n // factor, factor, *x.shape[ax + 1:]).mean(axis=ax + 1)
    return x


# Separable (tensor-product) cubic convolution interpolation: Keys 1981 (IEEE Trans. ASSP 29, 1153).
def bicubic_upsample(coarse: np.ndarray, factor: int, axes: Sequence[int], periodic: Sequence[bool],
                     a: float = KEYS_A) -> np.ndarray:
    """Interpolate a coarse field (one value per cell centre) to a grid ``factor`` times finer along ``axes``.

    Fine cell ``i`` of a coarse cell of ``factor`` points sits at coarse coordinate ``(i + 0.5)/factor - 0.5``
    (cell centres, PyTorch's ``align_corners=False``); the four nearest coarse values are weighted by the cubic
    convolution kernel, dim by dim (bicubic in 2-D, tricubic in 3-D). Periodic axes wrap; the others clamp to the
    edge values (as PyTorch does). With ``a = -0.75`` and no periodic axis this equals
    ``torch.nn.functional.interpolate(x, scale_factor=factor, mode="bicubic", align_corners=False)`` in 2-D.

    Parameters
    ----------
    coarse
        The coarse values, any leading axes.
    factor
        The refinement per axis.
    axes
        The axes refined (1 to 3 field axes).
    periodic
        Per axis of ``axes``: wrap around.
    a
        Kernel parameter (:func:`cubic_weights`).
    """
    x = np.asarray(coarse, dtype=np.float64)
    for ax, per in zip(axes, periodic, strict=True):
        ax = ax % x.ndim
        mat = _upsample_matrix(x.shape[ax], int(factor), bool(per), a)
        x = np.moveaxis(np.tensordot(x, mat, axes=([ax], [1])), -1, ax)
    return x


# --------------------------------------------------------------------------------------------- baselines


def _deterministic(store: CondStore, field: np.ndarray, leads: int) -> Forecast:
    """A one-member forecast that is ``field`` (condition, *field) at every lead time."""
    dims = ("condition", "member", *store.field_dims)

    def forecast(lead: int, conds: np.ndarray) -> xr.DataArray:
        return xr.DataArray(field[conds][:, None], dims=dims)

    return forecast


def _climatology(store: CondStore, v: str) -> Forecast:
    """For each case the truths of the other evaluated cases with a known truth at that lead time (leave-one-out)."""
    import dask
    import dask.array as da

    dims = ("condition", "member", *store.field_dims)

    def forecast(lead: int, conds: np.ndarray) -> xr.DataArray:
        truths = dask.delayed(store.truth[v][conds, lead])
        k = len(conds)
        shape = (k - 1, *store.field_shape)
        parts = [da.from_delayed(dask.delayed(np.delete)(truths, i, axis=0), shape, np.float64) for i in range(k)]
        return xr.DataArray(da.stack(parts), dims=dims)

    return forecast


def _coarse_input(store: CondStore, v: str) -> tuple[str, int] | None:
    """The ``coarse`` input of variable ``v`` and its factor (``None`` when there is none)."""
    kinds = store.conditioning.get("kinds") or {}
    for name, entry in (store.conditioning.get("inputs") or {}).items():
        kind = kinds.get(entry.get("kind"), {}) if isinstance(kinds, Mapping) else {}
        target = str(kind.get("_target_", "")) if isinstance(kind, Mapping) else ""
        factor = entry.get("factor", kind.get("factor") if isinstance(kind, Mapping) else None)
        coarse = entry.get("kind") == "coarse" or target.endswith(".Coarse")
        if coarse and entry.get("variable") == v and factor and name in store.inputs:
            return name, int(factor)
    return None


def _state_input(store: CondStore, v: str) -> str | None:
    """The input that a generated ``v`` replaces in a rollout (``state.feeds``), else a ``state`` input of ``v``."""
    state = store.conditioning.get("state") or {}
    for name, var in (state.get("feeds") or {}).items():
        if var == v and name in store.inputs:
            return name
    for name, entry in (store.conditioning.get("inputs") or {}).items():
        if entry.get("kind") == "state" and entry.get("variable") == v and name in store.inputs:
            return name
    return None


def baseline_methods(store: CondStore, v: str) -> list[Method]:
    """The baselines that apply to variable ``v``: climatology always, persistence, nearest and bicubic where the
    conditioning has a ``state`` / ``coarse`` input of ``v``."""
    nlead = len(store.leads)
    methods = [Method("climatology", "climatology", True, _climatology(store, v),
                      "for each case the truths of the other evaluated cases at the same lead time (leave-one-out)")]
    state = _state_input(store, v)
    if state is not None:
        methods.append(Method("persistence", "persistence", False, _deterministic(store, store.inputs[state], nlead),
                              f"the state input {state} repeated at every lead time"))
    coarse = _coarse_input(store, v)
    if coarse is not None:
        name, factor = coarse
        x = store.inputs[name]
        axes = list(range(1, x.ndim))
        per = [store.periodic.get(d, False) for d in store.field_dims]
        up = bicubic_upsample(block_mean(x, factor, axes), factor, axes, per)
        methods.append(Method("nearest", "nearest (coarse input)", False, _deterministic(store, x, nlead),
                              f"the coarse input {name} as stored (block means of {factor}^{len(axes)} points)"))
        wrap = ", ".join(d for d, p in zip(store.field_dims, per, strict=True) if p) or "none"
        methods.append(Method("bicubic", "bicubic", False, _deterministic(store, up, nlead),
                              f"cubic convolution (Keys, a = {KEYS_A}) of the block means of {name}, factor {factor}; "
                              f"periodic dims: {wrap}"))
    return methods


# --------------------------------------------------------------------------------------------- the exact posterior


def exact_law_of(dataset: Mapping[str, Any]) -> tuple[Any, str | None]:
    """The dataset's exact conditional law (``exact_law(dataset)`` of :mod:`sciencegen.models`), and why not.

    Returns
    -------
    law, note
        The law with ``posterior_sample(cond, count, generator)`` (``None`` where there is none) and, when the
        law cannot be built, a note for the report (``None`` when the dataset simply has no exact law).
    """
    from ..models.oracle import exact_law

    try:
        law = exact_law(dict(dataset))
    except Exception as exc:  # a law that cannot be built must not stop the evaluation
        return None, f"the exact posterior is not scored: exact_law failed ({type(exc).__name__}: {exc})"
    return (law, None) if law is not None and hasattr(law, "posterior_sample") else (None, None)


def _cond_array(store: CondStore, c: int) -> np.ndarray:
    """The condition of case ``c`` in physical units, ``[C_cond, *field]``: the inputs, then the static fields."""
    return np.stack([store.inputs[n][c] for n in store.inputs] + list(store.statics.values()))


def _feed_channels(store: CondStore) -> dict[int, int]:
    """``{condition channel: variable index}``: where a rollout feeds each generated variable back."""
    feeds = (store.conditioning.get("state") or {}).get("feeds") or {}
    names = list(store.inputs)
    return {names.index(n): store.variables.index(var) for n, var in feeds.items()
            if n in names and var in store.variables}


def _draws(law: Any, cond_np: np.ndarray, members: int, nlead: int, chan: dict[int, int], seed: int) -> np.ndarray:
    """``members`` exact posterior draws of one case over ``(member, lead, variable, *field)`` (float64)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    cond = torch.as_tensor(cond_np, dtype=torch.float64)
    out = [law.posterior_sample(cond, members, generator=gen).double()]
    for _ in range(nlead - 1):  # rollouts: each draw is fed its own previous draw, as each member is
        nxt = []
        for i in range(members):
            ci = cond.clone()
            for k, j in chan.items():
                ci[k] = out[-1][i, j]
            nxt.append(law.posterior_sample(ci, 1, generator=gen).double()[0])
        out.append(torch.stack(nxt))
    return torch.stack(out, dim=1).numpy()


def exact_method(law: Any, store: CondStore, v: str, cache: dict[int, Any], seed: int = 20260) -> Method:
    """The exact posterior of ``law`` for variable ``v``: ``members`` draws per case, lazily per condition.

    ``cache`` maps a condition to its delayed draws so that every variable and lead time shares one set of draws
    (the generator of case ``c`` is seeded with ``seed + c``).
    """
    import dask
    import dask.array as da

    j = store.variables.index(v)
    shape = (store.members, len(store.leads), len(store.variables), *store.field_shape)
    dims = ("condition", "member", *store.field_dims)
    chan = _feed_channels(store)

    def draws(c: int) -> Any:
        if c not in cache:
            task = dask.delayed(_draws, pure=False)(law, _cond_array(store, c), store.members, len(store.leads),
                                                    chan, seed + c)
            cache[c] = da.from_delayed(task, shape, np.float64)
        return cache[c]

    def forecast(lead: int, conds: np.ndarray) -> xr.DataArray:
        return xr.DataArray(da.stack([draws(int(c))[:, lead, j] for c in conds]), dims=dims)

    return Method("exact", "exact posterior", True, forecast,
                  f"{store.members} draws per case from the exact posterior ({type(law).__name__}); "
                  f"generator seed {seed} + condition")


def law_fits(law: Any, store: CondStore) -> str | None:
    """Why the exact law does not match the store's grid and variables (``None`` when it does)."""
    import torch

    cond = torch.as_tensor(_cond_array(store, int(np.flatnonzero(store.evaluated)[0])), dtype=torch.float64)
    try:
        x = law.posterior_sample(cond, 1, generator=torch.Generator().manual_seed(0))
    except Exception as exc:
        return f"the exact posterior is not scored: posterior_sample failed ({type(exc).__name__}: {exc})"
    want = (1, len(store.variables), *store.field_shape)
    if tuple(x.shape) != want:
        return (f"the exact posterior is not scored: the law draws {tuple(x.shape)[1:]}, the store holds "
                f"{want[1:]}")
    return None if math.isfinite(float(x.double().sum())) else "the exact posterior draws are not finite"
