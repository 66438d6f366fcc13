"""Tests of ``sciencegen-evaluate`` on conditional ensemble stores (issue 15, item 5).

The stores are built here with xarray in the layout of a conditional ``sciencegen-generate`` store (dims
``condition``, ``member``, optional ``lead_time``; ``truth_<var>``, ``input_<name>``, ``complete`` on
``(condition, member)``, the ``sciencegen_conditioning`` root attribute) from exact Gaussian models, so every
score has a known answer: closed-form Gaussian CRPS, spread/skill of a calibrated and of an under-dispersed
ensemble, flat and U-shaped rank histograms, and baselines recomputed by hand from their definitions.
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

from sciencegen.analysis import crps_gaussian
from sciencegen.analysis.scores import rank_chi2
from sciencegen.config import config_dir, register
from sciencegen.evaluation import conditional_run
from sciencegen.evaluation.baselines import bicubic_upsample, block_mean, cubic_weights
from sciencegen.evaluation.common import EvaluateError
from sciencegen.evaluation.conditional import candidate_strides, rank_stride
from sciencegen.pipelines.evaluate import run_evaluate

FD = ("y", "x")


def write_store(path: Path, members: np.ndarray, truth: np.ndarray, conditioning: dict, *,
                inputs: dict | None = None, statics: dict | None = None, leads: int | None = None,
                complete: np.ndarray | None = None, var: str = "field") -> Path:
    """A conditional ensemble store (C5 layout): members ``(C, M, [L,] *field)``, truth ``(C, [L,] *field)``."""
    c, m = members.shape[:2]
    lead = ("lead_time",) if leads else ()
    shape = truth.shape[1 + len(lead):]
    fd = FD[-len(shape):] if len(shape) <= 2 else ("z", "y", "x")
    coords = {"condition": np.arange(c), "member": np.arange(m),
              **{d: (d, np.arange(n) / n, {"units": "1"}) for d, n in zip(fd, shape, strict=True)},
              "time": ("condition", np.arange(c) * 3 + 100)}
    if leads:
        coords["lead_time"] = ("lead_time", np.arange(1, leads + 1), {"units": "steps of time", "lag": 1})
    data = {var: (("condition", "member", *lead, *fd), members.astype(np.float32), {"units": "K"}),
            f"truth_{var}": (("condition", *lead, *fd), truth.astype(np.float32), {"units": "K"}),
            "rounds": (("condition", "member"), np.full((c, m), 12, np.int32)),
            "nfe": (("condition", "member"), np.full((c, m), 24, np.int32)),
            "complete": (("condition", "member"), np.ones((c, m), bool) if complete is None else complete)}
    for name, x in (inputs or {}).items():
        data[name] = (("condition", *fd), x.astype(np.float32))
    for name, x in (statics or {}).items():
        data[f"input_{name}"] = (fd, x.astype(np.float32))
    ds = xr.Dataset(data, coords=coords)
    ds.attrs["sciencegen_conditioning"] = json.dumps(conditioning)
    ds.to_zarr(path, mode="w", consolidated=False, encoding={var: {"chunks": (1, m, *members.shape[2:])}})
    return path


def evaluate(store: Path, out: Path, *overrides: str) -> dict:
    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("evaluate", overrides=["dataset.size=16", f"samples.path={store}", f"output.dir={out}",
                                             "evaluate.threads=1", f"data_root={out / 'data'}", *overrides])
    return run_evaluate(cfg)


@pytest.fixture
def no_law(monkeypatch):
    """No exact conditional law (whatever sciencegen.models offers): the rows are the model and the baselines."""
    monkeypatch.setattr(conditional_run, "exact_law_of", lambda dataset: (None, None))


def lead(result: dict, v: str = "field", i: int = 0) -> dict:
    return result["conditional"]["variables"][v]["leads"][i]


def fair_crps_loop(x: np.ndarray, y: np.ndarray) -> float:
    """Fair CRPS from its definition, all member pairs: members on axis 1 of ``x`` ``(C, M, *field)``."""
    m = x.shape[1]
    skill = np.abs(x - y[:, None]).mean(axis=1)
    pairs = sum(np.abs(x[:, i] - x[:, j]) for i in range(m) for j in range(m))
    return float((skill - pairs / (2 * m * (m - 1))).mean())


STATE = {"kinds": {"state": {"_target_": "sciencegen.data.conditioning.State", "lag": 1, "dim": "time"}},
         "inputs": {"input_field": {"kind": "state", "variable": "field", "lag": 1, "dim": "time"}},
         "static": {}, "state": {"dim": "time", "lag": 1, "feeds": {"input_field": "field"}},
         "source": "heldout", "holdout": 0.1}


def gaussian_case(rng, c: int, m: int, n: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Conditions mu_c (per pixel), truth ~ N(mu_c, 1), members ~ N(mu_c, scale^2), white in space."""
    mu = rng.normal(0.0, 2.0, (c, n, n))
    truth = mu + rng.normal(size=(c, n, n))
    members = mu[:, None] + scale * rng.normal(size=(c, m, n, n))
    return mu, truth, members


# ------------------------------------------------------------------------------------------- calibration


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    rng = np.random.default_rng(1)
    mu, truth, members = gaussian_case(rng, 40, 16, 16, 1.0)
    d = tmp_path_factory.mktemp("calibrated")
    store = write_store(d / "cal.zarr", members, truth, STATE, inputs={"input_field": mu})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conditional_run, "exact_law_of", lambda dataset: (None, None))
        result = evaluate(store, d / "eval")
    return result, mu, truth, members.astype(np.float32).astype(np.float64), d / "eval"


def test_calibrated_gaussian_ensemble(calibrated):
    result, mu, truth, members, _ = calibrated
    truth = truth.astype(np.float32).astype(np.float64)
    model = lead(result)["methods"]["model"]
    assert model["members"] == 16 and lead(result)["conditions"] == 40
    # fair CRPS: the package equals the all-pairs definition, and the closed-form Gaussian CRPS within MC error
    assert model["crps"] == pytest.approx(fair_crps_loop(members, truth), abs=1e-9)
    closed = float(crps_gaussian(xr.DataArray(mu), 1.0, xr.DataArray(truth)))
    assert abs(model["crps"] - closed) < 0.01
    assert closed == pytest.approx(1 / math.sqrt(math.pi), abs=0.02)  # E CRPS of N(mu, 1) at y ~ N(mu, 1)
    rmse = math.sqrt(((members.mean(axis=1) - truth) ** 2).mean())
    assert model["rmse"] == pytest.approx(rmse, rel=1e-9)
    spread = math.sqrt(members.var(axis=1, ddof=1).mean())
    assert model["spread_skill"] == pytest.approx(math.sqrt(17 / 16) * spread / rmse, rel=1e-9)
    assert abs(model["spread_skill"] - 1.0) < 0.05
    rank = model["rank"]
    assert rank["counts"].__len__() == 17 and sum(rank["counts"]) == pytest.approx(40 * 256)
    assert rank["stride"] == 1  # white noise: neighbouring deviations are uncorrelated
    assert rank["chi2"]["dof"] == 16 and rank["chi2"]["p_value"] > 1e-3


def test_underdispersed_ensemble_is_flagged(tmp_path, no_law):
    rng = np.random.default_rng(2)
    mu, truth, members = gaussian_case(rng, 40, 16, 16, 0.5)
    store = write_store(tmp_path / "under.zarr", members, truth, STATE, inputs={"input_field": mu})
    model = lead(evaluate(store, tmp_path / "eval"))["methods"]["model"]
    expected = math.sqrt(17 / 16) * 0.5 / math.sqrt(1 + 0.25 / 16)  # E s^2 = 0.25, E (mean - y)^2 = 1 + 0.25/M
    assert abs(model["spread_skill"] - expected) < 0.03
    counts = np.asarray(model["rank"]["counts"])
    assert counts[0] > 3 * counts[8] and counts[-1] > 3 * counts[8]  # U shape
    assert model["rank"]["chi2"]["p_value"] < 1e-12


def test_climatology_and_persistence_by_hand(calibrated):
    result, mu, truth, _, _ = calibrated
    truth = truth.astype(np.float32).astype(np.float64)
    mu = mu.astype(np.float32).astype(np.float64)
    methods = lead(result)["methods"]
    assert set(methods) == {"model", "climatology", "persistence"}
    clim = np.stack([np.delete(truth, c, axis=0) for c in range(truth.shape[0])])  # leave-one-out ensembles
    assert methods["climatology"]["members"] == 39
    assert methods["climatology"]["crps"] == pytest.approx(fair_crps_loop(clim, truth), rel=1e-9)
    assert methods["climatology"]["rmse"] == pytest.approx(math.sqrt(((clim.mean(1) - truth) ** 2).mean()), rel=1e-9)
    per = methods["persistence"]
    assert per["members"] == 1 and per["spread_skill"] is None and per["rank"] is None
    assert per["crps"] == pytest.approx(np.abs(mu - truth).mean(), rel=1e-9)  # one member: the absolute error
    assert per["rmse"] == pytest.approx(math.sqrt(((mu - truth) ** 2).mean()), rel=1e-9)
    # the truth is N(mu, 1): persistence (the mean) beats climatology (spread 2), the model beats both
    assert methods["model"]["crps"] < per["crps"] < methods["climatology"]["crps"]


def test_outputs_of_the_command(calibrated):
    result, *_, out = calibrated
    for f in ("metrics.json", "report.md", "scores.png", "ranks.png", "conditions.png", "spectra.png"):
        assert (out / f).stat().st_size > 0, f
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["conditional"]["variables"]["field"]["leads"][0]["methods"]["model"]["crps"] == pytest.approx(
        lead(result)["methods"]["model"]["crps"])
    report = (out / "report.md").read_text()
    assert "40 conditions × 16 members" in report
    assert "beats climatology" in report and "beats persistence" in report
    assert "| model | 16 |" in report and "rank χ² p" in report
    spec = lead(result)["methods"]["model"]["spectrum"]
    assert len(spec["forecast"]) == len(spec["truth"]) == len(spec["relative_error"])
    assert abs(lead(result)["methods"]["model"]["spectral_error"]) < 0.05  # white members vs white truths


# ------------------------------------------------------------------------------------------- rollouts, NaN truth


def test_rollout_lead_times_and_unknown_truth(tmp_path, no_law):
    rng = np.random.default_rng(3)
    c, m, n, nl = 6, 5, 8, 3
    x0 = rng.normal(size=(c, n, n))
    truth = np.stack([0.8 ** (k + 1) * x0 + rng.normal(size=(c, n, n)) for k in range(nl)], axis=1)
    truth[4:, 2] = np.nan  # past the end of their trajectories: unknown at lead 3
    members = truth[:, None] + rng.normal(size=(c, m, nl, n, n))
    members = np.nan_to_num(members)
    complete = np.ones((c, m), bool)
    complete[5, 3] = False  # condition 5 is not finished: excluded
    store = write_store(tmp_path / "roll.zarr", members, truth, STATE, inputs={"input_field": x0}, leads=nl,
                        complete=complete)
    result = evaluate(store, tmp_path / "eval")
    leads = result["conditional"]["variables"]["field"]["leads"]
    assert [e["lead_time"] for e in leads] == [1, 2, 3] and result["conditional"]["lead_times"] == [1, 2, 3]
    assert [e["conditions"] for e in leads] == [5, 5, 4] and [e["unknown_truth"] for e in leads] == [0, 0, 1]
    assert result["samples"]["incomplete_conditions"] == 1 and result["samples"]["evaluated_conditions"] == 5
    t32 = truth.astype(np.float32).astype(np.float64)
    x32 = x0.astype(np.float32).astype(np.float64)
    m32 = members.astype(np.float32).astype(np.float64)
    for k, e in enumerate(leads):
        keep = [i for i in range(5) if np.isfinite(t32[i, k]).all()]
        per = e["methods"]["persistence"]
        assert per["crps"] == pytest.approx(np.abs(x32[keep] - t32[keep, k]).mean(), rel=1e-9)  # x_t at every lead
        clim = np.stack([np.delete(t32[keep, k], i, axis=0) for i in range(len(keep))])
        assert e["methods"]["climatology"]["crps"] == pytest.approx(fair_crps_loop(clim, t32[keep, k]), rel=1e-9)
        assert e["methods"]["model"]["crps"] == pytest.approx(fair_crps_loop(m32[keep, :, k], t32[keep, k]), rel=1e-9)
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "lead time 3" in report and "4 cases with a known truth (1 without: excluded)" in report
    assert "1 with incomplete members" in report


def test_no_known_truth_is_one_line(tmp_path, no_law):
    rng = np.random.default_rng(4)
    members = rng.normal(size=(3, 4, 8, 8))
    store = write_store(tmp_path / "user.zarr", members, np.full((3, 8, 8), np.nan),
                        {**STATE, "source": "user.nc"}, inputs={"input_field": members[:, 0]})
    result = evaluate(store, tmp_path / "eval")
    assert lead(result)["conditions"] == 0 and lead(result)["unknown_truth"] == 3 and not lead(result)["methods"]


# ------------------------------------------------------------------------------------------- downscaling


COARSE = {"kinds": {"coarse": {"_target_": "sciencegen.data.conditioning.Coarse", "factor": 4},
                    "static": {"_target_": "sciencegen.data.conditioning.Static", "coords": True}},
          "inputs": {"input_field_coarse": {"kind": "coarse", "variable": "field", "factor": 4}},
          "static": {"static_sin_x": {"kind": "static", "source": "coord", "dim": "x", "fn": "sin"}},
          "state": None, "source": "heldout", "holdout": 0.1}


def test_downscaling_baselines(tmp_path, no_law):
    rng = np.random.default_rng(5)
    c, m, n, f = 6, 4, 16, 4
    g = np.arange(n) / n
    truth = sum(rng.normal(size=(c, 1, 1)) * np.cos(2 * np.pi * (kx * g[None, :] + ky * g[:, None])
                                                    + rng.uniform(0, 2 * np.pi, (c, 1, 1)))
                for kx, ky in ((1, 0), (0, 1), (1, 1), (2, 1)))  # smooth periodic fields
    coarse = block_mean(truth, f, (1, 2))
    near = np.repeat(np.repeat(coarse, f, axis=1), f, axis=2)
    members = truth[:, None] + 0.3 * rng.normal(size=(c, m, n, n))
    sin_x = np.broadcast_to(np.sin(2 * np.pi * np.arange(n) / n), (n, n))
    store = write_store(tmp_path / "down.zarr", members, truth, COARSE, inputs={"input_field_coarse": near},
                        statics={"static_sin_x": sin_x})
    result = evaluate(store, tmp_path / "eval")
    methods = lead(result)["methods"]
    assert set(methods) == {"model", "climatology", "nearest", "bicubic"}
    t32, n32 = truth.astype(np.float32).astype(np.float64), near.astype(np.float32).astype(np.float64)
    assert methods["nearest"]["crps"] == pytest.approx(np.abs(n32 - t32).mean(), rel=1e-9)
    # grf's y, x are periodic: the coarse grid recovered from the stored block means, interpolated with wrap
    up = bicubic_upsample(block_mean(n32, f, (1, 2)), f, (1, 2), (True, True))
    assert methods["bicubic"]["crps"] == pytest.approx(np.abs(up - t32).mean(), rel=1e-9)
    assert methods["bicubic"]["rmse"] < methods["nearest"]["rmse"]  # a smooth field: bicubic is the better guess
    assert result["conditional"]["periodic"] == {"y": True, "x": True}
    assert result["conditional"]["static"] == ["static_sin_x"]


def test_bicubic_equals_torch_interpolate():
    """With a = -0.75 (PyTorch's kernel), clamped edges equal torch's bicubic; wrapped edges equal torch's bicubic
    of the circularly padded field, cropped."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 3, 5, 7))
    for f in (2, 3, 4):
        ref = torch.nn.functional.interpolate(torch.as_tensor(x), scale_factor=f, mode="bicubic",
                                              align_corners=False).numpy()
        np.testing.assert_allclose(bicubic_upsample(x, f, (2, 3), (False, False), a=-0.75), ref, atol=1e-12)
        pad = np.pad(x, ((0, 0), (0, 0), (3, 3), (3, 3)), mode="wrap")
        wrapped = torch.nn.functional.interpolate(torch.as_tensor(pad), scale_factor=f, mode="bicubic",
                                                  align_corners=False).numpy()[..., 3 * f:-3 * f, 3 * f:-3 * f]
        np.testing.assert_allclose(bicubic_upsample(x, f, (2, 3), (True, True), a=-0.75), wrapped, atol=1e-12)


def test_keys_kernel_reproduces_quadratics():
    """Keys' a = -0.5 reproduces quadratic polynomials (values at cell centres) exactly away from the edges, in
    1-D and, separably, in 3-D."""
    assert np.allclose(cubic_weights(np.linspace(0, 0.99, 7)).sum(-1), 1.0)
    f, nc = 4, 9
    xc = np.arange(nc) + 0.0  # coarse cell centres in coarse units
    xf = (np.arange(nc * f) + 0.5) / f - 0.5

    def quad(t):
        return 0.3 * t * t - 1.2 * t + 0.7

    got = bicubic_upsample(quad(xc), f, (0,), (False,))
    inner = (xf >= 1) & (xf <= nc - 2)
    np.testing.assert_allclose(got[inner], quad(xf[inner]), atol=1e-12)
    g3 = quad(xc)[:, None, None] + quad(xc)[None, :, None] * 0.5 - quad(xc)[None, None, :]
    up = bicubic_upsample(g3, f, (0, 1, 2), (False, False, False))
    q = quad(xf)
    want = q[:, None, None] + q[None, :, None] * 0.5 - q[None, None, :]
    np.testing.assert_allclose(up[np.ix_(inner, inner, inner)], want[np.ix_(inner, inner, inner)], atol=1e-12)
    with pytest.raises(ValueError, match="not divisible"):
        block_mean(np.zeros((5, 8)), 4, (0,))


# ------------------------------------------------------------------------------------------- exact posterior


class ShiftLaw:
    """A conditional law for the tests: x | cond ~ N(a * cond[0], (1 - a^2)), white."""

    def __init__(self, a: float):
        self.a = a

    def posterior_sample(self, cond, count, generator=None):
        noise = torch.randn((count, 1, *cond.shape[1:]), generator=generator, dtype=torch.float64)
        return self.a * cond[:1][None] + math.sqrt(1 - self.a**2) * noise


def test_exact_posterior_row_and_rollout_feeds(tmp_path, monkeypatch):
    a = 0.6
    monkeypatch.setattr(conditional_run, "exact_law_of", lambda dataset: (ShiftLaw(a), None))
    rng = np.random.default_rng(7)
    c, m, n, nl = 24, 16, 8, 3
    x0 = rng.normal(size=(c, n, n))
    truth, x = [], x0
    for _ in range(nl):  # the AR(1) truth
        x = a * x + math.sqrt(1 - a * a) * rng.normal(size=(c, n, n))
        truth.append(x)
    truth = np.stack(truth, axis=1)
    members = rng.normal(size=(c, m, nl, n, n))  # a poor model: the stationary law, blind to the condition
    store = write_store(tmp_path / "ar.zarr", members, truth, STATE, inputs={"input_field": x0}, leads=nl)
    result = evaluate(store, tmp_path / "eval")
    for k, e in enumerate(result["conditional"]["variables"]["field"]["leads"]):
        ex = e["methods"]["exact"]
        assert ex["members"] == m
        # draws fed their own previous draws: spread at lead l is sqrt(1 - a^(2l)), calibrated against the truth
        assert ex["spread"] == pytest.approx(math.sqrt(1 - a ** (2 * (k + 1))), rel=0.06)
        assert abs(ex["spread_skill"] - 1) < 0.12
        assert ex["crps"] < e["methods"]["persistence"]["crps"] and ex["crps"] < e["methods"]["model"]["crps"]
    assert "exact posterior" in (tmp_path / "eval" / "report.md").read_text()
    assert "ShiftLaw" in result["conditional"]["methods"]["exact"]


def test_exact_law_of_another_grid_is_skipped(tmp_path, monkeypatch):
    class Wrong:
        def posterior_sample(self, cond, count, generator=None):
            return torch.zeros((count, 1, 4, 4), dtype=torch.float64)

    monkeypatch.setattr(conditional_run, "exact_law_of", lambda dataset: (Wrong(), None))
    rng = np.random.default_rng(8)
    _, truth, members = gaussian_case(rng, 4, 3, 8, 1.0)
    store = write_store(tmp_path / "w.zarr", members, truth, STATE, inputs={"input_field": truth})
    result = evaluate(store, tmp_path / "eval")
    assert "exact" not in lead(result)["methods"]
    assert any("exact posterior is not scored" in w for w in result["warnings"])


# ------------------------------------------------------------------------------------------- the rank test


def test_rank_chi2_against_the_chi2_law():
    c = [10, 12, 8, 30, 5, 7]
    r = rank_chi2(c)
    n, e = 72.0, 12.0
    assert r["statistic"] == pytest.approx(sum((x - e) ** 2 / e for x in c))
    assert r["dof"] == 5
    # the chi-squared survival function of 5 dof in closed form (odd dof: erfc and a finite series)
    s = r["statistic"]
    sf = math.erfc(math.sqrt(s / 2)) + math.sqrt(2 * s / math.pi) * math.exp(-s / 2) * (1 + s / 3)
    assert r["p_value"] == pytest.approx(sf, rel=1e-10)
    pooled = rank_chi2(np.ones(17) * 2)  # 34 points: 6 groups of expected count >= 5
    assert pooled["groups"] == 6 and pooled["statistic"] == pytest.approx(0.0, abs=1e-12)
    assert rank_chi2([1, 2, 1])["p_value"] is None and n == sum(c)


def test_stride_follows_the_decorrelation_length():
    strides = candidate_strides((32, 32))
    assert strides == [1, 2, 4, 8, 16]
    curve = xr.DataArray(np.exp(-np.arange(17) / 3.0), dims="separation")  # C(r) = exp(-r/3): 0.1 at r = 6.9
    assert rank_stride([curve], strides)[0] == 8
    assert rank_stride([], strides) == (1, None)


def test_incomplete_store_is_one_line(tmp_path, no_law):
    rng = np.random.default_rng(9)
    _, truth, members = gaussian_case(rng, 3, 4, 8, 1.0)
    store = write_store(tmp_path / "inc.zarr", members, truth, STATE, inputs={"input_field": truth},
                        complete=np.zeros((3, 4), bool))
    with pytest.raises(EvaluateError, match=r"none of its 3 conditions has all its 4 members complete"):
        evaluate(store, tmp_path / "eval")


def test_perfect_downscaling_model_matches_the_exact_grf_posterior(tmp_path):
    """With the exact law of grf 16² under block means (helper A's CoarseGRF, found by ``exact_law``): members that
    are exact posterior draws score like the exact posterior row, and clearly better than nearest and bicubic (on a
    4² coarse grid of a rough field these two are about equal)."""
    oracle = pytest.importorskip("sciencegen.models.oracle")
    if not hasattr(oracle, "exact_law"):
        pytest.skip("no exact_law yet")
    kinds = {"coarse": {"_target_": "sciencegen.data.conditioning.Coarse", "factor": 4}}
    law = oracle.exact_law({"_target_": "sciencegen.physics.datasets.GRFSource", "size": 16, "conditioning": kinds})
    gen = torch.Generator().manual_seed(11)
    c, m = 12, 32
    x = law.field.sample(c, gen).double()  # [c, 1, 16, 16], the truths
    cond = law.coarsen(x)
    members = torch.stack([law.posterior_sample(cond[i], m, generator=gen)[:, 0] for i in range(c)])
    store = write_store(tmp_path / "grf.zarr", members.numpy(), x[:, 0].numpy(), {**COARSE, "kinds": kinds},
                        inputs={"input_field_coarse": cond[:, 0].numpy()})
    result = evaluate(store, tmp_path / "eval")
    methods = lead(result)["methods"]
    assert set(methods) == {"model", "exact", "climatology", "nearest", "bicubic"}
    assert methods["exact"]["crps"] == pytest.approx(methods["model"]["crps"], rel=0.06)
    for name in ("model", "exact"):
        assert abs(methods[name]["spread_skill"] - 1) < 0.1
        assert methods[name]["crps"] < 0.8 * min(methods["bicubic"]["crps"], methods["nearest"]["crps"])
    assert "CoarseGRF" in result["conditional"]["methods"]["exact"]
