"""The U-Net on any grid (issue 18): padded inside to multiples of its down-sampling factor, cropped back.

The padding is checked against the definition (periodic continuation ``x[(i - before) mod n]``, edge values
repeated), grids that are multiples take no padding path, shapes and gradients on odd grids, the exact
equivariance that survives, and a short training run and sampling on real lat-lon netCDF files (29x49 with a
descending latitude, 73x144 with the poles).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

import sciencegen
from sciencegen.config import config_dir
from sciencegen.models import EDMPrecond, UNet, denoising_loss
from sciencegen.models import build as B
from sciencegen.models import unet as U
from sciencegen.models.build import load_model
from sciencegen.pipelines.train import run_train

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(channels=8)


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _net(levels, dtype=torch.float32, seed=0, **kw):
    torch.manual_seed(seed)
    return UNet(**{"in_channels": 1, **SMALL, "channel_mult": (1, 2, 2, 2)[:levels], **kw}).to(dtype)


def _continuation(x: np.ndarray, axis: int, a: int, b: int, periodic: bool) -> np.ndarray:
    """The padded array written from the definition, one index at a time."""
    n = x.shape[axis]
    idx = [(i - a) % n if periodic else min(max(i - a, 0), n - 1) for i in range(a + n + b)]
    return np.stack([np.take(x, j, axis=axis) for j in idx], axis=axis)


# ----------------------------------------------------------------------------------------------- the padding


def test_grid_padding_reaches_the_next_multiple_split_evenly():
    assert U.grid_padding((73, 144), 8) == ((3, 4), (0, 0))
    assert U.grid_padding((29, 49, 18), 4) == ((1, 2), (1, 2), (1, 1))
    assert U.grid_padding((5,), 1) == ((0, 0),)
    for n in range(1, 40):
        for f in (1, 2, 4, 8):
            (a, b), = U.grid_padding((n,), f)
            m = n + a + b
            assert m % f == 0 and m - n < f and 0 <= b - a <= 1


@pytest.mark.parametrize("shape, pads, periodic", [
    ((2, 3, 7, 5), ((1, 2), (3, 3)), (True, False)),
    ((2, 3, 7, 5), ((0, 1), (2, 1)), (False, True)),
    ((1, 1, 3, 2), ((5, 6), (4, 3)), (True, True)),  # more padding than the size: wraps several times
    ((2, 4, 6), ((2, 3),), (True,)),  # 1-D field
    ((1, 2, 3, 4, 5), ((1, 0), (0, 0), (2, 1)), (False, True, True)),  # 3-D field
])
def test_pad_grid_is_the_periodic_continuation_or_the_edge_value(shape, pads, periodic):
    x = _randn(*shape, dtype=torch.float64)
    want = x.numpy()
    nd = len(pads)
    for i, ((a, b), per) in enumerate(zip(pads, periodic, strict=True)):
        want = _continuation(want, x.ndim - nd + i, a, b, per)
    got = U.pad_grid(x, pads, periodic)
    assert np.array_equal(got.numpy(), want)
    assert torch.equal(U.crop_grid(got, pads), x)


def test_pad_grid_gradient_folds_the_halo_back():
    # d/dx of sum(w * pad(x)): each input cell collects the weights of all its copies
    x = _randn(1, 1, 5, 3, dtype=torch.float64).requires_grad_(True)
    pads, periodic = ((2, 9), (1, 1)), (True, False)
    w = _randn(1, 1, 16, 5, seed=1, dtype=torch.float64)
    (U.pad_grid(x, pads, periodic) * w).sum().backward()
    want = np.zeros((5, 3))
    for i in range(16):
        for j in range(5):
            want[(i - 2) % 5, min(max(j - 1, 0), 2)] += float(w[0, 0, i, j])
    assert np.allclose(x.grad[0, 0].numpy(), want, rtol=0, atol=1e-12)


def test_the_network_sees_the_padded_field(monkeypatch):
    net = _net(3, periodic=(False, True))  # y replicate, x circular
    x, cond_seen = _randn(2, 1, 29, 49), {}
    inner = net._network

    def spy(h, c_noise, cond):
        cond_seen["x"] = h.detach().clone()
        return inner(h, c_noise, cond)

    monkeypatch.setattr(net, "_network", spy)
    with torch.no_grad():
        out = net(x, torch.zeros(2))
    want = _continuation(_continuation(x.numpy(), 2, 1, 2, False), 3, 1, 2, True)
    assert tuple(cond_seen["x"].shape) == (2, 1, 32, 52) and np.array_equal(cond_seen["x"].numpy(), want)
    assert out.shape == x.shape


# ----------------------------------------------------------------------------------------------- the network


@pytest.mark.parametrize("levels", [1, 2, 3])
@pytest.mark.parametrize("size", [(29, 49), (18, 30), (5, 7), (1, 3)])
def test_output_shape_equals_input_shape_on_odd_grids(levels, size):
    net = _net(levels, cond_channels=2, attention_levels=(levels - 1,), periodic=(False, True))
    x, cond = _randn(2, 1, *size), _randn(2, 2, *size, seed=1)
    with torch.no_grad():
        out = net(x, torch.tensor([0.1, -0.3]), cond)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_reflect_padding_on_a_small_odd_grid():
    net = _net(3, periodic=(False, False), padding_mode_nonperiodic="reflect")
    with torch.no_grad():
        assert net(_randn(1, 1, 5, 6), torch.zeros(1)).shape == (1, 1, 5, 6)  # padded to 8x8: coarsest 2x2
    with pytest.raises(ValueError, match="reflect padding needs the coarsest grid"):
        net(_randn(1, 1, 3, 6), torch.zeros(1))  # padded to 4x8: coarsest 1x2


def test_gradients_flow_on_an_odd_grid():
    net = _net(3, cond_channels=1, attention_levels=(2,), periodic=(False, True))
    x = _randn(2, 1, 29, 49).requires_grad_(True)
    cond = _randn(2, 1, 29, 49, seed=2).requires_grad_(True)
    net(x, torch.tensor([0.0, 0.5]), cond).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    for g in (x.grad, cond.grad):
        assert g.shape == (2, 1, 29, 49) and torch.isfinite(g).all()
        assert (g.abs() > 0).float().mean() > 0.99  # every cell, edges included, reaches the output


def test_multiples_take_no_padding_path(monkeypatch):
    def refuse(*args, **kw):
        raise AssertionError("padded a grid that is already a multiple")

    for levels, size in [(1, (7, 5)), (2, (30, 48)), (3, (32, 48)), (4, (24, 16))]:
        net = _net(levels, cond_channels=1, periodic=(True, False))
        x, cond, c = _randn(2, 1, *size), _randn(2, 1, *size, seed=1), torch.tensor([0.2, -1.0])
        with torch.no_grad():
            inner = net._network(x, c, cond)
            monkeypatch.setattr(U, "pad_grid", refuse)
            monkeypatch.setattr(U, "crop_grid", refuse)
            out = net(x, c, cond)
            monkeypatch.undo()
        assert torch.equal(out, inner)


def test_odd_grid_output_is_the_crop_of_the_padded_run():
    net = _net(3, cond_channels=1, periodic=(True, False))
    x, cond, c = _randn(2, 1, 29, 49), _randn(2, 1, 29, 49, seed=1), torch.tensor([0.2, -1.0])
    pads = ((1, 2), (1, 2))
    with torch.no_grad():
        full = net(U.pad_grid(x, pads, (True, False)), c, U.pad_grid(cond, pads, (True, False)))
        assert torch.equal(net(x, c, cond), U.crop_grid(full, pads))


def _roll(x, sy, sx):
    return torch.roll(x, shifts=(sy, sx), dims=(-2, -1))


def test_equivariance_along_an_unpadded_periodic_dim_survives_padding_of_the_other():
    # both dims periodic: y = 29 is padded to 32, x = 48 is a multiple of 4
    net = _net(3, torch.float64, attention_levels=(2,))
    x, c = _randn(2, 1, 29, 48, dtype=torch.float64), torch.tensor([-1.0, 0.4], dtype=torch.float64)
    with torch.no_grad():
        y = net(x, c)
        scale = float(y.abs().max())
        assert float((net(_roll(x, 0, 8), c) - _roll(y, 0, 8)).abs().max()) < 1e-10
        assert float((net(_roll(x, 0, -4), c) - _roll(y, 0, -4)).abs().max()) < 1e-10
        # along the padded periodic dim the seam in the halo breaks exact equivariance (documented)
        assert float((net(_roll(x, 4, 0), c) - _roll(y, 4, 0)).abs().max()) > 1e-4 * scale


def test_a_training_step_on_29x49():
    torch.manual_seed(0)
    model = EDMPrecond(UNet(1, **U.unet_preset("small"), periodic=(False, False)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x0 = _randn(4, 1, 29, 49)
    sigma, noise = torch.full((4,), 0.5), _randn(4, 1, 29, 49, seed=1)
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(3):
        loss = denoising_loss(model, x0, sigma, noise).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert any(not torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))


# ----------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def geo(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("make_geo_samples", ROOT / "datasets/make_geo_samples.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.write_all(tmp_path_factory.mktemp("geo"))


@pytest.mark.parametrize("name, variable, preset, shape, padded", [
    ("z500", "hgt", "small", (29, 49), "32x52"),
    ("uwnd", "uwnd", "tiny", (73, 144), "74x144"),
])
def test_train_and_sample_on_the_own_grid(tmp_path, geo, caplog, name, variable, preset, shape, padded):
    caplog.set_level(logging.INFO, logger="sciencegen")
    overrides = [
        "dataset=netcdf", f"dataset.path={geo[name]}", f"dataset.variables=[{variable}]",
        "dataset.sample_dims=[time]", "model=unet", f"model.preset={preset}", "model.channels=8",
        "train.max_steps=2", "train.batch_size=4", "train.log_every=1", "train.val_every=0",
        "train.ckpt_every_steps=2", "train.ckpt_every_minutes=0", "train.figure_members=0", "train.progress=false",
        "train.threads=1", "train.tensorboard=false", "train.warmup_steps=0",
        f"run_dir={tmp_path / 'run'}", f"data_root={tmp_path / 'data'}"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    run_train(cfg)
    grid = "x".join(map(str, shape))
    assert f"grid {grid} padded to {padded} inside the U-Net" in caplog.text
    model, meta = load_model(tmp_path / "run")
    assert list(meta["data"]["field_shape"]) == list(shape)
    res = sciencegen.sample(model, (1, *shape), 2, "sequential_ode", 4, seed=0)
    assert tuple(res.samples.shape) == (2, 1, *shape) and torch.isfinite(res.samples).all()


def test_the_padding_is_logged_once_with_its_modes(caplog):
    caplog.set_level(logging.INFO, logger="sciencegen")
    B.resolve_model_config({"preset": "base", "periodic": None}, channels=1, field_dims=("lat", "lon"),
                           field_shape=(73, 144), periodic={"lon": True})
    assert caplog.text.count("padded") == 1
    assert "grid 73x144 padded to 80x144 inside the U-Net (replicate in lat; 3 halving(s) need multiples of 8)" \
        in caplog.text
    caplog.clear()
    B.resolve_model_config({"preset": "small", "periodic": None}, channels=1, field_dims=("lat", "lon"),
                           field_shape=(18, 30), periodic={"lon": True})
    assert "grid 18x30 padded to 20x32 inside the U-Net (replicate in lat, circular in lon" in caplog.text
    caplog.clear()
    B.resolve_model_config({"preset": "small", "periodic": None}, channels=1, field_dims=("y", "x"),
                           field_shape=(32, 64), periodic={"x": True})
    assert "padded" not in caplog.text
