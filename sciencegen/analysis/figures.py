"""Figures: what the commands draw (matplotlib's object API, no pyplot state; every PNG written atomically).

* :func:`plot_samples`: generated fields above training (or held-out) fields, with their radial spectra and
  the exact one where a law is known: ``sciencegen-train``'s sample figures.
* ``sciencegen-evaluate``'s four figures, drawn from the evaluation's small results (``metrics.json``'s
  per-variable entries, :mod:`sciencegen.evaluation.metrics`): :func:`plot_sample_panels` (``samples.png``),
  :func:`plot_spectrum_comparison` (``spectrum.png``), :func:`plot_histogram_comparison` (``histogram.png``) and
  :func:`plot_correlation_comparison` (``correlation.png``). They write a PNG to the path they are given (the
  evaluation's hidden temporary file, renamed into place with the other outputs); :class:`Legend` says how
  the two sides are labelled.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .panels import coord_label, coord_values, draw_field, panel_axis, units_suffix

__all__ = ["Legend", "plot_correlation_comparison", "plot_histogram_comparison", "plot_sample_panels", "plot_samples",
           "plot_spectrum_comparison"]


def plot_samples(samples: torch.Tensor, path: str | os.PathLike, *, data: torch.Tensor | None = None,
                 target: Any = None, title: str = "", panels: int = 4, data_label: str = "training data",
                 axes: Sequence[Any] | None = None) -> float | None:
    """Figure of generated fields (top), training fields (bottom) and their radial spectra (right).

    Parameters
    ----------
    samples
        ``[members, C, ny, nx]`` generated fields in physical units (channel 0 is shown).
    path
        PNG to write (parent directories are created).
    data
        ``[n, C, ny, nx]`` training fields in physical units (optional).
    target
        Analytic law with ``spectrum()`` (e.g. :class:`~sciencegen.targets.GaussianRandomField`): its exact
        spectrum is drawn and the spectral error returned.
    title
        Figure title.
    panels
        Fields shown per row.
    data_label
        Label of the ``data`` row and spectrum.
    axes
        The two field dims' coordinates (``(y, x)``: anything :func:`~sciencegen.analysis.panels.panel_axis`
        takes): the panels are drawn by coordinate value, north up. ``None``: index axes, row 0 at the bottom.

    Returns
    -------
    float or None
        :func:`~sciencegen.targets.spectral_error` of ``samples`` against ``target`` (``None`` without one).
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, any backend of the caller is left alone

    from ..targets import radial_spectrum, spectral_error

    samples = samples.detach().double().cpu()
    square = samples.ndim == 4 and samples.shape[-1] == samples.shape[-2]
    err = spectral_error(samples, target) if (target is not None and square) else None
    rows = 2 if data is not None else 1
    k = min(panels, samples.shape[0])
    fig = Figure(figsize=(2.2 * k + (4.2 if square else 0), 2.3 * rows + 0.4), layout="constrained")
    grid = fig.add_gridspec(rows, k + (2 if square else 0))
    ref = data if data is not None else samples
    vmin, vmax = np.nanpercentile(ref[:, 0].double().cpu().numpy(), [1, 99])
    yx = (None, None) if axes is None else tuple(axes)[-2:]
    for r, (fields, label) in enumerate([(samples, "generated"), (data, data_label)][:rows]):
        for j in range(min(k, fields.shape[0])):
            ax = fig.add_subplot(grid[r, j])
            draw_field(ax, fields[j, 0].double().cpu().numpy(), *yx, vmin=vmin, vmax=vmax, cmap="RdBu_r",
                       aspect="equal")
            ax.set_ylabel(f"{label}\n{ax.get_ylabel()}" if j == 0 else "", fontsize=8)
            if r < rows - 1:
                ax.set_xlabel("")
    if square:
        ax = fig.add_subplot(grid[:, k:])
        kb, p = radial_spectrum(samples, 2)
        ax.loglog(kb[1:], p[1:], "C0-", label=f"generated ({samples.shape[0]})")
        if data is not None:
            kd, pd = radial_spectrum(data.detach().double().cpu(), 2)
            ax.loglog(kd[1:], pd[1:], "C1--", label=f"{data_label} ({data.shape[0]})")
        if target is not None and hasattr(target, "spectrum"):
            ke, pe = target.spectrum()
            ax.loglog(ke[1:], pe[1:], "k:", lw=2, label="exact")
        ax.set_xlabel("wavenumber |k|")
        ax.set_ylabel("power per mode")
        ax.set_title("radial spectrum" + (f" (error {err:.3f})" if err is not None else ""), fontsize=9)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    except OSError as exc:  # e.g. disk full: no partial figure is left; the error names the figure
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(path)) from exc
    return err


# --------------------------------------------------------------------------------------------- evaluation figures


@dataclass
class Legend:
    """How the two sides of an evaluation figure are labelled.

    Attributes
    ----------
    members
        Number of generated members.
    reference
        Label of the reference (``exact law``, ``held-out data``, ``reference store``, ...).
    reference_count
        Number of reference samples.
    exact
        Whether the reference is an analytic law (its samples are then labelled ``exact samples``, and the
        spectrum figure draws the law's spectrum and the spectrum of its samples).
    title
        Figure title.
    """

    members: int
    reference: str
    reference_count: int
    exact: bool
    title: str

    @property
    def generated(self) -> str:
        """``generated (N members)``."""
        return f"generated ({self.members} members)"

    @property
    def reference_samples(self) -> str:
        """The reference samples' legend label with their count."""
        return f"{'exact samples' if self.exact else self.reference} ({self.reference_count})"


def _save(fig: Any, path: str | os.PathLike) -> None:
    """Write the figure as PNG to ``path`` (the caller renames it into place)."""
    fig.savefig(path, dpi=110, format="png")


def _colour_range(gen: np.ndarray, ref: np.ndarray) -> tuple[float, float, str]:
    """Shared colour range of both rows: symmetric with a diverging map when the values change sign."""
    both = np.concatenate([gen.reshape(-1), ref.reshape(-1)])
    lo, hi = np.nanpercentile(both, [0.5, 99.5])
    if lo < 0 < hi:
        lim = max(-lo, hi)
        return -lim, lim, "RdBu_r"
    return lo, hi, "viridis"


def _draw_field(ax: Any, f: np.ndarray, coords: tuple[Any, ...], lo: float, hi: float, cmap: str
                ) -> tuple[Any, str]:
    """One panel: a 1-D field as a curve, a 2-D field as an image by coordinate value, north up (the first slice
    of a 3-D one); ``coords``: one per field dim (anything :func:`~sciencegen.analysis.panels.panel_axis` takes)."""
    note = ""
    if f.ndim == 3:
        f, note = f[0], " (first slice)"
    if f.ndim == 1:
        xa = panel_axis(coords[-1], None, f.shape[0])
        ax.plot(xa.values, f, lw=0.8)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(xa.label, fontsize=7)
        ax.tick_params(labelsize=6)
        return None, note
    return draw_field(ax, f, coords[-2], coords[-1], vmin=lo, vmax=hi, cmap=cmap, aspect="equal"), note


def plot_sample_panels(path: str | os.PathLike, panels: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                       ref_label: str, units: dict[str, str], coords: dict[str, tuple[np.ndarray, ...]],
                       title: str) -> None:
    """``samples.png``: ``N`` generated fields (top row) above ``N`` reference fields (bottom row) per variable.

    Parameters
    ----------
    path
        PNG to write.
    panels
        ``{variable: (generated [N, *field], reference [N, *field], member numbers [N])}``.
    ref_label
        Label of the reference row.
    units
        Units per variable (colour bar label; none or empty: the label has no units).
    coords
        Field coordinates per variable, one per field dim: an array of values, an ``xarray`` coordinate (its name
        and ``units`` label the axis) or a :class:`~sciencegen.analysis.panels.PanelAxis`. Images are drawn by
        coordinate value with the vertical coordinate increasing upward (north up).
    title
        Figure title.
    """
    from matplotlib.figure import Figure

    k = max(g.shape[0] for g, _, _ in panels.values())
    rows = 2 * len(panels)
    fig = Figure(figsize=(2.3 * k + 1.4, 2.35 * rows + 0.5), layout="constrained")
    grid = fig.add_gridspec(rows, k)
    for i, (v, (gen, ref, ids)) in enumerate(panels.items()):
        lo, hi, cmap = _colour_range(gen, ref)
        axes, im = [], None
        for r, (fields, label) in enumerate([(gen, "generated"), (ref, ref_label)]):
            for j in range(fields.shape[0]):
                ax = fig.add_subplot(grid[2 * i + r, j])
                axes.append(ax)
                drawn, note = _draw_field(ax, fields[j], coords[v], lo, hi, cmap)
                im = drawn if drawn is not None else im
                name = f"member {int(ids[j])}" if r == 0 else f"#{j}"
                ax.set_title(f"{label}: {name}{note}", fontsize=8)
                if j == 0:
                    ax.set_ylabel(f"{v} {label}\n{ax.get_ylabel()}", fontsize=8)
        if im is not None:
            fig.colorbar(im, ax=axes, shrink=0.85, label=f"{v}{units_suffix(units.get(v))}")
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_spectrum_comparison(path: str | os.PathLike, metrics: dict[str, Any], legend: Legend) -> None:
    """``spectrum.png``: both spectra on log-log axes (top) and their ratio (bottom), over the complete shells.

    Parameters
    ----------
    path
        PNG to write.
    metrics
        Per-variable metrics with ``spectrum`` (``wavenumber``, ``sample``, ``reference`` and, for an exact
        law, ``reference_samples``), ``spectral_shells``, ``spectral_error`` and ``units``.
    legend
        Labels of the two sides.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    from ._common import squared_units

    nv = len(metrics)
    fig = Figure(figsize=(5.0 * nv + 0.6, 5.4), layout="constrained")
    grid = fig.add_gridspec(2, nv, height_ratios=[3, 1])
    for i, (v, m) in enumerate(metrics.items()):
        ax = fig.add_subplot(grid[0, i])
        rx = fig.add_subplot(grid[1, i], sharex=ax)
        sp = m["spectrum"]
        k = coord_values(sp, "wavenumber")
        a, b = m["spectral_shells"]
        sel = (k >= a) & (k <= b)
        ks = k[sel]
        ps, pr = np.asarray(sp["sample"], dtype=float)[sel], np.asarray(sp["reference"], dtype=float)[sel]
        ax.loglog(ks, ps, "C0-", lw=1.8, label=legend.generated)
        rx.semilogx(ks, ps / pr, "C0-", lw=1.5)
        if legend.exact:
            pe = np.asarray(sp["reference_samples"], dtype=float)[sel]
            ax.loglog(ks, pe, "-", color="0.6", lw=1, label=f"exact samples ({legend.reference_count}): sampling noise")
            rx.semilogx(ks, pe / pr, "-", color="0.6", lw=1)
            ax.loglog(ks, pr, "k--", lw=1.5, label="exact law")
        else:
            ax.loglog(ks, pr, "C1--", lw=1.5, label=f"{legend.reference} ({legend.reference_count})")
        rx.axhline(1.0, color="k", ls="--", lw=1)
        rx.xaxis.set_major_formatter(ScalarFormatter())
        ax.tick_params(labelbottom=False)
        rx.set_xlabel(coord_label(sp, "wavenumber", "wavenumber k (shells of 2π/L)"))
        ax.set_ylabel(f"power per mode{units_suffix(squared_units(m['units']))}")
        rx.set_ylabel("generated / reference")
        ax.set_title(f"{v}: spectral error {m['spectral_error']:.3g} (shells {a}..{b})", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        rx.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(legend.title, fontsize=10)
    _save(fig, path)


def plot_histogram_comparison(path: str | os.PathLike, metrics: dict[str, Any], legend: Legend) -> None:
    """``histogram.png``: both one-point value densities (log scale) and the exact law's where known.

    Parameters
    ----------
    path
        PNG to write.
    metrics
        Per-variable metrics with ``histogram`` (``edges``, ``sample``, ``reference``), ``moments`` (an
        ``exact`` entry draws the Gaussian law), ``w1``, ``w1_normalised`` and ``units``.
    legend
        Labels of the two sides.
    """
    from matplotlib.figure import Figure

    nv = len(metrics)
    fig = Figure(figsize=(5.0 * nv + 0.6, 4.0), layout="constrained")
    for i, (v, m) in enumerate(metrics.items()):
        ax = fig.add_subplot(1, nv, i + 1)
        h = m["histogram"]
        e = np.asarray(h["edges"])
        for dens, style, label in ((h["sample"], "C0-", legend.generated),
                                   (h["reference"], "C1--", legend.reference_samples)):
            d = np.asarray(dens, dtype=float)
            ax.stairs(np.where(d > 0, d, np.nan), e, color=style[:2], linestyle=style[2:], lw=1.5, label=label)
        ex = m["moments"].get("exact")
        if ex is not None:
            x = np.linspace(e[0], e[-1], 400)
            pdf = np.exp(-0.5 * ((x - ex["mean"]) / ex["std"]) ** 2) / (ex["std"] * math.sqrt(2 * math.pi))
            ax.plot(x, pdf, "k:", lw=1.2, label=f"exact law N({ex['mean']:g}, {ex['std']:.3g}²)")
        ax.set_yscale("log")
        ax.set_xlabel(f"{v}{units_suffix(m['units'])}")
        ax.set_ylabel("probability density")
        ax.set_title(f"{v}: W1 {m['w1']:.3g} ({m['w1_normalised']:.3g} std)", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(legend.title, fontsize=10)
    _save(fig, path)


def plot_correlation_comparison(path: str | os.PathLike, metrics: dict[str, Any], legend: Legend) -> None:
    """``correlation.png``: both two-point correlation curves against separation (physical where known).

    Parameters
    ----------
    path
        PNG to write.
    metrics
        Per-variable metrics with ``correlation`` (``separation`` or ``distance`` and ``distance_units``,
        ``sample``, ``reference``, ``max_abs_diff``); the x axis is labelled from the coordinate's recorded
        ``long_name`` / ``units`` where there are any (:func:`~sciencegen.analysis.panels.coord_label`).
    legend
        Labels of the two sides.
    """
    from matplotlib.figure import Figure

    nv = len(metrics)
    fig = Figure(figsize=(5.0 * nv + 0.6, 4.0), layout="constrained")
    for i, (v, m) in enumerate(metrics.items()):
        ax = fig.add_subplot(1, nv, i + 1)
        c = m["correlation"]
        key = "distance" if "distance" in c else "separation"
        x = coord_values(c, key)
        today = (f"separation r{units_suffix(c.get('distance_units') or 'grid points')}" if key == "distance"
                 else "separation r [grid points]")
        xl = coord_label(c, key, today)
        ax.plot(x, c["sample"], "C0-o", ms=3, lw=1.5, label=legend.generated)
        ax.plot(x, c["reference"], "C1--s", ms=3, lw=1.5, label=legend.reference_samples)
        ax.axhline(0.0, color="0.5", lw=0.8)
        ax.set_xlabel(xl)
        ax.set_ylabel("two-point correlation C(r)/C(0)")
        ax.set_title(f"{v}: max |difference| {c['max_abs_diff']:.3g}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(legend.title, fontsize=10)
    _save(fig, path)
