"""Latitude-longitude netCDF files in the style of real reanalysis and observation archives.

Usage: ``python datasets/make_geo_samples.py [DIR]`` writes the four files below into ``DIR`` (default: a
temporary folder, printed), and ``python datasets/make_geo_samples.py --shipped`` rewrites the shipped sample
``datasets/samples/sst_global_37x72.nc`` (under 1 MB) that ``docs/own_data.md`` runs on.

The fields are synthetic and deterministic (a seeded sum of zonal waves at every resolved scale with a red
spectrum, times meridional profiles, AR(1) in time) but the files look like the ones users bring:

* ``z500_29x49.nc`` (NCEP-like regional 500 hPa height): ``hgt(time, lat, lon)``, latitude *descending*
  (60 -> 18 N), a non-periodic longitude box, a scalar coordinate ``level = 500 hPa``, ``lat``/``lon`` with
  ``bounds`` pointing at ``lat_bnds``/``lon_bnds`` variables, ``actual_range``, ``_FillValue``, packing-free.
* ``sst_18x30.nc`` (HadISST-like anomalies): ``sst(time, latitude, longitude)`` with NaN over land (the same
  points in every month, written as ``_FillValue``), latitude descending, a static ``land`` mask variable,
  no ``units`` on ``sst`` (unknown units must stay unknown).
* ``uwnd_73x144.nc`` and ``vwnd_73x144.nc``: one variable per file on the global 2.5 degree grid, latitude
  90 -> -90 (poles included, 73 rows), longitude 0 -> 357.5 (periodic), scalar ``level = 200 hPa`` named
  ``air_pressure``.
* ``sst_global_37x72.nc`` (the shipped sample): global 5 degree SST in degC with NaN over land (a static
  ``lsm`` mask variable too), latitude 90 -> -90, longitude 0 -> 355, 96 monthly fields.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

HERE = Path(__file__).resolve().parent / "samples"
SHIPPED = "sst_global_37x72.nc"
log = logging.getLogger("make_geo_samples")


def waves(lat: np.ndarray, lon: np.ndarray, times: int, seed: int, slope: float = 1.5, a: float = 0.7) -> np.ndarray:
    """Unit-variance smooth anomalies ``[time, lat, lon]`` with a red spectrum at every resolved scale.

    Zonal waves ``m = 1 .. lon/2 - 1`` with amplitude ``m**-slope`` (power falling as ``m**(-2 slope)``), each with a
    random meridional profile of about the same scale (``cos(k m phi + c)``, k ~ 1..2), every amplitude an
    AR(1) series (coefficient ``a``) in time. No scale is empty, as in real fields: a generator that puts
    small-scale noise where the data have none is seen in the spectra.
    """
    rng = np.random.default_rng(seed)
    phi, lam = np.deg2rad(lat)[:, None], np.deg2rad(lon)[None, :]
    out = np.zeros((times, lat.size, lon.size))
    for m in range(1, max(lon.size // 2 - 1, 2) + 1):
        for kind in (np.cos, np.sin):
            k = m * rng.uniform(1.0, 2.0)
            profile = np.cos(phi) ** 0.5 * np.cos(k * phi + rng.uniform(0, np.pi))
            shape = profile * kind(m * lam + rng.uniform(0, np.pi)) * m ** -slope
            amp = np.empty(times)
            amp[0] = rng.standard_normal()
            for t in range(1, times):
                amp[t] = a * amp[t - 1] + np.sqrt(1 - a * a) * rng.standard_normal()
            out += amp[:, None, None] * shape[None]
    return out / out.std()


def land_mask(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """A fixed land pattern ``[lat, lon]`` (True: land): three elliptic continents and a polar cap."""
    la, lo = lat[:, None], lon[None, :]
    land = np.zeros((lat.size, lon.size), dtype=bool)
    for (c_lat, c_lon, r_lat, r_lon) in ((45, 100, 20, 50), (10, 20, 25, 20), (-25, 290, 25, 15)):
        d_lon = (lo - c_lon + 180) % 360 - 180
        land |= ((la - c_lat) / r_lat) ** 2 + (d_lon / r_lon) ** 2 <= 1
    return land | (la <= -70)


def _latlon(lat: np.ndarray, lon: np.ndarray, lat_name: str = "lat", lon_name: str = "lon") -> dict:
    return {lat_name: (lat_name, lat, {"units": "degrees_north", "standard_name": "latitude",
                                       "long_name": "Latitude", "axis": "Y"}),
            lon_name: (lon_name, lon, {"units": "degrees_east", "standard_name": "longitude",
                                       "long_name": "Longitude", "axis": "X"})}


def _months(n: int) -> np.ndarray:
    return (np.datetime64("1990-01", "M") + np.arange(n)).astype("datetime64[ns]")


def z500(times: int = 65) -> xr.Dataset:
    """NCEP-like regional 500 hPa geopotential height, 29 x 49, latitude descending, scalar level."""
    lat, lon = np.linspace(60.0, 18.0, 29), np.linspace(200.0, 272.0, 49)
    hgt = 5600.0 - 8.0 * (lat[:, None] - 40.0) + 60.0 * waves(lat, lon, times, seed=1)
    coords = _latlon(lat, lon)
    coords["lat"][2]["bounds"] = "lat_bnds"
    coords["lon"][2]["bounds"] = "lon_bnds"
    coords["level"] = ((), 500.0, {"units": "hPa", "long_name": "Level", "positive": "down", "axis": "Z"})
    coords["time"] = ("time", _months(times), {"long_name": "Time"})
    bnds = lambda v: np.stack([v - 0.75, v + 0.75], axis=-1)  # noqa: E731
    return xr.Dataset(
        {"hgt": (("time", "lat", "lon"), hgt.astype("float32"),
                 {"units": "m", "long_name": "Monthly mean geopotential height", "var_desc": "Geopotential height",
                  "actual_range": np.array([4000.0, 6000.0], dtype="float32")}),
         "lat_bnds": (("lat", "nbnds"), bnds(lat)), "lon_bnds": (("lon", "nbnds"), bnds(lon))},
        coords=coords, attrs={"title": "synthetic NCEP-style monthly 500 hPa height (datasets/make_geo_samples.py)",
                              "Conventions": "CF-1.0"})


def sst_regional(times: int = 40) -> xr.Dataset:
    """HadISST-like SST anomalies, 18 x 30, land NaN (static), latitude descending, no units on ``sst``."""
    lat, lon = np.arange(42.5, -45.0, -5.0), np.arange(242.5, 392.5, 5.0) % 360
    land = land_mask(lat, lon)
    sst = 0.6 * waves(lat, lon, times, seed=2)
    sst[:, land] = np.nan
    coords = _latlon(lat, lon, "latitude", "longitude")
    coords["time"] = ("time", _months(times))
    return xr.Dataset(
        {"sst": (("time", "latitude", "longitude"), sst.astype("float32"), {"long_name": "sst anomaly"}),
         "land": (("latitude", "longitude"), land.astype("int8"), {"long_name": "land mask (1: land)"})},
        coords=coords, attrs={"title": "synthetic HadISST-style SST anomalies (datasets/make_geo_samples.py)"})


def wind(name: str, times: int = 24) -> xr.Dataset:
    """One NCEP-like global 2.5 degree wind component (73 x 144, poles included), scalar ``air_pressure``."""
    lat, lon = np.linspace(90.0, -90.0, 73), np.arange(144) * 2.5
    seed, mean = (3, 20.0 * np.cos(np.deg2rad(lat))[:, None] ** 2) if name == "uwnd" else (4, 0.0)
    field = mean + 8.0 * waves(lat, lon, times, seed=seed) * np.cos(np.deg2rad(lat))[:, None]
    coords = _latlon(lat, lon)
    coords["air_pressure"] = ((), 200.0, {"units": "hPa", "standard_name": "air_pressure", "axis": "Z"})
    coords["time"] = ("time", _months(times))
    long = {"uwnd": "u-wind", "vwnd": "v-wind"}[name]
    return xr.Dataset({name: (("time", "lat", "lon"), field.astype("float32"),
                              {"units": "m/s", "long_name": f"Monthly mean {long} at 200 hPa"})},
                      coords=coords, attrs={"title": f"synthetic NCEP-style {long} (datasets/make_geo_samples.py)"})


def sst_global(times: int = 96) -> xr.Dataset:
    """The shipped sample: global 5 degree SST (degC), NaN over land, a static ``lsm``; latitude 90 -> -90."""
    lat, lon = np.linspace(90.0, -90.0, 37), np.arange(72) * 5.0
    land = land_mask(lat, lon)
    clim = 28.0 * np.cos(np.deg2rad(lat))[:, None] ** 2 - 1.5 + 0 * lon[None, :]
    sst = clim + 0.8 * waves(lat, lon, times, seed=5)
    sst[:, land] = np.nan
    coords = _latlon(lat, lon)
    coords["time"] = ("time", _months(times))
    return xr.Dataset(
        {"sst": (("time", "lat", "lon"), sst.astype("float32"),
                 {"units": "degC", "long_name": "sea surface temperature", "standard_name": "sea_surface_temperature"}),
         "lsm": (("lat", "lon"), land.astype("float32"), {"units": "1", "long_name": "land-sea mask (1: land)"})},
        coords=coords, attrs={"title": "synthetic global SST with land masked (datasets/make_geo_samples.py)",
                              "Conventions": "CF-1.10"})


def write(ds: xr.Dataset, path: Path, digits: int | None = None) -> Path:
    """netCDF with zlib compression and ``_FillValue`` set on the float fields (as archives write them)."""
    enc = {}
    for v, da in ds.data_vars.items():
        if da.dtype.kind == "f" and da.ndim >= 2:
            enc[v] = {"zlib": True, "complevel": 5, "_FillValue": np.float32(-9.96921e36)}
            if digits is not None:
                enc[v]["least_significant_digit"] = digits
    ds.to_netcdf(path, encoding=enc)
    return path


def write_all(folder: Path) -> dict[str, Path]:
    """Write the four test-style files into ``folder``; their paths by short name."""
    folder.mkdir(parents=True, exist_ok=True)
    return {"z500": write(z500(), folder / "z500_29x49.nc"), "sst": write(sst_regional(), folder / "sst_18x30.nc"),
            "uwnd": write(wind("uwnd"), folder / "uwnd_73x144.nc"),
            "vwnd": write(wind("vwnd"), folder / "vwnd_73x144.nc")}


def main(argv: list[str]) -> None:
    """Write the test-style files (into ``argv[0]`` or a temporary folder), or the shipped sample."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if argv and argv[0] == "--shipped":
        HERE.mkdir(exist_ok=True)
        path = write(sst_global(), HERE / SHIPPED, digits=2)
        log.info("%s: %.0f kB", path, path.stat().st_size / 1e3)
        return
    folder = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="geo-"))
    for path in write_all(folder).values():
        log.info("%s: %.0f kB", path, path.stat().st_size / 1e3)


if __name__ == "__main__":
    main(sys.argv[1:])
