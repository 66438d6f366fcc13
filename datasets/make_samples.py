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

import xarray as xr

HERE = Path(__file__).resolve().parent / "samples"

SAMPLES = {
    "grf32.nc": {"_target_": "sciencegen.physics.datasets.GRFSource", "name": "grf", "size": 32, "samples": 64,
                 "chunk": 64, "seed": 0},
    "kolmogorov64.nc": {"_target_": "sciencegen.physics.datasets.KolmogorovSource", "name": "kolmogorov",
                        "trajectories": 2, "chunk": 2, "snapshots": 8, "variables": ["vorticity", "u", "v"]},
}


def main(names: list[str]) -> None:
    """Write the named samples (default: all)."""
    from sciencegen.data.prepare import prepare

    HERE.mkdir(exist_ok=True)
    for name in names or list(SAMPLES):
        with tempfile.TemporaryDirectory() as tmp:
            p = prepare(SAMPLES[name], Path(tmp) / "store.zarr", progress=True)
            ds = xr.open_zarr(p.path).load()
            enc = {v: {"zlib": True, "complevel": 4} for v in p.spec.variables}
            ds.to_netcdf(HERE / name, encoding=enc)
        print(f"{HERE / name}: {os.path.getsize(HERE / name) / 1e3:.0f} kB")


if __name__ == "__main__":
    main(sys.argv[1:])
