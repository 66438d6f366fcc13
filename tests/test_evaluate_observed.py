"""Tests of ``sciencegen-evaluate`` on observation-conditioned ensemble stores (issue 16, item 3).

The stores are built here with xarray in the layout of contract C8 (the conditional layout plus ``obs_value``,
``obs_noise``, ``obs_index``, ``obs_weight``, ``obs_<var>`` for masks, the ``sciencegen_observations`` root
attribute). The members are exact posterior draws of a tiny Gaussian random field, computed here by dense Gaussian
conditioning (independent of ``sciencegen.targets.ObservedGRF``), or the truth with a known bias, so every score
has a known answer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from hydra import compose, initialize_config_dir

from sciencegen.analysis.observed_figures import observation_display
from sciencegen.config import config_dir, register
from sciencegen.evaluation.observed import lattice, lattice_bicubic
from sciencegen.pipelines.evaluate import run_evaluate
from sciencegen.targets import GaussianRandomField

N = 16  # dataset.size of the evaluation: the GRF of dataset=grf at 16² is the exact law
FD = ("y", "x")


def write_store(path: Path, members: np.ndarray, truth: np.ndarray | None, obs: dict, kind: str,
                noise: float = 0.1, var: str = "field") -> Path:
    """An observation store (C8): members ``(C, M, *field)``, truth ``(C, *field)`` (``None``: unknown, NaN),
    ``obs`` = padded ``index``/``weight`` ``(C, m, J)``, ``value``/``noise`` ``(C, m)``."""
    c, m = members.shape[:2]
    shape = members.shape[2:]
    coords = {"condition": np.arange(c), "member": np.arange(m),
              **{d: (d, np.arange(n) / n, {"units": "1"}) for d, n in zip(FD, shape, strict=True)}}
    tr = np.full((c, *shape), np.nan) if truth is None else truth
    data = {var: (("condition", "member", *FD), members.astype(np.float32), {"units": "K"}),
            f"truth_{var}": (("condition", *FD), tr.astype(np.float32), {"units": "K"}),
            "rounds": (("condition", "member"), np.full((c, m), 12, np.int32)),
            "nfe": (("condition", "member"), np.full((c, m), 24, np.int32)),
            "complete": (("condition", "member"), np.ones((c, m), bool)),
            "obs_value": (("condition", "observation"), obs["value"]),
            "obs_noise": (("condition", "observation"), obs["noise"]),
            "obs_index": (("condition", "observation", "support"), obs["index"]),
            "obs_weight": (("condition", "observation", "support"), obs["weight"])}
    if obs["index"].shape[2] == 1:  # a mask: the gridded observations
        grid = np.full((c, int(np.prod(shape))), np.nan)
        for i in range(c):
            ok = obs["index"][i, :, 0] >= 0
            grid[i, obs["index"][i, ok, 0]] = obs["value"][i, ok]
        data[f"obs_{var}"] = (("condition", *FD), grid.reshape(c, *shape).astype(np.float32), {"noise": noise})
    ds = xr.Dataset(data, coords=coords)
    ds.attrs["sciencegen_observations"] = json.dumps(
        {"kind": kind, "noise": {var: noise}, "variables": [var], "likelihood": "gaussian", "cg_iters": 8,
         "source": "heldout", "seed": 0})
    ds.attrs["sciencegen_variables"] = json.dumps([var])
    ds.to_zarr(path, mode="w", consolidated=False, encoding={var: {"chunks": (1, m, *shape)}})
    return path


def evaluate(store: Path, out: Path, *overrides: str) -> dict:
    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"dataset.size={N}", f"samples.path={store}", f"output.dir={out}",
                                             "evaluate.threads=1", f"data_root={out / 'data'}", *overrides])
    return run_evaluate(cfg)


# ------------------------------------------------------------------------------------------- dense Gaussian truth


def prior_covariance(grf: GaussianRandomField) -> np.ndarray:
    """The GRF's covariance as a dense ``(N², N²)`` matrix (its colouring filter applied twice to the identity)."""
    d = grf.dim
    eye = torch.eye(d, dtype=torch.float64).reshape(d, *grf.shape)
    return grf.colour(grf.colour(eye)).reshape(d, d).numpy()


def dense_h(index: np.ndarray, weight: np.ndarray, size: int) -> np.ndarray:
    h = np.zeros((index.shape[0], size))
    for i in range(index.shape[0]):
        np.add.at(h[i], index[i], weight[i])
    return h


def posterior(sigma: np.ndarray, h: np.ndarray, y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact posterior mean and covariance of ``x ~ N(0, sigma)`` given ``y = H x + N(0, diag(s²))``."""
    k = h @ sigma @ h.T + np.diag(s * s)
    gain = sigma @ h.T @ np.linalg.inv(k)
    return gain @ y, sigma - gain @ h @ sigma


def mask_obs(rng, c: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.stack([np.sort(rng.choice(N * N, count, replace=False)) for _ in range(c)])[..., None]
    return idx, np.ones(idx.shape)


def block_obs(c: int, f: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.arange(N * N).reshape(N // f, f, N // f, f).transpose(0, 2, 1, 3).reshape(-1, f * f)
    return np.broadcast_to(ids, (c, *ids.shape)).copy(), np.full((c, *ids.shape), 1.0 / (f * f))


def gaussian_store(tmp: Path, rng, c: int, m: int, index: np.ndarray, weight: np.ndarray, kind: str,
                   s: float = 0.1) -> tuple[Path, dict]:
    """Truths from the GRF, observations of them, members drawn from the exact posterior (dense)."""
    grf = GaussianRandomField(N)
    sigma = prior_covariance(grf)
    root = np.linalg.cholesky(sigma + 1e-12 * np.eye(N * N))
    truth = (root @ rng.normal(size=(N * N, c))).T
    out = {"mean": [], "cov": [], "h": []}
    members = np.zeros((c, m, N * N))
    value = np.zeros(index.shape[:2])
    for i in range(c):
        h = dense_h(index[i], weight[i], N * N)
        y = h @ truth[i] + s * rng.normal(size=h.shape[0])
        mean, cov = posterior(sigma, h, y, np.full(h.shape[0], s))
        lam, u = np.linalg.eigh(0.5 * (cov + cov.T))
        members[i] = mean[None] + (u @ (np.sqrt(np.clip(lam, 0, None))[:, None] * rng.normal(size=(N * N, m)))).T
        value[i] = y
        out["mean"].append(mean)
        out["cov"].append(cov)
        out["h"].append(h)
    obs = {"index": index, "weight": weight, "value": value, "noise": np.full(value.shape, s)}
    store = write_store(tmp / f"{kind}.zarr", members.reshape(c, m, N, N), truth.reshape(c, N, N), obs, kind, s)
    out |= {"truth": truth, "members": members, "obs": obs}
    return store, out


def crps_normal(mu: np.ndarray, sd: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Closed-form CRPS of N(mu, sd²) at y (Gneiting et al. 2005), written out here."""
    erf = np.vectorize(math.erf)  # no scipy: it is not a dependency
    z = (y - mu) / sd
    return sd * (z * erf(z / math.sqrt(2)) + 2 * np.exp(-z * z / 2) / math.sqrt(2 * math.pi) - 1 / math.sqrt(math.pi))


def obs_of(result: dict, v: str = "field") -> dict:
    return result["observed"]["variables"][v]


# ------------------------------------------------------------------------------------------- exact posterior draws


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    rng = np.random.default_rng(11)
    d = tmp_path_factory.mktemp("masked")
    index, weight = mask_obs(rng, 8, 64)  # 25 % of the points of 16², s = 0.1
    store, truth = gaussian_store(d, rng, 8, 64, index, weight, "mask")
    return evaluate(store, d / "eval"), truth, d / "eval"


def test_exact_posterior_members_match_the_exact_row(masked):
    result, t, _ = masked
    o = obs_of(result)
    assert result["observed"]["kind"] == "mask" and result["observed"]["exact"] is True
    assert o["cases"] == 8 and o["cases_with_truth"] == 8 and o["observations_per_case"] == 64
    assert o["observed_fraction"] == pytest.approx(0.25)
    truth = np.asarray(t["truth"])
    support = np.zeros((8, N * N), bool)
    for i in range(8):
        support[i, t["obs"]["index"][i, :, 0]] = True
    mean = np.stack(t["mean"])
    sd = np.sqrt(np.stack([np.diag(c) for c in t["cov"]]))
    for subset, sel in (("observed", support), ("unobserved", ~support)):
        exact = o["scores"]["exact"][subset]
        assert exact["points"] == sel.sum()
        # the exact row (ObservedGRF) against the dense conditioning written here
        assert exact["rmse"] == pytest.approx(math.sqrt(((mean - truth)[sel] ** 2).mean()), rel=1e-6)
        assert exact["crps"] == pytest.approx(crps_normal(mean, sd, truth)[sel].mean(), rel=1e-6)
        assert exact["spread"] == pytest.approx(math.sqrt((sd[sel] ** 2).mean()), rel=1e-6)
        # the members are exact posterior draws: the same CRPS within Monte Carlo error
        model = o["scores"]["model"][subset]
        assert model["crps"] == pytest.approx(exact["crps"], rel=0.03)
        assert abs(model["spread_skill"] - 1) < 0.15
    assert o["crps_ratio_unobserved"] == pytest.approx(1.0, abs=0.03)
    # observed points: the posterior is pinned by s = 0.1 observations of unit-variance values
    assert o["scores"]["model"]["observed"]["rmse"] < 0.3 * o["scores"]["model"]["unobserved"]["rmse"]


def test_chi2_of_members_truth_and_exact(masked):
    result, t, _ = masked
    c = obs_of(result)["chi2"]
    s = 0.1
    expected = []
    for i in range(8):
        h, y = t["h"][i], t["obs"]["value"][i]
        r = (y - h @ t["mean"][i]) / s
        expected.append(np.mean(r * r + np.diag(h @ t["cov"][i] @ h.T) / s**2))
    assert c["exact_expected"] == pytest.approx(np.mean(expected), rel=1e-6)
    assert c["observations"] == 8 * 64
    assert abs(c["members"] - c["exact_expected"]) < 4 * c["members_se"]
    assert c["members_se"] < 0.05
    assert abs(c["truth"] - 1) < 0.3  # 512 observations: standard error sqrt(2/512) = 0.06
    # by hand: members (float32 as stored)
    x = t["members"].astype(np.float32).astype(np.float64)
    chi = [(((t["obs"]["value"][i] - x[i] @ t["h"][i].T) / s) ** 2).mean(1) for i in range(8)]
    assert c["members"] == pytest.approx(np.mean(chi), rel=1e-9)


def test_report_and_figure(masked):
    result, _, out = masked
    assert (out / "observed_field.png").stat().st_size > 10_000
    assert "observed_field.png" in result["figures"]
    report = (out / "report.md").read_text()
    assert "## Observations" in report and "| model, unobserved |" in report and "| exact, observed |" in report
    assert "generated / exact posterior = " in report and "χ² = mean over observations" in report
    saved = json.loads((out / "metrics.json").read_text())
    chi2 = saved["observed"]["variables"]["field"]["chi2"]
    assert chi2["members"] == pytest.approx(obs_of(result)["chi2"]["members"])
    # the conditional scores are still there
    assert saved["conditional"]["variables"]["field"]["leads"][0]["methods"]["model"]["crps"] > 0
    # no bicubic baseline for random masks, said so
    assert "bicubic" not in obs_of(result)["scores"]
    assert obs_of(result)["baseline_notes"] == ["no interpolation baseline for mask observations"]


def test_block_means_dense_chi2(tmp_path):
    rng = np.random.default_rng(12)
    index, weight = block_obs(3, 4)  # 16 block means of 4x4 points per case
    store, t = gaussian_store(tmp_path, rng, 3, 48, index, weight, "blocks")
    result = evaluate(store, tmp_path / "eval")
    o = obs_of(result)
    assert o["observed_fraction"] == 1.0 and o["scores"]["model"]["unobserved"]["points"] == 0
    assert o["scores"]["model"]["unobserved"]["crps"] is None
    expected = []
    for i in range(3):  # the non-mask route: diag(H P Hᵀ) from the dense K = H Σ Hᵀ + S
        h, y = t["h"][i], t["obs"]["value"][i]
        r = (y - h @ t["mean"][i]) / 0.1
        expected.append(np.mean(r * r + np.diag(h @ t["cov"][i] @ h.T) / 0.01))
    assert o["chi2"]["exact_expected"] == pytest.approx(np.mean(expected), rel=1e-6)
    assert abs(o["chi2"]["members"] - o["chi2"]["exact_expected"]) < 4 * o["chi2"]["members_se"]
    assert (tmp_path / "eval" / "observed_field.png").stat().st_size > 10_000
    disp = observation_display({"index": index[0], "weight": weight[0], "value": t["obs"]["value"][0]}, (N, N),
                               (True, True))
    img = disp["image"]
    assert img[0, 0] == img[3, 3] == t["obs"]["value"][0, 0] and img[4, 4] == t["obs"]["value"][0, 5]


# ------------------------------------------------------------------------------------------- known answers


def test_bias_at_unobserved_points(tmp_path):
    rng = np.random.default_rng(13)
    c, m, bias = 4, 8, 0.7
    truth = rng.normal(size=(c, N, N))
    index, weight = mask_obs(rng, c, 40)
    support = np.zeros((c, N * N), bool)
    for i in range(c):
        support[i, index[i, :, 0]] = True
    shift = np.where(support, 0.0, bias).reshape(c, 1, N, N)
    members = truth[:, None] + shift + 1e-3 * rng.normal(size=(c, m, N, N))
    value = np.stack([truth[i].reshape(-1)[index[i, :, 0]] for i in range(c)])
    obs = {"index": index, "weight": weight, "value": value, "noise": np.full(value.shape, 0.1)}
    store = write_store(tmp_path / "bias.zarr", members, truth, obs, "mask")
    o = obs_of(evaluate(store, tmp_path / "eval", "evaluate.figures=false"))
    model = o["scores"]["model"]
    assert model["unobserved"]["rmse"] == pytest.approx(bias, abs=2e-3)
    assert model["observed"]["rmse"] < 2e-3
    assert model["unobserved"]["crps"] == pytest.approx(bias, abs=2e-3)  # a sharp ensemble: CRPS = |error|
    assert o["chi2"]["truth"] < 1e-9 and o["chi2"]["members"] < 1e-3  # y = H truth (up to float32) here
    assert not (tmp_path / "eval" / "observed_field.png").exists()


def test_stride_bicubic_baseline(tmp_path):
    rng = np.random.default_rng(14)
    c, m, stride = 3, 4, 2
    yy, xx = np.meshgrid(np.arange(N), np.arange(N), indexing="ij")
    truth = np.stack([np.sin(2 * np.pi * (xx + k) / N) + 0.5 * np.cos(2 * np.pi * 2 * yy / N) for k in range(c)])
    lat = (np.arange(0, N, stride)[:, None] * N + np.arange(0, N, stride)[None, :]).reshape(-1)
    index = np.broadcast_to(lat[:, None], (c, lat.size, 1)).copy()
    value = truth.reshape(c, -1)[:, lat] + 0.01 * rng.normal(size=(c, lat.size))
    obs = {"index": index, "weight": np.ones(index.shape), "value": value, "noise": np.full(value.shape, 0.01)}
    members = truth[:, None] + rng.normal(size=(c, m, N, N))
    store = write_store(tmp_path / "stride.zarr", members, truth, obs, "stride", 0.01)
    o = obs_of(evaluate(store, tmp_path / "eval", "evaluate.figures=false"))
    bic = o["scores"]["bicubic"]["unobserved"]
    assert bic["rmse"] < 0.03 and bic["crps_kind"] == "absolute error" and bic["spread_skill"] is None
    assert o["scores"]["bicubic"]["observed"]["rmse"] == pytest.approx(0.01, rel=0.3)  # the observation noise
    assert bic["rmse"] < 0.2 * o["scores"]["model"]["unobserved"]["rmse"]
    assert "climatology" in o["scores"] and o["baseline_notes"] == []


def test_lattice_bicubic_is_torch_bicubic():
    rng = np.random.default_rng(15)
    vals = rng.normal(size=(5, 6))
    shape = (13, 16)  # lattice every 3 points from 0 along y (ends on the grid), every 3 from 0 along x
    got = lattice_bicubic(vals, (0, 0), (3, 3), shape, (False, False))
    ref = torch.nn.functional.interpolate(torch.as_tensor(vals)[None, None], size=(13, 16), mode="bicubic",
                                          align_corners=True)[0, 0].numpy()
    assert np.allclose(got, ref, atol=1e-12)
    assert np.allclose(got[::3, ::3], vals, atol=1e-12)  # interpolating: lattice points keep their values
    # periodic: a trigonometric field of wavenumber 1 is reproduced to within the bicubic error
    per = lattice_bicubic(np.sin(2 * np.pi * np.arange(0, 16, 2) / 16)[None].repeat(8, 0), (1, 0), (2, 2), (16, 16),
                          (True, True))
    assert np.abs(per - np.sin(2 * np.pi * np.arange(16) / 16)[None]).max() < 0.03
    assert lattice(np.array([0, 2, 32, 34]), (16, 16)) == ([0, 0], [2, 2])
    assert lattice(np.array([0, 2, 32]), (16, 16)) is None


def test_store_without_truth(tmp_path):
    rng = np.random.default_rng(16)
    c, m = 3, 6
    index, weight = mask_obs(rng, c, 20)
    value = rng.normal(size=(c, 20))
    obs = {"index": index, "weight": weight, "value": value, "noise": np.full(value.shape, 0.1)}
    members = rng.normal(size=(c, m, N, N))
    store = write_store(tmp_path / "user.zarr", members, None, obs, "file")
    result = evaluate(store, tmp_path / "eval")
    o = obs_of(result)
    assert o["cases_with_truth"] == 0 and o["scores"] == {}
    assert "no evaluated case has a known truth" in o["skipped"]
    assert o["chi2"]["truth"] is None and o["chi2"]["members"] > 1  # members unrelated to the observations
    assert o["chi2"]["exact_expected"] is not None  # the exact posterior needs no truth
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "Not scored: no evaluated case has a known truth" in report
    assert (tmp_path / "eval" / "observed_field.png").stat().st_size > 0
