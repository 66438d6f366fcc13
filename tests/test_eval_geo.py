"""Evaluation of real geophysical fields (issue 18): masks, latitude-longitude grids, memorisation, the command.

Real netCDF files in the style of reanalysis and observation archives (``datasets/make_geo_samples.py``),
prepared by ``prepare`` under a temporary data root; ensemble stores written with the public API of
:mod:`sciencegen.data.ensemble` (members taken from the data themselves, NaN over land, ``valid_sst``), then
``run_evaluate``. Numbers are checked against independent computations written from the definitions.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hydra import compose, initialize_config_dir

from sciencegen.analysis import histogram, moment_scalars, wasserstein1
from sciencegen.analysis.geometry import grid_geometry
from sciencegen.analysis.zonal import latitude_bands, row_spectrum
from sciencegen.config import config_dir, register
from sciencegen.data.conditioning import split_samples
from sciencegen.data.ensemble import FORMAT_VERSION, create_store, template, write_chunk
from sciencegen.data.prepare import prepare
from sciencegen.evaluation.common import command_line
from sciencegen.evaluation.memorisation import nearest_distances
from sciencegen.pipelines.evaluate import run_evaluate

ROOT = Path(__file__).resolve().parents[1]


def _geo_module():
    spec = importlib.util.spec_from_file_location("make_geo_samples", ROOT / "datasets/make_geo_samples.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def geo_files(tmp_path_factory) -> dict[str, Path]:
    return _geo_module().write_all(tmp_path_factory.mktemp("geo"))


def sst_dataset(path: Path) -> dict:
    return {"_target_": "sciencegen.data.sources.NetCDFSource", "name": "netcdf", "path": str(path),
            "variables": ["sst"], "sample_dims": ["time"], "nonfinite": "mask"}


def make_store(path: Path, dataset: dict, fields: dict[str, np.ndarray], coords: dict, field_dims: tuple,
               masks: dict | None = None) -> Path:
    """An ensemble store of ``fields`` (members first) through the public API of sciencegen.data.ensemble."""
    v0 = next(iter(fields))
    n, shape = fields[v0].shape[0], fields[v0].shape[1:]
    meta = {"format": FORMAT_VERSION, "identity": {"dataset": dataset, "seed": 0}, "chunk": n, "store_id": "t"}
    tpl = template(meta, tuple(fields), field_dims, shape, n, n, coords=coords, masks=masks)
    create_store(path, tpl, tuple(fields))
    write_chunk(str(path), "t", 0, n, {v: a.astype(np.float32) for v, a in fields.items()}, np.ones(n), np.ones(n))
    return path


def evaluate(dataset: dict, store: Path, out: Path, data_root: Path, *extra: str) -> dict:
    register()
    over = [f"dataset.{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in dataset.items()
            if k not in ("_target_", "name")]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("evaluate", overrides=["dataset=netcdf", *over, f"samples.path={store}", f"output.dir={out}",
                                             f"data_root={data_root}", "evaluate.threads=1", *extra])
    return run_evaluate(cfg)


@pytest.fixture(scope="module")
def sst(geo_files, tmp_path_factory):
    """The SST file prepared (land: NaN, valid_sst), and two stores: training samples, held-out samples."""
    tmp = tmp_path_factory.mktemp("sst")
    dataset = sst_dataset(geo_files["sst"])
    prepared = prepare(dataset, data_root=tmp / "data")
    ds = prepared.ds.load()
    valid = np.asarray(ds["valid_sst"].values) != 0
    train = split_samples(prepared.path, "train", 0.1)
    held = split_samples(prepared.path, "validation", 0.1)
    coords = {d: (d, ds[d].values, dict(ds[d].attrs)) for d in ("latitude", "longitude")}
    masks = {"sst": (valid, {"source": "nonfinite", "valid": int(valid.sum()), "points": int(valid.size)})}
    x = np.asarray(ds["sst"].values, dtype=np.float64)
    copy = make_store(tmp / "copy.zarr", dataset, {"sst": x[train[:16]]}, coords, ("latitude", "longitude"), masks)
    new = make_store(tmp / "new.zarr", dataset, {"sst": x[held]}, coords, ("latitude", "longitude"), masks)
    return {"dataset": dataset, "tmp": tmp, "valid": valid, "x": x, "train": train, "held": held, "copy": copy,
            "new": new, "data": tmp / "data"}


@pytest.fixture(scope="module")
def sst_runs(sst):
    copy = evaluate(sst["dataset"], sst["copy"], sst["tmp"] / "out_copy", sst["data"], "evaluate.figures=true")
    new = evaluate(sst["dataset"], sst["new"], sst["tmp"] / "out_new", sst["data"], "evaluate.figures=false")
    return copy, new


# ------------------------------------------------------------------------------------------- geometry


def test_geometry_of_the_geo_files_and_of_a_plane(geo_files):
    z = xr.open_dataset(geo_files["z500"])
    g = grid_geometry(z, ("lat", "lon"))
    assert (g.kind, g.lat_dim, g.lon_dim, g.lon_periodic, g.lon_spacing) == ("latlon", "lat", "lon", False, 1.5)
    s = xr.open_dataset(geo_files["sst"])
    g = grid_geometry(s, ("latitude", "longitude"))  # longitude 242.5 .. 357.5, 2.5 .. 27.5: uniform modulo 360
    assert g.latlon and g.lon_uniform and not g.lon_periodic
    for name in ("uwnd", "vwnd"):
        g = grid_geometry(xr.open_dataset(geo_files[name]), ("lat", "lon"))
        assert g.latlon and g.lon_periodic and g.shape == (73, 144)
        w = g.area_weights()
        assert w.dims == ("lat", "lon") and float(w.mean()) == pytest.approx(1.0)
        assert float(w.isel(lat=0).max()) < 1e-10  # the pole rows have no area
    # names alone (no attributes) with values in range; and a plane (grf: y, x) gets ones
    bare = xr.Dataset(coords={"lat": ("lat", np.linspace(-30, 30, 5)), "lon": ("lon", np.arange(0, 360, 90.0))})
    assert grid_geometry(bare, ("lat", "lon")).lon_periodic
    plane = xr.Dataset(coords={"y": np.arange(8.0), "x": np.arange(8.0)})
    gp = grid_geometry(plane, ("y", "x"))
    assert gp.kind == "plane" and float(gp.area_weights().std()) == 0 and float(gp.area_weights().mean()) == 1
    # a coordinate named lat but in metres is not a latitude
    metres = xr.Dataset(coords={"lat": ("lat", np.arange(5.0), {"units": "m"}), "lon": ("lon", np.arange(4.0))})
    assert grid_geometry(metres, ("lat", "lon")).kind == "plane"


def test_area_weighted_mean_is_the_cos_weighted_mean(geo_files):
    z = xr.open_dataset(geo_files["z500"])["hgt"].isel(time=slice(0, 5)).load()
    g = grid_geometry(z, ("lat", "lon"))
    got = moment_scalars(z, weights=g.area_weights())
    x = np.asarray(z.values, dtype=np.float64)
    cw = np.cos(np.deg2rad(z["lat"].values))[None, :, None] * np.ones_like(x)
    mean = (cw * x).sum() / cw.sum()
    var = (cw * (x - mean) ** 2).sum() / cw.sum()
    skew = (cw * (x - mean) ** 3).sum() / cw.sum() / var**1.5
    assert float(got["mean"]) == pytest.approx(mean, rel=1e-12)
    assert float(got["std"]) == pytest.approx(np.sqrt(var), rel=1e-9)
    assert float(got["skewness"]) == pytest.approx(skew, rel=1e-7, abs=1e-9)
    # the weighted histogram sums the weights (lazy == eager), W1 of a distribution with itself is 0
    h = histogram(z.chunk({"time": 2}), bins=np.linspace(x.min(), x.max(), 9), weights=g.area_weights())
    assert float(h.sum()) == pytest.approx(x.size, rel=1e-12)  # the weights have mean 1 over each field
    assert float(wasserstein1(z, z, weights_a=g.area_weights(), weights_b=g.area_weights())) == 0.0


def test_zonal_spectrum_of_a_pure_zonal_wave_peaks_at_its_wavenumber():
    lat = np.linspace(80, -80, 17)
    lon = np.arange(0, 360, 5.0)
    for m in (1, 4, 11):
        x = np.cos(m * np.deg2rad(lon))[None, None, :] * np.cos(np.deg2rad(lat))[None, :, None] * np.ones((2, 1, 1))
        da = xr.DataArray(x, dims=("t", "lat", "lon"), coords={"lat": lat, "lon": lon})
        g = grid_geometry(da, ("lat", "lon"))
        spec = row_spectrum(da.chunk({"t": 1}), "lon", ("lat", "lon"), row_weights=g.area_weights().isel(lon=0),
                            bands=latitude_bands(da["lat"]), spacing=g.lon_spacing).compute()
        whole = spec.sel(band="whole")
        assert int(whole.argmax("wavenumber")) == m
        # Parseval: all the power at m, and it is the cos²-weighted row power n/2 * cos(lat)^2 averaged with cos(lat)
        c = np.cos(np.deg2rad(lat))
        assert float(whole.sel(wavenumber=m)) == pytest.approx((c * c**2 * lon.size / 2).sum() / c.sum(), rel=1e-10)
        assert float(whole.drop_sel(wavenumber=m).max()) < 1e-20
        assert spec["wavenumber"].attrs["long_name"] == "zonal wavenumber"
        assert set(spec["band"].values) == {"whole", "tropics", "midlatitudes", "high latitudes"}


# ------------------------------------------------------------------------------------------- masked SST store


def test_masked_metrics_use_the_valid_points_only(sst, sst_runs):
    copy, _ = sst_runs
    f = copy["variables"]["sst"]
    valid = sst["valid"]
    assert f["valid_points"]["valid"] == int(valid.sum()) == 442 and f["valid_points"]["points"] == 540
    assert "mask valid_sst" in f["valid_points"]["text"]
    # the same points on both sides: 16 members x 442 and 4 held-out samples x 442 values
    assert f["moments"]["sample"]["count"] == 16 * 442
    assert f["moments"]["reference"]["count"] == 4 * 442
    # the weighted moments of the members, from the definition
    x = sst["x"][sst["train"][:16]]
    cw = np.cos(np.deg2rad(xr.open_zarr(sst["copy"])["latitude"].values))[None, :, None] * valid[None] * np.ones_like(x)
    xv = np.where(cw > 0, x, 0.0)
    mean = (cw * xv).sum() / cw.sum()
    assert f["moments"]["sample"]["mean"] == pytest.approx(mean, rel=1e-9)
    assert f["moments"]["weighted"] is True
    for key in ("w1", "w1_normalised"):
        assert np.isfinite(f[key])
    # the zonal spectrum over complete rows of a box (Hann window), or its reason
    if f["spectral_error"] is None:
        assert "no complete zonal band" in f["not_computed"]["spectral_error"]
    else:
        assert f["spectrum"]["kind"] == "zonal" and "Hann" in f["spectrum"]["window"]
        assert f["spectrum"]["rows"] == int(valid.all(axis=1).sum())
    c = f["correlation"]
    assert c["distance_units"] == "km" and c["distance_long_name"] == "great-circle distance"
    assert c["sample"][0] == pytest.approx(1.0) and np.isfinite(c["max_abs_diff"])
    report = (sst["tmp"] / "out_copy" / "report.md").read_text()
    assert "valid points: 442 of 540 (mask valid_sst" in report
    assert "sst (units unknown)" in report and "[1]" not in report
    assert "latitude-longitude grid" in report
    assert (sst["tmp"] / "out_copy" / "correlation.png").is_file()


def test_no_complete_row_gives_a_reason_not_a_dash(sst, tmp_path):
    """A mask with an invalid point in every latitude row: the zonal spectrum is null WITH the reason."""
    valid = sst["valid"].copy()
    valid[:, 0] = False  # the first longitude column: every row incomplete
    x = np.where(valid[None], sst["x"][sst["held"]], np.nan)
    ds = xr.open_zarr(sst["copy"])
    coords = {d: (d, ds[d].values, dict(ds[d].attrs)) for d in ("latitude", "longitude")}
    masks = {"sst": (valid, {"source": "nonfinite", "valid": int(valid.sum()), "points": int(valid.size)})}
    store = make_store(tmp_path / "s.zarr", sst["dataset"], {"sst": x}, coords, ("latitude", "longitude"), masks)
    m = evaluate(sst["dataset"], store, tmp_path / "out", sst["data"], "evaluate.figures=true")
    f = m["variables"]["sst"]
    assert f["spectral_error"] is None
    assert f["not_computed"]["spectral_error"] == (f"sst has {540 - int(valid.sum())} invalid points and no "
                                                   "complete zonal band (latitude row)")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "spectral error: not computed: sst has" in report and "| —" not in report.split("## Key numbers")[1][:400]
    assert not (tmp_path / "out" / "spectrum.png").exists() and (tmp_path / "out" / "histogram.png").is_file()


def test_memorisation_flags_copies_of_training_samples(sst_runs):
    copy, new = sst_runs
    mc, mn = copy["memorisation"], new["memorisation"]
    assert mc["computed"] and mn["computed"]
    assert mc["training_samples"] == 36 and mc["training_compared"] == 36 and mc["heldout_compared"] == 4
    assert mc["copies"] == 16 and mc["flagged"] == 16 and mc["members"]["q100"] == pytest.approx(0.0, abs=1e-6)
    assert "copies of training samples" in mc["verdict"]
    assert mn["copies"] == 0 and mn["flagged"] == 0 and mn["verdict"] == "no sign of memorisation"
    # held-out samples as an ensemble: their distances are the held-out distances themselves
    assert mn["members"] == mn["heldout"]


def test_nearest_distances_against_brute_force():
    rng = np.random.default_rng(3)
    q, t = rng.standard_normal((7, 30)), rng.standard_normal((50, 30))
    w = rng.uniform(0, 2, 30)
    w[:5] = 0
    d, i = nearest_distances(q, (t[k:k + 8] for k in range(0, 50, 8)), w)
    full = np.sqrt(((q[:, None, :] - t[None]) ** 2 * w).sum(-1) / w.sum())
    assert np.allclose(d, full.min(1), rtol=1e-10) and (i == full.argmin(1)).all()


def test_memorisation_without_training_data_says_why(sst, tmp_path):
    """Another store as the reference and no prepared dataset under data_root: skipped, with the reason."""
    m = evaluate(sst["dataset"], sst["new"], tmp_path / "out", tmp_path / "empty", "evaluate.figures=false",
                 f"reference.source={sst['copy']}")
    assert m["memorisation"]["computed"] is False
    assert m["memorisation"]["reason"].startswith("the training data are not prepared at ")
    assert "**memorisation**: not checked: the training data are not prepared" in \
        (tmp_path / "out" / "report.md").read_text()


# ------------------------------------------------------------------------------------------- global grid, km


def test_global_winds_correlation_in_km_and_zonal_spectra(geo_files, tmp_path):
    dataset = {"_target_": "sciencegen.data.sources.NetCDFSource", "name": "netcdf", "path": str(geo_files["uwnd"]),
               "variables": ["uwnd"], "sample_dims": ["time"]}
    prepared = prepare(dataset, data_root=tmp_path / "data")
    ds = prepared.ds.load()
    held = split_samples(prepared.path, "validation", 0.1)
    x = np.asarray(ds["uwnd"].values)[held]
    coords = {d: (d, ds[d].values, dict(ds[d].attrs)) for d in ("lat", "lon")}
    store = make_store(tmp_path / "u.zarr", dataset, {"uwnd": x}, coords, ("lat", "lon"))
    m = evaluate(dataset, store, tmp_path / "out", tmp_path / "data", "evaluate.figures=false")
    f = m["variables"]["uwnd"]
    assert m["grid"]["kind"] == "latlon" and m["grid"]["lon_periodic"] is True
    assert "valid_points" not in f and f["not_computed"] == {}
    # the held-out samples against themselves: zero distance everywhere
    assert f["spectral_error"] == 0 and f["w1"] == 0 and f["correlation"]["max_abs_diff"] == 0
    sp = f["spectrum"]
    assert sp["kind"] == "zonal" and sp["wavenumber_units"] == "cycles per 360 degrees of longitude"
    assert sp["rows"] == 73 and set(sp["bands"]) == {"whole", "tropics", "midlatitudes", "high latitudes"}
    c = f["correlation"]
    assert c["distance_units"] == "km" and np.allclose(np.diff(c["distance"]), 6371.0088 * np.deg2rad(2.5))


def test_plane_data_keep_their_metrics(tmp_path):
    """A plane (y, x) store without masks: the plane metrics, no geometry or mask keys added."""
    from sciencegen.evaluation.common import Side
    from sciencegen.evaluation.metrics import compute, variable_metrics

    rng = np.random.default_rng(0)
    a = xr.DataArray(rng.standard_normal((6, 8, 8)), dims=("member", "y", "x"),
                     coords={"y": np.arange(8.0), "x": np.arange(8.0)})
    b = xr.DataArray(rng.standard_normal((5, 8, 8)), dims=("sample", "y", "x"),
                     coords={"y": np.arange(8.0), "x": np.arange(8.0)})
    s = Side("samples", "generated", "member", {"f": a.chunk({"member": 3})}, ("y", "x"), 6, {"path": str(tmp_path)})
    r = Side("store", "r", "sample", {"f": b.chunk({"sample": 5})}, ("y", "x"), 5, {"source": "store"})
    c = compute(s, r, 16, None)
    m = variable_metrics("f", c["f"], s, r, "")
    assert "valid_points" not in m and "not_computed" not in m and "weighting" not in m
    assert m["moments"]["sample"]["count"] == 6 * 64
    assert s.extras["memorisation"]["computed"] is False


def test_the_report_command_is_the_command_that_ran(monkeypatch):
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    argv = ["/usr/bin/sciencegen-evaluate", "samples.path=/data/my store.zarr", "dataset.nonfinite=mask"]
    assert command_line(argv) == "sciencegen-evaluate 'samples.path=/data/my store.zarr' dataset.nonfinite=mask"
    assert command_line(["/x/sciencegen/__main__.py", "a=1"]) == "python -m sciencegen a=1"
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: False))
    assert command_line(argv) is None
