"""Regenerate the tiny checked-in samples under ``datasets/samples/`` (each well under 1 MB).

Usage: ``python datasets/make_samples.py`` (from the repository root). Each sample is a
netCDF export of a store made by the package's own generators, so the tests and the
quick start can read it as user data (``dataset=netcdf``) or compare it with a fresh run.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import xarray as xr

HERE = Path(__file__).resolve().parent / "samples"

SAMPLES = {
    "grf32.nc": {"_target_": "sciencegen.physics.datasets.GRFSource", "name": "grf", "size": 32, "samples": 64,
                 "chunk": 64, "seed": 0},
    "kolmogorov64.nc": {"_target_": "sciencegen.physics.datasets.KolmogorovSource", "name": "kolmogorov",
                        "trajectories": 2, "chunk": 2, "snapshots": 8, "variables": ["vorticity", "u", "v"]},
}


def toy_weather(times: int = 160, seed: int = 0) -> xr.Dataset:
    """A small user-style netCDF: ``t2m`` and ``z500`` on ``(time, lat, lon)`` plus static ``orography``/``lsm``.

    Synthetic, deterministic: the 500 hPa height anomaly is an AR(1) (a = 0.8 per day) Gaussian random field;
    2 m temperature follows it (correlation 0.7) plus its own AR(1) field; both on a 16 x 32 latitude-longitude
    grid (longitude periodic) with a smooth meridional profile. Made for the conditioning how-to
    (docs/conditional.md): forecast it, downscale it, predict one variable from the other.
    """
    import numpy as np
    import torch

    from sciencegen.samplers import noise
    from sciencegen.targets import GaussianRandomField

    grf = GaussianRandomField(32, slope=4.0, k0=3.0)

    def ar1(stream: int) -> np.ndarray:
        out = np.empty((times, 16, 32))
        x = None
        for t in range(times):
            white = noise.normal(seed, [stream * 100_000 + t], 0, grf.shape, tag=noise.DATA, dtype=torch.float64)
            xi = grf.colour(white)[0, 0, 8:24].numpy()  # 16 latitude rows of the periodic field
            x = xi if x is None else 0.8 * x + 0.6 * xi
            out[t] = x
        return out

    lat = np.linspace(-67.5, 67.5, 16)
    lon = np.arange(32) * 11.25
    phi = np.deg2rad(lat)[:, None]
    za, ta = ar1(0), ar1(1)
    z500 = 5500.0 + 250.0 * np.cos(phi) ** 2 + 60.0 * za
    t2m = 288.0 - 30.0 * np.sin(phi) ** 2 + 3.0 * (0.7 * za + 0.714 * ta)
    white = noise.normal(seed, [999_999], 0, grf.shape, tag=noise.DATA, dtype=torch.float64)
    oro = np.clip(grf.colour(white)[0, 0, 8:24].numpy(), 0, None) * 1500.0
    time = np.datetime64("2000-01-01") + np.arange(times).astype("timedelta64[D]")
    return xr.Dataset(
        {"t2m": (("time", "lat", "lon"), t2m.astype("float32"), {"units": "K", "long_name": "2 m temperature"}),
         "z500": (("time", "lat", "lon"), z500.astype("float32"),
                  {"units": "m", "long_name": "geopotential height at 500 hPa"}),
         "orography": (("lat", "lon"), oro.astype("float32"), {"units": "m", "long_name": "surface height"}),
         "lsm": (("lat", "lon"), (oro > 0).astype("float32"), {"units": "1", "long_name": "land-sea mask"})},
        coords={"time": ("time", time), "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude"}),
                "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude"})},
        attrs={"title": "toy weather: synthetic AR(1) fields on a latitude-longitude grid",
               "source": "datasets/make_samples.py toy_weather", "Conventions": "CF-1.10"})


def grf_observations(seed: int = 0) -> tuple[xr.Dataset, str]:
    """Observations of two fields of ``grf32.nc``'s law (docs/generate.md, "Your observations").

    A gridded netCDF on the 32x32 grid of ``dataset=grf`` (``field``: 5 % of the points observed with noise 0.1,
    NaN elsewhere; one case per ``time``) and a CSV table of 20 stations at arbitrary positions (two cases).
    """
    from sciencegen.targets import GaussianRandomField

    rng = np.random.default_rng(seed)
    grf = GaussianRandomField(32)
    truth = grf.sample(2, torch.Generator().manual_seed(seed))[:, 0].numpy()
    grid = np.full(truth.shape, np.nan)
    for c in range(2):
        pick = rng.choice(32 * 32, size=51, replace=False)
        grid[c].reshape(-1)[pick] = truth[c].reshape(-1)[pick] + 0.1 * rng.standard_normal(51)
    coords = {"time": np.array(["2026-01-01", "2026-01-02"], dtype="datetime64[ns]"), "y": np.arange(32) / 32,
              "x": np.arange(32) / 32}
    ds = xr.Dataset({"field": (("time", "y", "x"), grid.astype(np.float32))}, coords=coords,
                    attrs={"title": "5 % of two Gaussian random fields observed, noise 0.1 (NaN: unobserved)"})
    rows = ["case,y,x,field,noise"]
    for c, case in enumerate("ab"):
        for _ in range(10):
            y, x = rng.uniform(0, 1, 2)
            j, i = int(y * 32), int(x * 32)  # the value of the nearest lower grid point, noisy: a toy table
            rows.append(f"{case},{y:.4f},{x:.4f},{truth[c, j, i] + 0.05 * rng.standard_normal():.4f},0.05")
    return ds, "\n".join(rows) + "\n"


def main(names: list[str]) -> None:
    """Write the named samples (default: all)."""
    from sciencegen.data.prepare import prepare

    HERE.mkdir(exist_ok=True)
    for name in names or [*SAMPLES, "weather16x32.nc", "grf32_obs.nc"]:
        if name == "grf32_obs.nc":
            ds, table = grf_observations()
            ds.to_netcdf(HERE / name, encoding={"field": {"zlib": True, "complevel": 4}})
            (HERE / "grf32_stations.csv").write_text(table)
            print(f"{HERE / name}, {HERE / 'grf32_stations.csv'}")
            continue
        if name == "weather16x32.nc":
            ds = toy_weather()
            ds.to_netcdf(HERE / name, encoding={v: {"zlib": True, "complevel": 4} for v in ds.data_vars})
            print(f"{HERE / name}: {os.path.getsize(HERE / name) / 1e3:.0f} kB")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            p = prepare(SAMPLES[name], Path(tmp) / "store.zarr", progress=True)
            ds = xr.open_zarr(p.path).load()
            enc = {v: {"zlib": True, "complevel": 4} for v in p.spec.variables}
            ds.to_netcdf(HERE / name, encoding=enc)
        print(f"{HERE / name}: {os.path.getsize(HERE / name) / 1e3:.0f} kB")


if __name__ == "__main__":
    main(sys.argv[1:])
