"""The geometry of a grid: a latitude-longitude grid on the sphere, or a plane; area weights and distances.

:func:`grid_geometry` reads the field dims' coordinates. A field dim is a *latitude* when its coordinate says so
in CF terms (``units`` ``degrees_north`` and its spellings, ``standard_name: latitude``, or ``axis: Y`` with
degree units), or, failing those, when it is named ``lat``/``latitude`` with values in [-90, 90]; a *longitude*
likewise (``degrees_east``, ``standard_name: longitude``, ``axis: X`` with degree units, names
``lon``/``longitude``). A grid with exactly one of each is ``latlon``; anything else is a ``plane`` (grid
points, unit weights: today's metrics). The longitude is *periodic* when it is uniformly spaced (modulo 360)
and covers 360 degrees.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import xarray as xr

__all__ = ["EARTH_RADIUS_KM", "Geometry", "great_circle_km", "grid_geometry"]

#: mean Earth radius (IUGG), the radius of the great-circle distances
EARTH_RADIUS_KM = 6371.0088

_LAT_UNITS = {"degrees_north", "degree_north", "degree_n", "degrees_n", "degreen", "degreesn"}
_LON_UNITS = {"degrees_east", "degree_east", "degree_e", "degrees_e", "degreee", "degreese"}
_DEGREES = {"degrees", "degree", "deg", "degrees_north", "degrees_east"}


@dataclass
class Geometry:
    """What a grid is: its kind, its latitude and longitude dims, and its coordinates.

    Attributes
    ----------
    kind
        ``"latlon"`` or ``"plane"``.
    field_dims
        The field dims, in order.
    shape
        Their sizes.
    lat_dim, lon_dim
        The latitude and longitude dims (``None`` on a plane).
    lon_periodic
        The longitude is uniformly spaced and covers 360 degrees (``False`` on a plane).
    lat, lon
        The latitude and longitude values in degrees (``None`` on a plane).
    lon_uniform
        The longitude is uniformly spaced (modulo 360), so an FFT along it is a zonal spectrum.
    """

    kind: Literal["latlon", "plane"]
    field_dims: tuple[Hashable, ...]
    shape: tuple[int, ...]
    lat_dim: Hashable | None = None
    lon_dim: Hashable | None = None
    lon_periodic: bool = False
    lat: np.ndarray | None = field(default=None, repr=False)
    lon: np.ndarray | None = field(default=None, repr=False)
    lon_uniform: bool = False

    @property
    def latlon(self) -> bool:
        """Whether the grid is a latitude-longitude grid."""
        return self.kind == "latlon"

    @property
    def lon_spacing(self) -> float | None:
        """The longitude spacing in degrees (``None`` on a plane or for a non-uniform longitude)."""
        if not self.latlon or not self.lon_uniform or self.lon is None or self.lon.size < 2:
            return None
        return abs(float(_wrap(np.diff(self.lon))[0]))

    def area_weights(self) -> xr.DataArray:
        """Area weight of every grid point over the field dims: ``cos(latitude)`` normalised to mean 1.

        A plane gets ones. Pole rows of a grid that includes the poles get a weight of about 0 (their cells
        have no area at the point itself).

        Returns
        -------
        xarray.DataArray
            Float64 weights over ``field_dims`` (mean 1), named ``area_weight``.
        """
        w = np.ones(self.shape, dtype=np.float64)
        if self.latlon:
            axis = self.field_dims.index(self.lat_dim)
            cos = np.clip(np.cos(np.deg2rad(np.asarray(self.lat, dtype=np.float64))), 0.0, None)
            w = w * cos.reshape([-1 if i == axis else 1 for i in range(len(self.shape))])
            w = w / w.mean()
        return xr.DataArray(w, dims=self.field_dims, name="area_weight",
                            attrs={"long_name": "area weight cos(latitude), mean 1" if self.latlon
                                   else "area weight (plane: 1)", "units": "1"})

    def describe(self) -> str:
        """One phrase for reports: ``latitude-longitude grid (lat 29, lon 49, longitude not periodic)``."""
        if not self.latlon:
            sizes = ", ".join(f"{d} {n}" for d, n in zip(self.field_dims, self.shape, strict=True))
            return f"plane grid ({sizes})"
        per = "periodic longitude" if self.lon_periodic else "longitude not periodic"
        return (f"latitude-longitude grid ({self.lat_dim} {len(self.lat)}, {self.lon_dim} {len(self.lon)}, {per}); "
                "cos(latitude) area weights")


def _wrap(d: np.ndarray) -> np.ndarray:
    """Longitude differences wrapped into (-180, 180]."""
    return (np.asarray(d, dtype=np.float64) + 180.0) % 360.0 - 180.0


def _attr(c: xr.DataArray, key: str) -> str:
    return str(c.attrs.get(key, "")).strip().lower()


def _role(name: Hashable, c: xr.DataArray | None) -> str | None:
    """``"lat"``, ``"lon"`` or ``None`` for a field dim's 1-D coordinate ``c``."""
    if c is None or c.ndim != 1 or not np.issubdtype(c.dtype, np.number):
        return None
    units, std, axis = _attr(c, "units"), _attr(c, "standard_name"), _attr(c, "axis")
    if units in _LAT_UNITS or std in ("latitude", "grid_latitude") or (axis == "y" and units in _DEGREES):
        return "lat"
    if units in _LON_UNITS or std in ("longitude", "grid_longitude") or (axis == "x" and units in _DEGREES):
        return "lon"
    if units and units not in _DEGREES:
        return None  # named lat but in other units (a projection's metres): not a latitude
    v = np.asarray(c.values, dtype=np.float64)
    if not np.isfinite(v).all():
        return None
    low = str(name).lower()
    if low in ("lat", "latitude", "nav_lat") and v.min() >= -90.0 and v.max() <= 90.0:
        return "lat"
    if low in ("lon", "longitude", "nav_lon") and v.min() >= -360.0 and v.max() <= 720.0:
        return "lon"
    return None


def _lon_props(lon: np.ndarray) -> tuple[bool, bool]:
    """``(uniform, periodic)`` of a longitude: equal steps modulo 360, and ``n * step = 360``."""
    if lon.size < 2:
        return False, False
    d = _wrap(np.diff(lon))
    uniform = bool(d[0] != 0 and np.allclose(d, d[0], rtol=1e-4, atol=1e-9))
    periodic = uniform and lon.size >= 3 and math.isclose(abs(float(d[0])) * lon.size, 360.0, rel_tol=1e-3)
    return uniform, bool(periodic)


def grid_geometry(coords: Mapping[Hashable, xr.DataArray] | xr.Dataset | xr.DataArray,
                  field_dims: Sequence[Hashable]) -> Geometry:
    """The geometry of the grid spanned by ``field_dims``: latitude-longitude (from the coordinates) or plane.

    Parameters
    ----------
    coords : mapping of str to xarray.DataArray, or xarray.Dataset, or xarray.DataArray
        The coordinates (a Dataset's or DataArray's ``coords`` are used); a field dim without a coordinate is a
        plane dim.
    field_dims : sequence of str
        The field dims (1, 2 or 3), in the data's order.

    Returns
    -------
    Geometry
        ``kind="latlon"`` when exactly one field dim is a latitude and one a longitude, else ``"plane"``.
    """
    if isinstance(coords, xr.Dataset | xr.DataArray):
        sizes = dict(coords.sizes)
        coords = coords.coords
    else:
        sizes = {}
    field_dims = tuple(field_dims)
    found: dict[str, list[Hashable]] = {"lat": [], "lon": []}
    for d in field_dims:
        c = coords[d] if d in coords else None
        if c is not None:
            sizes.setdefault(d, int(c.size))
        role = _role(d, c)
        if role is not None:
            found[role].append(d)
    shape = tuple(int(sizes.get(d, 0)) for d in field_dims)
    if len(found["lat"]) != 1 or len(found["lon"]) != 1:
        return Geometry("plane", field_dims, shape)
    lat_dim, lon_dim = found["lat"][0], found["lon"][0]
    lat = np.asarray(coords[lat_dim].values, dtype=np.float64)
    lon = np.asarray(coords[lon_dim].values, dtype=np.float64)
    uniform, periodic = _lon_props(lon)
    return Geometry("latlon", field_dims, shape, lat_dim, lon_dim, periodic, lat, lon, uniform)


# Great-circle distance by the haversine formula: Sinnott 1984 (Sky and Telescope 68, 159).
def great_circle_km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Great-circle distance in km between points given in degrees (broadcast), on a sphere of
    :data:`EARTH_RADIUS_KM`.

    Parameters
    ----------
    lat1, lon1, lat2, lon2 : numpy.ndarray
        Latitudes and longitudes in degrees.

    Returns
    -------
    numpy.ndarray
        Distances in km.
    """
    p1, p2 = np.deg2rad(lat1), np.deg2rad(lat2)
    dl = np.deg2rad(_wrap(np.asarray(lon2, dtype=np.float64) - np.asarray(lon1, dtype=np.float64)))
    h = np.sin((p2 - p1) / 2.0) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2.0) ** 2
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
