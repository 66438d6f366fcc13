"""Kinds of conditioning in the data room (:mod:`sciencegen.data.conditioning`), on small real stores.

Every value is checked against a truth computed by hand from the source: block means by a numpy reshape-mean,
lagged pairs by index, sin/cos of the coordinates, statistics by numpy, the AR(1) law by its correlation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr

from sciencegen.data.conditioning import (
    Coarse,
    ConditionKind,
    State,
    build_inputs,
    condition_layout,
    split_samples,
)
from sciencegen.data.fields import DataError, FieldSpec
from sciencegen.data.loader import from_store
from sciencegen.data.prepare import default_store_path, prepare, summary
from sciencegen.physics.datasets import GRFSource, grf_samples, grf_trajectories

COND = "sciencegen.data.conditioning"


def grf(**kw):
    return {"_target_": "sciencegen.physics.datasets.GRFSource", "name": "grf", "size": 16, "samples": 32,
            "chunk": 8, **kw}


def kinds(**named):
    return {k: {"_target_": f"{COND}.{v.pop('kind')}", **v} for k, v in named.items()}


def block_mean(a, f):
    """Mean over non-overlapping f x f blocks of the last two dims, repeated back (numpy reshape-mean)."""
    *lead, ny, nx = a.shape
    m = a.astype(np.float64).reshape(*lead, ny // f, f, nx // f, f).mean(axis=(-3, -1))
    return m.repeat(f, axis=-2).repeat(f, axis=-1)


def stats_of(path):
    st = xr.open_zarr(path, group="statistics").load()
    names = list(st.attrs["variables"])
    return {n: (float(st["mean"].values[i]), float(st["std"].values[i])) for i, n in enumerate(names)}


# ------------------------------------------------------------------------------------------- generated data


def test_coarse_and_static_on_grf(tmp_path):
    conf = grf(conditioning=kinds(coarse={"kind": "Coarse", "factor": 4}, static={"kind": "Static"}))
    p = prepare(conf, data_root=tmp_path)
    ds = xr.open_zarr(p.path)
    field = ds["field"].values
    raw = grf_samples(GRFSource(size=16, samples=32).target(), 0, 0, 32)[:, 0].astype(np.float32)
    np.testing.assert_array_equal(field, raw)  # the targets are the source's samples, unchanged
    np.testing.assert_allclose(ds["input_field_coarse"].values, block_mean(field, 4), rtol=0, atol=2e-6)
    assert ds["input_field_coarse"].dims == ds["field"].dims
    assert ds["input_field_coarse"].encoding["chunks"] == ds["field"].encoding["chunks"]
    x = np.arange(16) / 16
    for d, axis in (("x", 1), ("y", 0)):
        for fn in ("sin", "cos"):
            arr = ds[f"static_{fn}_{d}"]
            assert arr.dims == ("y", "x")
            expect = getattr(np, fn)(2 * np.pi * x)
            np.testing.assert_allclose(arr.values, np.broadcast_to(np.expand_dims(expect, 1 - axis), (16, 16)),
                                       atol=1e-7)
    meta = json.loads(ds.attrs["sciencegen_dataset"])
    cond = meta["conditioning"]
    assert meta["variables"] == ["field"]
    assert cond["inputs"] == {"input_field_coarse": {"kind": "coarse", "variable": "field", "factor": 4}}
    assert list(cond["static"]) == ["static_sin_y", "static_cos_y", "static_sin_x", "static_cos_x"]
    assert cond["static"]["static_sin_x"] == {"kind": "static", "source": "coord", "dim": "x", "fn": "sin"}
    assert cond["kinds"]["coarse"] == {"_target_": f"{COND}.Coarse", "factor": 4, "variables": None}
    assert cond["state"] is None
    st = stats_of(p.path)
    c = ds["input_field_coarse"].values.astype(np.float64)
    assert st["input_field_coarse"] == pytest.approx((c.mean(), c.std()), rel=1e-6, abs=1e-9)
    assert st["static_cos_x"][1] == pytest.approx(np.sqrt(0.5), rel=1e-6)
    layout = condition_layout(p.path)
    assert layout.channels == 5 and layout.names == ["input_field_coarse", *cond["static"]]
    np.testing.assert_allclose(layout.mean[0], c.mean(), rtol=1e-6)
    assert layout.static_values.shape == (4, 16, 16)
    np.testing.assert_array_equal(layout.static_values[2], ds["static_sin_x"].values)
    np.testing.assert_allclose(p.mean, [field.astype(np.float64).mean()], rtol=1e-6)  # the targets' statistics
    assert "inputs: input_field_coarse" in summary(p)


def test_state_pairs_within_trajectories(tmp_path):
    conf = grf(samples=6, chunk=16, ar=0.8, length=7, conditioning=kinds(state={"kind": "State", "lag": 2}))
    p = prepare(conf, data_root=tmp_path)
    ds = xr.open_zarr(p.path)
    raw = grf_trajectories(GRFSource(size=16).target(), 0, 0, 6, 7, 0.8)[:, :, 0].astype(np.float32)
    assert ds["field"].dims == ("trajectory", "time", "y", "x") and ds["field"].shape == (6, 5, 16, 16)
    np.testing.assert_array_equal(ds["time"].values, np.arange(5))  # the pair's coordinate: the input time
    for i in range(6):
        for t in range(5):
            np.testing.assert_array_equal(ds["field"].values[i, t], raw[i, t + 2])
            np.testing.assert_array_equal(ds["input_field"].values[i, t], raw[i, t])
    cond = p.meta["conditioning"]
    assert cond["state"] == {"dim": "time", "lag": 2, "feeds": {"input_field": "field"}}
    assert cond["inputs"]["input_field"] == {"kind": "state", "variable": "field", "lag": 2, "dim": "time"}
    assert p.ds["field"].encoding["chunks"][:2] == (2, 5)  # chunk // length trajectories per chunk, time whole


def test_ar1_grf_law():
    a, n_traj, length = 0.7, 64, 6
    src = GRFSource(size=16, samples=n_traj, ar=a, length=length)
    x = grf_trajectories(src.target(), 3, 0, n_traj, length, a)[:, :, 0]  # (traj, time, y, x)
    # trajectory i depends only on (seed, i): a slice computed alone is the same; x_0 is grf sample i
    np.testing.assert_array_equal(grf_trajectories(src.target(), 3, 5, 7, length, a)[:, :, 0], x[5:7])
    np.testing.assert_array_equal(x[:, 0], grf_samples(src.target(), 3, 0, n_traj)[:, 0])
    # stationary variance 1 at every step, lag-1 correlation a, lag-2 a^2: per trajectory, then mean +- 4 s.e.
    var = (x**2).mean(axis=(2, 3))  # (traj, time)
    c1 = (x[:, 1:] * x[:, :-1]).mean(axis=(1, 2, 3))
    c2 = (x[:, 2:] * x[:, :-2]).mean(axis=(1, 2, 3))
    for est, truth in ((var[:, 0], 1.0), (var[:, -1], 1.0), (c1, a), (c2, a * a)):
        se = est.std(ddof=1) / np.sqrt(len(est))
        assert abs(est.mean() - truth) < 4 * se + 1e-12, (est.mean(), truth, se)
    # the increments are the GRF again: x_{t+1} - a x_t has variance 1 - a^2
    inc = x[:, 1:] - a * x[:, :-1]
    est = (inc**2).mean(axis=(1, 2, 3))
    assert abs(est.mean() - (1 - a * a)) < 4 * est.std(ddof=1) / np.sqrt(len(est))


def test_grf_without_ar_is_unchanged(tmp_path):
    ds, spec, _ = GRFSource(size=8, samples=10, chunk=4).open()
    assert spec.sample_dims == ("sample",)
    raw = grf_samples(GRFSource(size=8).target(), 0, 0, 10)[:, 0].astype(np.float32)
    np.testing.assert_array_equal(ds["field"].values, raw)
    # the identity of an unconditional (and non-AR) config is the one it had before the keys existed
    base = grf(size=8, samples=10)
    same = default_store_path({**base, "conditioning": None, "ar": None, "length": 16}, tmp_path)
    assert same == default_store_path(base, tmp_path)
    other = default_store_path({**base, "conditioning": kinds(c={"kind": "Coarse", "factor": 2})}, tmp_path)
    longer = default_store_path({**base, "ar": 0.5, "length": 8}, tmp_path)
    assert len({same, other, longer, default_store_path({**base, "ar": 0.5, "length": 9}, tmp_path)}) == 4


# ------------------------------------------------------------------------------------------- user netCDF


@pytest.fixture
def user_nc(tmp_path):
    """A user netCDF with (time, lat, lon): t2m, u, and a static orography (lat, lon)."""
    rng = np.random.default_rng(0)
    nt, nlat, nlon = 24, 8, 16
    lat = np.linspace(-70, 70, nlat)
    lon = np.arange(nlon) * 360.0 / nlon
    time = np.datetime64("2020-01-01") + np.arange(nt) * np.timedelta64(6, "h")
    ds = xr.Dataset({"t2m": (("time", "lat", "lon"), rng.normal(280, 5, (nt, nlat, nlon))),
                     "u": (("time", "lat", "lon"), rng.normal(0, 3, (nt, nlat, nlon))),
                     "orography": (("lat", "lon"), rng.gamma(2.0, 300.0, (nlat, nlon)))},
                    coords={"time": time, "lat": lat, "lon": lon})
    path = tmp_path / "user.nc"
    ds.to_netcdf(path)
    return path, ds


def user(path, variables, cond):
    return {"_target_": "sciencegen.data.sources.NetCDFSource", "name": "user", "path": str(path),
            "variables": variables, "sample_dims": ["time"], "conditioning": cond}


def test_user_state(tmp_path, user_nc):
    path, src = user_nc
    p = prepare(user(path, ["t2m"], kinds(state={"kind": "State", "lag": 3})), data_root=tmp_path / "d")
    ds = xr.open_zarr(p.path)
    t2m = src["t2m"].values.astype(np.float32)
    np.testing.assert_array_equal(ds["t2m"].values, t2m[3:])
    np.testing.assert_array_equal(ds["input_t2m"].values, t2m[:-3])
    np.testing.assert_array_equal(ds["time"].values, src["time"].values[:-3])


def test_user_coarse(tmp_path, user_nc):
    path, src = user_nc
    p = prepare(user(path, ["t2m"], kinds(coarse={"kind": "Coarse", "factor": 4})), data_root=tmp_path / "d")
    ds = xr.open_zarr(p.path)
    t2m = src["t2m"].values.astype(np.float32)
    np.testing.assert_allclose(ds["input_t2m_coarse"].values, block_mean(t2m, 4), rtol=1e-7)
    np.testing.assert_array_equal(ds["lat"].values, src["lat"].values)


def test_user_variables_and_static(tmp_path, user_nc):
    path, src = user_nc
    cond = kinds(variables={"kind": "Variables", "names": ["u"]},
                 static={"kind": "Static", "coords": True, "variables": ["orography"]})
    p = prepare(user(path, ["t2m", "u"], cond), data_root=tmp_path / "d")
    ds = xr.open_zarr(p.path)
    assert p.meta["variables"] == ["t2m"]
    np.testing.assert_array_equal(ds["input_u"].values, src["u"].values.astype(np.float32))
    np.testing.assert_array_equal(ds["static_orography"].values, src["orography"].values.astype(np.float32))
    assert ds["static_orography"].dims == ("lat", "lon")
    lat, lon = src["lat"].values, src["lon"].values
    np.testing.assert_allclose(ds["static_lat"].values[:, 0], 2 * (lat - lat.min()) / (lat.max() - lat.min()) - 1,
                               atol=1e-7)
    np.testing.assert_allclose(ds["static_sin_lon"].values[0], np.sin(np.deg2rad(lon)), atol=1e-6)
    np.testing.assert_allclose(ds["static_cos_lon"].values[3], np.cos(np.deg2rad(lon)), atol=1e-6)
    assert list(p.meta["conditioning"]["static"]) == ["static_lat", "static_sin_lon", "static_cos_lon",
                                                      "static_orography"]
    assert p.meta["conditioning"]["state"] is None
    layout = condition_layout(p.path)
    assert layout.channels == 5
    o = src["orography"].values.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(layout.mean[-1], o.mean(), rtol=1e-6)
    np.testing.assert_allclose(layout.std[-1], o.std(), rtol=1e-6)


# ------------------------------------------------------------------------------------------- loader and split


def test_loader_yields_normalised_pairs_and_split_agrees(tmp_path, user_nc):
    path, src = user_nc
    cond = kinds(coarse={"kind": "Coarse", "factor": 2}, static={"kind": "Static", "variables": ["orography"]})
    p = prepare(user(path, ["t2m"], cond), data_root=tmp_path / "d", chunk_mb=0.001)
    ds = xr.open_zarr(p.path)
    st = stats_of(p.path)
    names = ["input_t2m_coarse", "static_lat", "static_sin_lon", "static_cos_lon", "static_orography"]
    for split in ("train", "validation"):
        stream = from_store(p.path, batch_size=100, split=split, holdout=0.25, shuffle=False)
        assert stream.channels == 1 and stream.cond_channels == 5
        (x, c), = list(stream)
        idx = split_samples(p.path, split, 0.25)
        assert len(idx) == stream.n_samples == len(x)
        m, s = st["t2m"]
        np.testing.assert_allclose(x[:, 0].numpy(), (ds["t2m"].values[idx] - m) / s, rtol=1e-5, atol=1e-5)
        m, s = st["input_t2m_coarse"]
        np.testing.assert_allclose(c[:, 0].numpy(), (ds["input_t2m_coarse"].values[idx] - m) / s, atol=1e-5)
        for k, n in enumerate(names[1:], start=1):
            m, s = st[n]
            expect = (ds[n].values.astype(np.float64) - m) / s
            np.testing.assert_allclose(c[:, k].numpy(), np.broadcast_to(expect, c[:, k].shape), atol=1e-5)
    train, val = split_samples(p.path, "train", 0.25), split_samples(p.path, "validation", 0.25)
    assert not set(train) & set(val) and sorted([*train, *val]) == list(range(24))
    assert val.min() > train.max()  # held out at the end of time
    # shuffled batches are still consistent pairs: target and its own coarse input
    stream = from_store(p.path, batch_size=7, split="train", holdout=0.25)
    for x, c in stream:
        mt, stt = st["t2m"]
        mc, sc = st["input_t2m_coarse"]
        phys = x[:, 0].double().numpy() * stt + mt
        np.testing.assert_allclose(c[:, 0].double().numpy() * sc + mc, block_mean(phys, 2), atol=2e-4)


def test_split_samples_over_two_sample_dims(tmp_path):
    conf = grf(samples=8, chunk=20, ar=0.5, length=5, conditioning=kinds(state={"kind": "State"}))
    p = prepare(conf, data_root=tmp_path)
    idx = split_samples(p.path, "validation", 0.5)
    np.testing.assert_array_equal(idx, np.arange(16, 32))  # trajectories 4..7 (x 4 pairs each)
    stream = from_store(p.path, batch_size=64, split="validation", holdout=0.5, shuffle=False)
    (x, c), = list(stream)
    flat = p.ds["input_field"].values.reshape(32, 16, 16)[idx]
    m, s = stats_of(p.path)["input_field"]
    np.testing.assert_allclose(c[:, 0].numpy(), (flat - m) / s, atol=1e-5)


def test_unconditional_store_loader_unchanged(tmp_path):
    p = prepare(grf(samples=16), data_root=tmp_path)
    assert "conditioning" not in p.meta and condition_layout(p.path) is None
    batch = next(iter(from_store(p.path, batch_size=4, split="all", shuffle=False)))
    assert isinstance(batch, torch.Tensor) and batch.shape == (4, 1, 16, 16)


# ------------------------------------------------------------------------------------------- condition files


def test_condition_file_mode():
    spec = FieldSpec(("field",), ("sample",), ("y", "x"), {"y": True, "x": True})
    rng = np.random.default_rng(1)
    coarse = xr.Dataset({"field": (("sample", "y", "x"), rng.normal(size=(3, 2, 4)))})
    made = build_inputs({"c": Coarse(factor=4)}, coarse, spec, condition=True, grid={"y": 8, "x": 16})
    np.testing.assert_array_equal(made.inputs["input_field_coarse"].values,
                                  coarse["field"].values.repeat(4, 1).repeat(4, 2))
    fine = xr.Dataset({"field": (("sample", "y", "x"), rng.normal(size=(3, 8, 16)))})
    made = build_inputs({"c": Coarse(factor=4)}, fine, spec, condition=True, grid={"y": 8, "x": 16})
    np.testing.assert_allclose(made.inputs["input_field_coarse"].values, block_mean(fine["field"].values, 4))
    made = build_inputs({"s": State(lag=1)}, fine.rename(sample="time"),
                        FieldSpec(("field",), ("time",), ("y", "x")), condition=True)
    np.testing.assert_array_equal(made.inputs["input_field"].values, fine["field"].values)
    assert made.meta["state"]["feeds"] == {"input_field": "field"}
    with pytest.raises(DataError, match=r"grid \{'y': 4, 'x': 8\}; expected the fine grid") as e:
        build_inputs({"c": Coarse(factor=4)}, fine.isel(y=slice(0, 4), x=slice(0, 8)), spec, condition=True,
                     grid={"y": 8, "x": 16})
    assert "\n" not in str(e.value)


def test_a_kind_of_ones_own():
    class Diff(ConditionKind):
        def inputs(self, key, sample, previous, targets, grid, label):
            return {"input_dx": (sample["field"].diff("x", label="lower").pad(x=(0, 1), constant_values=0.0),
                                 {"kind": key})}

    ds = xr.Dataset({"field": (("sample", "x"), np.arange(12.0).reshape(3, 4) ** 2)})
    made = build_inputs({"d": Diff()}, ds, FieldSpec(("field",), ("sample",), ("x",)))
    np.testing.assert_array_equal(made.inputs["input_dx"].values[:, :3], np.diff(ds["field"].values, axis=1))
    assert made.meta["kinds"]["d"]["_target_"].endswith("Diff")


# ------------------------------------------------------------------------------------------- one-line errors


@pytest.mark.parametrize(("conf", "match"), [
    (grf(size=18, conditioning=kinds(c={"kind": "Coarse", "factor": 4})),
     "field dim 'y' has 18 points, not divisible by factor 4"),
    (grf(samples=4, ar=0.5, length=3, conditioning=kinds(s={"kind": "State", "lag": 3})),
     "lag 3 >= length 3 of 'time'"),
    (grf(conditioning=kinds(s={"kind": "State"})), r"dim 'time' is not a sample dim \['sample'\]"),
    (grf(conditioning=kinds(v={"kind": "Variables", "names": ["nope"]})), "unknown variable 'nope'"),
    (grf(conditioning=kinds(c={"kind": "Coarse", "factor": 1})), "factor must be an integer >= 2"),
    (grf(conditioning=kinds(v={"kind": "Variables", "names": ["field"]})), "leaves no target variable"),
    (grf(conditioning={"x": {"_target_": "builtins.dict"}}), "is not a sciencegen ConditionKind"),
])
def test_errors_on_generated(tmp_path, conf, match):
    with pytest.raises(DataError, match=match) as e:
        prepare(conf, data_root=tmp_path)
    assert "\n" not in str(e.value)
    assert not any(tmp_path.iterdir()) or not any(p.suffix == ".zarr" for p in tmp_path.iterdir())


def test_errors_on_user_data(tmp_path, user_nc):
    path, _ = user_nc
    for cond, match in ((kinds(s={"kind": "Static", "variables": ["u"]}),
                         r"static variable 'u' has dims \['time', 'lat', 'lon'\]"),
                        (kinds(s={"kind": "Static", "variables": ["relief"]}), "unknown static variable 'relief'"),
                        (kinds(s={"kind": "Static", "coords": ["level"]}), "coords names 'level', not a field dim"),
                        (kinds(c={"kind": "Coarse", "factor": 3}), "field dim 'lat' has 8 points")):
        with pytest.raises(DataError, match=match) as e:
            prepare(user(path, ["t2m"], cond), data_root=tmp_path / "d")
        assert "\n" not in str(e.value)


def test_hydra_config_overrides():
    from hydra import compose, initialize_config_dir

    from sciencegen.config import config_dir
    from sciencegen.data.prepare import dataset_identity

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("data", overrides=["dataset=grf", "dataset.ar=0.9", "dataset.length=8",
                                         f"+dataset.conditioning.state={{_target_:{COND}.State,lag:2}}",
                                         "dataset.conditioning.state.lag=3"])
    ident = dataset_identity(cfg.dataset)
    assert ident["conditioning"] == {"state": {"_target_": f"{COND}.State", "lag": 3}}
    assert ident["ar"] == 0.9 and ident["length"] == 8


def test_static_harmonics_are_fourier_features_of_position():
    import xarray as xr

    from sciencegen.data.conditioning import Static
    from sciencegen.data.fields import FieldSpec

    y, x = np.arange(8) * 0.25, np.arange(6) / 6
    ds = xr.Dataset({"f": (("t", "y", "x"), np.zeros((2, 8, 6)))}, coords={"y": y, "x": x})
    spec = FieldSpec(("f",), ("t",), ("y", "x"), {"y": True, "x": False})
    made = Static(coords=True, harmonics=3).static("static", ds, spec, "test")
    assert list(made) == ["static_sin_y", "static_cos_y", "static_sin2_y", "static_cos2_y", "static_sin3_y",
                          "static_cos3_y", "static_x"]
    phase = 2 * np.pi * y / 2.0  # period = 8 points x 0.25
    assert np.allclose(made["static_sin3_y"][0].values[:, 0], np.sin(3 * phase), atol=1e-6)
    assert np.allclose(made["static_cos2_y"][0].values[:, 4], np.cos(2 * phase), atol=1e-6)
    assert np.allclose(made["static_x"][0].values[3], 2 * x / x.max() - 1, atol=1e-6)
    with pytest.raises(Exception, match="harmonics must be an integer >= 1"):
        Static(harmonics=0)
