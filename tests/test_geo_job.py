"""The whole job (data -> train -> generate -> evaluate) on files in the style of real archives.

The files come from ``datasets/make_geo_samples.py``: a regional 500 hPa height with latitude descending and a
scalar level (29 x 49), HadISST-like SST anomalies with land missing (18 x 30), two global wind components in
two files (73 x 144, poles included), and the shipped global SST sample (37 x 72, land masked). Each runs with
small budgets through the ``sciencegen`` command as a user types it; the checks are what a climate scientist
looks at first: the mask kept exactly, metrics finite on valid points, the level kept, north up.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("make_geo_samples", ROOT / "datasets" / "make_geo_samples.py")
geo = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(geo)

#: small budgets: a tiny U-Net, a few optimiser steps, 4 members of 8 steps
TINY = ["model.preset=tiny", "train.max_steps=3", "train.batch_size=8", "train.val_every=0",
        "train.figure_members=0", "generate.members=4", "generate.batch_size=4", "sampler.steps=8",
        "progress=false"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return geo.write_all(tmp_path_factory.mktemp("geo"))


def _job(tmp: Path, name: str, dataset: list[str], extra: tuple[str, ...] = ()) -> tuple[Path, str]:
    """Run ``sciencegen`` in ``tmp`` (its own data root); return the run directory and what it printed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SCIENCEGEN_DATA_ROOT": str(tmp / "data")}
    cmd = ["sciencegen", "dataset=netcdf", *dataset, f"name={name}", *TINY, *extra]
    out = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert not (tmp / "outputs").exists(), f"{name}: a stray outputs/ folder was left in {tmp}"
    return tmp / "runs" / name, out.stdout + out.stderr


def _metrics(run: Path) -> dict:
    found = sorted(run.rglob("metrics.json"))
    assert found, f"no metrics.json under {run}"
    return json.loads(found[-1].read_text())


def _finite_numbers(obj, path="") -> list[str]:
    """Paths of non-finite numbers in a JSON tree (None is allowed only where a reason is given)."""
    bad = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            bad += _finite_numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            bad += _finite_numbers(v, f"{path}[{i}]")
    elif isinstance(obj, float) and not np.isfinite(obj):
        bad.append(path)
    return bad


def test_sst_with_land_keeps_nan_exactly_at_land(files, tmp_path):
    """The land points (NaN in every month of the file) are NaN in every generated member, nowhere else."""
    run, text = _job(tmp_path, "sst", [f"dataset.path={files['sst']}", "dataset.variables=[sst]",
                                 "dataset.sample_dims=[time]", "dataset.nonfinite=mask"])
    land = xr.open_dataset(files["sst"])["land"].values.astype(bool)
    ens = xr.open_zarr(run / "samples.zarr")
    sst = ens["sst"].values
    assert sst.shape[-2:] == land.shape == (18, 30)
    for m in range(sst.shape[0]):
        np.testing.assert_array_equal(np.isnan(sst[m]), land, err_msg=f"member {m}: NaN not exactly at land")
    assert "valid_sst" in ens, sorted(ens.variables)
    np.testing.assert_array_equal(ens["valid_sst"].values.astype(bool), ~land)
    assert "units" not in ens["sst"].attrs, ens["sst"].attrs  # the file has none: unknown stays unknown
    assert "fewer than a few hundred" in text, text[-3000:]  # 40 months: the data stage says what to expect
    metrics = _metrics(run)
    assert not _finite_numbers(metrics), _finite_numbers(metrics)
    assert "valid" in json.dumps(metrics), "metrics.json does not say that metrics use valid points only"


def test_regional_z500_descending_latitude_and_level(files, tmp_path):
    """29 x 49 (odd, not periodic), latitude 60 -> 18: trains on its own grid; the level survives."""
    run, text = _job(tmp_path, "z500", [f"dataset.path={files['z500']}", "dataset.variables=[hgt]",
                                  "dataset.sample_dims=[time]"])
    ens = xr.open_zarr(run / "samples.zarr")
    assert ens["hgt"].shape[-2:] == (29, 49)
    assert float(ens["level"]) == 500.0 and ens["level"].attrs.get("units") == "hPa"
    assert list(ens["lat"].values) == list(np.linspace(60.0, 18.0, 29))
    assert "actual_range" not in ens["hgt"].attrs
    assert not any(str(ens[c].attrs.get("bounds", "")) not in ens.variables
                   for c in ens.coords if "bounds" in ens[c].attrs)
    assert not _finite_numbers(_metrics(run))


def test_global_winds_two_files(files, tmp_path):
    """uwnd and vwnd in two files, 73 x 144 with both poles: two channels on their own global grid."""
    paths = f"dataset.path=[{files['uwnd']},{files['vwnd']}]"
    run, text = _job(tmp_path, "wind", [paths, "dataset.variables=[uwnd,vwnd]", "dataset.sample_dims=[time]"])
    ens = xr.open_zarr(run / "samples.zarr")
    assert ens["uwnd"].shape[-2:] == ens["vwnd"].shape[-2:] == (73, 144)
    assert float(ens["air_pressure"]) == 200.0
    assert np.isfinite(ens["uwnd"].values).all()
    assert not _finite_numbers(_metrics(run))


def test_shipped_global_sst_with_mask_variable(tmp_path):
    """The how-to's sample (docs/own_data.md): the static ``lsm`` names the land; lat-lon metrics, memorisation."""
    path = ROOT / "datasets" / "samples" / geo.SHIPPED
    run, text = _job(tmp_path, "sst_global", [f"dataset.path={path}", "dataset.variables=[sst]",
                                        "dataset.sample_dims=[time]", "dataset.mask=lsm"])
    land = xr.open_dataset(path)["lsm"].values > 0
    ens = xr.open_zarr(run / "samples.zarr")
    assert ens["sst"].shape[-2:] == (37, 72) and ens["sst"].attrs.get("units") == "degC"
    np.testing.assert_array_equal(np.isnan(ens["sst"].values), np.broadcast_to(land, ens["sst"].shape))
    metrics = _metrics(run)
    assert not _finite_numbers(metrics), _finite_numbers(metrics)
    summary = json.dumps(metrics)
    assert "memorisation" in metrics and "km" in summary and "zonal" in summary, sorted(metrics)
