"""Field panels drawn the right way up, and axis labels from coordinate attributes (every figure uses them).

* :class:`PanelAxis` is one field dim as a figure sees it: its coordinate values, name and units;
  :func:`panel_axis` / :func:`panel_axes` make them from xarray coordinates (or bare arrays, or nothing: index
  axes).
* :func:`draw_field` draws a 2-D field BY COORDINATE VALUE: the vertical coordinate increases upward and the
  horizontal one to the right (a latitude stored 90 -> -90 is flipped, so north is up), cells centred on their
  coordinates (the extent reaches half a cell beyond the first and last values; a non-uniform coordinate is
  drawn with cell edges halfway between its values), both axes labelled ``name [units]`` with ticks. A
  coordinate that is neither increasing nor decreasing (a longitude that wraps inside the box) is drawn by
  index, labelled ``name (index)``.
* :func:`units_suffix`, :func:`axis_label` and :func:`coord_label` write labels: a missing unit is omitted
  (or said unknown), never shown as ``[1]``; :func:`coord_label` reads the ``long_name`` / ``units`` a metric
  puts on its coordinate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PanelAxis", "axis_label", "coord_label", "coord_values", "draw_field", "drawn_axis", "panel_axes",
           "panel_axis", "units_suffix"]


def units_suffix(units: Any, unknown: str = "") -> str:
    """`` [units]`` for a label (``^2`` shown as ², ``**`` as ^), or ``unknown`` when there are no units.

    Parameters
    ----------
    units
        The units (``None`` or empty: unknown).
    unknown
        What to write instead for unknown units (e.g. ``" (units unknown)"``; default nothing).

    Returns
    -------
    str
    """
    if units is None or not str(units).strip():
        return unknown
    return f" [{str(units).strip().replace('^2', '²')}]"


def axis_label(name: str, units: Any) -> str:
    """``name [units]``, or ``name`` alone when the units are unknown."""
    return f"{name}{units_suffix(units)}"


@dataclass(frozen=True)
class PanelAxis:
    """One field dim of a panel.

    Attributes
    ----------
    values
        1-D coordinate values (grid indices when the dim has no numeric coordinate).
    name
        The dim or coordinate name (``None``: an anonymous index axis).
    units
        Units of the values (``None``: unknown or none).
    index
        Whether ``values`` are grid indices rather than coordinate values.
    """

    values: np.ndarray
    name: str | None = None
    units: str | None = None
    index: bool = False

    @property
    def label(self) -> str:
        """The axis label: ``lat [degrees_north]``, ``lat (index)``, ``index``."""
        if self.index:
            return f"{self.name} (index)" if self.name else "index"
        return axis_label(self.name or "coordinate", self.units)


def _index_axis(n: int, name: str | None) -> PanelAxis:
    return PanelAxis(np.arange(n, dtype=np.float64), name, None, True)


def panel_axis(coord: Any, name: str | None = None, size: int | None = None) -> PanelAxis:
    """A :class:`PanelAxis` from a coordinate.

    Parameters
    ----------
    coord
        A :class:`PanelAxis` (returned as is), an ``xarray.DataArray`` coordinate (its name and ``units``
        attribute are used), a 1-D array of values, or ``None`` (index axis of ``size`` points).
    name
        Name when ``coord`` carries none (a bare array), or the dim name of an index axis.
    size
        Number of points of an index axis (``coord`` ``None``).

    Returns
    -------
    PanelAxis
        Non-numeric values (dates, labels) give an index axis with the name kept.
    """
    if isinstance(coord, PanelAxis):
        return coord
    if coord is None:
        return _index_axis(int(size or 0), name)
    attrs = getattr(coord, "attrs", None) or {}
    cname = getattr(coord, "name", None)
    cname = str(cname) if cname is not None else name
    values = np.asarray(getattr(coord, "values", coord))
    if values.ndim != 1 or not (np.issubdtype(values.dtype, np.number) and not np.issubdtype(values.dtype, np.bool_)):
        return _index_axis(values.size if values.ndim == 1 else int(size or 0), cname)
    units = attrs.get("units")
    return PanelAxis(values.astype(np.float64), cname, None if units is None else str(units))


def panel_axes(obj: Any, dims: Sequence[str]) -> tuple[PanelAxis, ...]:
    """The :class:`PanelAxis` of each of ``dims`` of an xarray object (an index axis where it has no coordinate)."""
    return tuple(panel_axis(obj[d]) if d in obj.coords else _index_axis(int(obj.sizes[d]), d) for d in dims)


def drawn_axis(coord: Any, n: int) -> tuple[PanelAxis, bool]:
    """The axis as :func:`draw_field` draws a dim of ``n`` points, and whether the field is flipped along it.

    Parameters
    ----------
    coord
        Anything :func:`panel_axis` takes (``None``: an index axis).
    n
        Points along the dim.

    Returns
    -------
    axis : PanelAxis
        Increasing coordinate values (a decreasing coordinate reversed), or grid indices when the coordinate
        is missing, of another length, or neither increasing nor decreasing.
    flipped : bool
        Whether the field is reversed along the dim (a decreasing coordinate).
    """
    ax = panel_axis(coord, None, n)
    v = np.asarray(ax.values, dtype=np.float64)
    if v.size != n:
        return _index_axis(n, ax.name), False
    if n < 2 or bool(np.all(np.diff(v) > 0)):
        return ax, False
    if bool(np.all(np.diff(v) < 0)):
        return PanelAxis(v[::-1].copy(), ax.name, ax.units, ax.index), True
    return _index_axis(n, ax.name), False


def _edges(v: np.ndarray) -> np.ndarray:
    """Cell edges of increasing cell-centred values (halfway between, half a cell beyond the ends)."""
    if v.size < 2:
        return np.array([v[0] - 0.5, v[0] + 0.5]) if v.size else np.array([-0.5, 0.5])
    mid = 0.5 * (v[1:] + v[:-1])
    return np.concatenate([[2 * v[0] - mid[0]], mid, [2 * v[-1] - mid[-1]]])


def _uniform(v: np.ndarray) -> bool:
    d = np.diff(v)
    return d.size == 0 or bool(np.allclose(d, d[0], rtol=1e-6, atol=0))


def draw_field(ax: Any, field: np.ndarray, y: Any = None, x: Any = None, *, vmin: float | None = None,
               vmax: float | None = None, cmap: str = "viridis", aspect: str = "auto", fontsize: float = 6,
               labels: bool = True) -> Any:
    """Draw a 2-D field ``[ny, nx]`` by coordinate value, the vertical coordinate increasing upward.

    Parameters
    ----------
    ax
        A matplotlib axes.
    field
        ``[ny, nx]``: rows along ``y``, columns along ``x``.
    y, x
        The two coordinates (anything :func:`panel_axis` takes; ``None``: index axes).
    vmin, vmax, cmap
        Colour scale.
    aspect
        Axes aspect (``"equal"``: one unit of ``x`` as long as one of ``y``).
    fontsize
        Tick and axis-label size.
    labels
        Label the axes (``False``: ticks only).

    Returns
    -------
    matplotlib.image.AxesImage or matplotlib.collections.QuadMesh
        The drawn image (for a colour bar): an image for uniform coordinates, a mesh otherwise.
    """
    f = np.asarray(field, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"draw_field needs a 2-D field, got shape {f.shape}")
    ny, nx = f.shape
    ya, flip_y = drawn_axis(y, ny)
    xa, flip_x = drawn_axis(x, nx)
    if flip_y:
        f = f[::-1]
    if flip_x:
        f = f[:, ::-1]
    ey, ex = _edges(ya.values), _edges(xa.values)
    if _uniform(ya.values) and _uniform(xa.values):
        im = ax.imshow(f, origin="lower", extent=(ex[0], ex[-1], ey[0], ey[-1]), cmap=cmap, vmin=vmin, vmax=vmax,
                       interpolation="nearest", aspect=aspect)
    else:
        im = ax.pcolormesh(ex, ey, f, cmap=cmap, vmin=vmin, vmax=vmax, shading="flat")
        ax.set_aspect(aspect)
    ax.set_xlim(ex[0], ex[-1])
    ax.set_ylim(ey[0], ey[-1])
    ax.tick_params(labelsize=fontsize)
    if labels:
        ax.set_xlabel(xa.label, fontsize=fontsize + 1)
        ax.set_ylabel(ya.label, fontsize=fontsize + 1)
    return im


def _attrs_of(entry: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """The first recorded attribute dict of coordinate ``key`` of a metric's dict (:func:`coord_label`)."""
    coords, value = entry.get("coords"), entry.get(key)
    flat = ({a: entry.get(f"{key}_{a}") for a in ("long_name", "units") if entry.get(f"{key}_{a}")}
            if entry.get(f"{key}_long_name") else None)   # units alone: today's label with those units
    candidates = [flat, entry.get(f"{key}_attrs"), (entry.get("attrs") or {}).get(key),
                  coords.get(key) if isinstance(coords, Mapping) else None, value]
    for c in candidates:
        a = c.get("attrs") if isinstance(c, Mapping) and "attrs" in c else getattr(c, "attrs", c)
        if isinstance(a, Mapping) and (a.get("long_name") or a.get("units")):
            return a
    return {}


def coord_label(entry: Mapping[str, Any], key: str, default: str) -> str:
    """Axis label of a metric's coordinate from its attributes: ``long_name [units]``; ``default`` without.

    The attributes are looked up, first found wins, as ``entry[key + "_long_name"]`` with ``entry[key + "_units"]``
    (the layout of ``metrics.json``), ``entry[key + "_attrs"]``, ``entry["attrs"][key]``,
    ``entry["coords"][key]["attrs"]`` (``xarray.Dataset.to_dict``), then ``entry[key]`` itself (a DataArray
    with ``attrs`` or a ``{"attrs", "data"}`` dict); only a ``long_name`` or a ``units`` entry counts.

    Parameters
    ----------
    entry
        A metric's dict (e.g. ``metrics.json``'s ``spectrum`` or ``correlation`` of a variable).
    key
        The coordinate (``"wavenumber"``, ``"distance"``, ...).
    default
        Today's label, used when neither a ``long_name`` nor ``units`` is recorded.

    Returns
    -------
    str
        ``long_name [units]`` (the name alone when the units are unknown; ``key`` when only units are known).
    """
    attrs = _attrs_of(entry, key)
    if not attrs:
        return default
    return axis_label(str(attrs.get("long_name") or key), attrs.get("units"))


def coord_values(entry: Mapping[str, Any], key: str) -> np.ndarray:
    """The values of a metric coordinate stored as a list, an array, a DataArray or a ``{"data": ...}`` dict."""
    v = entry[key]
    if isinstance(v, Mapping):
        v = v.get("data", v.get("values"))
    return np.asarray(getattr(v, "values", v), dtype=np.float64)
