"""Masks end to end (issue 18, item 1): data stage -> training loss -> checkpoint -> generated members.

Real netCDF files in the style of archives (``datasets/make_geo_samples.py``: HadISST-like SST anomalies, 18 x 30,
NaN over land in every month, a static ``land`` variable, latitude descending), real prepared and ensemble stores,
a real (tiny) trained U-Net. The truths are independent of the code under test: the land points are read from the
file, the statistics recomputed with numpy, the masked loss written as a loop from its definition, and the members
drawn again with :func:`sciencegen.sample` and a masked denoiser written here.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from hydra import compose, initialize_config_dir
from torch import nn

import sciencegen
from sciencegen.config import config_dir, register
from sciencegen.data.fields import DataError
from sciencegen.data.loader import from_store
from sciencegen.data.masks import decode_valid, encode_valid
from sciencegen.data.prepare import prepare
from sciencegen.models.precond import EDMPrecond, denoising_loss, edm_loss_weight

ROOT = Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location("make_geo_samples", ROOT / "datasets" / "make_geo_samples.py")
geo = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(geo)

NETCDF = "sciencegen.data.sources.NetCDFSource"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return geo.write_all(tmp_path_factory.mktemp("geo"))


@pytest.fixture(scope="module")
def land(files) -> np.ndarray:
    with xr.open_dataset(files["sst"]) as ds:
        return ds["land"].values.astype(bool)


def _sst(path: Path, **kw) -> dict:
    return {"_target_": NETCDF, "name": "sst", "path": str(path), "variables": ["sst"], "sample_dims": ["time"],
            "nonfinite": "mask", "mask": None, "conditioning": None, **kw}


# ------------------------------------------------------------------------------------------- the data stage


def test_sst_prepares_with_a_mask_equal_to_the_land(files, land, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="sciencegen.data.masks"):
        p = prepare(_sst(files["sst"]), tmp_path / "sst.zarr")
    n_land = int(land.sum())
    assert f"sst: {n_land} of 540 points NaN in every sample: masked" in caplog.text
    assert p.meta["masks"] == {"sst": {"source": "nonfinite", "valid": 540 - n_land, "points": 540}}
    assert p.ds["valid_sst"].dtype == np.uint8 and p.ds["valid_sst"].dims == ("latitude", "longitude")
    np.testing.assert_array_equal(p.ds["valid_sst"].values, (~land).astype(np.uint8))
    # the model sees the mask: a static channel, 0/1 on the field dims, with its own statistics
    assert p.meta["conditioning"]["static"] == {"static_valid_sst": {"kind": "static", "source": "mask",
                                                                     "variable": "sst"}}
    np.testing.assert_array_equal(p.ds["static_valid_sst"].values, (~land).astype(np.float32))
    frac = (~land).mean()
    assert p.stats["mean"].sel(variable="static_valid_sst") == pytest.approx(frac, rel=1e-12)
    assert p.stats["std"].sel(variable="static_valid_sst") == pytest.approx(np.sqrt(frac * (1 - frac)), rel=1e-9)
    # NaN exactly at land in every sample; the statistics are those of the sea points of the file
    sst = p.ds["sst"].values
    assert np.array_equal(np.isnan(sst), np.broadcast_to(land, sst.shape))
    with xr.open_dataset(files["sst"]) as raw:
        sea = raw["sst"].values[:, ~land].astype(np.float64)
    assert int(p.stats["count"].sel(variable="sst")) == sea.size
    assert float(p.stats["mean"].sel(variable="sst")) == pytest.approx(sea.mean(), rel=1e-9, abs=1e-12)
    assert float(p.stats["std"].sel(variable="sst")) == pytest.approx(sea.std(), rel=1e-9)


def test_the_mask_variable_gives_the_same_mask(files, land, tmp_path):
    # NaN exactly at the mask's points are no error, even with nonfinite=error
    p = prepare(_sst(files["sst"], nonfinite="error", mask="land"), tmp_path / "a.zarr")
    np.testing.assert_array_equal(p.ds["valid_sst"].values, (~land).astype(np.uint8))
    assert p.meta["masks"]["sst"]["source"] == "variable:land"
    # a file holding values (not NaN) on land: the mask makes them NaN, the statistics skip them
    with xr.open_dataset(files["sst"]) as raw:
        filled = raw.load()
    filled["sst"] = filled["sst"].fillna(99.0)
    path = tmp_path / "filled.nc"
    filled.to_netcdf(path)
    q = prepare(_sst(path, nonfinite="error", mask={"variable": "land", "invalid": "nonzero"}), tmp_path / "b.zarr")
    np.testing.assert_array_equal(q.ds["valid_sst"].values, p.ds["valid_sst"].values)
    np.testing.assert_array_equal(q.ds["sst"].values, p.ds["sst"].values)
    assert float(q.stats["max"].sel(variable="sst")) < 99.0
    # invalid=zero: the sea is "invalid" and the land NaN are outside that mask, an error in one line
    with pytest.raises(DataError, match=r"NaN/Inf values outside the mask 'land'") as info:
        prepare(_sst(files["sst"], nonfinite="error", mask={"variable": "land", "invalid": "zero"}),
                tmp_path / "c.zarr")
    assert "\n" not in str(info.value) and not (tmp_path / "c.zarr").exists()


def test_nan_outside_the_mask_follow_the_policy(files, land, tmp_path):
    with xr.open_dataset(files["sst"]) as raw:
        ds = raw.load()
    sea = np.argwhere(~land)[0]
    ds["sst"][[3, 7], sea[0], sea[1]] = np.nan  # two months lose one sea point
    path = tmp_path / "holes.nc"
    ds.to_netcdf(path)
    with pytest.raises(DataError, match=r"2 NaN/Inf values outside the mask 'land' \(sst: 2\)"):
        prepare(_sst(path, nonfinite="error", mask="land"), tmp_path / "e.zarr")
    dropped = prepare(_sst(path, nonfinite="drop", mask="land"), tmp_path / "d.zarr")
    np.testing.assert_array_equal(dropped.ds["time"].values, np.delete(ds["time"].values, [3, 7]))
    np.testing.assert_array_equal(dropped.ds["valid_sst"].values, (~land).astype(np.uint8))
    kept = prepare(_sst(path, nonfinite="mask"), tmp_path / "k.zarr")  # the holes are not static: no mask there
    np.testing.assert_array_equal(kept.ds["valid_sst"].values, (~land).astype(np.uint8))
    assert int(kept.stats["count"].sel(variable="sst")) == 40 * int((~land).sum()) - 2


def test_unmasked_datasets_have_no_masks(files, tmp_path):
    z = {"_target_": NETCDF, "name": "z500", "path": str(files["z500"]), "variables": ["hgt"],
         "sample_dims": ["time"], "conditioning": None}
    for i, extra in enumerate(({}, {"nonfinite": "mask"}, {"mask": None})):
        p = prepare({**z, **extra}, tmp_path / f"z{i}.zarr")
        names = [str(v) for v in p.ds.variables]
        assert not any(n.startswith(("valid_", "static_valid_")) for n in names), names
        assert "masks" not in p.meta and "conditioning" not in p.meta
    # NaN that are not at the same points in every sample: kept (nonfinite=mask), but no static mask
    with xr.open_dataset(files["z500"]) as raw:
        ds = raw.load()
    ds["hgt"][2, 3, 4] = np.nan
    ds.to_netcdf(tmp_path / "hole.nc")
    p = prepare({**z, "path": str(tmp_path / "hole.nc"), "nonfinite": "mask"}, tmp_path / "h.zarr")
    assert "masks" not in p.meta and "valid_hgt" not in p.ds and np.isnan(p.ds["hgt"].values[2, 3, 4])


def test_bad_mask_options_are_one_line(files, tmp_path):
    for mask, words in (("nope", "dataset.mask names 'nope'"), ({"variable": "land", "invalid": "odd"},
                                                                  "dataset.mask must be"),
                        ("sst", "has dims")):
        with pytest.raises(DataError, match=words) as info:
            prepare(_sst(files["sst"], mask=mask), tmp_path / "x.zarr")
        assert "\n" not in str(info.value)


def test_valid_points_survive_their_encoding():
    rng = np.random.default_rng(0)
    for shape in ((18, 30), (7,), (3, 5, 11), (73, 144)):
        valid = rng.random(shape) < 0.7
        back = decode_valid(json.loads(json.dumps(encode_valid(valid))))
        assert back.dtype == bool and np.array_equal(back, valid)


# ------------------------------------------------------------------------------------------- the loss


class _Net(nn.Module):
    """A small raw network ``F(x_in, c_noise, cond)``: a 3x3 convolution over the field and the condition."""

    def __init__(self, channels: int = 2, cond: int = 1):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(channels + cond, channels, 3, padding=1)

    def forward(self, x, c_noise, cond):
        return self.conv(torch.cat([x, cond], dim=1)) + c_noise.reshape(-1, 1, 1, 1)


def _loss_loop(model, x0, sigma, noise, cond, valid, sd):
    """The masked loss from its definition: x0 taken as 0 at invalid points, then per item the mean over the valid
    points of the squared error, times lambda(sigma)."""
    x0 = x0.clone()
    b, c, ny, nx = x0.shape
    for i in range(b):
        for k in range(c):
            for y in range(ny):
                for x in range(nx):
                    if not valid[i, k, y, x]:
                        x0[i, k, y, x] = 0.0
    d = model(x0 + sigma.reshape(-1, 1, 1, 1) * noise, sigma, cond)
    out = []
    for i in range(b):
        total, count = 0.0, 0
        for k in range(c):
            for y in range(ny):
                for x in range(nx):
                    if valid[i, k, y, x]:
                        total = total + (d[i, k, y, x] - x0[i, k, y, x]) ** 2
                        count += 1
        lam = (sigma[i] ** 2 + sd ** 2) / (sigma[i] * sd) ** 2
        out.append(lam * total / count)
    return torch.stack(out)


def test_masked_loss_is_the_weighted_mean_over_valid_points_and_ignores_invalid_values():
    torch.manual_seed(1)
    model = EDMPrecond(_Net(), sigma_data=0.5).double()
    b, shape = 3, (2, 5, 6)
    x0, noise = torch.randn(b, *shape, dtype=torch.float64), torch.randn(b, *shape, dtype=torch.float64)
    cond = torch.randn(b, 1, 5, 6, dtype=torch.float64)
    sigma = torch.tensor([0.2, 1.0, 7.0], dtype=torch.float64)
    valid = torch.rand(b, *shape) < 0.6
    valid[:, 1, 0, :] = False  # a whole row of one channel invalid, as land
    got = denoising_loss(model, x0, sigma, noise, cond=cond, valid=valid)
    want = _loss_loop(model, x0, sigma, noise, cond, valid, 0.5)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    # whatever sits at the invalid points (NaN included): the same loss, the same gradient
    grads = []
    for fill in (None, float("nan"), 1e6):
        x = x0.clone() if fill is None else torch.where(valid, x0, torch.full_like(x0, fill))
        model.zero_grad()
        loss = denoising_loss(model, x, sigma, noise, cond=cond, valid=valid)
        loss.mean().backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    for loss, g in grads[1:]:
        assert torch.equal(loss, grads[0][0])
        assert all(torch.equal(a, b) for a, b in zip(g, grads[0][1], strict=True))
    # a mask broadcast over the channels and items, as a static land mask is
    land = torch.rand(5, 6) < 0.3
    torch.testing.assert_close(denoising_loss(model, x0, sigma, noise, cond=cond, valid=~land),
                               _loss_loop(model, x0, sigma, noise, cond, (~land).expand(b, *shape), 0.5),
                               rtol=1e-12, atol=0)


def test_without_a_mask_the_loss_is_bitwise_todays():
    torch.manual_seed(2)
    model = EDMPrecond(_Net(1, 1), sigma_data=1.0)
    x0, noise, cond = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    sigma = torch.tensor([0.05, 0.5, 2.0, 40.0])
    d = model(x0 + sigma.reshape(-1, 1, 1, 1) * noise, sigma, cond)  # the formula as it always was
    today = edm_loss_weight(sigma, 1.0) * (d - x0).pow(2).reshape(4, -1).mean(1)
    assert torch.equal(denoising_loss(model, x0, sigma, noise, cond=cond), today)


# ------------------------------------------------------------------------------------------- the stream


def test_the_training_stream_keeps_the_invalid_targets_and_fills_the_conditions(files, land, tmp_path):
    p = prepare(_sst(files["sst"]), tmp_path / "s.zarr")
    marked = from_store(p.path, batch_size=5, split="all", holdout=0.0, shuffle=False, keep_invalid=True)
    x, cond = next(iter(marked))
    assert x.shape == (5, 1, 18, 30) and cond.shape == (5, 1, 18, 30)
    assert torch.equal(torch.isnan(x[:, 0]), torch.from_numpy(land).expand(5, 18, 30))
    mean, std = float(p.stats["mean"].sel(variable="static_valid_sst")), float(
        p.stats["std"].sel(variable="static_valid_sst"))
    torch.testing.assert_close(cond[:, 0], torch.from_numpy(((~land) - mean) / std).float().expand(5, 18, 30))
    filled, _ = next(iter(from_store(p.path, batch_size=5, split="all", holdout=0.0, shuffle=False)))
    assert torch.equal(filled[:, 0][:, land], torch.zeros_like(filled[:, 0][:, land]))  # today's fill elsewhere
    assert torch.equal(filled[:, 0][:, ~land], x[:, 0][:, ~land])


# ------------------------------------------------------------------------------------------- train and generate

TRAIN = ["model=unet", "model.preset=tiny", "train.max_steps=3", "train.batch_size=4", "train.val_every=3",
         "train.val_batches=1", "train.holdout=0.2", "train.figure_members=0", "train.progress=false",
         "train.threads=1", "train.tensorboard=false", "train.warmup_steps=1"]


def _config(name: str, overrides: list[str]):
    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(name, overrides=overrides)


def _dataset(path: Path, *extra: str) -> list[str]:
    return ["dataset=netcdf", f"dataset.path={path}", "dataset.variables=[sst]", "dataset.sample_dims=[time]",
            "dataset.name=sst", *extra]


@pytest.fixture(scope="module")
def trained(files, tmp_path_factory, land):
    """A tiny U-Net trained 3 steps on the masked SST, and the ``valid`` each training loss was given."""
    from sciencegen.pipelines.train import run_train
    from sciencegen.training import loop

    tmp = tmp_path_factory.mktemp("masked")
    seen = []

    def recording(*args, **kw):
        seen.append(kw.get("valid"))
        return denoising_loss(*args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "denoising_loss", recording)
        out = run_train(_config("train", [*_dataset(files["sst"], "dataset.nonfinite=mask"), *TRAIN,
                                          f"run_dir={tmp / 'run'}", f"data_root={tmp / 'data'}"]))
    return tmp, out, seen


def test_training_ignores_the_land(trained, land):
    _, out, seen = trained
    assert out["trained"] and np.isfinite(out["loss"]) and np.isfinite(out["val_loss"])
    assert len(seen) == 3 and all(v is not None for v in seen)
    for v in seen:  # every field of every batch: exactly the sea points are valid
        assert v.shape[1:] == (1, 18, 30) and torch.equal(v[:, 0], torch.from_numpy(~land).expand(len(v), 18, 30))
    from sciencegen.models.build import load_model

    _, meta = load_model(out["checkpoint"])
    masks = meta["data"]["masks"]
    assert {k: masks["sst"][k] for k in ("source", "valid", "points")} == {
        "source": "nonfinite", "valid": int((~land).sum()), "points": 540}
    assert np.array_equal(decode_valid(masks["sst"]), ~land)
    assert meta["model"]["cond_channels"] == 1


def test_unmasked_training_gives_the_loss_no_mask(files, tmp_path):
    """Data without masks: the loss is called as it always was (``valid=None``), so its values are today's."""
    from sciencegen.pipelines.train import run_train
    from sciencegen.training import loop

    seen = []

    def recording(*args, **kw):
        seen.append(kw.get("valid", "absent"))
        return denoising_loss(*args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "denoising_loss", recording)
        run_train(_config("train", ["dataset=grf", "dataset.size=16", "dataset.samples=64", "dataset.chunk=8",
                                    *TRAIN[:2], "train.max_steps=2", *TRAIN[3:], f"run_dir={tmp_path / 'run'}",
                                    f"data_root={tmp_path / 'data'}"]))
    assert seen == [None, None]


def test_members_are_nan_exactly_at_the_land(trained, files, land):
    """Every member NaN exactly at land and finite elsewhere, ``valid_sst`` and ``sciencegen_masks`` stored; the
    generation needs no prepared store; the members are those of the model given its mask channel, 0 on land."""
    from sciencegen.models.build import load_model
    from sciencegen.pipelines.generate import run_generate

    tmp, out, _ = trained
    shutil.rmtree(tmp / "data")  # the checkpoint carries the masks
    path = tmp / "ens.zarr"
    run_generate(_config("generate", [*_dataset(files["sst"], "dataset.nonfinite=mask"), "model=unet",
                                      "model.preset=tiny", f"model.checkpoint={tmp / 'run'}",
                                      "sampler=picard_dpm2m", "sampler.steps=8", "generate.members=5",
                                      "generate.batch_size=5", "generate.progress=false", "generate.threads=1",
                                      f"output.path={path}", f"data_root={tmp / 'data'}"]))
    ens = xr.open_zarr(path)
    sst = ens["sst"].values
    assert sst.shape == (5, 18, 30) and bool(ens["complete"].values.all())
    for m in range(5):
        np.testing.assert_array_equal(np.isnan(sst[m]), land, err_msg=f"member {m}")
    assert ens["valid_sst"].dtype == np.uint8 and ens["valid_sst"].dims == ("latitude", "longitude")
    np.testing.assert_array_equal(ens["valid_sst"].values, (~land).astype(np.uint8))
    assert "long_name" in ens["valid_sst"].attrs
    assert json.loads(ens.attrs["sciencegen_masks"]) == {"sst": {"source": "nonfinite", "valid": int((~land).sum()),
                                                                 "points": 540}}
    # the same members drawn here: the model given its (normalised) mask channel, its output 0 on land
    net, meta = load_model(out["checkpoint"])
    cm, data = meta["data"]["conditioning"], meta["data"]
    chan = torch.from_numpy(((~land).astype(np.float64) - cm["mean"][0]) / cm["std"][0]).float()
    sea = torch.from_numpy(~land)

    def den(x, s):
        d = net(x, s, chan.to(x.dtype).expand(x.shape[0], 1, 18, 30))
        return torch.where(sea, d, torch.zeros_like(d))

    # generation wraps the model in MaskedDenoiser, whose spectral_jacobian = False makes newton="auto" plain Picard
    res = sciencegen.sample(den, (1, 18, 30), 5, "picard_dpm2m", 8, seed=0, batch_size=5, noise_stream="counter",
                            newton="none")
    want = res.samples[:, 0].double().numpy() * data["std"][0] + data["mean"][0]
    np.testing.assert_allclose(sst[:, ~land], want[:, ~land].astype(np.float32), rtol=1e-5, atol=1e-5)


def test_a_masked_forecast_rollout_keeps_the_land_nan_and_verifies(files, land, tmp_path):
    """Conditional (state + static coordinates): the inputs, truths and every member at every lead time are NaN
    exactly at land (members fed back with their NaN, which the model gets as 0), and ``generate.verify`` accepts
    the NaN at the masked points (nothing is regenerated)."""
    from sciencegen.pipelines.generate import run_generate
    from sciencegen.pipelines.train import run_train

    ds = _dataset(files["sst"], "dataset.nonfinite=mask", "+conditioning=[state,static]")
    run, root = tmp_path / "run", tmp_path / "data"
    run_train(_config("train", [*ds, *TRAIN[:2], "train.max_steps=2", *TRAIN[3:], f"run_dir={run}",
                                f"data_root={root}"]))
    cfg = _config("generate", [*ds, "model=unet", "model.preset=tiny", f"model.checkpoint={run}",
                               "sampler=picard_dpm2m", "sampler.steps=6", "generate.members=2", "generate.batch_size=2",
                               "generate.conditions=2", "generate.lead_times=2", "generate.progress=false",
                               "generate.threads=1", "generate.verify=true", f"output.path={tmp_path / 'e.zarr'}",
                               f"data_root={root}"])
    assert run_generate(cfg)["complete"] == 4
    ens = xr.open_zarr(tmp_path / "e.zarr")
    for name in ("sst", "truth_sst", "input_sst"):
        values = ens[name].values
        assert np.array_equal(np.isnan(values), np.broadcast_to(land, values.shape)), name
    assert ens["sst"].shape == (2, 2, 2, 18, 30)
    np.testing.assert_array_equal(ens["valid_sst"].values, (~land).astype(np.uint8))
    assert run_generate(cfg)["done"] == 0  # verify reads the NaN on land as masked, not as lost members
