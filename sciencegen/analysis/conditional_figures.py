"""Figures of a conditional evaluation (matplotlib's object API, no pyplot state), drawn from its small results.

* :func:`plot_scores` (``scores.png``): CRPS and corrected spread/skill against lead time, every method;
* :func:`plot_rank_histograms` (``ranks.png``): the rank histograms of the ensembles (flat = calibrated);
* :func:`plot_condition_panels` (``conditions.png``): input, truth, members and ensemble mean for a few cases;
* :func:`plot_conditional_spectra` (``spectra.png``): spectra of the members and the truths and their ratio.

Each takes the ``conditional.variables`` entries of ``metrics.json`` (:mod:`sciencegen.evaluation.conditional`)
and writes a PNG to the path it is given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._common import squared_units
from .panels import coord_label, coord_values, draw_field, panel_axis, units_suffix

__all__ = ["plot_condition_panels", "plot_conditional_spectra", "plot_rank_histograms", "plot_scores"]

#: line style per method
STYLES = {"model": ("C0", "-", "o"), "exact": ("k", "--", "s"), "climatology": ("C1", "-.", "^"),
          "persistence": ("C2", ":", "v"), "nearest": ("C3", ":", "D"), "bicubic": ("C4", "--", "x")}


def _style(name: str) -> tuple[str, str, str]:
    return STYLES.get(name, ("0.5", "-", "."))


def _x(leads: list[Mapping[str, Any]]) -> tuple[np.ndarray, str]:
    if all(e["lead_time"] is None for e in leads):
        return np.arange(1, len(leads) + 1, dtype=float), "(no lead time)"
    return np.array([e["lead_time"] for e in leads], dtype=float), "lead time"


def _series(leads: list[Mapping[str, Any]], name: str, key: str) -> np.ndarray:
    return np.array([np.nan if (e["methods"].get(name) or {}).get(key) is None else e["methods"][name][key]
                     for e in leads], dtype=float)


def plot_scores(path: str | os.PathLike, variables: Mapping[str, Any], title: str) -> None:
    """``scores.png``: CRPS (top) and corrected spread/skill (bottom) against lead time, one column per variable.

    Parameters
    ----------
    path
        PNG to write.
    variables
        ``conditional.variables`` of ``metrics.json``.
    title
        Figure title.
    """
    from matplotlib.figure import Figure

    nv = len(variables)
    fig = Figure(figsize=(5.0 * nv + 0.6, 6.4), layout="constrained")
    grid = fig.add_gridspec(2, nv)
    for i, (v, m) in enumerate(variables.items()):
        leads = m["leads"]
        x, xl = _x(leads)
        names = list(dict.fromkeys(n for e in leads for n in e["methods"]))
        ax, bx = fig.add_subplot(grid[0, i]), fig.add_subplot(grid[1, i])
        for n in names:
            c, ls, mk = _style(n)
            ax.plot(x, _series(leads, n, "crps"), color=c, ls=ls, marker=mk, label=n)
            ss = _series(leads, n, "spread_skill")
            if np.isfinite(ss).any():
                bx.plot(x, ss, color=c, ls=ls, marker=mk, label=n)
        bx.axhline(1.0, color="0.4", lw=0.8)
        ax.set_ylabel(f"CRPS{units_suffix(m['units'])}")
        bx.set_ylabel("spread/skill (corrected)")
        bx.set_xlabel(xl)
        ax.set_title(f"{v}: CRPS (lower is better)", fontsize=9)
        bx.set_title(f"{v}: spread/skill (1 = calibrated)", fontsize=9)
        for a in (ax, bx):
            a.grid(True, alpha=0.3)
            if a.get_legend_handles_labels()[0]:
                a.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, format="png")


def plot_rank_histograms(path: str | os.PathLike, variables: Mapping[str, Any], title: str) -> None:
    """``ranks.png``: rank frequencies of the truth relative to flat (1), every ensemble method, first and last lead.

    Parameters
    ----------
    path
        PNG to write.
    variables
        ``conditional.variables`` of ``metrics.json``.
    title
        Figure title.
    """
    from matplotlib.figure import Figure

    panels = []
    for v, m in variables.items():
        leads = [e for e in m["leads"] if e["methods"]]
        for e in ([leads[0], leads[-1]] if len(leads) > 1 else leads):
            panels.append((v, e))
    fig = Figure(figsize=(4.6 * max(1, len(panels)) + 0.6, 3.8), layout="constrained")
    for i, (v, e) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for n, s in e["methods"].items():
            if not s.get("rank"):
                continue
            counts = np.asarray(s["rank"]["counts"], dtype=float)
            freq = counts / counts.sum() * counts.size  # 1 everywhere for a flat histogram
            p = s["rank"]["chi2"].get("p_value")
            c, ls, _ = _style(n)
            ax.stairs(freq, np.linspace(0.0, 1.0, counts.size + 1), color=c, ls=ls, lw=1.5,
                      label=f"{n} ({s['members']}): χ² p {'—' if p is None else format(p, '.2g')}")
        ax.axhline(1.0, color="0.4", lw=0.8)
        ax.set_xlabel("rank of the truth / (members + 1)")
        ax.set_ylabel("frequency / flat")
        lead = "" if e["lead_time"] is None else f", lead time {e['lead_time']}"
        ax.set_title(f"{v}{lead}", fontsize=9)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, format="png")


def _draw(ax: Any, f: np.ndarray, coords: list[Any], lo: float, hi: float, cmap: str) -> Any:
    """One panel: a 1-D field as a curve, a 2-D field as an image by coordinate value (north up; index axes
    without ``coords``), the first slice of a 3-D one."""
    f = f[0] if f.ndim == 3 else f
    if f.ndim == 1:
        xa = panel_axis(coords[-1] if coords else None, None, f.shape[0])
        ax.plot(xa.values, f, lw=0.8)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(xa.label, fontsize=7)
        ax.tick_params(labelsize=6)
        return None
    y, x = coords[-2:] if len(coords) >= 2 else (None, None)
    return draw_field(ax, f, y, x, vmin=lo, vmax=hi, cmap=cmap, aspect="equal")


def plot_condition_panels(path: str | os.PathLike, panels: Mapping[str, Any], units: Mapping[str, str],
                          title: str) -> None:
    """``conditions.png``: for a few cases (rows) the input, the truth, members and the ensemble mean (columns).

    Parameters
    ----------
    path
        PNG to write.
    panels
        ``{variable: {"cases": [K], "input_name": str | None, "input": [K, *field] | None, "truth": [K, *field],
        "members": [K, n, *field], "mean": [K, *field], "lead_time": int | None}}``, optionally ``"coords"``:
        ``{dim: coordinate}`` of the field dims (arrays or ``xarray`` coordinates; their names and units label
        the axes): images are then drawn by coordinate value, north up; without: index axes, row 0 at the bottom.
    units
        Units per variable (none or empty: the colour bar label has no units).
    title
        Figure title.
    """
    from matplotlib.figure import Figure

    rows = [(v, k) for v, p in panels.items() for k in range(len(p["cases"]))]
    ncol = max(3 + p["members"].shape[1] for p in panels.values())
    fig = Figure(figsize=(2.2 * ncol + 1.2, 2.2 * max(1, len(rows)) + 0.6), layout="constrained")
    grid = fig.add_gridspec(max(1, len(rows)), ncol)
    for r, (v, k) in enumerate(rows):
        p = panels[v]
        given = p.get("coords") or {}
        coords = list(given.values()) if isinstance(given, Mapping) else list(given)
        cols = [(p["input_name"] or "input", None if p["input"] is None else p["input"][k]),
                ("truth", p["truth"][k])]
        cols += [(f"member {j}", p["members"][k, j]) for j in range(p["members"].shape[1])]
        cols.append((f"mean of {p['count']}", p["mean"][k]))
        vals = np.concatenate([np.ravel(f) for _, f in cols if f is not None])
        lo, hi = np.nanpercentile(vals, [0.5, 99.5]) if np.isfinite(vals).any() else (0.0, 1.0)
        cmap = "viridis"
        if lo < 0 < hi:
            lo, hi, cmap = -max(-lo, hi), max(-lo, hi), "RdBu_r"
        im = None
        axes = []
        for j, (label, f) in enumerate(cols):
            ax = fig.add_subplot(grid[r, j])
            axes.append(ax)
            if f is None:
                ax.axis("off")
                continue
            im = _draw(ax, np.asarray(f, dtype=float), coords, lo, hi, cmap) or im
            ax.set_title(label, fontsize=8)
            lead = "" if p["lead_time"] is None else f", lead {p['lead_time']}"
            ax.set_ylabel(f"{v}\ncase {p['cases'][k]}{lead}\n{ax.get_ylabel()}" if j == 0 else "", fontsize=7)
        if im is not None:
            fig.colorbar(im, ax=axes, shrink=0.85, label=f"{v}{units_suffix(units.get(v))}")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, format="png")


def plot_conditional_spectra(path: str | os.PathLike, variables: Mapping[str, Any], title: str) -> None:
    """``spectra.png``: at the first lead time, the spectrum of each method's members against the truths' (top)
    and their ratio (bottom), over the complete shells.

    Parameters
    ----------
    path
        PNG to write.
    variables
        ``conditional.variables`` of ``metrics.json``.
    title
        Figure title.
    """
    from matplotlib.figure import Figure

    nv = len(variables)
    fig = Figure(figsize=(5.0 * nv + 0.6, 5.4), layout="constrained")
    grid = fig.add_gridspec(2, nv, height_ratios=[3, 1])
    for i, (v, m) in enumerate(variables.items()):
        e = next((e for e in m["leads"] if e["methods"]), None)
        ax, rx = fig.add_subplot(grid[0, i]), fig.add_subplot(grid[1, i])
        if e is None:
            continue
        truth_drawn, xl = False, "wavenumber k (shells of 2π/L)"
        for n, s in e["methods"].items():
            sp = s["spectrum"]
            k = coord_values(sp, "wavenumber")
            xl = coord_label(sp, "wavenumber", xl)
            a, b = s["spectral_shells"]
            sel = (k >= a) & (k <= b)
            pf, pt = np.asarray(sp["forecast"], dtype=float)[sel], np.asarray(sp["truth"], dtype=float)[sel]
            c, ls, _ = _style(n)
            if not truth_drawn:
                ax.loglog(k[sel], pt, color="0.2", lw=2.2, alpha=0.5, label="truth")
                truth_drawn = True
            ax.loglog(k[sel], pf, color=c, ls=ls, lw=1.4, label=f"{n} ({s['spectral_error']:.3g})")
            rx.semilogx(k[sel], pf / pt, color=c, ls=ls, lw=1.2)
        rx.axhline(1.0, color="0.4", lw=0.8)
        ax.set_ylabel(f"power per mode{units_suffix(squared_units(m['units']))}")
        rx.set_ylabel("members / truth")
        rx.set_xlabel(xl)
        lead = "" if e["lead_time"] is None else f", lead time {e['lead_time']}"
        ax.set_title(f"{v}{lead}: spectra (spectral error in the legend)", fontsize=9)
        for a in (ax, rx):
            a.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, format="png")
