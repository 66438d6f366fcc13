"""Tests of observation-conditioned ensembles from ``sciencegen-generate`` (issue 16, contract C8).

Real prepared datasets, real stores, real netCDF and CSV files. The truths are independent of the generation
code: the observations are redrawn here from the documented rule (one generator seeded by ``stream_key(seed, c,
0, tag=5)``: ``randperm`` per variable, then the noise), the held-out truth is read from the prepared store at the
samples the chunk split gives, the members are :func:`sciencegen.sample` called directly on
``Guided(oracle, observations)``, the exact posterior is dense Gaussian conditioning of the GRF's covariance (built
here by colouring the identity), and the bilinear weights of point observations are written from the definition.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from hydra import compose, initialize_config_dir

import sciencegen
from sciencegen.config import config_dir, register
from sciencegen.data.prepare import dataset_config, default_store_path
from sciencegen.models.build import oracle_denoiser
from sciencegen.pipelines.generate import GenerateError, run_generate
from sciencegen.samplers.guidance import Guided, ObservationOperator, Observations
from sciencegen.samplers.noise import condition_seed, stream_key
from sciencegen.targets import GaussianRandomField

N = 16
GRF = ["dataset=grf", f"dataset.size={N}", "dataset.samples=64", "dataset.chunk=8", "model=oracle", "sampler=dpm2m",
       "sampler.steps=32", "generate.progress=false", "generate.threads=1"]
# 2 held-out cases x 64 members, a quarter of the points observed with noise 0.1
OBSERVED = [*GRF, "observe.fraction=0.25", "observe.noise=0.1", "generate.conditions=2", "generate.members=64",
            "generate.batch_size=32"]
SMALL = [*GRF, "sampler.steps=12", "generate.members=4", "generate.batch_size=2", "generate.conditions=2"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def config(base: list[str], root: Path, *overrides: str):
    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("generate", overrides=[*base, f"data_root={root}", *overrides])


def open_(path: Path) -> xr.Dataset:
    return xr.open_zarr(str(path)).load()


def chunk_bytes(path: Path) -> dict[str, bytes]:
    """Every chunk file of the store (metadata aside: it holds the creation time)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != "zarr.json"}


def one_line_error(cfg, *needles: str) -> str:
    with pytest.raises(GenerateError) as err:
        run_generate(cfg)
    text = str(err.value)
    assert "\n" not in text, text
    for n in needles:
        assert n in text, text
    return text


@pytest.fixture(scope="module")
def observed(root, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("obs") / "o.zarr"
    s = run_generate(config(OBSERVED, root, f"output.path={path}"))
    assert (s["conditions"], s["members"], s["complete"]) == (2, 64, 128)
    assert "mask" in s["observations"] and "64 per case" in s["observations"] and "gaussian" in s["observations"]
    return path


def grid_coords(root: Path) -> tuple[np.ndarray, np.ndarray]:
    src = xr.open_zarr(default_store_path(config(GRF, root).dataset, root))
    return np.asarray(src["y"].values), np.asarray(src["x"].values)


# ------------------------------------------------------------------------------------------- the store


def test_store_holds_the_observations_drawn_by_the_documented_rule(observed, root):
    ds = open_(observed)
    desc = json.loads(ds.attrs["sciencegen_observations"])
    assert desc["kind"] == "mask" and desc["fraction"] == 0.25 and desc["noise"] == {"field": 0.1}
    assert (desc["likelihood"], desc["source"], desc["seed"], desc["counts"]) == ("gaussian", "heldout", 0, [64, 64])
    assert json.loads(ds.attrs["sciencegen_variables"]) == ["field"]
    assert ds["obs_value"].dims == ("condition", "observation") and ds.sizes["observation"] == 64
    assert ds["obs_index"].dims == ("condition", "observation", "support") and ds.sizes["support"] == 1
    assert ds["obs_field"].dims == ("condition", "y", "x") and ds["obs_field"].dtype == np.float32
    assert ds["obs_field"].attrs["noise"] == 0.1
    # truth: the held-out samples (the last chunk, 56..63) in van der Corput order: 56, 60
    src = xr.open_zarr(default_store_path(config(GRF, root).dataset, root))
    np.testing.assert_array_equal(ds["truth_field"].values, src["field"].isel(sample=[56, 60]).values)
    resid = []
    for c in range(2):
        truth = ds["truth_field"].values[c].astype(np.float64).reshape(-1)
        gen = torch.Generator().manual_seed(stream_key(0, c, 0, tag=5))
        idx = torch.randperm(N * N, generator=gen)[:64].sort().values.numpy()
        eps = torch.randn(64, generator=gen, dtype=torch.float64).numpy()
        np.testing.assert_array_equal(ds["obs_index"].values[c, :, 0], idx)
        np.testing.assert_array_equal(ds["obs_weight"].values[c], np.ones((64, 1)))
        np.testing.assert_allclose(ds["obs_value"].values[c], truth[idx] + 0.1 * eps, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(ds["obs_noise"].values[c], np.full(64, 0.1))
        grid = ds["obs_field"].values[c].reshape(-1)
        assert np.isnan(np.delete(grid, idx)).all()
        np.testing.assert_array_equal(grid[idx], ds["obs_value"].values[c].astype(np.float32))
        resid.append(ds["obs_value"].values[c] - truth[idx])
    # 128 residuals of std 0.1: their sample std within ~4 standard errors
    assert 0.075 < float(np.std(np.concatenate(resid))) < 0.125


def test_members_are_the_guided_sampler_with_honest_nfe(observed, root):
    ds = open_(observed)
    oracle = oracle_denoiser(dataset_config(config(GRF, root).dataset))
    c = 1
    op = ObservationOperator(torch.as_tensor(ds["obs_index"].values[c]), torch.as_tensor(ds["obs_weight"].values[c]),
                             (1, N, N))
    obs = Observations(op, torch.as_tensor(ds["obs_value"].values[c]), torch.as_tensor(ds["obs_noise"].values[c]))
    guided = Guided(oracle, obs, likelihood="gaussian", cg_iters=8, cg_tol=1e-3)
    res = sciencegen.sample(guided, (1, N, N), 32, "dpm2m", 32, seed=condition_seed(0, c), batch_size=32,
                            first_member=32, noise_stream="counter")
    np.testing.assert_array_equal(ds["field"].values[c, 32:], res.samples[:, 0].numpy().astype(np.float32))
    nfe = np.rint(res.stats["nfe_per_member"].numpy())
    np.testing.assert_array_equal(ds["nfe"].values[c, 32:], nfe)
    # each guided call costs a forward plus vector-Jacobian products (>= 3 evaluations)
    assert (nfe >= 3 * res.stats["calls"]).all()


def test_member_mean_and_variance_are_the_exact_posterior(observed):
    ds = open_(observed)
    g = GaussianRandomField(N)
    white = torch.eye(N * N, dtype=torch.float64).reshape(N * N, 1, N, N)
    root_cov = g.colour(white).reshape(N * N, N * N)  # symmetric square root of the covariance
    cov = root_cov @ root_cov.T
    for c in range(2):
        idx = torch.as_tensor(ds["obs_index"].values[c, :, 0])
        y = torch.as_tensor(ds["obs_value"].values[c])
        s = torch.as_tensor(ds["obs_noise"].values[c])
        h = torch.zeros(len(idx), N * N, dtype=torch.float64)
        h[torch.arange(len(idx)), idx] = 1.0
        gain = cov @ h.T @ torch.linalg.inv(h @ cov @ h.T + torch.diag(s ** 2))
        mean, var = (gain @ y).numpy(), torch.diag(cov - gain @ h @ cov).numpy()
        x = ds["field"].values[c].reshape(64, -1).astype(np.float64)
        z = np.abs(x.mean(0) - mean) / np.sqrt(var / 64)
        assert (z < 3).mean() >= 0.97, (z < 3).mean()
        assert 0.85 < x.var(0, ddof=1).mean() / var.mean() < 1.15
        # the prior's variance is 1 per pixel: the observations removed a good part of it
        assert var.mean() < 0.8


# ------------------------------------------------------------------------------------------- user files


def test_gridded_observation_file(root, tmp_path):
    y, x = grid_coords(root)
    values = np.full((2, N, N), np.nan)
    values[0, ::4, ::4] = np.arange(16).reshape(4, 4) / 10
    values[1, 3, 5], values[1, 10, 1] = 1.5, -0.5
    noise = np.where(np.isfinite(values), 0.05, np.nan)
    noise[1, 10, 1] = np.nan  # no noise given here: observe.noise applies
    f = tmp_path / "obs.nc"
    xr.Dataset({"field": (("time", "y", "x"), values), "noise": (("time", "y", "x"), noise)},
               coords={"time": [10, 20], "y": y, "x": x}).to_netcdf(f)
    path = tmp_path / "g.zarr"
    s = run_generate(config(SMALL, root, f"observe.path={f}", "observe.noise=0.2", f"output.path={path}"))
    assert (s["conditions"], s["complete"]) == (2, 8)
    ds = open_(path)
    desc = json.loads(ds.attrs["sciencegen_observations"])
    assert (desc["kind"], desc["form"], desc["source"], desc["counts"]) == ("file", "gridded", str(f.resolve()),
                                                                           [16, 2])
    assert desc["noise_from_file"] is True
    np.testing.assert_array_equal(ds["obs_field"].values, values.astype(np.float32))
    np.testing.assert_array_equal(ds["time"].values, [10, 20])
    np.testing.assert_array_equal(ds["obs_noise"].values[1], [0.05, 0.2] + [np.nan] * 14)
    assert np.isnan(ds["obs_value"].values[1, 2:]).all() and (ds["obs_index"].values[1, 2:] == -1).all()
    assert (ds["obs_weight"].values[1, 2:] == 0).all()
    assert np.isnan(ds["truth_field"].values).all()  # a user's cases: truth unknown
    assert np.isfinite(ds["field"].values).all()


def bilinear(py: float, px: float, n: int) -> dict[int, float]:
    """Flat index -> weight of a periodic bilinear interpolation at fractional grid indices (the definition)."""
    out: dict[int, float] = {}
    y0, x0 = math.floor(py), math.floor(px)
    fy, fx = py - y0, px - x0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            k = ((y0 + dy) % n) * n + (x0 + dx) % n
            out[k] = out.get(k, 0.0) + wy * wx
    return {k: w for k, w in out.items() if w > 0}


def test_points_table_from_csv(root, tmp_path):
    y, x = grid_coords(root)
    dy = float(y[1] - y[0])
    rows = pd.DataFrame({"case": ["b", "a", "a", "b"], "y": [0.1, 0.5, 0.97, 0.25], "x": [0.53, 0.0, 0.3, 0.97],
                         "field": [1.0, -1.0, 0.5, np.nan], "noise": [0.3, np.nan, 0.1, 0.2]})
    f = tmp_path / "points.csv"
    rows.to_csv(f, index=False)
    path = tmp_path / "p.zarr"
    run_generate(config(SMALL, root, f"observe.path={f}", f"output.path={path}"))
    ds = open_(path)
    assert "obs_field" not in ds and ds.sizes["support"] == 4
    np.testing.assert_array_equal(ds["case"].values, ["a", "b"])
    expect = {0: rows.iloc[[1, 2]], 1: rows.iloc[[0]]}  # case b's second row observes nothing
    for c, sub in expect.items():
        for k, (_, r) in enumerate(sub.iterrows()):
            want = bilinear(r["y"] / dy, r["x"] / dy, N)
            idx, w = ds["obs_index"].values[c, k], ds["obs_weight"].values[c, k]
            got = {int(i): float(v) for i, v in zip(idx, w, strict=True) if v > 0}
            assert got.keys() == want.keys()
            np.testing.assert_allclose([got[i] for i in want], list(want.values()), rtol=0, atol=1e-12)
            assert ds["obs_value"].values[c, k] == r["field"]
            assert ds["obs_noise"].values[c, k] == (0.1 if np.isnan(r["noise"]) else r["noise"])
    assert np.isnan(ds["obs_value"].values[1, 1])


def test_bad_observation_files_are_one_line_errors(root, tmp_path):
    y, x = grid_coords(root)
    missing = tmp_path / "nope.nc"
    one_line_error(config(SMALL, root, f"observe.path={missing}"), str(missing), "no such file")
    small = tmp_path / "small.nc"
    xr.Dataset({"field": (("y", "x"), np.zeros((8, 8)))}).to_netcdf(small)
    one_line_error(config(SMALL, root, f"observe.path={small}"), str(small), "grid")
    shifted = tmp_path / "shifted.nc"
    xr.Dataset({"field": (("y", "x"), np.zeros((N, N)))}, coords={"y": y + 0.5, "x": x}).to_netcdf(shifted)
    one_line_error(config(SMALL, root, f"observe.path={shifted}"), str(shifted), "coordinate y")
    other = tmp_path / "other.nc"
    xr.Dataset({"u": (("y", "x"), np.zeros((N, N)))}).to_netcdf(other)
    one_line_error(config(SMALL, root, f"observe.path={other}"), str(other), "none of the generated variables")
    empty = tmp_path / "empty.nc"
    xr.Dataset({"field": (("y", "x"), np.full((N, N), np.nan))}).to_netcdf(empty)
    one_line_error(config(SMALL, root, f"observe.path={empty}"), str(empty), "no observation")
    nocol = tmp_path / "nocol.csv"
    pd.DataFrame({"y": [0.1], "field": [1.0]}).to_csv(nocol, index=False)
    one_line_error(config(SMALL, root, f"observe.path={nocol}"), str(nocol), "missing ['x']")
    badnoise = tmp_path / "badnoise.csv"
    pd.DataFrame({"y": [0.1], "x": [0.2], "field": [1.0], "noise": [-1.0]}).to_csv(badnoise, index=False)
    one_line_error(config(SMALL, root, f"observe.path={badnoise}"), str(badnoise), "noise")
    garbage = tmp_path / "garbage.nc"
    garbage.write_bytes(b"not a netcdf file")
    one_line_error(config(SMALL, root, f"observe.path={garbage}"), str(garbage))
    nothing = list(tmp_path.glob("*.zarr"))
    assert not nothing  # no store was created by any of them


def test_bad_options_are_one_line_errors(root, tmp_path):
    out = f"output.path={tmp_path / 'x.zarr'}"
    one_line_error(config(SMALL, root, "observe.fraction=0.1", "observe.stride=2", out), "observe.fraction",
                   "observe.stride", "exactly one")
    one_line_error(config(SMALL, root, "observe.fraction=1.5", out), "observe.fraction", "(0, 1]")
    one_line_error(config(SMALL, root, "observe.fraction=0.1", "observe.noise=-1", out), "observe.noise")
    one_line_error(config(SMALL, root, "observe.stride=0", out), "observe.stride", ">= 1")
    one_line_error(config(SMALL, root, "observe.fraction=0.1", "observe.likelihood=exact", out), "observe.likelihood")
    one_line_error(config(SMALL, root, "observe.factor=3", out), "observe.factor=3", "does not divide")
    one_line_error(config(SMALL, root, "observe.fraction=0.1", "observe.variables=[u]", out), "observe.variables")
    one_line_error(config(SMALL, root, "observe.fraction=0.1", "observe.noise={u: 0.1}", out), "observe.noise",
                   "missing ['field']")
    one_line_error(config(SMALL, root, "observe.fraction=0.1", "+observe.foo=1", out), "observe.foo")
    one_line_error(config(SMALL, root, "observe.fraction=0.1", "generate.lead_times=2", out),
                   "generate.lead_times=2", "not supported")
    one_line_error(config(SMALL, root, "observe.fraction=0.1", "condition.path=cases.nc", out), "condition.path",
                   "observe.path")
    assert not (tmp_path / "x.zarr").exists()


# ------------------------------------------------------------------------------------------- resume, identity


def test_resume_is_bitwise_and_other_observations_are_refused(root, tmp_path):
    base = [*SMALL, "observe.stride=4", "output.chunk=2"]
    full, part = tmp_path / "full.zarr", tmp_path / "part.zarr"
    run_generate(config(base, root, f"output.path={full}"))
    first = run_generate(config(base, root, f"output.path={part}", "generate.shard=0/2"))
    assert first["complete"] == 4
    second = run_generate(config(base, root, f"output.path={part}"))
    assert (second["skipped"], second["done"], second["complete"]) == (4, 4, 8)
    assert chunk_bytes(full) == chunk_bytes(part)
    before = chunk_bytes(part)
    for change in ("observe.noise=0.2", "observe.likelihood=dps", "observe.stride=2"):
        one_line_error(config(base, root, f"output.path={part}", change), str(part), "another config",
                       "observations")
    assert chunk_bytes(part) == before


def test_block_means_and_conditional_datasets(root, tmp_path):
    # block means: each observation the mean of a 4x4 block of the truth, plus noise
    path = tmp_path / "b.zarr"
    run_generate(config(SMALL, root, "observe.factor=4", "observe.noise=0.1", f"output.path={path}"))
    ds = open_(path)
    assert "obs_field" not in ds and ds.sizes["support"] == 16 and ds.sizes["observation"] == 16
    assert json.loads(ds.attrs["sciencegen_observations"])["kind"] == "blocks"
    np.testing.assert_allclose(ds["obs_weight"].values, 1 / 16)
    truth = ds["truth_field"].values.astype(np.float64).reshape(2, -1)
    means = np.stack([truth[c][ds["obs_index"].values[c]].mean(1) for c in range(2)])
    blocks = truth.reshape(2, 4, 4, 4, 4).mean(axis=(2, 4)).reshape(2, -1)
    np.testing.assert_allclose(np.sort(means, 1), np.sort(blocks, 1), rtol=0, atol=1e-12)
    assert 0.04 < float(np.std(ds["obs_value"].values - means)) < 0.17
    # a conditional dataset (downscaling) observed as well: the inputs and the observations in one store
    cpath = tmp_path / "c.zarr"
    run_generate(config(SMALL, root, "+conditioning=coarse", "observe.fraction=0.1", f"output.path={cpath}"))
    ds = open_(cpath)
    assert {"input_field_coarse", "truth_field", "obs_field", "obs_value"} <= set(ds.data_vars)
    assert np.isfinite(ds["field"].values).all()


def test_help_lists_the_observe_keys():
    from sciencegen.console.help import help_text

    text = help_text("sciencegen-generate")
    for key in ("observe.fraction", "observe.stride", "observe.factor", "observe.path", "observe.noise",
                "observe.likelihood", "observe.cg_iters"):
        assert key in text


def test_jacobian_max_sigma_auto_is_the_training_range_and_none_for_the_oracle():
    import math

    from sciencegen.generation.observe import jacobian_max_sigma

    assert jacobian_max_sigma("auto", (-0.6, 1.4)) == pytest.approx(math.exp(-0.6 + 2.5 * 1.4))
    assert jacobian_max_sigma("auto", None) is None  # not trained: the exact oracle
    assert jacobian_max_sigma(None, (-0.6, 1.4)) is None
    assert jacobian_max_sigma(7.0, None) == 7.0
