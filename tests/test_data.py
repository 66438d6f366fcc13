"""sciencegen-data: built-in grf, user netCDF/Zarr with different conventions, statistics, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from hydra import compose, initialize_config_dir

from sciencegen.config import config_dir
from sciencegen.data.fields import DataError
from sciencegen.data.prepare import default_store_path, prepare
from sciencegen.data.store import ATTR, open_prepared, read_metadata
from sciencegen.physics.datasets import GRFSource, grf_samples
from sciencegen.pipelines.data import run_data
from sciencegen.targets import GaussianRandomField, spectral_error


def era_like(ntime=12, nlat=6, nlon=8, dtype="float64", level=None, seed=0, start="2020-01-01") -> xr.Dataset:
    """Fake reanalysis: t2m, u10 on (time, [level,] lat, lon) with CF attributes and a global longitude."""
    rng = np.random.default_rng(seed)
    dims = ("time", "level", "lat", "lon") if level else ("time", "lat", "lon")
    shape = (ntime, level, nlat, nlon) if level else (ntime, nlat, nlon)
    coords = {"time": pd.date_range(start, periods=ntime, freq="6h"),
              "lat": ("lat", np.linspace(-75, 75, nlat), {"units": "degrees_north", "standard_name": "latitude"}),
              "lon": ("lon", np.arange(nlon) * 360.0 / nlon, {"units": "degrees_east", "standard_name": "longitude"})}
    if level:
        coords["level"] = ("level", np.linspace(1000, 500, level), {"units": "hPa"})
    t2m = (280 + 10 * rng.standard_normal(shape)).astype(dtype)
    u10 = (3 * rng.standard_normal(shape)).astype(dtype)
    return xr.Dataset(
        {"t2m": (dims, t2m, {"units": "K", "long_name": "2 metre temperature"}),
         "u10": (dims, u10, {"units": "m s-1", "long_name": "10 metre U wind component"})},
        coords=coords, attrs={"title": "fake reanalysis", "institution": "tests"})


def cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("data", overrides=["progress=false", *overrides])


def nothing_written(parent: Path, out: Path) -> bool:
    return not out.exists() and not any(p.name.startswith(f".{out.name}.tmp") for p in parent.iterdir())


# --------------------------------------------------------------------------- grf


def test_grf_store_matches_generator_and_exact_law(tmp_path):
    out = tmp_path / "grf.zarr"
    p = run_data(cfg("dataset.size=16", "dataset.samples=96", "dataset.chunk=32", f"output.path={out}"))
    ds = xr.open_zarr(out)  # plain xarray, no sciencegen needed
    assert ds["field"].dims == ("sample", "y", "x") and ds["field"].shape == (96, 16, 16)
    assert ds["field"].dtype == np.float32 and ds["field"].attrs["units"] == "1"
    assert ds.attrs["Conventions"].startswith("CF-") and ds["x"].attrs["axis"] == "X"
    meta = json.loads(ds.attrs[ATTR])
    assert meta["complete"] and meta["periodic"] == {"y": True, "x": True} and meta["sample_dims"] == ["sample"]
    # values are the generator's, and sample i depends only on (seed, i): another chunking gives the same numbers
    target = GaussianRandomField(16)
    direct = grf_samples(target, 0, 40, 50)[:, 0].astype(np.float32)
    np.testing.assert_array_equal(ds["field"].values[40:50], direct)
    # statistics beside the data equal numpy's
    x = ds["field"].values.astype(np.float64)
    st = xr.open_zarr(out, group="statistics")
    assert st.attrs["variables"] == ["field"]
    np.testing.assert_allclose(st["mean"].values[0], x.mean(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(st["std"].values[0], x.std(), rtol=1e-10)
    assert st["min"].values[0] == x.min() and st["max"].values[0] == x.max() and st["count"].values[0] == x.size
    np.testing.assert_allclose(p.mean, [x.mean()], atol=1e-12)


def test_grf_samples_follow_the_exact_spectrum(tmp_path):
    src = GRFSource(size=32, samples=256, chunk=64, seed=3)
    ds, spec, _ = src.open()
    x = torch.from_numpy(ds["field"].values.astype(np.float64))[:, None]
    err = spectral_error(x, src.target())
    assert err < 0.03, err  # Monte Carlo floor at 256 samples is about 0.013
    # other chunking, same samples
    ds2, _, _ = GRFSource(size=32, samples=256, chunk=100, seed=3).open()
    np.testing.assert_array_equal(ds["field"].values, ds2["field"].values)


def test_grf_1d_3d_and_channels(tmp_path):
    p = prepare({"_target_": "sciencegen.physics.datasets.GRFSource", "size": 8, "samples": 10, "ndim": 3,
                 "channels": 2, "chunk": 4}, tmp_path / "g3.zarr")
    assert p.spec.field_dims == ("z", "y", "x") and p.spec.variables == ("field0", "field1")
    assert p.ds["field1"].shape == (10, 8, 8, 8)
    p1 = prepare({"_target_": "sciencegen.physics.datasets.GRFSource", "size": 64, "samples": 10, "ndim": 1},
                 tmp_path / "g1.zarr")
    assert p1.spec.field_dims == ("x",) and p1.field_shape == (64,)


def test_reuse_overwrite_and_default_path(tmp_path):
    c = cfg("dataset.size=8", "dataset.samples=16", f"data_root={tmp_path}")
    p = run_data(c)
    assert p.path == default_store_path(c.dataset, tmp_path) and p.path.name.startswith("grf-")
    assert run_data(c).reused
    # another config at the same explicit path: refused, then replaced with overwrite
    out = tmp_path / "x.zarr"
    run_data(cfg("dataset.size=8", "dataset.samples=16", f"output.path={out}"))
    with pytest.raises(DataError, match="different dataset.*overwrite"):
        run_data(cfg("dataset.size=8", "dataset.samples=20", f"output.path={out}"))
    assert xr.open_zarr(out).sizes["sample"] == 16
    q = run_data(cfg("dataset.size=8", "dataset.samples=20", f"output.path={out}", "output.overwrite=true"))
    assert q.samples == 20 and xr.open_zarr(out).sizes["sample"] == 20
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# --------------------------------------------------------------------------- user data


def _check_same(src: xr.Dataset, out: Path, variables, exact: bool):
    ds = xr.open_zarr(out)
    for v in variables:
        assert ds[v].dtype == np.float32
        a, b = ds[v].values, src[v].transpose(*ds[v].dims).values
        if exact:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_array_equal(a, b.astype(np.float32))
        assert ds[v].attrs["units"] == src[v].attrs["units"]
        assert ds[v].attrs["long_name"] == src[v].attrs["long_name"]
    for c in ds.coords:
        np.testing.assert_array_equal(ds[c].values, src[c].values)
    assert ds.attrs["title"] == src.attrs["title"] and ds.attrs["institution"] == "tests"
    return ds


def test_netcdf_lat_lon_time_float64(tmp_path):
    src = era_like()
    src.to_netcdf(tmp_path / "era.nc")
    out = tmp_path / "era.zarr"
    p = run_data(cfg("dataset=netcdf", f"dataset.path={tmp_path / 'era.nc'}", "dataset.variables=[t2m,u10]",
                     "dataset.sample_dims=[time]", f"output.path={out}"))
    ds = _check_same(src, out, ["t2m", "u10"], exact=False)
    assert ds["lat"].attrs["units"] == "degrees_north"
    assert p.spec.field_dims == ("lat", "lon") and p.spec.periodic == {"lat": False, "lon": True}
    x = src["t2m"].values.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(p.stats["mean"].sel(variable="t2m"), x.mean(), rtol=1e-12)
    np.testing.assert_allclose(p.stats["std"].sel(variable="t2m"), x.std(), rtol=1e-9)


def test_netcdf_y_x_sample_float32_and_zarr_input(tmp_path):
    rng = np.random.default_rng(1)
    src = xr.Dataset({"w": (("sample", "y", "x"), rng.standard_normal((7, 5, 4)).astype("float32"),
                            {"units": "s-1", "long_name": "vorticity"})},
                     coords={"y": np.arange(5.0), "x": np.arange(4.0)}, attrs={"title": "t", "institution": "tests"})
    src.to_netcdf(tmp_path / "w.nc")
    out = tmp_path / "w.zarr"
    prepare({"_target_": "sciencegen.data.sources.NetCDFSource", "path": str(tmp_path / "w.nc"), "variables": "w",
             "sample_dims": "sample", "periodic": {"x": True}}, out)
    _check_same(src, out, ["w"], exact=True)
    assert read_metadata(out)["periodic"] == {"y": False, "x": True}
    # a Zarr store as input
    src.to_zarr(tmp_path / "in.zarr")
    out2 = tmp_path / "w2.zarr"
    run_data(cfg("dataset=zarr", f"dataset.path={tmp_path / 'in.zarr'}", "dataset.variables=[w]",
                 "dataset.sample_dims=[sample]", f"output.path={out2}"))
    _check_same(src, out2, ["w"], exact=True)


def test_multifile_glob_with_level_and_selection(tmp_path):
    full = era_like(ntime=12, level=3, dtype="float32")
    for i in range(3):
        full.isel(time=slice(4 * i, 4 * i + 4)).to_netcdf(tmp_path / f"part{i}.nc")
    out = tmp_path / "lev.zarr"
    p = run_data(cfg("dataset=netcdf", f"dataset.path={tmp_path}/part*.nc", "dataset.variables=[u10,t2m]",
                     "dataset.sample_dims=[time]", f"output.path={out}"))
    assert p.spec.variables == ("u10", "t2m") and p.spec.field_dims == ("level", "lat", "lon")
    _check_same(full, out, ["t2m", "u10"], exact=True)
    # level as a selection instead: one level, 2-D fields; time range selection
    out2 = tmp_path / "sel.zarr"
    p2 = run_data(cfg("dataset=netcdf", f"dataset.path={tmp_path}/part*.nc", "dataset.variables=[t2m]",
                      "dataset.sample_dims=[time]",
                      "dataset.select={level: 1000.0, time: {start: 2020-01-01T06, stop: 2020-01-02T00}}",
                      f"output.path={out2}"))
    assert p2.spec.field_dims == ("lat", "lon") and p2.ds.sizes["time"] == 4


def test_two_sample_dims(tmp_path):
    rng = np.random.default_rng(2)
    src = xr.Dataset({"q": (("trajectory", "time", "y", "x"), rng.standard_normal((3, 5, 4, 4)), {"units": "1",
                                                                                               "long_name": "q"})},
                     attrs={"title": "t", "institution": "tests"})
    src.to_netcdf(tmp_path / "q.nc")
    p = prepare({"_target_": "sciencegen.data.sources.NetCDFSource", "path": str(tmp_path / "q.nc"),
                 "variables": ["q"], "sample_dims": ["trajectory", "time"]}, tmp_path / "q.zarr")
    assert p.samples == 15 and p.field_shape == (4, 4)


# --------------------------------------------------------------------------- bad input


def _nc(tmp_path, ds, name="in.nc"):
    ds.to_netcdf(tmp_path / name)
    return str(tmp_path / name)


def _user(path, **kw):
    conf = {"_target_": "sciencegen.data.sources.NetCDFSource", "path": path, "variables": ["t2m"],
            "sample_dims": ["time"]}
    conf.update(kw)
    return conf


@pytest.mark.parametrize("case, match", [
    ("missing_file", r"nope\.nc: no such netcdf file"),
    ("no_glob_match", r"nothing\*\.nc: no netcdf file matches"),
    ("missing_variable", r"variable 'sst' not found \(available: t2m, u10\)"),
    ("unknown_dim", r"unknown sample dim 'member'"),
    ("unknown_field_dim", r"unknown field dim 'z'"),
    ("non_numeric", r"variable 'flag' is not numeric"),
    ("zero_variance", r"variable 't2m' has zero variance"),
    ("empty_selection", r"selection on 'time' is empty"),
    ("corrupt_store", r"cannot open as zarr"),
    ("nan", r"in\.nc: 3 NaN/Inf values \(t2m: 3 \(first at time=2020-01-01T12"),
    ("foreign_output", r"exists and is a directory that is not a sciencegen dataset"),
    ("different_grids", r"have different dims"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, case, match):
    out = tmp_path / "out.zarr"
    ds = era_like(ntime=6)
    if case == "missing_file":
        conf = _user(str(tmp_path / "nope.nc"))
    elif case == "no_glob_match":
        conf = _user(str(tmp_path / "nothing*.nc"))
    elif case == "missing_variable":
        conf = _user(_nc(tmp_path, ds), variables=["sst"])
    elif case == "unknown_dim":
        conf = _user(_nc(tmp_path, ds), sample_dims=["member"])
    elif case == "unknown_field_dim":
        conf = _user(_nc(tmp_path, ds), field_dims=["z", "lon"])
    elif case == "non_numeric":
        ds["flag"] = ds["t2m"] > 280
        conf = _user(_nc(tmp_path, ds), variables=["t2m", "flag"])
    elif case == "zero_variance":
        ds["t2m"][:] = 273.15
        conf = _user(_nc(tmp_path, ds))
    elif case == "empty_selection":
        conf = _user(_nc(tmp_path, ds), select={"time": {"start": "1999-01-01", "stop": "1999-02-01"}})
    elif case == "corrupt_store":
        store = tmp_path / "bad.zarr"
        store.mkdir()
        (store / "zarr.json").write_text("{not json")
        conf = {**_user(str(store)), "_target_": "sciencegen.data.sources.ZarrSource"}
    elif case == "nan":
        ds["t2m"][2, 1, 1] = np.nan
        ds["t2m"][3, 0, 0] = np.inf
        ds["t2m"][5, 0, 0] = -np.inf
        conf = _user(_nc(tmp_path, ds))
    elif case == "foreign_output":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        conf = _user(_nc(tmp_path, ds))
    elif case == "different_grids":
        ds["u10"] = ds["u10"].isel(lat=0)
        conf = _user(_nc(tmp_path, ds), variables=["t2m", "u10"])
    with pytest.raises(DataError, match=match) as info:
        prepare(conf, out)
    assert "\n" not in str(info.value)
    if case == "foreign_output":
        assert (out / "notes.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    else:
        assert nothing_written(tmp_path, out)


def test_nonfinite_mask_and_drop(tmp_path):
    ds = era_like(ntime=6)
    ds["t2m"][2, 1, 1] = np.nan
    ds["t2m"][4, 0, 0] = np.inf
    path = _nc(tmp_path, ds)
    masked = prepare(_user(path, nonfinite="mask"), tmp_path / "m.zarr")
    v = masked.ds["t2m"].values
    assert np.isnan(v[2, 1, 1]) and np.isnan(v[4, 0, 0]) and np.isfinite(v).sum() == v.size - 2
    assert int(masked.stats["count"].values[0]) == v.size - 2
    good = np.delete(ds["t2m"].values.astype(np.float32).astype(np.float64).ravel(), [2 * 48 + 9, 4 * 48])
    np.testing.assert_allclose(masked.stats["mean"].values[0], good.mean(), rtol=1e-12)
    dropped = prepare(_user(path, nonfinite="drop"), tmp_path / "d.zarr")
    assert dropped.ds.sizes["time"] == 4
    np.testing.assert_array_equal(dropped.ds["time"].values, ds["time"].values[[0, 1, 3, 5]])


def test_open_prepared_refuses_foreign_and_missing(tmp_path):
    with pytest.raises(DataError, match="no such dataset"):
        open_prepared(tmp_path / "none.zarr")
    era_like().to_zarr(tmp_path / "plain.zarr")
    with pytest.raises(DataError, match="not a sciencegen dataset"):
        open_prepared(tmp_path / "plain.zarr")


def test_config_mistakes_are_one_line(tmp_path):
    with pytest.raises(DataError, match="unexpected keyword argument 'sizee'"):
        prepare({"_target_": "sciencegen.physics.datasets.GRFSource", "sizee": 3}, tmp_path / "o.zarr")
    with pytest.raises(DataError, match="missing mandatory value: dataset.path"):
        run_data(cfg("dataset=netcdf", f"output.path={tmp_path / 'o.zarr'}"))
    with pytest.raises(DataError, match="dataset.size must be an integer >= 2"):
        prepare({"_target_": "sciencegen.physics.datasets.GRFSource", "size": 1}, tmp_path / "o.zarr")


# --------------------------------------------------------------------------- the command


def _cli(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    code = "from sciencegen.cli import data; data()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_command_line_example_and_bad_input(tmp_path):
    (tmp_path / "era").mkdir()
    full = era_like(ntime=8)
    for i in range(2):
        full.isel(time=slice(4 * i, 4 * i + 4)).to_netcdf(tmp_path / "era" / f"era_{i}.nc")
    out = tmp_path / "era.zarr"
    r = _cli(["dataset=netcdf", "dataset.path=era/*.nc", "dataset.variables=[t2m,u10]", "dataset.sample_dims=[time]",
              f"output.path={out}", "progress=false"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "t2m" in r.stdout and "u10" in r.stdout and "samples: 8" in r.stdout
    _check_same(full, out, ["t2m", "u10"], exact=False)
    # bad input: non-zero exit, one line, no traceback, no store
    bad = tmp_path / "bad.zarr"
    r = _cli(["dataset=netcdf", "dataset.path=era/*.nc", "dataset.variables=[sst]", f"output.path={bad}"], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("sciencegen-data: error: ")
    assert "variable 'sst' not found" in r.stderr and not bad.exists()


# --------------------------------------------------------------------------- checked-in samples

SAMPLES = Path(__file__).resolve().parents[1] / "datasets" / "samples"


def test_checked_in_grf_sample_matches_a_fresh_generation():
    path = SAMPLES / "grf32.nc"
    assert path.stat().st_size < 1_000_000
    ds = xr.open_dataset(path)
    meta = json.loads(ds.attrs[ATTR])
    fresh, _, _ = GRFSource(size=32, samples=ds.sizes["sample"], seed=meta["config"]["seed"]).open()
    np.testing.assert_array_equal(ds["field"].values, fresh["field"].values)


def test_checked_in_sample_prepares_as_user_netcdf(tmp_path):
    p = run_data(cfg("dataset=netcdf", f"dataset.path={SAMPLES / 'grf32.nc'}", "dataset.variables=[field]",
                     "dataset.sample_dims=[sample]", "dataset.periodic={y: true, x: true}",
                     f"output.path={tmp_path / 's.zarr'}"))
    assert p.samples == 64 and p.spec.periodic == {"y": True, "x": True}


def test_kolmogorov_store_equals_the_solver(tmp_path):
    from sciencegen.physics.kolmogorov import KolmogorovFlow

    flow = {"size": 32, "snapshots": 3, "spinup": 1.0, "snapshot_interval": 0.5, "seed": 4}
    p = run_data(cfg("dataset=kolmogorov", "dataset.trajectories=3", "dataset.chunk=2", "dataset.size=32",
                     "dataset.snapshots=3", "dataset.spinup=1.0", "dataset.snapshot_interval=0.5", "dataset.seed=4",
                     f"output.path={tmp_path / 'k.zarr'}"))
    ds = xr.open_zarr(tmp_path / "k.zarr")
    assert ds["vorticity"].dims == ("trajectory", "time", "y", "x") and ds["vorticity"].shape == (3, 3, 32, 32)
    assert p.spec.sample_dims == ("trajectory", "time") and p.spec.periodic == {"y": True, "x": True}
    assert ds.attrs["viscosity"] == 0.015 and "max_cfl" not in ds.attrs
    direct = KolmogorovFlow(**flow).simulate(range(3))  # one batch of 3; the store was made in chunks of 2 + 1
    for v in ("vorticity", "u", "v"):
        np.testing.assert_allclose(ds[v].values, direct[v].values, rtol=0, atol=1e-5 * float(abs(direct[v]).max()))
        assert ds[v].attrs == direct[v].attrs
    np.testing.assert_array_equal(ds["time"].values, direct["time"].values)


def test_checked_in_kolmogorov_sample_matches_a_fresh_generation():
    from sciencegen.physics.kolmogorov import KolmogorovFlow

    path = SAMPLES / "kolmogorov64.nc"
    assert path.stat().st_size < 1_000_000
    ds = xr.open_dataset(path)
    conf = json.loads(ds.attrs[ATTR])["config"]
    keys = set(KolmogorovFlow.__dataclass_fields__)
    flow = KolmogorovFlow(**{k: v for k, v in conf.items() if k in keys})
    fresh = flow.simulate(range(ds.sizes["trajectory"]))
    # The flow is chaotic: round-off differences of the float64 solver between machines (measured: MKL's FFT code
    # path for the CPU's instruction set; thread count and batching change nothing, bit for bit) grow like
    # exp(t / 3) over the recording. Across two such code paths the sample's vorticity differs by at most 5.4e-6
    # at t = 0 (end of the spin-up), 1.4e-5, 5.7e-5, 8.4e-5, 5.0e-4, 7.5e-4, 1.6e-3, 4.4e-3 at t = 3 ... 21 (|w|
    # up to 11.5); twin runs of 8 trajectories from initial conditions 1e-15 apart separate at 0.23-0.33 per unit
    # time over the recording. The tolerance is 1e-5 of the field's scale at t = 0 (>= 20x the measured spread)
    # growing by e every 3 time units (>= 13x the spread at every frame). A solver or sample that changed (other
    # physics, parameters or snapshot times) differs by O(1) already at t = 0.
    scale = float(abs(fresh["vorticity"]).max())
    err = np.abs(ds["vorticity"].values - fresh["vorticity"].values).max(axis=(0, 2, 3))
    allowed = 1e-5 * scale * np.exp(ds["time"].values / 3.0)
    assert (err <= allowed).all(), f"per-snapshot error {err} above {allowed}"


def test_kolmogorov_on_a_missing_gpu_is_one_line():
    import torch

    from sciencegen.data.fields import DataError
    from sciencegen.physics.datasets import KolmogorovSource

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(DataError, match="dataset.device=cuda but CUDA is not available"):
        KolmogorovSource(device="cuda")
