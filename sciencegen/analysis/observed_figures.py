"""The figure of an observation-conditioned evaluation (matplotlib's object API, no pyplot state).

:func:`plot_observed` (``observed_<var>.png``): for up to three cases (rows) the truth, the observations, the
posterior (member) mean, the exact posterior mean where known, the member standard deviation and the exact
posterior standard deviation where known. :func:`observation_display` says how a case's observations are
drawn. Arrays in, a PNG out.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .panels import PanelAxis, draw_field, drawn_axis, panel_axis, units_suffix

__all__ = ["observation_display", "plot_observed"]


def observation_display(obs: Mapping[str, np.ndarray], shape: Sequence[int], periodic: Sequence[bool]
                        ) -> dict[str, Any]:
    """How a case's observations of one variable are drawn.

    Parameters
    ----------
    obs
        ``index`` and ``weight`` (``[m, J]``: flat C-order positions in a field of ``shape`` and their weights),
        ``value`` (``[m]``).
    shape
        The field shape.
    periodic
        Per field dim: periodic (a stencil across the edge is centred through the wrap).

    Returns
    -------
    dict
        ``{"points": [m, ndim] grid-index positions, "values": [m]}`` for point-like observations (one grid
        point, or the weighted centre of an interpolation stencil); ``{"image": field}`` for block means (each
        block filled with its value, NaN elsewhere).
    """
    shape = tuple(int(n) for n in shape)
    idx, w, val = np.asarray(obs["index"]), np.asarray(obs["weight"]), np.asarray(obs["value"])
    if idx.size == 0:
        return {"points": np.zeros((0, len(shape))), "values": np.zeros(0)}
    used = (w > 0).sum(1)
    if bool((used > 1).all()) and bool(np.allclose(w[w > 0], np.max(w))):
        img = np.full(math.prod(shape), np.nan)
        for i in range(idx.shape[0]):
            img[idx[i][w[i] > 0]] = val[i]
        return {"image": img.reshape(shape)}
    pos = np.stack(np.unravel_index(idx, shape), axis=-1).astype(np.float64)  # [m, J, ndim]
    d = pos - pos[:, :1]
    n = np.asarray(shape, dtype=np.float64)
    per = np.asarray(list(periodic), dtype=bool)
    d = np.where(per, (d + n / 2) % n - n / 2, d)  # minimal image along periodic dims
    centre = pos[:, 0] + (d * w[..., None]).sum(1) / w.sum(1)[:, None]
    return {"points": np.where(per, centre % n, centre), "values": val}


def _limits_of(axis: PanelAxis) -> tuple[float, float]:
    """Axis limits of cell-centred increasing values: half a cell beyond the first and the last."""
    c = np.asarray(axis.values, dtype=np.float64)
    h = 0.5 * (c[1] - c[0]) if c.size > 1 else 0.5
    return float(c[0] - h), float(c[-1] + h)


def _at(coord: PanelAxis, pos: np.ndarray) -> np.ndarray:
    """Coordinates of fractional grid-index positions (linear between points, extrapolated past the last)."""
    c = np.asarray(coord.values, dtype=np.float64)
    step = c[1] - c[0] if c.size > 1 else 1.0
    return c[0] + np.asarray(pos, dtype=np.float64) * step


def _field(ax: Any, f: np.ndarray | None, coords: Sequence[PanelAxis], lo: float, hi: float, cmap: str) -> Any:
    """One field panel: a curve (1-D), an image by coordinate value, north up (2-D), the first slice of 3-D."""
    if f is None:
        ax.axis("off")
        return None
    f = np.asarray(f, dtype=np.float64)
    if f.ndim == 3:
        f = f[0]
    if f.ndim == 1:
        ax.plot(coords[-1].values, f, lw=0.9)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(coords[-1].label, fontsize=7)
        return None
    return draw_field(ax, f, coords[-2], coords[-1], vmin=lo, vmax=hi, cmap=cmap, aspect="auto", fontsize=6)


def _observations(ax: Any, obs: Mapping[str, Any], coords: Sequence[PanelAxis], lo: float, hi: float,
                  cmap: str) -> Any:
    """The observations: block values as an image, points as a scatter coloured by value (first slice in 3-D)."""
    if "image" in obs:
        return _field(ax, obs["image"], coords, lo, hi, cmap)
    pts, val = np.asarray(obs["points"], dtype=np.float64), np.asarray(obs["values"], dtype=np.float64)
    nd = len(coords)
    if nd == 1:
        ax.scatter(_at(coords[0], pts[:, 0]), val, s=8, c=val, cmap=cmap, vmin=lo, vmax=hi)
        ax.set_xlim(*sorted(_limits_of(coords[0])))
        ax.set_ylim(lo, hi)
        ax.set_xlabel(coords[0].label, fontsize=7)
        return None
    if nd == 3:
        keep = np.round(pts[:, 0]) % len(coords[0].values) == 0
        pts, val = pts[keep][:, 1:], val[keep]
    ax.set_facecolor("0.92")
    placed, drawn = [], []
    for i, c in enumerate(coords[-2:]):  # positions in the coordinates the image is drawn in (north up)
        d = drawn_axis(c, len(c.values))[0]
        placed.append(_at(d if d.index else c, pts[:, i]))
        drawn.append(d)
    sc = ax.scatter(placed[1], placed[0], s=max(2.0, 400.0 / max(1, len(val)) ** 0.5),
                    c=val, cmap=cmap, vmin=lo, vmax=hi, edgecolors="none")
    ax.set_xlim(*_limits_of(drawn[1]))
    ax.set_ylim(*_limits_of(drawn[0]))
    ax.set_xlabel(drawn[1].label, fontsize=7)
    ax.set_ylabel(drawn[0].label, fontsize=7)
    ax.tick_params(labelsize=6)
    return sc


def _limits(fields: Sequence[np.ndarray | None], symmetric: bool) -> tuple[float, float, str]:
    vals = np.concatenate([np.ravel(f) for f in fields if f is not None] or [np.zeros(1)])
    vals = vals[np.isfinite(vals)]
    lo, hi = np.percentile(vals, [0.5, 99.5]) if vals.size else (0.0, 1.0)
    if symmetric and lo < 0 < hi:
        return -max(-lo, hi), max(-lo, hi), "RdBu_r"
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0, "viridis"


def plot_observed(path: str | os.PathLike, panels: Mapping[str, Any], variable: str, units: str, title: str) -> None:
    """``observed_<var>.png``: per case (rows) truth, observations, member mean, exact mean (where known), member
    std and exact std (where known).

    Fields of a row share one colour scale (diverging around 0 when they straddle it), the standard deviations
    another (from 0).

    Parameters
    ----------
    path
        PNG to write.
    panels
        ``{"cases": [K], "truth", "mean", "std", "exact_mean", "exact_std": [K] lists of fields (``None`` where
        unknown), "observations": [K] of :func:`observation_display`, "coords": {dim: 1-D coordinate}}``.
    variable, units
        The variable shown and its units (none or empty: the colour bar labels have no units). The ``coords``
        may be arrays or ``xarray`` coordinates (whose ``units`` label the axes); images are drawn by
        coordinate value, the vertical coordinate increasing upward (north up).
    title
        Figure title.
    """
    from matplotlib.figure import Figure

    exact = any(f is not None for f in panels["exact_mean"])
    names = (["truth", "observations", "member mean"] + (["exact mean"] if exact else []) + ["member std"]
             + (["exact std"] if exact else []))
    dims = list(panels["coords"])
    coords = [panel_axis(panels["coords"][d], d) for d in dims]
    rows = len(panels["cases"])
    fig = Figure(figsize=(2.7 * len(names) + 1.6, 2.5 * max(1, rows) + 0.8), layout="constrained")
    grid = fig.add_gridspec(max(1, rows), len(names))
    for r, case in enumerate(panels["cases"]):
        obs = panels["observations"][r]
        shown = [panels["truth"][r], obs.get("image"), panels["mean"][r], panels["exact_mean"][r]]
        extra = [np.asarray(obs.get("values", []))]
        lo, hi, cmap = _limits(shown + extra, True)
        slo, shi, _ = _limits([panels["std"][r], panels["exact_std"][r]], False)
        slo = 0.0
        axes, sax, im, sim = [], [], None, None
        for j, name in enumerate(names):
            ax = fig.add_subplot(grid[r, j])
            if name == "observations":
                im = _observations(ax, obs, coords, lo, hi, cmap) or im
            elif name.endswith("std"):
                key = "std" if name == "member std" else "exact_std"
                sim = _field(ax, panels[key][r], coords, slo, shi, "magma") or sim
            else:
                key = {"truth": "truth", "member mean": "mean", "exact mean": "exact_mean"}[name]
                im = _field(ax, panels[key][r], coords, lo, hi, cmap) or im
            (sax if name.endswith("std") else axes).append(ax)
            ax.set_title(f"{name}" + (" (unknown)" if name == "truth" and panels["truth"][r] is None else ""),
                         fontsize=8)
            ax.tick_params(labelsize=6)
            if j == 0:
                ax.set_ylabel(f"case {case}\n{ax.get_ylabel() if len(dims) > 1 else variable}", fontsize=8)
            else:
                ax.set_ylabel("")
        if im is not None:
            fig.colorbar(im, ax=axes, shrink=0.85, label=f"{variable}{units_suffix(units)}")
        if sim is not None:
            fig.colorbar(sim, ax=sax, shrink=0.85, label=f"std{units_suffix(units)}")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100, format="png")
